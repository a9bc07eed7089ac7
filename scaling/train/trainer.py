"""One training process's run: ``step``, ``validate``, ``save``, WSD branches, ``fit``.

Per optimizer step the trainer counts crops and FLOPs (global, all workers). At the
reporting cadence (``train.log_every``, ``val_every``, ``checkpoint_every``, ``eval_every``)
it reports the mean training loss since the last report (the only host synchronisation),
learning rate, crops/s, tokens/s, MFU on GPU, the validation loss on the fixed held-out
tiles with fixed masks, and with ``train.eval_every`` the best block's probe scores. Every
``checkpoint_every`` steps all ranks save a checkpoint and report it to Ray Train. Rank 0
appends every report to ``run.dir/metrics.jsonl``.

Masks are drawn from a generator seeded by (seed, rank, micro-batch): ranks differ, and a
resumed run draws what the straight run drew.

WSD branches: at a branch's decay start the trunk is saved, the branch decays to its end,
its weights and accounting go to ``branches/step_NNNNNN``, and the trunk is restored
(model, optimizer, schedule, accounting) to go on at a constant rate.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

from scaling.config import Config, dump_config
from scaling.model.flops import train_flops
from scaling.model.precision import autocast
from scaling.model.sizes import SIZES
from scaling.train import checkpoint as ckpt
from scaling.train.schedules import branch_start

NOT_SCALARS = ("step", "restarts", "first_step_at", "last_step_at")  # not for TensorBoard
Batches = Callable[[int], torch.Tensor]  # crop position of this micro-batch -> (B, C, h, w)


@torch.no_grad()
def validation_loss(engine, tiles: torch.Tensor, batch: int, seed: int, precision="fp32") -> float:
    """Mean reconstruction loss on the fixed tiles, with fixed masks (comparable over time)."""
    engine.eval()
    g = torch.Generator(device=tiles.device).manual_seed(seed)
    total = torch.zeros((), device=tiles.device)
    for i in range(0, len(tiles), batch):
        x = tiles[i : i + batch]
        with autocast(precision, tiles.device):
            loss, _, _ = engine(x, generator=g)
        total += loss.detach().float() * len(x)
    engine.train()
    return float(total) / len(tiles)


class Trainer:
    def __init__(self, cfg: Config, engine, schedule, lr, device, rank: int, world: int, io: dict):
        self.cfg, self.t = cfg, cfg.train
        self.engine, self.schedule, self.lr = engine, schedule, lr
        self.device, self.rank, self.world = device, rank, world
        self.run_dir = Path(io.get("run_dir") or cfg.run.dir)
        self.branch_root = Path(io.get("branch_dir") or self.run_dir / "branches")
        self.config_dict = io["cfg"]
        self.val = torch.from_numpy(io["val_tiles"]).to(device)
        self.probes = io.get("probe_set")
        self.state = {
            "step": 0,
            "crops_seen": 0,
            "flops": 0,
            "restarts": 0,
            "repeated_steps": 0,
            "branches_done": [],
        }
        size, crop, channels = SIZES[cfg.model.name], cfg.data.crop, len(cfg.model.channels) or 6
        agnostic = cfg.model.channel_agnostic
        self.flops_per_crop = train_flops(
            size, crop, channels, mask_ratio=cfg.model.mask_ratio, channel_agnostic=agnostic
        )
        # tokens a crop gives: a channel-agnostic model tokenises each channel apart
        self.patches = (crop // size.patch) ** 2 * (channels if agnostic else 1)
        self.masks = torch.Generator(device=device)
        self.loss_sum, self.loss_n = torch.zeros((), device=device), 0
        self.window = (time.perf_counter(), 0)
        self.branch, self.trunk, self.branches = None, None, []
        self.first_step_at = self.stepped_at = 0.0  # wall clock (time.time) of optimizer steps
        self.saved_at = time.perf_counter()  # the last checkpoint (or the start)
        self.tb = None  # TensorBoard: `tensorboard --logdir run.dir` (a ladder: all its runs)
        if rank == 0 and self.t.tensorboard:
            from tensorboardX import SummaryWriter

            # flush() does not wait for the writer's queue: its thread writes within 10 s
            # and close() at the end of the run writes the last report
            self.tb = SummaryWriter(str(self.run_dir / "tensorboard"), flush_secs=10)

    # --- state -----------------------------------------------------------------------------
    def restore(self, folder) -> None:
        """Weights, optimizer, schedule and accounting from a checkpoint folder."""
        self.engine.load_checkpoint(str(folder), tag=ckpt.TAG)
        self.state = ckpt.read_state(folder)

    def start_attempt(self) -> None:
        """Count this start of the run (rank 0): ``restarts`` and ``repeated_steps`` in the
        accounting come from ``run.dir/attempts.jsonl`` (``checkpoint.record_attempt``), so a
        restart before any checkpoint was registered is counted too."""
        self.saved_at = time.perf_counter()
        if self.rank == 0:
            self.state.update(ckpt.record_attempt(self.run_dir, self.state["step"]))

    def plan_branches(self) -> None:
        done, cool = set(self.state["branches_done"]), self.t.cooldown
        pending = sorted(set(self.t.branches) - done)
        self.branches = [b for b in pending if branch_start(b, cool) >= self.state["step"]]
        self.window = (time.perf_counter(), self.state["crops_seen"])

    # --- one step --------------------------------------------------------------------------
    def step(self, batches: Batches) -> None:
        """One optimizer step: ``grad_accum`` micro-batches, forward, backward, update."""
        t, s = self.t, self.state
        for micro in range(t.grad_accum):
            position = s["crops_seen"] + (micro * self.world + self.rank) * self.cfg.data.batch_size
            x = batches(position)
            index = (s["step"] * t.grad_accum + micro) * self.world + self.rank
            self.masks.manual_seed(t.seed * 1_000_003 + index)
            with autocast(t.precision, self.device):
                loss, _, _ = self.engine(x, generator=self.masks)
            self.engine.backward(loss)
            self.engine.step()
            self.loss_sum += loss.detach().float()
            self.loss_n += 1
        n = len(x) * t.grad_accum * self.world
        self.stepped_at = time.time()
        self.first_step_at = self.first_step_at or self.stepped_at
        s["step"] += 1
        s["crops_seen"] += n
        s["flops"] += self.flops_per_crop * n

    def take_loss(self) -> float:
        """The mean training loss since the last call (NaN if no step), read from the device
        once, and a fresh window."""
        loss = float(self.loss_sum) / self.loss_n if self.loss_n else float("nan")
        self.loss_sum.zero_()
        self.loss_n = 0
        return loss

    def validate(self) -> float:
        return validation_loss(
            self.engine, self.val, self.cfg.data.batch_size, self.t.seed, self.t.precision
        )

    # --- reporting and saving ----------------------------------------------------------------
    def metrics(self, final: bool) -> dict:
        t, s = self.t, self.state
        now = time.perf_counter()
        crops_per_s = (s["crops_seen"] - self.window[1]) / max(now - self.window[0], 1e-9)
        self.window = (now, s["crops_seen"])
        loss = self.take_loss()
        m = {
            **s,
            "loss": loss,
            "lr": self.lr.get_last_lr()[0],
            "crops_per_s": crops_per_s,
            "tokens_per_s": crops_per_s * self.patches,
            "first_step_at": self.first_step_at,
            "last_step_at": self.stepped_at,
        }
        if t.use_gpu:
            m["mfu"] = crops_per_s * self.flops_per_crop / (t.peak_tflops * 1e12 * self.world)
        if final or s["step"] % t.val_every == 0:
            m["val_loss"] = self.validate()
        if self.probes and (final or s["step"] % t.eval_every == 0):
            m.update(self.probe())
        return m

    def probe(self) -> dict:
        from scaling.evaluate.during import embed_set, probe_metrics

        batch = self.cfg.data.batch_size
        emb = embed_set(self.engine.module, self.probes, batch, self.device, self.t.precision)
        return probe_metrics(emb, self.probes) if self.rank == 0 else {}  # all ranks embed

    def report(self, final: bool = False) -> None:
        import ray.train

        m = self.metrics(final)
        if self.rank == 0:  # every report, one JSON line: the run's own log
            with open(self.run_dir / "metrics.jsonl", "a") as f:
                f.write(json.dumps({"branch": self.branch, **m}) + "\n")
        if self.tb is not None:
            for key, value in m.items():
                if isinstance(value, int | float) and key not in NOT_SCALARS:
                    self.tb.add_scalar(
                        f"{'branch' if self.branch else 'train'}/{key}", value, m["step"]
                    )
            self.tb.flush()
        if final or self.checkpoint_due(m["step"]):
            self.save(m)
        else:
            ray.train.report(m)

    def checkpoint_due(self, step: int) -> bool:
        """On the trunk, every ``checkpoint_every`` steps, and (``checkpoint_minutes``) at a
        report once that long has passed since the last save, by rank 0's clock."""
        t = self.t
        if self.branch is not None:
            return False
        if step % t.checkpoint_every == 0:
            return True
        late = time.perf_counter() - self.saved_at >= 60 * t.checkpoint_minutes
        return bool(t.checkpoint_minutes) and ckpt.agree(late, self.device)

    def save(self, metrics: dict) -> None:
        """A checkpoint of every rank, written under ``train.checkpoint_stage_dir`` and
        reported to Ray Train, which copies it to its storage; in local mode it stays in
        ``run.dir/checkpoints`` (the newest ``keep_checkpoints``)."""
        import ray.train

        local = self.t.workers == 0
        root = self.run_dir / "checkpoints"
        if local:
            root.mkdir(parents=True, exist_ok=True)
        stage = root if local else self.t.checkpoint_stage_dir
        if stage is not None:
            Path(stage).mkdir(parents=True, exist_ok=True)
        d = tempfile.mkdtemp(prefix=".ckpt-", dir=stage)
        self.engine.save_checkpoint(d, tag=ckpt.TAG)
        weights = ckpt.full_weights(self.engine, self.t.zero_stage, self.rank)
        if self.rank == 0:
            ckpt.write_model(Path(d), weights, dump_config(self.cfg), self.state)
        if local:
            d = str(Path(d).rename(root / f"step_{self.state['step']:06d}"))
            ckpt.keep_newest(root, self.t.keep_checkpoints)
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(d))
        self.saved_at = time.perf_counter()
        if not local:  # Ray Train has copied it to its storage
            shutil.rmtree(d, ignore_errors=True)

    # --- WSD branches ----------------------------------------------------------------------
    def start_branch(self, end: int) -> None:
        self.engine.save_checkpoint(str(self.branch_root / ".trunk"), tag=ckpt.TAG)
        self.branch, self.trunk, self.schedule.end = end, dict(self.state), end

    def finish_branch(self) -> None:
        from scaling.config import _build

        val_loss = self.validate()
        weights = ckpt.full_weights(self.engine, self.t.zero_stage, self.rank)
        loss = self.take_loss()
        if self.rank == 0:
            own = _build(Config, self.config_dict, "", "train_loop_config")
            own.train.steps, own.train.branches = self.branch, []
            info = {**self.state, "val_loss": val_loss, "loss": loss, "trunk_steps": self.t.steps}
            ckpt.write_model(
                self.branch_root / f"step_{self.branch:06d}", weights, dump_config(own), info
            )
        ckpt.barrier()
        self.engine.load_checkpoint(str(self.branch_root / ".trunk"), tag=ckpt.TAG)
        done = [*self.trunk["branches_done"], self.branch]
        self.state = {**self.trunk, "branches_done": done}
        self.branch, self.trunk, self.schedule.end = None, None, self.t.steps
        self.window = (time.perf_counter(), self.state["crops_seen"])
        self.take_loss()  # the branch's steps do not count in the trunk's next report

    def maybe_start_branch(self) -> None:
        b = self.branches[0] if self.branches and self.branch is None else None
        if b is not None and self.state["step"] == branch_start(b, self.t.cooldown):
            self.start_branch(self.branches.pop(0))

    # --- the run ---------------------------------------------------------------------------
    def fit(self, batches: Batches) -> None:
        """Train to ``train.steps``, reporting at the cadence and branching off on the way."""
        t = self.t
        cadence = (t.log_every, t.checkpoint_every, t.val_every, t.eval_every or t.steps)
        self.plan_branches()
        self.maybe_start_branch()
        while self.state["step"] < t.steps:
            self.step(batches)
            s = self.state["step"]
            if self.branch is not None and s == self.branch:
                self.finish_branch()
                self.maybe_start_branch()
                continue
            final = s >= t.steps
            if final or any(s % k == 0 for k in cadence):
                self.report(final)
            self.maybe_start_branch()
        if self.tb is not None:
            self.tb.close()
