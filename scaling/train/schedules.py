"""Learning-rate schedules: one-cycle (warm-up + cosine) and warm-up/stable/decay (WSD),
whose constant phase lets runs of several budgets share a trunk."""

from __future__ import annotations

import math

from scaling.config import TrainConfig


def one_cycle(steps: int, warmup: float, min_ratio: float = 0.0):
    """Multiplier of the peak learning rate at optimizer step ``s`` (0-based): linear
    warm-up over ``warmup * steps`` steps, then cosine decay to ``min_ratio``."""
    warm = max(1, int(warmup * steps))

    def factor(s: int) -> float:
        if s < warm:
            return (s + 1) / warm
        progress = min(1.0, (s - warm) / max(1, steps - warm))
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return factor


def wsd(warmup_steps: int, cooldown: float, min_ratio: float = 0.0):
    """Multiplier of the peak learning rate at step ``s`` of a run that ends at step ``end``:
    linear warm-up over ``warmup_steps``, constant, then a linear decay over the last
    ``cooldown * end`` steps (at least 1) towards ``min_ratio`` (Hägele et al., 2024, "Scaling
    Laws and Compute-Optimal Training Beyond Fixed Training Durations"). Up to the decay,
    the schedule does not depend on ``end``: a run can branch off into a shorter one."""
    warm = max(1, warmup_steps)

    def factor(s: int, end: int) -> float:
        decay = max(1, round(cooldown * end))
        start = end - decay
        if s >= start:
            return min_ratio + (1 - min_ratio) * max(0, end - s) / decay
        return (s + 1) / warm if s < warm else 1.0

    return factor


def branch_start(end: int, cooldown: float) -> int:
    """The step at which a WSD run ending at ``end`` starts to decay."""
    return end - max(1, round(cooldown * end))


class Schedule:
    """The multiplier of the peak learning rate at step ``s`` for a run's configuration. A WSD
    run decays towards ``end``: its own last step, or a branch's while one is being trained.
    Plain data only: DeepSpeed checkpoints it with the LR scheduler's state."""

    def __init__(self, t: TrainConfig):
        self.kind, self.steps, self.end = t.schedule, t.steps, t.steps
        self.warmup, self.cooldown, self.min_ratio = t.warmup, t.cooldown, t.min_lr_ratio
        self.warmup_steps = round(t.warmup * min([*t.branches, t.steps]))  # wsd: first branch's

    def __call__(self, s: int) -> float:
        if self.kind == "wsd":
            return wsd(self.warmup_steps, self.cooldown, self.min_ratio)(s, self.end)
        return one_cycle(self.steps, self.warmup, self.min_ratio)(s)
