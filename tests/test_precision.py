"""bf16, the precision of every GPU config, on CPU: the policy (scaling.model.precision),
a local-mode run against float32, and every GPU config's precision path with two DeepSpeed
workers (ZeRO-2 and ZeRO-3): the loss falls, a resumed run ends where the straight one
does, the saved weights are the float32 master weights, and evaluation reads the run."""

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from scaling.config import load_config
from scaling.model.mae import MAE
from scaling.model.precision import autocast
from scaling.model.sizes import SIZES
from scaling.stream.pipeline import validation_tiles
from scaling.train.trainer import validation_loss

ROOT = Path(__file__).parent.parent
SMOKE = ROOT / "jobs/configs/smoke.yaml"


def gpu_paths() -> dict[tuple, list[str]]:
    """What every GPU config runs, as far as precision goes: (precision, ZeRO stage,
    optimizer, activation checkpointing, schedule) -> the configs that run it."""
    paths: dict[tuple, list[str]] = {}
    for f in sorted((ROOT / "jobs/configs").glob("*.yaml")):
        c = load_config(f)
        if c.train.use_gpu:
            t = c.train
            key = (t.precision, t.zero_stage, t.optimizer, c.model.grad_checkpoint, t.schedule)
            paths.setdefault(key, []).append(f.name)
    return paths


def initial_loss(cfg, data) -> float:
    tiles = torch.from_numpy(validation_tiles(data, cfg.data))
    torch.manual_seed(cfg.train.seed)
    model = MAE.from_config(cfg)
    return validation_loss(model, tiles, cfg.data.batch_size, cfg.train.seed, cfg.train.precision)


def test_bf16_policy_runs_matmuls_in_bf16_and_keeps_loss_and_weights_in_float32():
    torch.manual_seed(0)
    model = MAE(SIZES["cpu-s"], mask_ratio=0.5)
    x = torch.randint(0, 255, (4, 6, 64, 64), dtype=torch.uint8)
    seen = {}
    model.blocks[0].mlp[0].register_forward_hook(lambda m, i, o: seen.update(fc=o.dtype))
    losses = {}
    for precision in ("fp32", "bf16"):
        with autocast(precision):
            loss, pred, _ = model(x, generator=torch.Generator().manual_seed(1))
        losses[precision] = loss
        assert seen.pop("fc") == (torch.bfloat16 if precision == "bf16" else torch.float32)
    assert losses["bf16"].dtype == torch.float32  # the loss leaves autocast
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert losses["bf16"].item() != losses["fp32"].item()  # bf16 really computed something
    assert losses["bf16"].item() == pytest.approx(losses["fp32"].item(), rel=0.02)
    losses["bf16"].backward()
    assert all(p.grad.dtype == torch.float32 for p in model.parameters() if p.grad is not None)


def test_bf16_local_mode_learns_resumes_exactly_and_evaluates(tiny_world, tmp_path, ray_session):
    from scaling.evaluate.evaluate import evaluate
    from scaling.train.pretrain import pretrain

    sets = [
        f"data.path={tiny_world}",
        "train.workers=0",
        "train.cpus_per_worker=1",
        "train.steps=24",
        "train.lr=0.004",
        "train.checkpoint_every=12",
        "train.val_every=12",
        "train.log_every=6",
    ]
    runs = {}
    for precision in ("fp32", "bf16"):
        cfg = load_config(
            SMOKE, sets + [f"train.precision={precision}", f"run.dir={tmp_path / precision}"]
        )
        runs[precision] = pretrain(cfg)
    bf16, fp32 = runs["bf16"], runs["fp32"]
    assert bf16["source"] == "memory" and bf16["step"] == 24
    assert bf16["loss"] < 0.95 * initial_loss(cfg, tiny_world)  # it learns
    assert abs(bf16["loss"] - fp32["loss"]) < 0.02  # and as float32 does, at equal steps

    # the checkpoint holds the float32 master weights, not bf16-rounded ones
    weights = load_file(str(Path(bf16["checkpoint"]) / "model.safetensors"))
    w = weights["blocks.0.mlp.0.weight"]
    assert w.dtype == torch.float32 and not torch.equal(w, w.bfloat16().float())

    # resumed from its step-12 checkpoint, the run ends exactly where the straight one did
    again = pretrain(
        load_config(SMOKE, sets + ["train.precision=bf16", f"run.dir={tmp_path / 'resumed'}"]),
        resume=str(tmp_path / "bf16" / "checkpoints" / "step_000012"),
    )
    assert again["crops_seen"] == bf16["crops_seen"] and again["lr"] == bf16["lr"]
    assert again["loss"] == pytest.approx(bf16["loss"], rel=1e-5)

    # scaling evaluate reads the bf16 run (and embeds in bf16, its own precision)
    summary = evaluate(
        tmp_path / "bf16", tiny_world, tmp_path / "eval", baselines=False, progress=False
    )
    assert summary["mae"]["blocks"] == SIZES["cpu-xs"].depth
    assert 0.0 <= summary["mae"]["recall_complex"] <= 1.0


@pytest.mark.parametrize("path", sorted(gpu_paths()), ids=lambda p: "-".join(map(str, p)))
def test_every_gpu_precision_path_runs_on_two_cpu_workers(path, tiny_world, tmp_path, ray_session):
    """Each GPU config's precision path, shrunk to cpu-xs on the tiny world: two DeepSpeed
    workers learn, save whole float32 weights, and resume from Ray's checkpoint."""
    from scaling.train.pretrain import pretrain

    precision, zero, optimizer, grad_checkpoint, schedule = path
    sets = [
        f"data.path={tiny_world}",
        f"train.precision={precision}",
        f"train.zero_stage={zero}",
        f"train.optimizer={optimizer}",
        f"model.grad_checkpoint={str(grad_checkpoint).lower()}",
        f"train.schedule={schedule}",
        f"train.lr={0.001 if optimizer == 'lion' else 0.004}",
        "train.steps=16",
        "train.checkpoint_every=8",
        "train.val_every=8",
        "train.log_every=4",
    ]
    if schedule == "wsd":
        sets.append("train.branches=[8]")
    cfg = load_config(SMOKE, sets + [f"run.dir={tmp_path / 'a'}"])
    r = pretrain(cfg)
    assert r["step"] == 16 and r["crops_seen"] == 16 * 16 * 2
    assert r["loss"] < 0.95 * initial_loss(cfg, tiny_world)
    weights = load_file(str(Path(r["checkpoint"]) / "model.safetensors"))
    MAE(SIZES["cpu-xs"]).load_state_dict(weights)  # whole shapes, ZeRO-3 gathered
    assert all(w.dtype == torch.float32 for w in weights.values())

    snapshot = json.loads((tmp_path / "a" / "ray" / "checkpoint_manager_snapshot.json").read_text())
    at8 = [
        c["checkpoint_dir_name"]
        for c in snapshot["checkpoint_results"]
        if c["metrics"]["step"] == 8
    ]
    again = pretrain(
        load_config(SMOKE, sets + [f"run.dir={tmp_path / 'b'}"]),
        resume=str(tmp_path / "a" / "ray" / at8[0]),
    )
    assert again["step"] == 16 and again["crops_seen"] == r["crops_seen"]
    assert again["loss"] == pytest.approx(r["loss"], rel=1e-3)
