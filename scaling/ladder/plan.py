"""The ladder's plan: one run configuration per size x curation x budget, made and checked
before any data is read or Ray is asked for anything.

A budget is training FLOPs or crops seen (``ladder.budget_unit``). A run's steps are the
budget over one step's cost (``scaling.model.flops.train_flops`` of the size at the crop,
times the global batch), rounded to the nearest step; the compute a run reports is what it
actually spent, counted by the training loop. Each run's learning rate comes from
``ladder.lr``, a sweep's ``best.yaml`` (``ladder.best``), or ``ladder.lr_rule``.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import yaml

from scaling.config import Config, apply, to_dict
from scaling.errors import InputError
from scaling.model.flops import train_flops
from scaling.model.sizes import SIZES

BEST_KEYS = ("train.lr", "train.weight_decay", "train.warmup", "model.mask_ratio")


@dataclass(frozen=True)
class RunPlan:
    run_id: str
    size: str
    curation: str
    budget: float
    cfg: dict  # the run's whole configuration (a ``to_dict``), data.path and run.dir set
    trunk: str | None = None  # share_budgets: the run this one branches off (None: itself)

    @property
    def fingerprint(self) -> str:
        """What makes a finished run reusable: its configuration, byte for byte."""
        return hashlib.sha256(json.dumps(self.cfg, sort_keys=True).encode()).hexdigest()[:16]


def run_id(size: str, curation: str, budget: float, unit: str) -> str:
    """``cpu-m_random_f2e+12``: readable, unique in a ladder, safe as a folder name."""
    tag = f"{'f' if unit == 'flops' else 'c'}{budget:.3g}".replace("+", "")
    return f"{size.replace('/', '')}_{curation}_{tag}"


def step_cost(cfg: Config, size: str) -> float:
    """FLOPs (or crops) of one optimizer step of ``size`` under ``cfg``."""
    t = cfg.train
    crops = cfg.data.batch_size * t.processes * t.grad_accum
    if cfg.ladder.budget_unit == "crops":
        return float(crops)
    return float(train_flops(SIZES[size], cfg.data.crop, mask_ratio=cfg.model.mask_ratio)) * crops


def size_values(cfg: Config, size: str) -> dict:
    """The dotted keys that differ per size: the name, the batch size (``ladder.batch_size``)
    and the learning rate (and the other tuned keys of a sweep's best.yaml)."""
    ld = cfg.ladder
    values: dict = {"model.name": size}
    if size in ld.batch_size:
        values["data.batch_size"] = ld.batch_size[size]
    if size in ld.best:
        best = yaml.safe_load(Path(ld.best[size]).read_text()) or {}
        for key in BEST_KEYS:
            section, leaf = key.split(".")
            if leaf in (best.get(section) or {}):
                values[key] = best[section][leaf]
    if size in ld.lr:
        values["train.lr"] = float(ld.lr[size])
    elif "train.lr" not in values and ld.lr_rule == "inverse-width":
        values["train.lr"] = cfg.train.lr * ld.lr_ref_width / SIZES[size].width
    return values


def plan_runs(cfg: Config, ladder_dir: Path, curations: dict[str, str]) -> list[RunPlan]:
    """Every run of the grid, smallest compute first. ``curations`` maps a curation's name
    to its data folder. Raises InputError for a budget below ``ladder.min_steps`` steps.

    With ``ladder.share_budgets`` every run is a WSD run; the largest budget of a size and
    curation is the trunk, trained with ``train.branches`` at the others' steps, and each
    smaller budget names it as ``trunk`` (its own configuration is the WSD run it equals)."""
    ld = cfg.ladder
    base = to_dict(cfg)
    base["ladder"] = to_dict(Config().ladder)  # a run is not a ladder
    base["sweep"] = to_dict(Config().sweep)
    plans = []
    for size in ld.sizes:
        values = size_values(cfg, size)
        sized = apply(base, values, f"ladder ({size})")
        cost = step_cost(sized, size)
        steps_of = {b: round(b / cost) for b in ld.budgets}
        for budget, steps in steps_of.items():
            if steps < ld.min_steps:
                raise InputError(
                    f"ladder.budgets: {budget:g} {ld.budget_unit} is {budget / cost:.1f} steps "
                    f"of {size}, below ladder.min_steps ({ld.min_steps})"
                )
        if ld.share_budgets and len(set(steps_of.values())) < len(steps_of):
            raise InputError(f"ladder.budgets: two budgets give {size} the same number of steps")
        top = max(ld.budgets)
        for budget, steps in steps_of.items():
            for name, path in curations.items():
                rid = run_id(size, name, budget, ld.budget_unit)
                shared = {}
                if ld.share_budgets:
                    shared = {"train.schedule": "wsd", "train.branches": []}
                    if budget == top:
                        shared["train.branches"] = sorted(s for s in steps_of.values() if s < steps)
                run = apply(
                    base,
                    {
                        **values,
                        **shared,
                        "train.steps": steps,
                        # mid-run checkpoints at the base cadence: a fault costs at most that
                        "train.checkpoint_every": min(steps, cfg.train.checkpoint_every),
                        "train.keep_checkpoints": 1,
                        "train.val_every": min(cfg.train.val_every, steps),
                        "data.path": str(path),
                        "run.dir": str(ladder_dir / "runs" / rid),
                    },
                    f"ladder ({rid})",
                )
                trunk = run_id(size, name, top, ld.budget_unit) if ld.share_budgets else None
                plans.append(RunPlan(rid, size, name, float(budget), to_dict(run), trunk))
    return sorted(plans, key=lambda p: (p.budget, SIZES[p.size].width, p.curation))
