"""Multi-node drills on one machine with real Ray (``ray.cluster_utils.Cluster``), run by
``tests/test_multinode.py`` in a process of their own: the test session already holds a
local Ray instance, and a Cluster needs its own Ray (and its own ``RAY_TMPDIR``, so that no
other ``ray.init()`` on this machine finds it through ``ray_current_cluster``).

``python -m tests.multinode_drills WORLD OUT`` starts a head with no CPUs (as on
``cluster.yaml``) and two 2-CPU worker nodes, then runs

(a) a ladder of two runs whose worker needs 1.5 CPUs (so no node holds two runs): its
    concurrency comes from the cluster's shape, and each run's ``attempts.jsonl`` names
    the Ray node its rank 0 trained on;
(b) one run reading the Ray Data stream whose worker's node is removed once Ray Train has
    registered its mid-run checkpoint and the run has logged a step past it: the worker
    group restarts on the other node from that checkpoint, and the stream from its task.

Training runs on the CPU (gloo, DS_ACCELERATOR=cpu). Ray Train's controller polls every
0.25 s instead of 2 s (``RAY_TRAIN_HEALTH_CHECK_INTERVAL_S``): a report waits for the
previous one to be taken, so the default poll would make these short runs mostly waiting.
The last line of stdout is one JSON object with what both drills measured.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).parent.parent
WORKER_NODES, NODE_CPUS = 2, 2
ONE_RUN = ["train.workers=1", "train.cpus_per_worker=1.5", "data.map_cpus=0.5"]
TINY = ["data.source=memory", "model.name=cpu-2xs", "train.log_every=10"]
STREAM = ["data.source=stream", "model.name=cpu-2xs", "train.log_every=10"]
STEPS, CHECKPOINT_EVERY = 120, 60  # drill (b): one mid-run checkpoint, then the end


def start_cluster():
    import ray
    from ray.cluster_utils import Cluster

    head = {"num_cpus": 0, "include_dashboard": False}
    cluster = Cluster(initialize_head=True, head_node_args=head)
    for _ in range(WORKER_NODES):
        cluster.add_node(num_cpus=NODE_CPUS, object_store_memory=200 * 2**20)
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, log_to_driver=False, logging_level=logging.WARNING)
    return cluster


def attempts(run_dir: Path) -> list[dict]:
    lines = (run_dir / "attempts.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines]


def ladder_drill(cluster, world: Path, out: Path) -> dict:
    """(a): a ladder of two runs, as many at once as the cluster's shape holds."""
    from scaling.capacity import detect, placement_strategy
    from scaling.config import load_config
    from scaling.ladder.grid import concurrency, ladder
    from scaling.ladder.plan import plan_runs, step_cost

    base = load_config(ROOT / "jobs/configs/ladder-tiny.yaml", ["model.name=cpu-2xs"])
    budgets = [step_cost(base, "cpu-2xs") * s for s in (40, 60)]  # steps
    cfg = load_config(
        ROOT / "jobs/configs/ladder-tiny.yaml",
        [
            *ONE_RUN,
            *TINY,
            f"data.path={world}",
            f"run.dir={out / 'ladder'}",
            "ladder.sizes=[cpu-2xs]",
            "ladder.curations={all: {strategy: none}}",
            f"ladder.budgets=[{', '.join(f'{b:.6e}' for b in budgets)}]",
            "ladder.share_budgets=false",
            "ladder.max_concurrent=0",  # from the cluster's shape
            "ladder.baselines=false",
            "train.schedule=cosine",
        ],
    )
    cap = detect()
    summary = ladder(cfg, progress=False, log=lambda *_: None)
    runs = {}
    for p in plan_runs(cfg, out / "ladder", {"all": str(world)}):
        run_dir = Path(p.cfg["run"]["dir"])
        row = json.loads((run_dir / "row.json").read_text())
        runs[p.run_id] = {
            "nodes": [a["node"] for a in attempts(run_dir)],
            "started": attempts(run_dir)[0]["at"],  # rank 0's first start
            "done": (run_dir / "row.json").stat().st_mtime,  # trained and evaluated
            "steps": row["steps"],
            "planned_steps": p.cfg["train"]["steps"],
            "restarts": row["restarts"],
        }
    return {
        "shape": cap.describe(),
        "node_count": cap.node_count,
        "worker_nodes": sorted(n.node_id for n in cluster.worker_nodes),
        "head_node": cluster.head_node.node_id,
        "concurrency": concurrency(cfg, cap),
        "placement": placement_strategy(cfg, cap),
        "ran": sorted(summary["ran"]),
        "failed": summary["failed"],
        "runs": runs,
    }


def registered_steps(run_dir: Path) -> list[int]:
    """The steps of the checkpoints Ray Train has registered for the run."""
    snapshot = run_dir / "ray" / "checkpoint_manager_snapshot.json"
    if not snapshot.is_file():
        return []
    found = json.loads(snapshot.read_text())["checkpoint_results"]
    return sorted(c["metrics"]["step"] for c in found)


def logged_step(run_dir: Path) -> int:
    """The furthest step in the run's ``metrics.jsonl`` (0 before its first report)."""
    log = run_dir / "metrics.jsonl"
    rows = log.read_text().splitlines() if log.is_file() else []
    return max((json.loads(r)["step"] for r in rows), default=0)


def remove_when_registered(cluster, run_dir: Path, seen: dict, timeout: float = 300) -> None:
    """Once Ray Train has registered a checkpoint and rank 0 has logged a step past it
    (steps the restart will repeat), remove the node rank 0 trains on (the latest
    ``attempts.jsonl`` line names it); ``seen`` gets the node, the registered steps, the
    step logged and the time. The files it reads are being written: a line or snapshot
    caught half-written is read again at the next look. Any other error, or the timeout,
    is left in ``seen["error"]`` for the test to show (a thread's exception would vanish)."""
    deadline = time.time() + timeout
    try:
        while time.time() < deadline:
            try:
                steps, logged = registered_steps(run_dir), logged_step(run_dir)
                node_id = attempts(run_dir)[-1]["node"] if steps and logged > steps[-1] else None
            except (json.JSONDecodeError, FileNotFoundError):  # caught mid-write
                node_id = None
            if node_id is not None:
                (node,) = [n for n in cluster.worker_nodes if n.node_id == node_id]
                cluster.remove_node(node)
                seen.update(node=node_id, registered=steps, logged=logged, at=time.time())
                return
            time.sleep(0.05)
        seen["error"] = f"no checkpoint registered and passed within {timeout} s"
    except Exception as e:
        seen["error"] = repr(e)


def resume_task(cfg, step: int) -> int:
    """The stream task a run resumed at ``step`` restarts its stream at."""
    from scaling.shards.dataset import open_dataset
    from scaling.stream.plan import site_index, stream_plan

    ds = open_dataset(cfg.data.path)
    plan = stream_plan(ds, cfg.data, site_index(ds, cfg.data), epochs=1)
    return plan.tasks_within(step * cfg.data.batch_size * cfg.train.processes)


def node_loss_drill(cluster, world: Path, out: Path) -> dict:
    """(b): the node under a run's only worker is removed after its mid-run checkpoint."""
    import ray

    from scaling.config import load_config
    from scaling.train.pretrain import pretrain

    run_dir = out / "node-loss"
    cfg = load_config(
        ROOT / "jobs/configs/smoke.yaml",
        [
            *ONE_RUN,
            *STREAM,  # the Ray Data stream: its position must outlive the lost node
            f"data.path={world}",
            f"run.dir={run_dir}",
            "data.batch_size=32",
            f"train.steps={STEPS}",
            f"train.checkpoint_every={CHECKPOINT_EVERY}",
            f"train.val_every={CHECKPOINT_EVERY}",
        ],
    )
    seen: dict = {}
    watcher = threading.Thread(target=remove_when_registered, args=(cluster, run_dir, seen))
    watcher.start()
    result = pretrain(cfg)  # from this driver, on the head: the run outlives the node
    watcher.join()
    final = json.loads((Path(result["checkpoint"]) / "state.json").read_text())
    return {
        "resume_task": resume_task(cfg, attempts(run_dir)[-1]["resumed_step"]),
        "batch": cfg.data.batch_size,
        "removed": seen,
        "alive": sorted(n["NodeID"] for n in ray.nodes() if n["Alive"]),
        "attempts": attempts(run_dir),
        "result": result,
        "final_checkpoint_step": final["step"],
    }


def main() -> None:
    import ray

    world, out = Path(sys.argv[1]), Path(sys.argv[2])
    os.environ.setdefault("DS_ACCELERATOR", "cpu")
    os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.25")
    t0 = time.time()
    cluster = start_cluster()
    try:
        t1 = time.time()
        a = ladder_drill(cluster, world, out)
        t2 = time.time()
        b = node_loss_drill(cluster, world, out)
        t3 = time.time()
    finally:
        ray.shutdown()
        cluster.shutdown()
    seconds = {"cluster": t1 - t0, "ladder": t2 - t1, "node_loss": t3 - t2}
    print(json.dumps({"ladder": a, "node_loss": b, "seconds": seconds}))


if __name__ == "__main__":
    main()
