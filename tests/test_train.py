"""Pretraining: optimizers and schedule against reference formulas, and a real 2-worker
DeepSpeed ZeRO-2 run on Ray Train over the tiny world."""

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from scaling.config import load_config
from scaling.model.flops import train_flops
from scaling.model.mae import MAE
from scaling.model.sizes import SIZES
from scaling.shards.format import CHANNELS
from scaling.stream.pipeline import validation_tiles
from scaling.train.optim import Lion
from scaling.train.schedules import one_cycle

ROOT = Path(__file__).parent.parent


def test_lion_matches_the_update_rule():
    torch.manual_seed(0)
    p = torch.nn.Parameter(torch.randn(5))
    opt = Lion([p], lr=0.1, betas=(0.9, 0.99), weight_decay=0.5)
    w, m = p.detach().numpy().astype(np.float64).copy(), np.zeros(5)
    for _ in range(4):
        g = torch.randn(5)
        p.grad = g.clone()
        opt.step()
        gn = g.numpy().astype(np.float64)
        w = w * (1 - 0.1 * 0.5) - 0.1 * np.sign(0.9 * m + 0.1 * gn)
        m = 0.99 * m + 0.01 * gn
    assert np.allclose(p.detach().numpy(), w, atol=1e-6)


def test_one_cycle_schedule():
    f = one_cycle(steps=100, warmup=0.1, min_ratio=0.1)
    assert f(0) == pytest.approx(0.1) and f(9) == pytest.approx(1.0)  # linear warm-up
    assert f(10) == pytest.approx(1.0) and f(55) == pytest.approx(0.55)  # cosine midpoint
    assert f(100) == pytest.approx(0.1) and f(200) == pytest.approx(0.1)
    values = [f(s) for s in range(10, 101)]
    assert all(a >= b for a, b in zip(values, values[1:], strict=False))


def test_bad_train_config_fails_before_ray(tmp_path):
    from scaling.errors import InputError
    from scaling.train.pretrain import pretrain

    with pytest.raises(InputError, match="train.zero_stage"):
        load_config(ROOT / "jobs/configs/smoke.yaml", ["train.zero_stage=4"])
    cfg = load_config(ROOT / "jobs/configs/smoke.yaml", ["data.crop=60", f"run.dir={tmp_path}"])
    with pytest.raises(InputError, match="data.crop"):
        pretrain(cfg)
    assert not (tmp_path / "ray").exists()


def test_the_shm_op_is_built_once_whichever_ninja_path_leads_to():
    """A process whose PATH leads to the machine's ninja and one whose PATH starts with the
    environment's folder (an activated venv, a ``ray job submit`` job) both find DeepSpeed's
    shm op built: neither rebuilds it (each did, 35-55 s, when each used its own ninja)."""
    import os
    import subprocess
    import sys
    import sysconfig

    from scaling.train.loop import extensions_dir

    scripts = sysconfig.get_path("scripts")
    others = [d for d in os.environ["PATH"].split(os.pathsep) if d and d != scripts]
    build = "from scaling.train.loop import build_cpu_ops; build_cpu_ops()"
    op = Path(extensions_dir()) / "deepspeed_shm_comm" / "deepspeed_shm_comm.so"
    stamps = []
    for path in (others, [scripts, *others]):
        env = {**os.environ, "PATH": os.pathsep.join(path)}
        env.pop("TORCH_EXTENSIONS_DIR", None)
        subprocess.run([sys.executable, "-c", build], env=env, check=True, capture_output=True)
        stamps.append(op.stat().st_mtime_ns)
    assert stamps[0] == stamps[1], "the second PATH's ninja rebuilt the shm op"


def test_two_worker_zero2_run_learns(tiny_world, smoke_run):
    steps, batch = 30, 16
    cfg, r, run_dir = smoke_run
    saved = json.loads((run_dir / "result.json").read_text())
    assert saved == r
    assert r["step"] == steps and r["restarts"] == 0
    assert r["crops_seen"] == steps * batch * 2  # two workers
    assert r["flops"] == r["crops_seen"] * train_flops(SIZES["cpu-xs"], 64)
    ckpt = Path(r["checkpoint"])
    assert {"state.json", "model.safetensors", "config.yaml"} <= {p.name for p in ckpt.iterdir()}
    # what evaluation rebuilds the model from: the run's config, with the data's channels
    recorded = replace(cfg, model=replace(cfg.model, channels=list(CHANNELS)))
    assert load_config(ckpt / "config.yaml") == recorded
    # in-training probes ran on the final step and report a block of the model
    assert 1 <= r["probe_best_block"] <= SIZES["cpu-xs"].depth
    assert 0.0 <= r["probe_perturbation"] <= 1.0 and 0.0 <= r["probe_pathway"] <= 1.0
    shards = sorted(p.name for p in (ckpt / "ds").glob("zero_pp_rank_*"))
    assert len(shards) == 2  # ZeRO-2: each rank saved its optimizer partition
    events = list((run_dir / "tensorboard").glob("events.out.tfevents.*"))
    assert len(events) == 1 and events[0].stat().st_size > 0  # rank 0's TensorBoard file
    assert json.loads((ckpt / "state.json").read_text())["step"] == steps
    # checkpoints were written on the (node-local) stage, and removed once Ray had copied them
    stage = Path(cfg.train.checkpoint_stage_dir)
    assert stage.is_dir() and not list(stage.iterdir())

    # the trained weights reconstruct the held-out tiles better than the initial ones
    from scaling.train.trainer import validation_loss

    class Engine(torch.nn.Module):  # validation_loss drives a module like the engine
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, x, generator=None):
            return self.m(x, generator=generator)

    tiles = torch.from_numpy(validation_tiles(tiny_world, cfg.data))
    torch.manual_seed(cfg.train.seed)
    before = validation_loss(Engine(MAE.from_config(cfg)), tiles, batch, cfg.train.seed)
    trained = MAE.from_config(cfg)
    trained.load_state_dict(load_file(str(ckpt / "model.safetensors")))
    after = validation_loss(Engine(trained), tiles, batch, cfg.train.seed)
    assert after == pytest.approx(r["loss"], rel=1e-4)  # the run's own final validation loss
    assert after < 0.95 * before


def test_smoke_run_tensorboard_has_every_report_and_serves_it_on_localhost(smoke_run):
    """TensorBoard's own reader finds every report of the run (the last one too) as
    ``train/<metric>`` at its step, with the values of ``metrics.jsonl``; and the
    ``tensorboard`` command the install provides serves them, on localhost only."""
    import re
    import subprocess
    import sys
    import threading
    import time
    import urllib.parse
    import urllib.request

    from scaling.train.trainer import NOT_SCALARS
    from tests.conftest import tb_scalars

    _, _, run_dir = smoke_run
    got = tb_scalars(run_dir / "tensorboard")
    log = (run_dir / "metrics.jsonl").read_text().splitlines()
    reports = {m["step"]: m for m in map(json.loads, log)}
    assert list(reports) == [5, 10, 15, 20, 25, 30]  # log_every 5, val/eval/checkpoint 15
    for key in ("loss", "lr", "crops_seen", "flops", "crops_per_s", "tokens_per_s"):
        assert [s for s, _ in got[f"train/{key}"]] == [5, 10, 15, 20, 25, 30], key
    for key in ("val_loss", "probe_best_block", "probe_best_val", "probe_perturbation"):
        assert [s for s, _ in got[f"train/{key}"]] == [15, 30], key
    numeric = {
        f"train/{k}"
        for m in reports.values()
        for k, v in m.items()
        if isinstance(v, int | float) and k not in NOT_SCALARS
    }
    assert set(got) == numeric  # every numeric metric, nothing else (no branch/ on this run)
    for tag, points in got.items():
        for step, value in points:
            assert value == pytest.approx(reports[step][tag.removeprefix("train/")], rel=1e-6)

    exe = Path(sys.executable).parent / "tensorboard"  # what `make setup` installs
    tb = subprocess.Popen(
        [str(exe), "--logdir", str(run_dir), "--port", "0"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    lines: list[str] = []
    threading.Thread(target=lambda: lines.extend(tb.stderr), daemon=True).start()
    try:
        deadline, url, steps = time.time() + 60, None, None
        while time.time() < deadline and steps is None and tb.poll() is None:
            time.sleep(0.25)
            found = (re.search(r"^TensorBoard \S+ at (\S+) ", ln) for ln in lines)
            url = url or next((m[1] for m in found if m), None)
            if url is None:
                continue
            query = urllib.parse.urlencode({"run": "tensorboard", "tag": "train/val_loss"})
            try:  # the data server loads the run a moment after the page is up
                with urllib.request.urlopen(f"{url}data/plugin/scalars/scalars?{query}") as f:
                    steps = [s for _, s, _ in json.load(f)] or None
            except OSError:
                continue
        assert steps == [15, 30], "".join(lines)
        assert url.startswith("http://localhost:")  # not --bind_all
        port = int(urllib.parse.urlsplit(url).port)
        listening = [  # /proc/net/tcp{,6}: local address:port, state 0A (LISTEN)
            row.split()[1].split(":")[0]
            for name in ("tcp", "tcp6")
            for row in Path(f"/proc/net/{name}").read_text().splitlines()[1:]
            if row.split()[3] == "0A" and int(row.split()[1].split(":")[1], 16) == port
        ]
        loopback = {"0100007F", "0000000000000000FFFF00000100007F", "0" * 24 + "01000000"}
        assert listening and set(listening) <= loopback, listening
    finally:
        tb.terminate()
        tb.wait(timeout=30)


def test_fault_drill_a_killed_worker_resumes_from_the_checkpoint(
    tiny_world, tmp_path, ray_session, monkeypatch
):
    """Kill one training worker once Ray Train has registered the first checkpoint: the group
    restarts, resumes from that checkpoint and finishes at the target step with nothing
    lost or repeated. The workers read the Ray Data stream (data.source=stream, one part a
    task), so the restarted group seeks to the checkpoint's task: no task before it is read
    a second time."""
    from scaling.shards.dataset import open_dataset
    from scaling.stream import plan as plan_module
    from scaling.stream.plan import site_index, stream_plan
    from scaling.train.pretrain import pretrain

    monkeypatch.setattr(plan_module, "TASK_BYTES", 1)  # several tasks an epoch

    steps, every = 40, 10
    cfg = load_config(
        ROOT / "jobs/configs/smoke.yaml",
        [
            f"data.path={tiny_world}",
            f"run.dir={tmp_path}",
            f"train.steps={steps}",
            f"train.checkpoint_every={every}",
            f"train.val_every={every}",
            "train.log_every=5",
            "data.source=stream",
        ],
    )

    def registered() -> bool:
        snapshot = tmp_path / "ray" / "checkpoint_manager_snapshot.json"
        return snapshot.is_file() and bool(json.loads(snapshot.read_text())["checkpoint_results"])

    r = run_killing_rank0(lambda: pretrain(cfg), registered, tmp_path)
    assert r["step"] == steps and r["restarts"] >= 1
    # the resumed run counts from the checkpoint: no step lost or counted twice
    assert r["crops_seen"] == steps * 16 * 2 and r["source"] == "stream"
    resumed = [json.loads(a)["resumed_step"] for a in (tmp_path / "attempts.jsonl").open()]
    ds = open_dataset(tiny_world)
    plan = stream_plan(ds, cfg.data, site_index(ds, cfg.data), epochs=1)
    first = min(plan.tasks_within(step * 16 * 2) for step in resumed[1:])
    assert resumed[1] >= every and first >= 1  # the seek skipped whole tasks
    assert all(t >= first for t in r["stream_rereads"])  # nothing before it was read again


GPU_PARAMS = {
    "gpu-s16": ("S/16", 22e6),
    "gpu-b8": ("B/8", 86e6),
    "gpu-l8": ("L/8", 304e6),
    "gpu-g8": ("G/8", 1.84e9),
}


@pytest.mark.parametrize("name", sorted(GPU_PARAMS))
def test_gpu_configs_are_valid_without_a_gpu(name):
    from scaling.train.engine import check_deepspeed_config, deepspeed_config

    cfg = load_config(ROOT / "jobs" / "configs" / f"{name}.yaml")
    size, params = GPU_PARAMS[name]
    assert cfg.model.name == size and cfg.train.use_gpu and cfg.train.precision == "bf16"
    assert cfg.train.zero_stage in (2, 3) and cfg.data.crop == 256
    check_deepspeed_config(cfg)  # DeepSpeed parses it
    ds = deepspeed_config(cfg, world=cfg.train.workers)
    assert ds["train_batch_size"] == cfg.data.batch_size * cfg.train.workers
    # the precision policy: float32 master weights, autocast bf16 (not DeepSpeed's module cast)
    assert ds["torch_autocast"] == {"enabled": True, "dtype": "bfloat16"}
    assert not ds["bf16"]["enabled"] and ds["zero_optimization"]["stage"] == cfg.train.zero_stage
    with torch.device("meta"):
        model = MAE.from_config(cfg)
    enc = model.param_counts()["encoder"]
    assert abs(enc - params) / params < 0.03
    assert model.grad_checkpoint == (size == "G/8")  # only G/8 needs to recompute (plan)


def test_activation_checkpointing_gives_the_same_gradients():
    from scaling.model.mae import MAE

    imgs = torch.randint(0, 255, (2, 6, 64, 64), dtype=torch.uint8)
    grads = []
    for ckpt in (False, True):
        torch.manual_seed(0)
        m = MAE(SIZES["cpu-s"], grad_checkpoint=ckpt)
        loss, _, _ = m(imgs, generator=torch.Generator().manual_seed(1))
        loss.backward()
        grads.append(torch.cat([p.grad.flatten() for p in m.parameters()]))
    assert torch.allclose(grads[0], grads[1], atol=1e-6)


def test_resume_continues_step_schedule_and_data_position(tiny_world, tmp_path, ray_session):
    """Resume a 20-step run from its step-10 checkpoint: it trains the remaining 10 steps
    (not 20), the schedule ends where the straight run's ends, the stream restarts near the
    consumed position, and the result matches the straight run within noise."""
    from scaling.train.pretrain import pretrain

    sets = [
        f"data.path={tiny_world}",
        "train.steps=20",
        "train.checkpoint_every=10",
        "train.val_every=10",
        "train.log_every=7",  # cadences with no common multiple below 20
    ]
    straight = pretrain(
        load_config(ROOT / "jobs/configs/smoke.yaml", sets + [f"run.dir={tmp_path / 'a'}"])
    )
    snapshot = json.loads((tmp_path / "a" / "ray" / "checkpoint_manager_snapshot.json").read_text())
    at10 = [
        c["checkpoint_dir_name"]
        for c in snapshot["checkpoint_results"]
        if c["metrics"]["step"] == 10
    ]
    assert at10
    resumed = pretrain(
        load_config(ROOT / "jobs/configs/smoke.yaml", sets + [f"run.dir={tmp_path / 'b'}"]),
        resume=str(tmp_path / "a" / "ray" / at10[0]),
    )
    assert resumed["step"] == 20 and resumed["crops_seen"] == straight["crops_seen"]
    assert resumed["lr"] == pytest.approx(straight["lr"], abs=1e-12)  # schedule position
    assert resumed["loss"] == pytest.approx(straight["loss"], rel=0.05)


def test_record_attempt_counts_every_start_and_the_steps_repeated(tmp_path):
    """Three starts of one run: the first from scratch; the second resumed at step 10 after
    the first had logged step 15; the third resumed at 0 (no checkpoint registered) after
    the second had logged 25. Restarts 2, repeated steps 5 + 25 (a brute-force count)."""
    from scaling.train.checkpoint import record_attempt

    log = tmp_path / "metrics.jsonl"
    assert record_attempt(tmp_path, 0) == {"restarts": 0, "repeated_steps": 0}
    rows = [{"branch": None, "step": s} for s in (5, 10, 15)] + [{"branch": 20, "step": 30}]
    log.write_text("".join(json.dumps(r) + "\n" for r in rows))  # a branch row is not the trunk
    assert record_attempt(tmp_path, 10) == {"restarts": 1, "repeated_steps": 5}
    with open(log, "a") as f:
        f.write("".join(json.dumps({"branch": None, "step": s}) + "\n" for s in (20, 25)))
    assert record_attempt(tmp_path, 0) == {"restarts": 2, "repeated_steps": 5 + 25}


def _kill_rank0_when(found, run_dir: Path, killed: list, timeout: float = 300) -> None:
    """Once ``found()``, SIGKILL the process rank 0 of the run's latest attempt runs in (its
    ``attempts.jsonl`` line names it)."""
    import os
    import signal
    import time

    deadline = time.time() + timeout
    while time.time() < deadline and not killed:
        if found():
            lines = (run_dir / "attempts.jsonl").read_text().splitlines()
            pid = json.loads(lines[-1])["pid"]
            os.kill(pid, signal.SIGKILL)
            killed.append(pid)
            return
        time.sleep(0.2)


def run_killing_rank0(run, found, run_dir: Path):
    """``run()`` while a watcher SIGKILLs rank 0's process once ``found()``
    (``_kill_rank0_when``); returns what ``run()`` returned, after checking a kill happened."""
    import threading

    killed = []
    watcher = threading.Thread(target=_kill_rank0_when, args=(found, run_dir, killed), daemon=True)
    watcher.start()
    out = run()
    watcher.join(timeout=1)
    assert killed, "no training process was found to kill"
    return out


def test_fault_drill_a_worker_killed_before_any_checkpoint_is_counted(
    tiny_world, tmp_path, ray_session
):
    """No checkpoint until the end: a worker killed once rank 0 has logged step 10 makes the
    group start again at step 0. The run still finishes, and its result counts the restart
    and at least the 10 steps it trained twice (it used to report restarts 0)."""

    from scaling.train.pretrain import pretrain

    steps = 30
    cfg = load_config(
        ROOT / "jobs/configs/smoke.yaml",
        [
            f"data.path={tiny_world}",
            f"run.dir={tmp_path}",
            f"train.steps={steps}",
            f"train.checkpoint_every={steps}",
            f"train.val_every={steps}",
            "train.log_every=5",
        ],
    )

    def logged_step_10() -> bool:
        log = tmp_path / "metrics.jsonl"
        rows = log.read_text().splitlines() if log.is_file() else []
        return any(json.loads(r)["step"] >= 10 for r in rows)

    r = run_killing_rank0(lambda: pretrain(cfg), logged_step_10, tmp_path)
    assert r["step"] == steps and r["restarts"] >= 1 and r["repeated_steps"] >= 10
    attempts = (tmp_path / "attempts.jsonl").read_text().splitlines()
    assert len(attempts) == r["restarts"] + 1
    assert json.loads(attempts[1])["resumed_step"] == 0  # nothing was registered to resume


def test_checkpoints_by_minutes(tiny_world, tmp_path):
    """``train.checkpoint_minutes``: with a tiny interval every report saves, between the
    step cadence's checkpoints; the run resumes from the newest like any other."""
    from scaling.train.pretrain import pretrain

    steps = 20
    cfg = load_config(
        ROOT / "jobs/configs/smoke.yaml",
        [
            f"data.path={tiny_world}",
            f"run.dir={tmp_path}",
            "train.workers=0",
            f"train.steps={steps}",
            f"train.checkpoint_every={steps}",
            "train.checkpoint_minutes=1e-6",
            "train.keep_checkpoints=10",
            "train.log_every=5",
            f"train.val_every={steps}",
        ],
    )
    r = pretrain(cfg)
    saved = sorted(p.name for p in (tmp_path / "checkpoints").glob("step_*"))
    assert saved == [f"step_{s:06d}" for s in (5, 10, 15, 20)] and r["restarts"] == 0
    with pytest.raises(Exception, match="checkpoint_minutes"):
        load_config(ROOT / "jobs/configs/smoke.yaml", ["train.checkpoint_minutes=-1"])
