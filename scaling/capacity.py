"""The cluster's shape: what it holds when every node that may be up is up.

Concurrency (ladder runs, sweep trials, embedding actors) comes from the shape, not from
what happens to be up when a command starts: on ``cluster.yaml`` the head has no CPUs for
work and the GPU workers autoscale from 0, so the live cluster holds nothing until work
asks for it. Runs that go out at once are the demand (pending Ray tasks, placement groups
and actors with ``num_gpus``) that makes the autoscaler start nodes.

Shapes come from a cluster launcher YAML (``from_launcher``: each node type's
``resources`` times the most of it that can be up, capped by the top-level
``max_workers``), and otherwise from the live cluster (``detect``): on a head made by
``ray up`` that is the autoscaler's own copy of the launcher YAML
(``~/ray_bootstrap_config.yaml``), else the nodes alive now (a local machine is its own
shape).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import yaml

from scaling.errors import InputError

BOOTSTRAP = Path("~/ray_bootstrap_config.yaml")  # written by `ray up` on the head


@dataclass(frozen=True)
class NodeType:
    """``count`` nodes (at most, at once) of ``cpus`` CPUs and ``gpus`` GPUs each."""

    name: str
    count: int
    cpus: float
    gpus: float


@dataclass(frozen=True)
class Capacity:
    """A cluster's shape: its node types, and where the shape was read from."""

    nodes: tuple[NodeType, ...]
    source: str

    @property
    def node_count(self) -> int:
        return sum(n.count for n in self.nodes)

    @property
    def cpus(self) -> float:
        return sum(n.count * n.cpus for n in self.nodes)

    @property
    def gpus(self) -> float:
        return sum(n.count * n.gpus for n in self.nodes)

    @property
    def cpus_per_node(self) -> float:
        return max((n.cpus for n in self.nodes), default=0.0)

    @property
    def gpus_per_node(self) -> float:
        return max((n.gpus for n in self.nodes), default=0.0)

    def runs_at_once(self, cpus: float, gpus: float) -> int:
        """How many runs of ``cpus`` CPUs and ``gpus`` GPUs each fit at once (at least 1):
        packed node by node when a node holds a whole run, else over the totals (a run
        across nodes)."""
        per_node = sum(n.count * _fit(n.cpus, n.gpus, cpus, gpus) for n in self.nodes)
        return max(1, per_node or _fit(self.cpus, self.gpus, cpus, gpus))

    def per_node(self, cpus: float, gpus: float) -> int:
        """The most runs of ``cpus`` CPUs and ``gpus`` GPUs one node holds (0: none does)."""
        return max((_fit(n.cpus, n.gpus, cpus, gpus) for n in self.nodes), default=0)

    def describe(self) -> str:
        kinds = ", ".join(
            f"{n.count} x {n.name} ({n.cpus:g} CPUs, {n.gpus:g} GPUs)" for n in self.nodes
        )
        return f"{self.source}: {kinds or 'no nodes'}; {self.cpus:g} CPUs, {self.gpus:g} GPUs"


def _fit(have_cpus: float, have_gpus: float, cpus: float, gpus: float) -> int:
    by_cpu = have_cpus / cpus if cpus else math.inf
    by_gpu = have_gpus / gpus if gpus else math.inf
    return math.floor(min(by_cpu, by_gpu) + 1e-9)


def run_resources(cfg, extra_cpus: float = 0.0) -> tuple[float, float]:
    """(CPUs, GPUs) one training run holds at once: its workers (one GPU each on GPU), one
    Ray Data task's CPUs and ``extra_cpus`` (the task or Tune function driving it)."""
    t = cfg.train
    gpus = float(t.workers) if t.use_gpu else 0.0
    return extra_cpus + t.processes * t.cpus_per_worker + cfg.data.map_cpus, gpus


def placement_strategy(cfg, cap: Capacity) -> str:
    """Ray Train's placement for a run's workers: ``STRICT_PACK`` (one placement group on
    one node, so NCCL stays on NVLink) when one node holds them all, else ``PACK``."""
    t = cfg.train
    gpus = float(t.workers) if t.use_gpu else 0.0
    return "STRICT_PACK" if cap.per_node(t.workers * t.cpus_per_worker, gpus) else "PACK"


def from_launcher(path: str | Path) -> Capacity:
    """The shape of a Ray cluster launcher YAML (the file ``ray up`` takes)."""
    where = str(path)
    try:
        raw = yaml.safe_load(Path(path).expanduser().read_text()) or {}
    except OSError as e:
        raise InputError(f"{where}: cannot read cluster config ({e.strerror})") from None
    except yaml.YAMLError as e:
        raise InputError(f"{where}: not valid YAML ({str(e).splitlines()[0]})") from None
    types = raw.get("available_node_types") if isinstance(raw, dict) else None
    if not isinstance(types, dict) or not types:
        raise InputError(f"{where}: available_node_types: missing (not a cluster launcher YAML)")
    head = raw.get("head_node_type")
    budget = _count(raw.get("max_workers", sum(_max(t) for t in types.values())), where)
    nodes = []
    # the autoscaler starts the node types the demand asks for; GPU training asks for the
    # biggest, so the shared max_workers goes to the largest node types first
    for name, spec in sorted(types.items(), key=lambda kv: _size(kv, where), reverse=True):
        workers = min(_max(spec), budget)
        budget -= workers
        count = workers + (name == head)
        cpus, gpus = _size((name, spec), where)
        if count and (cpus or gpus):
            nodes.append(NodeType(name, count, cpus, gpus))
    return Capacity(tuple(nodes), where)


def _max(spec) -> int:
    return int(spec.get("max_workers", 0)) if isinstance(spec, dict) else 0


def _count(value, where: str) -> int:
    if not isinstance(value, int) or value < 0:
        raise InputError(f"{where}: max_workers: must be a non-negative integer, got {value!r}")
    return value


def _size(item, where: str) -> tuple[float, float]:
    name, spec = item
    res = spec.get("resources") if isinstance(spec, dict) else None
    if not isinstance(res, dict) or "CPU" not in res:
        raise InputError(
            f"{where}: available_node_types.{name}.resources: needs CPU (and GPU), the "
            "plan cannot look an instance type up"
        )
    cpus, gpus = res.get("CPU"), res.get("GPU", 0)
    for key, v in (("CPU", cpus), ("GPU", gpus)):
        if not isinstance(v, int | float) or isinstance(v, bool) or v < 0:
            raise InputError(f"{where}: available_node_types.{name}.resources.{key}: got {v!r}")
    return float(cpus), float(gpus)


def live() -> Capacity:
    """The nodes of the connected Ray cluster that are alive now."""
    import ray

    from scaling.parallel import init_ray

    init_ray()
    nodes = [
        NodeType(n["NodeID"][:8], 1, n["Resources"].get("CPU", 0.0), n["Resources"].get("GPU", 0.0))
        for n in ray.nodes()
        if n.get("Alive")
    ]
    return Capacity(tuple(n for n in nodes if n.cpus or n.gpus), "live cluster")


def local() -> Capacity:
    """This machine as one node, found without starting Ray."""
    import os

    import torch

    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    return Capacity(
        (NodeType("local", 1, float(os.cpu_count() or 1), float(gpus)),), "this machine"
    )


def detect(start_ray: bool = True) -> Capacity:
    """The shape of the cluster this process drives: the autoscaler's launcher YAML on a
    head made by ``ray up``, else the live cluster (``start_ray=False``: this machine)."""
    if BOOTSTRAP.expanduser().is_file():
        return from_launcher(BOOTSTRAP)
    return live() if start_ray else local()
