"""``scaling export`` and ``scaling.model.load_pretrained``: the smoke run's encoder as a
self-contained folder that embeds exactly as the checkpoint does."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from scaling.errors import InputError
from scaling.evaluate.embed import build, find_checkpoint, load_spec
from scaling.model.export import export
from scaling.shards.format import CHANNELS
from tests.conftest import run_cli


def crops(channels=6, side=64) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    return torch.randint(0, 256, (5, channels, side, side), generator=g, dtype=torch.uint8)


def test_export_round_trips_the_smoke_model(smoke_run, tmp_path):
    from scaling.model import load_pretrained

    _, result, run_dir = smoke_run
    out = tmp_path / "model"
    rc, stdout, stderr = run_cli("export", "--checkpoint", run_dir, "--out", out)
    assert rc == 0, stderr
    assert "no decoder" in stdout
    assert sorted(p.name for p in out.iterdir()) == [
        "README.md",
        "config.json",
        "model.safetensors",
    ]

    model = load_pretrained(out)
    assert not model.training
    x = crops()
    assert torch.equal(model.embed_blocks(x), build(load_spec(run_dir)).embed_blocks(x))

    weights = load_file(str(out / "model.safetensors"))
    assert all(t.dtype == torch.float32 for t in weights.values())
    assert not [k for k in weights if k.startswith(("decoder", "mask_token"))]
    c = json.loads((out / "config.json").read_text())
    assert c["size"]["name"] == "cpu-xs" and c["size"]["patch"] == 8 and c["size"]["depth"] == 2
    assert (c["img_size"], c["channels"], c["channel_names"]) == (64, 6, list(CHANNELS))
    assert c["decoder"] is False and "self_standardize" in c["input"]["normalization"]
    assert model.export_config == c

    card = (out / "README.md").read_text()
    assert "Not evaluated." in card and "nuclei, er, actin" in card
    assert f"steps: {result['step']}" in card and f"{result['crops_seen']:,}" in card


def test_export_card_with_an_evaluation(smoke_run, tmp_path):
    _, _, run_dir = smoke_run
    ev = tmp_path / "eval"
    ev.mkdir()
    summary = {
        "checkpoint": str(run_dir),
        "data": "world",
        "tvn": True,
        "mae": {"best_block": 2, "blocks": 2, "recall_complex": 0.25, "probe_pathway": 0.5},
        "handcrafted": {"best_block": 0, "blocks": 1, "recall_complex": 0.6},
    }
    (ev / "summary.json").write_text(json.dumps(summary))
    ckpt = find_checkpoint(run_dir)
    export(ckpt, tmp_path / "m", evaluation=ev)  # a checkpoint folder works as well
    card = (tmp_path / "m" / "README.md").read_text()
    assert "Best block: 2 of 2" in card and "| mae | 2 | 0.250 | 0.500 |" in card
    assert "| handcrafted | 0 | 0.600 |  |" in card and "Not evaluated" not in card
    # an evaluation of another model is refused
    (ev / "summary.json").write_text(json.dumps({**summary, "checkpoint": str(tmp_path)}))
    (tmp_path / "model.safetensors").write_bytes(b"")
    (tmp_path / "config.yaml").write_text("")
    with pytest.raises(InputError, match="evaluates"):
        export(ckpt, tmp_path / "m2", evaluation=ev)
    assert not (tmp_path / "m2").exists()


def test_export_refuses_the_checkpoint_as_out(smoke_run, tmp_path):
    _, _, run_dir = smoke_run
    ckpt = find_checkpoint(run_dir)
    before = sorted(p.name for p in ckpt.iterdir())
    for out, how in [(ckpt, "is"), (ckpt / "export", "is inside"), (ckpt.parent, "holds")]:
        with pytest.raises(InputError, match=f"{how} the input") as e:
            export(run_dir, out, overwrite=True)
        assert str(e.value).startswith(f"{out}: ")
    assert sorted(p.name for p in ckpt.iterdir()) == before


def test_export_of_a_folder_that_is_not_a_checkpoint_exits_2(tmp_path):
    rc, _, stderr = run_cli("export", "--checkpoint", tmp_path, "--out", tmp_path / "m")
    assert rc == 2 and str(tmp_path) in stderr and len(stderr.strip().splitlines()) == 1
    assert not (tmp_path / "m").exists()


def test_load_pretrained_checks_names_and_shapes(smoke_run, tmp_path):
    from scaling.model import load_pretrained

    _, _, run_dir = smoke_run
    out = tmp_path / "m"
    export(run_dir, out)
    with pytest.raises(InputError, match="no config.json"):
        load_pretrained(tmp_path)
    config = json.loads((out / "config.json").read_text())
    (out / "config.json").write_text(
        json.dumps({**config, "channels": 5, "channel_names": list("abcde")})
    )
    with pytest.raises(InputError, match="patch_embed.weight: shape"):
        load_pretrained(out)
    (out / "config.json").write_text(json.dumps({**config, "size": {**config["size"], "depth": 3}}))
    with pytest.raises(InputError, match="blocks.2.* missing"):
        load_pretrained(out)
    (out / "config.json").write_text(json.dumps({**config, "format": "other"}))
    with pytest.raises(InputError, match="config.json: format"):
        load_pretrained(out)


def test_export_of_a_channel_agnostic_model(tmp_path):
    """CA-MAE (untrained weights, no run): one shared patch projection, any channels."""
    from safetensors.torch import save_file

    from scaling.config import ModelConfig, dump_config, load_config
    from scaling.model import load_pretrained
    from scaling.model.mae import MAE

    if not hasattr(ModelConfig(), "channel_agnostic"):
        pytest.skip("no channel-agnostic MAE in this tree")
    names = ["DNA", "ER", "RNA", "AGP", "Mito"]
    cfg = load_config(
        Path(__file__).parent.parent / "jobs/configs/smoke.yaml",
        ["model.channel_agnostic=true", f"model.channels=[{','.join(names)}]"],
    )
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    model = MAE.from_config(cfg).eval()
    save_file(dict(model.state_dict()), str(ckpt / "model.safetensors"))
    (ckpt / "config.yaml").write_text(dump_config(cfg))
    c = export(ckpt, tmp_path / "m")
    assert c["channel_agnostic"] is True and (c["channels"], c["channel_names"]) == (5, names)
    loaded = load_pretrained(tmp_path / "m")
    assert (
        loaded.channel_agnostic and "Not evaluated." in (tmp_path / "m" / "README.md").read_text()
    )
    for channels in (5, 3):  # the channels it was trained on, and others
        x = crops(channels)
        assert torch.equal(loaded.embed_blocks(x), model.embed_blocks(x))


def test_export_keeps_the_position_base(tmp_path):
    """A model trained with ``model.pos_base`` (the demo's 20) loads with the same positions:
    the same embeddings, which the reference base would change."""
    from safetensors.torch import save_file

    from scaling.config import dump_config, load_config
    from scaling.model import load_pretrained
    from scaling.model.mae import MAE

    smoke = Path(__file__).parent.parent / "jobs/configs/smoke.yaml"
    cfg = load_config(smoke, ["model.pos_base=20"])
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    torch.manual_seed(0)
    model = MAE.from_config(cfg).eval()
    save_file(dict(model.state_dict()), str(ckpt / "model.safetensors"))
    (ckpt / "config.yaml").write_text(dump_config(cfg))
    assert export(ckpt, tmp_path / "m")["pos_base"] == 20
    x = crops()
    assert torch.equal(load_pretrained(tmp_path / "m").embed_blocks(x), model.embed_blocks(x))
    reference = MAE.from_config(load_config(smoke))
    reference.load_state_dict(model.state_dict())
    assert not torch.allclose(reference.eval().embed_blocks(x), model.embed_blocks(x))
