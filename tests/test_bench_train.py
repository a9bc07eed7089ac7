"""The allocator settings training runs under, and the train bench's plain-loop anchor."""

from __future__ import annotations

import math

from scaling.bench import in_fresh_process
from scaling.bench.train import anchor_process, bench_config

# a fresh process: minor page faults of a cpu-xs MAE's training steps (64 px, batch 32) with
# glibc's defaults, then after reuse_freed_memory
FAULTS = """
import json, resource, torch
from scaling.model.mae import MAE
from scaling.model.sizes import SIZES
from scaling.parallel import reuse_freed_memory

torch.set_num_threads(1)
torch.manual_seed(0)
model = MAE(SIZES["cpu-xs"], 64, 6, mask_ratio=0.5, norm_pix_loss=True)
opt = torch.optim.AdamW(model.parameters(), fused=True)
x = torch.randint(0, 256, (32, 6, 64, 64), dtype=torch.uint8)

def faults(steps=10):
    for i in range(2 * steps):  # the first half warms up
        if i == steps:
            before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        model(x)[0].backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    return (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / steps

default = faults()
took = reuse_freed_memory()
print(json.dumps({"default": default, "took": took, "reused": faults()}))
"""


def test_reuse_freed_memory_stops_the_page_faults_of_freed_blocks():
    r = in_fresh_process(FAULTS)  # glibc's defaults until reuse_freed_memory
    assert r["took"]
    # by default blocks of a step come from fresh mmaps or a trimmed heap: ~4,000 pages a
    # step measured; then the heap's freed memory serves the next step
    assert r["default"] > 500, r
    assert r["reused"] < r["default"] / 20, r


def test_the_anchor_is_a_plain_loop_in_a_process_of_its_own(tiny_world, tmp_path):
    cfg = bench_config(str(tiny_world), "cpu-xs", "fp32", 30, 1, tmp_path / "run")
    r = anchor_process(cfg, steps=30, threads=1)
    assert set(r) == {"per_crop", "startup", "teardown"}
    assert all(math.isfinite(v) and v > 0 for v in r.values())
    assert r["per_crop"] < r["startup"]  # one crop's step against the model's build
