"""``scaling bench``: every benchmark prints ours beside its anchor, measured in the same run."""

from __future__ import annotations


def line(bench: str, case: str, ours: float, anchor: str, anchor_value: float, unit: str, **extra):
    return {
        "bench": bench,
        "case": case,
        "ours": ours,
        "anchor": anchor,
        "anchor_value": anchor_value,
        "ratio": ours / anchor_value,
        "unit": unit,
        **extra,
    }


def in_fresh_process(statement: str, our_allocator: bool = False):
    """The JSON value that ``statement`` (Python code) prints last, run in a fresh interpreter:
    an anchor as a user would run it, with glibc's allocator defaults, or with our settings
    (``our_allocator``: ``scaling.parallel.MALLOC_ENV``), never inherited from this process."""
    import json
    import os
    import subprocess
    import sys

    from scaling.parallel import MALLOC_ENV

    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    if our_allocator:
        env.update(MALLOC_ENV)
    done = subprocess.run(
        [sys.executable, "-c", statement], env=env, capture_output=True, text=True, check=False
    )
    if done.returncode:
        raise RuntimeError(f"bench anchor process failed: {done.stderr.strip()[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def gemm_peak(precision: str = "fp32", n: int = 2048, repeats: int = 5) -> float:
    """Dense GEMM FLOP/s of an n x n matmul in ``precision`` on torch's current threads
    (the best of ``repeats``): the peak that compute utilisation is measured against."""
    import time

    import torch

    dt = {"fp32": torch.float32, "bf16": torch.bfloat16}[precision]
    a, b = torch.randn(n, n).to(dt), torch.randn(n, n).to(dt)
    a @ b
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        a @ b
        times.append(time.perf_counter() - t0)
    return 2 * n**3 / min(times)


def run_bench(what: str, data: str | None = None, dry: bool = False):
    if what == "data":
        from scaling.bench.data import bench_data

        yield from bench_data(data)
    elif what == "model":
        from scaling.bench.model import bench_model

        yield from bench_model()
    elif what == "eval":
        from scaling.bench.eval import bench_eval

        yield from bench_eval(data)
    elif what == "embed":
        from scaling.bench.embed import bench_embed

        yield from bench_embed(data)
    elif what == "train":
        from scaling.bench.train import bench_train

        yield from bench_train(data)
    elif what == "flops":
        from scaling.bench.flops import bench_flops

        yield from bench_flops()
    elif what == "gpu":
        from scaling.bench.gpu import bench_gpu

        yield from bench_gpu(data, dry=dry)
