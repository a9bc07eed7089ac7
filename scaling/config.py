"""One typed configuration tree, loaded from YAML and overridden with ``--set key=value``.

Every section is a dataclass; unknown keys and values of the wrong type are rejected with
an :class:`~scaling.errors.InputError` that names the key (and the file, when there is one).
Later stages add their own sections here.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import yaml

from scaling.errors import InputError


@dataclass
class WorldConfig:
    """The synthetic world made when ``data.path`` is unset."""

    preset: str = "tiny"
    seed: int = 0

    def validate(self) -> None:
        from scaling.world.presets import PRESETS

        if self.preset not in PRESETS:
            raise InputError(
                f"world.preset: unknown preset {self.preset!r} (have {sorted(PRESETS)})"
            )
        if not PRESETS[self.preset].images:
            raise InputError(f"world.preset: {self.preset!r} has no images to train on")


@dataclass
class DataConfig:
    """The Ray Data crop stream."""

    path: str | None = None  # a dataset (synth/ingest output) or a curation folder
    crop: int = 64  # crop side in pixels: 64 for CPU models, 256 for the paper's
    crops_per_site: int = 4  # random crops cut from each site per epoch
    batch_size: int = 256  # crops per batch per worker
    val_fraction: float = 0.05  # share of sites held out for validation
    val_tiles: int = 256  # at most this many fixed validation tiles
    seed: int = 0  # file order, hold-out choice and validation tiles
    map_cpus: float = 1.0  # CPUs reserved per read/crop task
    # where training crops come from: the Ray Data stream, sites held in memory by each
    # training process (cut per batch on its device), or memory when they fit in memory_gb
    source: Literal["auto", "stream", "memory"] = "auto"
    memory_gb: float = 4.0  # auto: the largest training set (uint8 sites) held in memory
    # copy each shard to this node-local folder (e.g. NVMe) on its first read on a node, and
    # read the copy from then on; None reads the shards where they are
    stage_dir: str | None = None

    def validate(self) -> None:
        if self.crop < 8:
            raise InputError(f"data.crop: must be at least 8, got {self.crop}")
        for key in ("crops_per_site", "batch_size", "val_tiles"):
            if getattr(self, key) < 1:
                raise InputError(f"data.{key}: must be positive, got {getattr(self, key)}")
        if not 0.0 <= self.val_fraction < 1.0:
            raise InputError(f"data.val_fraction: must be in [0, 1), got {self.val_fraction}")
        if self.map_cpus <= 0:
            raise InputError(f"data.map_cpus: must be positive, got {self.map_cpus}")
        if self.memory_gb < 0:
            raise InputError(f"data.memory_gb: must be >= 0, got {self.memory_gb}")


@dataclass
class ModelConfig:
    """The MAE: a size from ``scaling.model.sizes.SIZES`` and its options."""

    name: str = "cpu-xs"
    mask_ratio: float = 0.75
    norm_pix_loss: bool = False
    qk_norm: bool = False
    layer_scale: float | None = None
    fourier_weight: float = 0.01
    grad_checkpoint: bool = False  # activation checkpointing, for the large sizes
    # the input channels' names, in order; empty: the data's (a run records them)
    channels: list[str] = field(default_factory=list)
    # CA-MAE: one patch projection shared by the channels, a token per patch and channel
    # (C x the tokens, C x the compute); its encoder embeds data of any channels
    channel_agnostic: bool = False
    # the sin-cos positions' base: the MAE reference's 10000, or smaller for a small grid of
    # patches (scaling.model.mae.sincos_2d)
    pos_base: float = 10000.0
    # start the decoder's query and key projections at the identity (mimetic initialisation:
    # mask tokens attend to their neighbours from the first step; scaling.model.mae)
    decoder_qk_identity: bool = False
    # start the decoder's pixel prediction (its last layer) at zero (scaling.model.mae)
    decoder_pred_zero: bool = False

    def validate(self) -> None:
        from scaling.model.sizes import SIZES

        if len(set(self.channels)) != len(self.channels):
            raise InputError(f"model.channels: names repeat in {self.channels}")

        if self.name not in SIZES:
            raise InputError(f"model.name: unknown size {self.name!r} (have {', '.join(SIZES)})")
        if not 0.0 < self.mask_ratio < 1.0:
            raise InputError(f"model.mask_ratio: must be in (0, 1), got {self.mask_ratio}")
        if not 0.0 <= self.fourier_weight < 1.0:
            raise InputError(f"model.fourier_weight: must be in [0, 1), got {self.fourier_weight}")
        if not self.pos_base > 1.0:
            raise InputError(f"model.pos_base: must be above 1, got {self.pos_base}")


@dataclass
class TrainConfig:
    """One DeepSpeed run on Ray Train."""

    steps: int = 100
    workers: int = 2  # 0: Ray Train's local mode, the loop runs in the driving process
    cpus_per_worker: float = 0.5  # fractional, so Ray Data tasks keep CPUs on small nodes
    use_gpu: bool = False
    zero_stage: int = 2
    precision: Literal["fp32", "bf16"] = "fp32"
    optimizer: Literal["adamw", "lion"] = "adamw"
    lr: float = 1e-3  # peak learning rate
    min_lr_ratio: float = 0.0  # cosine decays to lr * min_lr_ratio
    warmup: float = 0.1  # share of steps spent warming up (wsd: of the first branch's)
    schedule: Literal["cosine", "wsd"] = "cosine"  # one-cycle cosine, or warm-up/stable/decay
    cooldown: float = 0.2  # wsd: share of a run's (or branch's) steps spent decaying to 0
    branches: list[int] = field(default_factory=list)  # wsd: also finish runs of these steps
    weight_decay: float = 0.05
    betas: list[float] = field(default_factory=lambda: [0.9, 0.95])
    grad_clip: float = 1.0
    grad_accum: int = 1
    checkpoint_every: int = 50
    checkpoint_minutes: float = 0.0  # also save at a report once this long since the last (0: off)
    keep_checkpoints: int = 2
    # where a worker writes a checkpoint before Ray Train copies it to run.dir's storage:
    # a fast node-local disk (e.g. NVMe); None: the system's temporary folder
    checkpoint_stage_dir: str | None = None
    log_every: int = 10
    val_every: int = 50
    max_failures: int = 2
    peak_tflops: float = 989.0  # per device, for MFU on GPU (H100 bf16 dense)
    eval_every: int = 0  # probe every block on a fixed set of wells every N steps (0: off)
    eval_wells: int = 256  # wells in that set (one site each)
    tensorboard: bool = True  # rank 0 writes run.dir/tensorboard event files
    seed: int = 0

    @property
    def processes(self) -> int:
        """Training processes: the workers, or the one local-mode process."""
        return max(1, self.workers)

    def validate(self) -> None:
        if self.workers < 0:
            raise InputError(f"train.workers: must be >= 0, got {self.workers}")
        for key in (
            "steps",
            "grad_accum",
            "checkpoint_every",
            "keep_checkpoints",
            "log_every",
            "val_every",
        ):
            if getattr(self, key) < 1:
                raise InputError(f"train.{key}: must be positive, got {getattr(self, key)}")
        if not self.checkpoint_minutes >= 0:
            raise InputError(
                f"train.checkpoint_minutes: must be >= 0, got {self.checkpoint_minutes}"
            )
        if self.eval_every < 0 or self.eval_wells < 1:
            raise InputError("train.eval_every must be >= 0 and train.eval_wells positive")
        if self.zero_stage not in (0, 1, 2, 3):
            raise InputError(f"train.zero_stage: must be 0, 1, 2 or 3, got {self.zero_stage}")
        if self.use_gpu and self.workers == 0:
            raise InputError("train.workers: local mode (0) runs on the CPU; use workers >= 1")
        if self.cpus_per_worker <= 0 or self.lr <= 0:
            raise InputError("train.cpus_per_worker and train.lr: must be positive")
        if not 0.0 <= self.warmup < 1.0:
            raise InputError(f"train.warmup: must be in [0, 1), got {self.warmup}")
        if not 0.0 < self.cooldown <= 1.0:
            raise InputError(f"train.cooldown: must be in (0, 1], got {self.cooldown}")
        if self.branches and self.schedule != "wsd":
            raise InputError("train.branches: need train.schedule=wsd (a constant learning rate)")
        for b in self.branches:
            if not 0 < b < self.steps:
                raise InputError(f"train.branches: {b} is not between 0 and train.steps")
        if len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas):
            raise InputError(f"train.betas: two numbers in [0, 1), got {self.betas}")


@dataclass
class RunSection:
    """Where a run writes."""

    dir: str = "runs/default"

    def validate(self) -> None:
        if not self.dir:
            raise InputError("run.dir: must not be empty")


@dataclass
class SweepConfig:
    """``scaling sweep``: a Ray Tune search over configuration keys, pruned by ASHA.

    ``space`` maps dotted configuration keys to one spec each: ``{loguniform: [lo, hi]}``,
    ``{uniform: [lo, hi]}``, ``{randint: [lo, hi]}`` (hi exclusive) or ``{choice: [...]}``.
    """

    trials: int = 8  # Tune's num_samples
    metric: str = "val_loss"  # or a probe metric, e.g. probe_best_val (needs train.eval_every)
    mode: Literal["min", "max"] | None = None  # None: min for losses, max otherwise
    space: dict = field(default_factory=dict)
    grace_period: int = 5  # ASHA: steps every trial runs before it can be stopped
    reduction_factor: int = 2  # ASHA: keep the best 1/reduction_factor at each rung
    max_concurrent: int = 0  # 0: as many trials as the cluster's CPUs (or GPUs) hold
    seed: int = 0  # the random search's seed

    def validate(self) -> None:
        if self.trials < 1:
            raise InputError(f"sweep.trials: must be positive, got {self.trials}")
        if self.grace_period < 1 or self.reduction_factor < 2:
            raise InputError(
                "sweep.grace_period must be positive and sweep.reduction_factor at least 2"
            )
        if self.max_concurrent < 0:
            raise InputError(f"sweep.max_concurrent: must be >= 0, got {self.max_concurrent}")
        if not self.metric:
            raise InputError("sweep.metric: must not be empty")

    @property
    def direction(self) -> str:
        if self.mode is not None:
            return self.mode
        return "min" if "loss" in self.metric else "max"


@dataclass
class LadderConfig:
    """``scaling ladder``: every size x curation x budget, each a pretraining run then an
    evaluation of every block. The rest of the file is the base config of every run.

    ``curations`` maps a name to ``{strategy: random|phenoprints|none, ...options}`` (the
    options of ``scaling curate``; ``like: NAME`` draws as many wells as curation NAME keeps;
    ``none`` trains on the whole dataset). A budget is training FLOPs or crops seen
    (``budget_unit``); a run's steps are the budget over its per-step cost. Learning rate per
    size: ``lr`` (size -> lr), else a sweep's ``best`` (size -> best.yaml, whose train and
    model keys the run takes), else the rule ``lr_rule``: ``constant`` (train.lr) or
    ``inverse-width`` (train.lr * lr_ref_width / width). With ``share_budgets`` the budgets of
    one size and curation share a run: warm-up/stable/decay (``train.schedule: wsd``) to the
    largest budget, with a cool-down branch ending at each smaller one.
    """

    sizes: list[str] = field(default_factory=list)
    curations: dict = field(default_factory=dict)
    budgets: list[float] = field(default_factory=list)
    budget_unit: Literal["flops", "crops"] = "flops"
    lr: dict = field(default_factory=dict)
    batch_size: dict = field(default_factory=dict)  # size -> data.batch_size for its runs
    best: dict = field(default_factory=dict)
    lr_rule: Literal["constant", "inverse-width"] = "constant"
    lr_ref_width: int = 64
    share_budgets: bool = False  # one WSD run per size x curation, a branch per budget
    min_steps: int = 5  # a budget below this many steps is refused
    max_concurrent: int = 0  # 0: as many runs as the cluster's CPUs (or GPUs) hold
    baselines: bool = True  # random-init of every size, hand-crafted and pixel features
    eval_batch_size: int = 256
    retries: int = 1  # attempts of a failed run within one invocation, after the first

    def validate(self) -> None:
        from scaling.curate.select import STRATEGIES
        from scaling.model.sizes import SIZES

        for s in self.sizes:
            if s not in SIZES:
                raise InputError(f"ladder.sizes: unknown size {s!r} (have {', '.join(SIZES)})")
        for name, c in self.curations.items():
            if not isinstance(c, dict) or "strategy" not in c:
                raise InputError(f"ladder.curations.{name}: needs a strategy")
            if c["strategy"] not in (*STRATEGIES, "none"):
                raise InputError(
                    f"ladder.curations.{name}.strategy: {c['strategy']!r} is not one of "
                    f"{', '.join((*STRATEGIES, 'none'))}"
                )
            if "like" in c and c["like"] not in self.curations:
                raise InputError(f"ladder.curations.{name}.like: no curation {c['like']!r}")
        for b in self.budgets:
            if not b > 0:
                raise InputError(f"ladder.budgets: {b!r} is not a positive number")
        for key in ("lr", "batch_size", "best"):
            for s in getattr(self, key):
                if s not in self.sizes:
                    raise InputError(f"ladder.{key}.{s}: not one of ladder.sizes")
        for s, b in self.batch_size.items():
            if not isinstance(b, int) or isinstance(b, bool) or b < 1:
                raise InputError(f"ladder.batch_size.{s}: {b!r} is not a positive integer")
        for s, path in self.best.items():
            if not Path(path).is_file():
                raise InputError(f"ladder.best.{s}: no file {path}")
        if self.min_steps < 1 or self.max_concurrent < 0 or self.retries < 0:
            raise InputError("ladder.min_steps must be >= 1, max_concurrent and retries >= 0")

    @property
    def active(self) -> bool:
        return bool(self.sizes or self.curations or self.budgets)


@dataclass
class Config:
    world: WorldConfig = field(default_factory=WorldConfig)
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    run: RunSection = field(default_factory=RunSection)
    sweep: SweepConfig = field(default_factory=SweepConfig)
    ladder: LadderConfig = field(default_factory=LadderConfig)

    def validate(self) -> None:
        for f in dataclasses.fields(self):
            getattr(self, f.name).validate()


def load_config(path: str | Path | None = None, overrides: list[str] | tuple = ()) -> Config:
    """Defaults, then the YAML file, then each ``key=value`` override; validated."""
    raw: dict = {}
    where = "config"
    if path is not None:
        where = str(path)
        try:
            text = Path(path).read_text()
        except OSError as e:
            raise InputError(f"{path}: cannot read config ({e.strerror})") from None
        try:
            raw = yaml.safe_load(text) or {}
        except yaml.YAMLError as e:
            raise InputError(f"{path}: not valid YAML ({str(e).splitlines()[0]})") from None
        if not isinstance(raw, dict):
            raise InputError(f"{path}: the top level must be a mapping of sections")
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise InputError(f"--set {item!r}: expected key=value")
        node = raw
        *parents, leaf = key.split(".")
        for p in parents:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise InputError(f"--set {key}: {p!r} is not a section")
        node[leaf] = yaml.safe_load(value) if value != "" else None
    cfg = _build(Config, raw, "", where)
    cfg.validate()
    return cfg


def apply(base: dict, values: dict[str, object], where: str = "config") -> Config:
    """The configuration ``base`` (a ``to_dict``) with dotted ``values`` set; validated."""
    raw = {k: (dict(v) if isinstance(v, dict) else v) for k, v in base.items()}
    for key, value in values.items():
        *parents, leaf = key.split(".")
        node = raw
        for p in parents:
            node[p] = node = dict(node[p])
        node[leaf] = value
    cfg = _build(Config, raw, "", where)
    cfg.validate()
    return cfg


def to_dict(cfg) -> dict:
    return dataclasses.asdict(cfg)


def dump_config(cfg: Config) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)


def _build(cls, raw, prefix: str, where: str):
    if not isinstance(raw, dict):
        raise InputError(f"{where}: {prefix.rstrip('.') or 'top level'} must be a mapping")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    for key in raw:
        if key not in names:
            raise InputError(
                f"{where}: unknown key '{prefix}{key}' (known: {', '.join(sorted(names))})"
            )
    kwargs = {}
    for name, value in raw.items():
        tp = hints[name]
        if dataclasses.is_dataclass(tp):
            kwargs[name] = _build(tp, value, f"{prefix}{name}.", where)
        else:
            kwargs[name] = _coerce(tp, value, f"{prefix}{name}", where)
    return cls(**kwargs)


def _coerce(tp, value, key: str, where: str):
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(arg, value, key, where)
            except InputError as e:
                errors.append(e)
        raise errors[0]
    if origin is list:
        (item,) = typing.get_args(tp)
        if not isinstance(value, list):
            raise InputError(f"{where}: {key} must be a list, got {value!r}")
        return [_coerce(item, v, f"{key}[{i}]", where) for i, v in enumerate(value)]
    if origin is typing.Literal:
        if value not in typing.get_args(tp):
            raise InputError(f"{where}: {key} must be one of {typing.get_args(tp)}, got {value!r}")
        return value
    if tp is dict:
        if isinstance(value, dict):
            return value
    elif tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads 1e12 (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
    elif tp is str:
        if isinstance(value, str):
            return value
        if isinstance(value, int | float) and not isinstance(value, bool):
            return str(value)
    raise InputError(f"{where}: {key} must be {getattr(tp, '__name__', tp)}, got {value!r}")
