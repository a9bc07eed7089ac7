"""Optimizers and the learning-rate schedules: AdamW, Lion; one-cycle (warm-up + cosine) and
warm-up/stable/decay (WSD), whose constant phase lets runs of several budgets share a trunk."""

from __future__ import annotations

import math

import torch


class Lion(torch.optim.Optimizer):
    """Lion (Chen et al., 2023): ``p -= lr * (sign(b1 m + (1 - b1) g) + wd p)``, then
    ``m = b2 m + (1 - b2) g``. One momentum buffer per parameter."""

    def __init__(self, params, lr: float = 1e-4, betas=(0.9, 0.99), weight_decay: float = 0.0):
        super().__init__(params, dict(lr=lr, betas=tuple(betas), weight_decay=weight_decay))

    @torch.no_grad()
    def step(self, closure=None):
        loss = None if closure is None else closure()
        for group in self.param_groups:
            b1, b2 = group["betas"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                m = self.state[p].setdefault("exp_avg", torch.zeros_like(p))
                update = (b1 * m + (1 - b1) * p.grad).sign_()
                p.mul_(1 - group["lr"] * group["weight_decay"]).add_(update, alpha=-group["lr"])
                m.mul_(b2).add_(p.grad, alpha=1 - b2)
        return loss


def make_optimizer(model: torch.nn.Module, train) -> torch.optim.Optimizer:
    """AdamW or Lion from a TrainConfig; no weight decay on biases, norms and tokens."""
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and "token" not in n]
    rest = [p for n, p in model.named_parameters() if not (p.ndim >= 2 and "token" not in n)]
    groups = [
        {"params": decay, "weight_decay": train.weight_decay},
        {"params": rest, "weight_decay": 0.0},
    ]
    if train.optimizer == "lion":
        return Lion(groups, lr=train.lr, betas=train.betas)
    return torch.optim.AdamW(groups, lr=train.lr, betas=tuple(train.betas))


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
