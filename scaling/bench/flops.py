"""``scaling bench flops``: analytic training FLOPs per step of every size against
``FlopCounterMode``'s count of the same step (ratio near 1). CPU sizes are counted on a real
CPU step, the paper's sizes on the meta device (no memory, same graph)."""

from __future__ import annotations

import torch

from scaling.bench import line
from scaling.model.flops import counted_train_flops, train_flops
from scaling.model.mae import MAE
from scaling.model.sizes import SIZES

BATCH = 2


def bench_flops():
    for name, size in SIZES.items():
        cpu = name.startswith("cpu")
        img = 64 if cpu else 256
        device = "cpu" if cpu else "meta"
        ours = train_flops(size, img, batch=BATCH)
        counted = counted_train_flops(size, img, batch=BATCH, device=device)
        with torch.device("meta"):
            params = MAE(size, img_size=img).param_counts()
        yield line(
            "flops",
            f"{name} {img}px batch {BATCH}",
            float(ours),
            "FlopCounterMode",
            float(counted),
            "FLOPs/step",
            counter_device=device,
            **params,
        )
