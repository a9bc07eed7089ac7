"""``scaling export``: a trained encoder as a self-contained model folder, and
:func:`load_pretrained`, which rebuilds it without the training configuration.

Folder layout::

    model.safetensors   the encoder's weights, float32: patch_embed, cls_token, blocks, norm
                        (the decoder and mask token are not exported)
    config.json         the architecture, the input channels and what the model does to
                        the pixels it is given (``FORMAT``, version ``VERSION``)
    README.md           the model card: data, compute, benchmark scores

The sin-cos position embeddings are fixed, so they are rebuilt, not stored. A loaded model
is an ``MAE`` in eval mode whose decoder is freshly initialised: use ``embed_blocks`` (or
the encoder methods), not the reconstruction loss.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
from pathlib import Path

from scaling.errors import InputError
from scaling.model.mae import MAE
from scaling.model.sizes import ViTSize

FORMAT = "scaling-mae-encoder"
VERSION = 1
DECODER = ("decoder", "mask_token")  # state-dict prefixes that are not exported

INPUT = {
    "layout": "(B, C, H, W) crops, channels in channel_names order, H = W = img_size",
    "dtype": "uint8 (any real dtype is accepted and converted to float32)",
    "normalization": (
        "self_standardize, inside the model: per crop and per channel, "
        "(x - mean) / (std + 1e-6) in float32, mean and population std over that "
        "channel's H x W pixels; no dataset statistics, so pass raw pixels"
    ),
}
AGNOSTIC = (
    "channel-agnostic: any number and order of channels; each channel's patches are "
    "tokens of their own (C x patches tokens); channel_names are the training data's"
)
EMBEDDING = {
    "method": (
        "MAE.embed_blocks: one unmasked forward pass; for every block b = 1..depth, the "
        "mean over the patch tokens (CLS excluded) of the final LayerNorm applied to "
        "block b's output -> (B, depth, width) float32"
    ),
    "well": (
        "each site is cut into non-overlapping img_size x img_size tiles (edge remainders "
        "dropped) and a well is the mean of its sites' tiles (scaling evaluate, embed)"
    ),
    "positions": "fixed 2-D sin-cos embeddings, rebuilt from img_size and patch",
}


def is_encoder(key: str) -> bool:
    return not key.startswith(DECODER)


# -- writing ---------------------------------------------------------------------------------


def export(checkpoint, out, evaluation=None, overwrite: bool = False) -> dict:
    """Write the model folder ``out`` from a checkpoint (or run) folder; ``evaluation``: a
    ``scaling evaluate`` output whose ``summary.json`` goes into the card. Returns the
    config written."""
    from safetensors.torch import load_file, save_file

    from scaling.atomic import atomic_folder, check_out
    from scaling.config import load_config
    from scaling.evaluate.embed import find_checkpoint

    ckpt = find_checkpoint(checkpoint)
    inputs = [ckpt, Path(checkpoint) / "result.json", evaluation]
    out = check_out(out, inputs, overwrite)
    cfg = load_config(ckpt / "config.yaml")
    summary = read_evaluation(evaluation, ckpt) if evaluation is not None else None
    state = read_weights(ckpt / "model.safetensors", load_file)
    config = model_config(cfg, state, ckpt)
    with atomic_folder(out) as tmp:
        save_file(state, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        (tmp / "config.json").write_text(json.dumps(config, indent=2) + "\n")
        model = load_pretrained(tmp)  # the folder reads back: names and shapes agree
        accounting = run_accounting(checkpoint, ckpt)
        card = model_card(config, model, cfg, accounting, summary, evaluation)
        (tmp / "README.md").write_text(card)
    return config


def read_weights(path: Path, load_file) -> dict:
    """The encoder's tensors of a checkpoint's safetensors, float32, contiguous."""
    try:
        state = load_file(str(path))
    except Exception as e:
        raise InputError(f"{path}: unreadable weights ({e})") from None
    state = {k: v.float().contiguous() for k, v in state.items() if is_encoder(k)}
    if "patch_embed.weight" not in state:
        raise InputError(f"{path}: no patch_embed.weight, not an MAE checkpoint")
    return state


def model_config(cfg, state: dict, ckpt: Path) -> dict:
    """config.json of a checkpoint's model: the size is the config's, the channels the
    weights' (``patch_embed.weight`` is (width, C, patch, patch); 1 channel-agnostic)."""
    from scaling.model.sizes import SIZES

    m, size = cfg.model, SIZES[cfg.model.name]
    agnostic = getattr(m, "channel_agnostic", None)
    channels, names = channel_names(m, state, ckpt / "config.yaml")
    config = {
        "format": FORMAT,
        "format_version": VERSION,
        "size": dataclasses.asdict(size),
        "img_size": cfg.data.crop,
        "crop": cfg.data.crop,
        "patches": (cfg.data.crop // size.patch) ** 2,
        "qk_norm": m.qk_norm,
        "layer_scale": m.layer_scale,
        "pos_base": m.pos_base,
        "channels": channels,
        "channel_names": names,
    }
    if agnostic is not None:
        config["channel_agnostic"] = bool(agnostic)
    training = {k: getattr(m, k) for k in ("mask_ratio", "norm_pix_loss", "fourier_weight")}
    return config | {
        "decoder": False,
        "dtype": "float32",
        "precision": cfg.train.precision,  # what the run trained (and evaluates) in
        "input": INPUT | ({"channels": AGNOSTIC} if agnostic else {}),
        "embedding": {"blocks": size.depth, "dim": size.width, **EMBEDDING},
        "training": training,
        "source": {"checkpoint": str(ckpt.resolve())},
    }


def channel_names(m, state: dict, path: Path) -> tuple[int, list[str]]:
    """(C, names) of the training data: ``model.channels`` (else the defaults for C), C
    from the weights unless the model is channel-agnostic (whose weights hold one)."""
    from scaling.shards.format import default_channel_names

    names = list(getattr(m, "channels", None) or [])
    if getattr(m, "channel_agnostic", False):
        channels = len(names) or 6  # MAE.from_config's count
    else:
        channels = int(state["patch_embed.weight"].shape[1])
    names = names or list(default_channel_names(channels))
    if len(names) != channels:
        raise InputError(
            f"{path}: model.channels names {len(names)} channels, the weights have {channels}"
        )
    return channels, names


def read_evaluation(evaluation, ckpt: Path) -> dict:
    """A ``scaling evaluate`` folder's summary.json, checked to be about this checkpoint
    (when the checkpoint it names can still be found)."""
    path = Path(evaluation) / "summary.json"
    try:
        summary = json.loads(path.read_text())
        summary["mae"]["best_block"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise InputError(f"--evaluation: {path}: not a scaling evaluate summary ({e})") from None
    named = summary.get("checkpoint")
    if named and Path(named).exists():
        from scaling.evaluate.embed import find_checkpoint

        try:
            same = find_checkpoint(named).resolve() == ckpt.resolve()
        except InputError:
            same = True  # the folder it names is no checkpoint now: nothing to compare
        if not same:
            raise InputError(f"--evaluation: {path}: evaluates {named}, not {ckpt}")
    return summary


def run_accounting(checkpoint, ckpt: Path) -> dict:
    """step, crops_seen, flops (and loss, data when known): a run folder's result.json,
    else the checkpoint's state.json; empty when neither is readable."""
    found = {}
    for path in (ckpt / "state.json", Path(checkpoint) / "result.json"):
        try:
            found |= json.loads(path.read_text())
        except (OSError, ValueError):
            continue
    keys = ("step", "crops_seen", "flops", "loss", "data")
    return {k: found[k] for k in keys if found.get(k) is not None}


# -- the model card --------------------------------------------------------------------------


def model_card(config, model, cfg, accounting, summary, evaluation) -> str:
    size = config["size"]
    lines = [
        f"# MAE encoder {size['name']}",
        "",
        f"Exported by `scaling export` from `{config['source']['checkpoint']}`. Load it with",
        "",
        "```python",
        "from scaling.model import load_pretrained",
        "",
        'model = load_pretrained("THIS_FOLDER")  # an MAE in eval mode, float32, on the CPU',
        "emb = model.embed_blocks(crops)  # (B, C, H, W) uint8 -> (B, depth, width)",
        "```",
        "",
        *model_section(config, model),
        *data_section(config, cfg, accounting),
        *compute_section(accounting, cfg),
        *evaluation_section(summary, evaluation),
    ]
    return "\n".join(lines) + "\n"


def model_section(config, model) -> list[str]:
    s = config["size"]
    rows = [
        ("size", s["name"]),
        ("depth, width, heads, MLP", f"{s['depth']}, {s['width']}, {s['heads']}, {s['mlp']}"),
        ("patch, crop", f"{s['patch']} px, {config['img_size']} px ({config['patches']} patches)"),
        ("qk-norm, LayerScale", f"{config['qk_norm']}, {config['layer_scale']}"),
        ("encoder parameters", f"{model.param_counts()['encoder']:,}"),
        ("weights", "float32, encoder only (the decoder is not exported)"),
    ]
    if "channel_agnostic" in config:
        rows.append(("channel-agnostic", str(config["channel_agnostic"])))
    return [
        "## Model",
        "",
        "| | |",
        "|---|---|",
        *(f"| {k} | {v} |" for k, v in rows),
        "",
        f"**Input.** {config['input']['layout']}; {config['input']['dtype']}. "
        f"Normalisation: {config['input']['normalization']}.",
        "",
        f"**Embedding.** {config['embedding']['method']}. Wells: {config['embedding']['well']}.",
        "",
    ]


def data_section(config, cfg, accounting) -> list[str]:
    path = accounting.get("data") or cfg.data.path
    where = f"`{path}`" if path else f"a synthetic world (preset {cfg.world.preset!r})"
    return [
        "## Data",
        "",
        f"- dataset: {where}",
        f"- curation: {describe_curation(path)}",
        f"- channels ({config['channels']}): {', '.join(config['channel_names'])}",
        "",
    ]


def describe_curation(path) -> str:
    if not path:
        return "none (every well)"
    manifest = Path(path) / "curation.json"
    if not manifest.is_file():
        return "none (every well)" if Path(path).is_dir() else "unknown (the folder is gone)"
    try:
        c = json.loads(manifest.read_text())
        return f"{c['strategy']}, {c['wells']} of {c['source_wells']} wells of `{c['source']}`"
    except (ValueError, KeyError, TypeError):
        return f"unknown ({manifest} is unreadable)"


def compute_section(accounting, cfg) -> list[str]:
    def known(key, fmt):
        try:
            return format(accounting[key], fmt) if key in accounting else "unknown"
        except (TypeError, ValueError):
            return str(accounting[key])

    lines = [
        "## Compute",
        "",
        f"- steps: {known('step', 'd')}",
        f"- crops seen: {known('crops_seen', ',d')}",
        f"- training FLOPs: {known('flops', '.3g')}",
        f"- precision: {cfg.train.precision}, batch {cfg.data.batch_size} crops per worker",
    ]
    if "loss" in accounting:
        lines.append(f"- final validation loss: {accounting['loss']:.4f}")
    return lines + [""]


def evaluation_section(summary, evaluation) -> list[str]:
    if summary is None:
        return ["## Evaluation", "", "Not evaluated.", ""]
    m = summary["mae"]
    lines = [
        "## Evaluation",
        "",
        f"`scaling evaluate` on `{summary.get('data', '?')}` ({evaluation}), "
        f"TVN {'on' if summary.get('tvn', True) else 'off'}. "
        f"Best block: {m['best_block']} of {m.get('blocks', '?')} (by validation probes).",
        "",
        "| model | block | " + " | ".join(metric_names(m)) + " |",
        "|---|---|" + "---|" * len(metric_names(m)),
    ]
    for name, row in summary.items():
        if isinstance(row, dict) and "best_block" in row:
            cells = [fmt_metric(row.get(k)) for k in metric_names(m)]
            lines.append(f"| {name} | {row['best_block']} | " + " | ".join(cells) + " |")
    return lines + [""]


def metric_names(row: dict) -> list[str]:
    return [k for k in row if k not in ("best_block", "blocks")]


def fmt_metric(v) -> str:
    return "" if v is None else f"{v:.3f}" if isinstance(v, float) else str(v)


# -- reading ---------------------------------------------------------------------------------


def load_pretrained(path, device="cpu") -> MAE:
    """The encoder of a ``scaling export`` folder: an ``MAE`` in eval mode, float32, on
    ``device``, every exported tensor's name and shape checked against config.json
    (``InputError`` naming the file and tensor otherwise). ``model.export_config`` holds
    config.json (channel names, input normalisation, embedding recipe)."""
    from safetensors.torch import load_file

    folder = Path(path)
    config = read_config(folder)
    model = build_model(config, folder / "config.json")
    weights = folder / "model.safetensors"
    if not weights.is_file():
        raise InputError(f"{folder}: not an exported model (no model.safetensors)")
    try:
        state = load_file(str(weights))
    except Exception as e:
        raise InputError(f"{weights}: unreadable weights ({e})") from None
    check_state(model, state, weights)
    model.load_state_dict(state, strict=False)
    model.export_config = config
    return model.to(device).eval()


def read_config(folder: Path) -> dict:
    path = folder / "config.json"
    if not path.is_file():
        raise InputError(f"{folder}: not an exported model (no config.json)")
    try:
        config = json.loads(path.read_text())
    except ValueError as e:
        raise InputError(f"{path}: not JSON ({e})") from None
    if not isinstance(config, dict) or config.get("format") != FORMAT:
        raise InputError(f"{path}: format: expected {FORMAT!r}")
    if config.get("format_version", 0) > VERSION:
        raise InputError(
            f"{path}: format_version {config['format_version']} is newer than {VERSION}"
        )
    for key in ("size", "img_size", "channels", "channel_names", "qk_norm", "layer_scale"):
        if key not in config:
            raise InputError(f"{path}: {key}: missing")
    if len(config["channel_names"]) != config["channels"]:
        raise InputError(
            f"{path}: channel_names: {len(config['channel_names'])} names for "
            f"{config['channels']} channels"
        )
    return config


def build_model(config: dict, path: Path) -> MAE:
    """The MAE that config.json describes (decoder freshly initialised)."""
    try:
        size = ViTSize(**config["size"])
    except TypeError as e:
        raise InputError(f"{path}: size: {e}") from None
    options = {"qk_norm": config["qk_norm"], "layer_scale": config["layer_scale"]}
    if "pos_base" in config:  # files from before it was an option take the MAE's default
        options["pos_base"] = config["pos_base"]
    options |= config.get("training", {})
    if "channel_agnostic" in config:
        if "channel_agnostic" not in inspect.signature(MAE).parameters:
            if config["channel_agnostic"]:
                raise InputError(f"{path}: channel_agnostic: this MAE has no such option")
        else:
            options["channel_agnostic"] = config["channel_agnostic"]
    try:
        return MAE(size, img_size=config["img_size"], channels=config["channels"], **options)
    except (TypeError, ValueError) as e:
        raise InputError(f"{path}: {e}") from None


def check_state(model: MAE, state: dict, path: Path) -> None:
    """Every encoder tensor is there with the model's shape; nothing unknown."""
    expected = {k: v.shape for k, v in model.state_dict().items()}
    for key, t in state.items():
        if key not in expected:
            raise InputError(f"{path}: {key}: not a tensor of this model")
        if t.shape != expected[key]:
            raise InputError(
                f"{path}: {key}: shape {tuple(t.shape)}, config.json says {tuple(expected[key])}"
            )
    missing = [k for k in expected if is_encoder(k) and k not in state]
    if missing:
        raise InputError(f"{path}: {missing[0]}: missing ({len(missing)} encoder tensors)")
