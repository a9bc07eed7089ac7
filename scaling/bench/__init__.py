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


def run_bench(what: str, data: str | None = None):
    if what == "data":
        from scaling.bench.data import bench_data

        yield from bench_data(data)
    elif what == "model":
        from scaling.bench.model import bench_model

        yield from bench_model()
    elif what == "eval":
        from scaling.bench.eval import bench_eval

        yield from bench_eval(data)
    elif what == "flops":
        from scaling.bench.flops import bench_flops

        yield from bench_flops()
