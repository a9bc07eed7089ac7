"""``scaling stream``: pull batches through the crop stream, report throughput, save a montage."""

from __future__ import annotations

import time

from scaling.config import Config
from scaling.errors import InputError
from scaling.montage import write_montage
from scaling.parallel import init_ray
from scaling.stream.collate import CropBatch
from scaling.stream.pipeline import crop_stream


def preview(cfg: Config, batches: int = 20, montage: str | None = None) -> dict:
    if cfg.data.path is None:
        raise InputError("data.path: not set (pass --data DIR or --set data.path=DIR)")
    stream = crop_stream(cfg.data.path, cfg.data)  # validates before Ray starts work
    init_ray()
    n, first, t0 = 0, None, time.perf_counter()
    batches_iter = stream.iter_torch_batches(batch_size=cfg.data.batch_size, collate_fn=CropBatch())
    for i, batch in enumerate(batches_iter):
        if first is None:
            first = batch["crop"][:16].numpy()
        n += len(batch["crop"])
        if i + 1 >= batches:
            break
    dt = time.perf_counter() - t0
    out = {
        "crops": n,
        "seconds": dt,
        "crops_per_s": n / dt,
        "shape": list(first.shape[1:]),
        "dtype": str(first.dtype),
        "montage_crops": len(first) if montage else 0,
    }
    print(
        f"streamed {n} crops of {tuple(first.shape[1:])} {first.dtype} in {dt:.1f} s "
        f"({n / dt:.0f} crops/s, start-up included)"
    )
    if montage:
        print(f"montage of {len(first)} crops: {write_montage(first, montage)}")
    return out
