"""Multi-node drills on one machine with real Ray: a head with no CPUs and two 2-CPU worker
nodes (``ray.cluster_utils.Cluster``), training on the CPU. The drills run in a process of
their own (``tests/multinode_drills.py``), which starts and shuts down the cluster, so the
session's Ray instance is left as it was; the tests check what they measured."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from scaling.model.flops import train_flops
from scaling.model.sizes import SIZES
from tests.multinode_drills import CHECKPOINT_EVERY, STEPS

ROOT = Path(__file__).parent.parent


@pytest.fixture(scope="module")
def drills(tiny_world, tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("multinode")
    ray_tmp = tempfile.mkdtemp(prefix="rmn", dir="/tmp")  # short: Ray's socket paths
    env = {**os.environ, "RAY_TMPDIR": ray_tmp, "RAY_DATA_DISABLE_PROGRESS_BARS": "1"}
    env.pop("RAY_ADDRESS", None)
    try:
        p = subprocess.run(
            [sys.executable, "-m", "tests.multinode_drills", str(tiny_world), str(out)],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=540,
            env=env,
        )
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)
    assert p.returncode == 0, p.stderr[-4000:]
    found = json.loads(p.stdout.strip().splitlines()[-1])
    found["stderr"] = p.stderr[-4000:]  # the drills' own log, for a failing assertion to show
    return found


def test_a_ladder_spreads_over_the_nodes_by_the_cluster_shape(drills):
    """The shape (the live nodes with resources: not the CPU-0 head) holds one 2-CPU run a
    node, so the ladder sends both runs out at once, and Ray places their workers (1.5
    CPUs each, one placement group on one node) on the two worker nodes, one each."""
    a = drills["ladder"]
    assert a["node_count"] == 2 and "4 CPUs" in a["shape"], a["shape"]
    assert a["concurrency"] == 2 and a["placement"] == "STRICT_PACK"
    assert not a["failed"] and len(a["ran"]) == 2
    runs = list(a["runs"].values())
    for r in runs:
        assert r["steps"] == r["planned_steps"] and r["restarts"] == 0
        assert len(r["nodes"]) == 1  # one start, on one node
    nodes = sorted(r["nodes"][0] for r in runs)
    assert nodes == a["worker_nodes"] and a["head_node"] not in nodes
    # both went out at once: each started training before either was done (trained and
    # evaluated); one run at a time would start the second after the first's row
    assert max(r["started"] for r in runs) < min(r["done"] for r in runs), runs


def test_losing_a_node_mid_run_resumes_from_its_checkpoint_on_another(drills):
    """The node under the run's worker is removed after Ray Train registered the step-60
    checkpoint and the run logged a step past it: the group restarts on the other node
    from step 60 and ends at step 120, every crop counted once, the restart and the steps
    it trained twice in its result."""
    b = drills["node_loss"]
    first, *later = b["attempts"]
    removed = b["removed"]
    assert removed and "error" not in removed, f"no node removed: {removed}\n{drills['stderr']}"
    assert removed["node"] == first["node"] and removed["node"] not in b["alive"]
    assert removed["registered"] == [CHECKPOINT_EVERY]
    assert removed["logged"] > CHECKPOINT_EVERY  # steps trained past the checkpoint

    r = b["result"]
    assert r["step"] == STEPS == b["final_checkpoint_step"]
    assert r["restarts"] == len(later) >= 1
    resumed = later[0]
    assert resumed["node"] in b["alive"] and resumed["node"] != removed["node"]
    assert resumed["resumed_step"] == CHECKPOINT_EVERY  # the last registered checkpoint
    assert CHECKPOINT_EVERY < resumed["reached"] < STEPS
    assert resumed["reached"] >= removed["logged"]
    assert r["repeated_steps"] == sum(x["reached"] - x["resumed_step"] for x in later)
    # nothing lost or counted twice: the crops and FLOPs of exactly STEPS steps
    assert r["crops_seen"] == STEPS * b["batch"]
    assert r["flops"] == r["crops_seen"] * train_flops(SIZES["cpu-2xs"], 64)
    # the stream's position (kept on the driver's node) survived the node: the restarted
    # group re-read no task before the one its checkpoint had reached
    assert r["source"] == "stream"
    assert all(t >= b["resume_task"] for t in r["stream_rereads"]), r["stream_rereads"]
