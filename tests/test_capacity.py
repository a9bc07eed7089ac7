"""The cluster's shape (scaling.capacity) and the concurrency that comes from it."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import yaml

from scaling import capacity
from scaling.capacity import Capacity, NodeType, from_launcher, placement_strategy
from scaling.config import load_config
from scaling.errors import InputError
from scaling.evaluate.embed import actor_plan, actor_shape, default_actors
from scaling.ladder import grid
from scaling.sweep import tune

ROOT = Path(__file__).parent.parent
CONFIGS = ROOT / "jobs" / "configs"


def test_cluster_yaml_shape_sets_ladder_concurrency():
    cap = from_launcher(ROOT / "cluster.yaml")
    assert cap.nodes == (NodeType("h100", 4, 192.0, 8.0),)  # the CPU-0 head takes no work
    assert (cap.gpus, cap.cpus, cap.gpus_per_node) == (32.0, 768.0, 8.0)
    cfg = load_config(CONFIGS / "ladder-gpu.yaml")
    assert grid.concurrency(cfg, cap) == 4  # 32 GPUs / 8 a run, one run a node
    half = load_config(CONFIGS / "ladder-gpu.yaml", ["train.workers=4"])
    assert grid.concurrency(half, cap) == 8  # two runs of 4 GPUs (33 CPUs) a node
    assert tune.concurrency(half, cap) == 8
    assert default_actors(cap) == 32 and actor_shape(cap) == (32, 1)  # one per GPU
    assert placement_strategy(cfg, cap) == "STRICT_PACK"
    wide = load_config(CONFIGS / "ladder-gpu.yaml", ["train.workers=16"])
    assert placement_strategy(wide, cap) == "PACK"


def test_ladder_evaluation_takes_a_runs_share_of_the_cores():
    demo = load_config(CONFIGS / "ladder-demo.yaml")  # two runs at once
    vm = Capacity((NodeType("vm", 1, 2.0, 0.0),), "a 2-core VM")
    assert grid.eval_share(demo, vm) == 1.0  # beside a 1-thread run, 1 thread, not 2
    assert actor_plan(vm) == (1, 2, 1.0, 0)  # scaling evaluate alone: both cores
    assert actor_plan(vm, cpus_per_actor=grid.eval_share(demo, vm)) == (1, 1, 1.0, 0)
    nodes = Capacity((NodeType("c", 2, 16.0, 0.0),), "two 16-CPU nodes")
    assert grid.eval_share(demo, nodes) == 16.0  # two runs over 32 CPUs, a node's worth
    eight = load_config(CONFIGS / "ladder-demo.yaml", ["ladder.max_concurrent=8"])
    assert grid.eval_share(eight, nodes) == 4.0
    gpu = from_launcher(ROOT / "cluster.yaml")
    assert grid.eval_share(load_config(CONFIGS / "ladder-gpu.yaml"), gpu) is None  # GPU actors
    assert actor_plan(gpu)[1:] == (1, 1.0, 1)


def test_sweep_fits_the_shape_not_the_idle_cluster():
    cfg = load_config(CONFIGS / "gpu-s16.yaml")
    tune.check_fits(cfg, from_launcher(ROOT / "cluster.yaml"))  # no worker up: fine
    idle = Capacity((), "the head alone")  # what cluster_resources() says before scaling
    with pytest.raises(InputError, match="data.map_cpus"):
        tune.check_fits(cfg, idle)


def test_top_level_max_workers_caps_the_types(tmp_path):
    spec = {
        "max_workers": 3,
        "head_node_type": "head",
        "available_node_types": {
            "head": {"resources": {"CPU": 4}, "max_workers": 0},
            "cpu": {"resources": {"CPU": 32}, "max_workers": 10},
            "gpu": {"resources": {"CPU": 96, "GPU": 4}, "max_workers": 2},
        },
    }
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(spec))
    cap = from_launcher(path)
    counts = {n.name: n.count for n in cap.nodes}
    assert counts == {"gpu": 2, "cpu": 1, "head": 1}  # the largest types first
    del spec["available_node_types"]["gpu"]["resources"]
    path.write_text(yaml.safe_dump(spec))
    with pytest.raises(InputError, match="available_node_types.gpu.resources"):
        from_launcher(path)


def test_bootstrap_config_is_the_live_shape_on_a_head(monkeypatch):
    monkeypatch.setattr(capacity, "BOOTSTRAP", ROOT / "cluster.yaml")
    assert capacity.detect().gpus == 32  # read from the file: no Ray needed


def test_live_local_shape_is_todays_behaviour(ray_session, monkeypatch):
    import ray

    monkeypatch.setattr(capacity, "BOOTSTRAP", Path("/nonexistent/bootstrap.yaml"))
    res = ray.cluster_resources()
    for name in ("smoke.yaml", "ladder-tiny.yaml", "sweep-tiny.yaml"):
        cfg = load_config(CONFIGS / name, ["ladder.max_concurrent=0", "sweep.max_concurrent=0"])
        t = cfg.train
        run_cpus = t.processes * t.cpus_per_worker + cfg.data.map_cpus
        assert grid.concurrency(cfg) == max(1, math.floor(res["CPU"] / run_cpus))
        trial = run_cpus + tune.TRIAL_CPU
        assert tune.concurrency(cfg) == max(1, math.floor(res["CPU"] / trial))
    assert actor_shape() == (1, int(res["CPU"]))  # one node: one actor, a thread per CPU
