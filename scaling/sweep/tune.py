"""``scaling sweep``: a Ray Tune random search over pretraining runs, pruned by ASHA.

Every trial is a Tune *function trainable* that applies its sampled values (dotted
configuration keys) onto the base configuration and fits the same ``TorchTrainer`` as
``scaling pretrain`` (same loop, same Ray Data crop stream), with Ray Train's storage under
``run.dir/trials/<trial_id>``, which is also the trial's ``run.dir`` (its own TensorBoard
files, ``train/<metric>`` by step). ``TuneReportCallback`` forwards every Train report to
Tune, so ASHA (``time_attr="step"``) sees the metric step by step and stops the poor trials
at its rungs. Tune's own storage is ``run.dir/tune`` (TensorBoard event files per trial,
``ray/tune/<metric>`` by report number, written by ``TBXLoggerCallback``); an
interrupted sweep run again with the same ``run.dir`` is restored from there and finished
trials are not run again.

At the end ``run.dir/trials.csv`` lists every trial and ``run.dir/best.yaml`` is the base
configuration with the best trial's values applied (a config ``scaling pretrain`` takes).
The best trial: among the trials that reached the largest step any trial reached (those
ASHA let finish), the best last reported metric; an early-stopped trial's metric is from
fewer steps and is not compared with finished ones.
"""

from __future__ import annotations

import contextlib
import csv
import math
import os
from pathlib import Path

from scaling.capacity import Capacity, detect, run_resources
from scaling.config import Config, apply, dump_config, to_dict
from scaling.errors import InputError

SPECS = ("loguniform", "uniform", "randint", "choice")


def flat_space(space: dict, prefix: str = "") -> dict[str, dict]:
    """``{dotted key: spec}`` from ``sweep.space`` (dotted keys, nested sections or both)."""
    out = {}
    for key, value in space.items():
        name = f"{prefix}{key}"
        if not isinstance(value, dict) or not value:
            raise InputError(f"sweep.space.{name}: expected a spec like {{uniform: [lo, hi]}}")
        if any(k in SPECS for k in value):
            if len(value) != 1:
                raise InputError(f"sweep.space.{name}: one spec of {', '.join(SPECS)}")
            out[name] = value
        else:
            out.update(flat_space(value, f"{name}."))
    return out


def _number(v, key: str) -> float:
    try:
        return float(v)  # YAML reads 1e-4 (no dot) as a string
    except (TypeError, ValueError):
        raise InputError(f"sweep.space.{key}: {v!r} is not a number") from None


def _spec_values(key: str, spec: dict) -> tuple[str, list]:
    (kind, args) = next(iter(spec.items()))
    if kind not in SPECS:
        raise InputError(f"sweep.space.{key}: unknown spec {kind!r} (have {', '.join(SPECS)})")
    if not isinstance(args, list) or not args:
        raise InputError(f"sweep.space.{key}: {kind} needs a list, got {args!r}")
    if kind == "choice":
        return kind, args
    if len(args) != 2:
        raise InputError(f"sweep.space.{key}: {kind} needs [lo, hi], got {args!r}")
    lo, hi = (_number(a, key) for a in args)
    if not lo < hi or (kind == "loguniform" and lo <= 0):
        raise InputError(f"sweep.space.{key}: {kind} needs 0 < lo < hi, got {args!r}")
    if kind == "randint":
        if lo != int(lo) or hi != int(hi):
            raise InputError(f"sweep.space.{key}: randint needs integers, got {args!r}")
        return kind, [int(lo), int(hi) - 1]
    return kind, [lo, hi]


def check_space(cfg: Config) -> dict[str, dict]:
    """Every key of ``sweep.space`` is a configuration key and every value it can take makes
    a valid configuration; the metric is in every report. Before Ray starts."""
    space = flat_space(cfg.sweep.space)
    if not space:
        raise InputError("sweep.space: empty (nothing to search)")
    base = to_dict(cfg)
    for key in space:
        node = base
        for part in key.split("."):
            if not isinstance(node, dict) or part not in node:
                raise InputError(f"sweep.space: unknown configuration key '{key}'")
            node = node[part]
        if isinstance(node, dict) or key.startswith(("sweep.", "run.")):
            raise InputError(f"sweep.space: '{key}' cannot be searched")
    for key, spec in space.items():
        kind, values = _spec_values(key, spec)
        for v in values:
            if kind == "randint":
                v = int(v)
            try:
                apply(base, {key: v}, "sweep.space")
            except InputError as e:
                raise InputError(f"sweep.space.{key}: {v!r} is not valid ({e})") from None
    t, metric = cfg.train, cfg.sweep.metric
    if metric.startswith("probe_"):
        if not t.eval_every:
            raise InputError(f"sweep.metric: {metric} needs train.eval_every")
        every, name = t.eval_every, "train.eval_every"
    elif metric == "val_loss":
        every, name = t.val_every, "train.val_every"
    else:
        return space
    # ASHA and Tune read the metric from every report: every reporting cadence must be a
    # multiple of the metric's (the final step always carries it)
    cadences = {"train.log_every": t.log_every, "train.checkpoint_every": t.checkpoint_every}
    cadences["train.val_every"] = t.val_every
    if t.eval_every:
        cadences["train.eval_every"] = t.eval_every
    for k, v in cadences.items():
        if v % every:
            raise InputError(
                f"{k}: {v} is not a multiple of {name} ({every}), so some reports would "
                f"lack sweep.metric {metric}"
            )
    return space


def _tune_space(space: dict[str, dict]) -> dict:
    from ray import tune

    out: dict = {}
    for key, spec in space.items():
        kind, values = _spec_values(key, spec)
        if kind == "choice":
            dist = tune.choice(values)
        elif kind == "randint":
            dist = tune.randint(values[0], values[1] + 1)
        else:
            dist = getattr(tune, kind)(*values)
        out[key.replace(".", "/")] = dist  # flat: Tune's loggers flatten with "/" too
    return out


def _values(config: dict) -> dict:
    return {k.replace("/", "."): v for k, v in config.items()}


def _trainable(base: dict, data: str, trials_dir: str):
    def trial(config: dict) -> None:
        import ray.tune
        from ray.train import CheckpointConfig, FailureConfig, RunConfig
        from ray.tune.integration.ray_train import TuneReportCallback

        from scaling.train.pretrain import build_trainer

        # Ray's 2 s worker poll for the trial's Train controller, not a local instance's
        # 0.25 s (scaling.parallel.POLL_S): when ASHA stops a trial, its worker group is
        # removed (_release_callback) before Tune's kill of the trial reaches the
        # controller it owns, and a fast-polling controller restarts the group in that
        # gap, on a placement group nothing removes (measured: the next trial never starts)
        os.environ["RAY_TRAIN_HEALTH_CHECK_INTERVAL_S"] = "2.0"
        cfg = apply(base, _values(config), "sweep.space")
        trial_id = ray.tune.get_context().get_trial_id()
        # the trial's own files (TensorBoard, metrics.jsonl, attempts) beside its checkpoints,
        # not in the sweep's run.dir where every trial would write into the same ones
        cfg.run.dir = str(Path(trials_dir) / trial_id)
        trainer = build_trainer(
            cfg,
            data,
            RunConfig(
                storage_path=trials_dir,
                name=trial_id,
                failure_config=FailureConfig(max_failures=cfg.train.max_failures),
                checkpoint_config=CheckpointConfig(num_to_keep=cfg.train.keep_checkpoints),
                callbacks=[TuneReportCallback()],
            ),
        )
        trainer.fit()

    return trial


TRIAL_CPU = 0.01  # the Tune function itself: it only drives its TorchTrainer


def _trial_cpus(cfg: Config) -> float:
    """CPUs one trial needs at once: the function, its workers and one Ray Data task."""
    return run_resources(cfg, TRIAL_CPU)[0]


def _release_callback():
    """A Tune callback that removes a trial's Ray Train placement groups when it ends.

    A trial ASHA stops is killed, Train controller and all; Train's own cleaner of an
    orphaned worker placement group needs the State API (the dashboard), which local runs
    here start without, so the group would keep its CPUs and the next trial could never
    start its workers. Groups first seen while a trial reports are that trial's (exact
    with one trial at a time; with several, a group is given to a trial running then).
    """
    import ray
    from ray.tune import Callback
    from ray.util.placement_group import PlacementGroup, remove_placement_group

    def live() -> dict:
        return {
            k: v
            for k, v in ray.util.placement_group_table().items()
            if v["state"] in ("CREATED", "PENDING", "RESCHEDULING")
        }

    class ReleasePlacementGroups(Callback):
        def __init__(self):
            self.seen: set[str] = set()
            self.owned: dict[str, set[str]] = {}

        def setup(self, **info):
            self.seen = set(live())

        def on_trial_result(self, iteration, trials, trial, result, **info):
            for pg, v in live().items():
                if pg in self.seen:
                    continue
                self.seen.add(pg)
                if list(v["bundles"].values()) != [{"CPU": TRIAL_CPU}]:  # not Tune's own
                    self.owned.setdefault(trial.trial_id, set()).add(pg)

        def _release(self, trial):
            for pg in self.owned.pop(trial.trial_id, ()):
                with contextlib.suppress(Exception):  # already removed by Train
                    remove_placement_group(PlacementGroup(ray.PlacementGroupID.from_hex(pg)))

        def on_trial_complete(self, iteration, trials, trial, **info):
            self._release(trial)

        def on_trial_error(self, iteration, trials, trial, **info):
            self._release(trial)

    return ReleasePlacementGroups()


def concurrency(cfg: Config, cap: Capacity | None = None) -> int:
    """``sweep.max_concurrent``, or as many trials as the cluster's shape holds at once
    (``scaling.capacity``; default: the shape of the cluster this process drives): each
    takes its workers' CPUs (and GPUs), one Ray Data task's CPUs and the Tune function's."""
    if cfg.sweep.max_concurrent:
        return cfg.sweep.max_concurrent
    return (cap or detect()).runs_at_once(*run_resources(cfg, TRIAL_CPU))


def check_fits(cfg: Config, cap: Capacity) -> None:
    """A trial's CPUs must fit in the cluster's shape: Ray Data only uses what Train and
    Tune leave, so otherwise a read task would never start."""
    need = _trial_cpus(cfg)
    if need > cap.cpus + 1e-9:
        raise InputError(
            f"data.map_cpus: a trial needs {need:g} CPUs at once (workers, one Ray Data "
            f"task and the Tune function) but {cap.source} has {cap.cpus:g}"
        )


def sweep(cfg: Config) -> dict:
    from scaling.parallel import init_ray
    from scaling.train.pretrain import check_run, prepare_data

    space = check_space(cfg)
    check_run(cfg)
    run_dir = Path(cfg.run.dir).resolve()
    run_dir.mkdir(parents=True, exist_ok=True)
    data = str(Path(prepare_data(cfg)).resolve())
    base = to_dict(cfg)
    base["data"]["path"] = data

    init_ray()
    import ray
    import ray.tune

    cap = detect()  # the shape, not what is up now: workers may autoscale from 0
    check_fits(cfg, cap)
    from ray.tune.logger import TBXLoggerCallback
    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.search import BasicVariantGenerator

    s = cfg.sweep
    steps = cfg.train.steps  # ASHA's max_t
    if "train.steps" in space:
        steps = max(steps, *(int(v) for v in _spec_values("train.steps", space["train.steps"])[1]))
    # the Tune function only drives the TorchTrainer: Train workers and Ray Data tasks
    # take their own resources, so the trial itself asks for a sliver of a CPU
    trainable = ray.tune.with_resources(
        _trainable(base, data, str(run_dir / "trials")), {"CPU": TRIAL_CPU}
    )
    tune_dir = run_dir / "tune"
    restored = ray.tune.Tuner.can_restore(str(tune_dir))
    if restored:
        tuner = ray.tune.Tuner.restore(str(tune_dir), trainable=trainable, resume_errored=True)
    else:
        tuner = ray.tune.Tuner(
            trainable,
            param_space=_tune_space(space),
            tune_config=ray.tune.TuneConfig(
                num_samples=s.trials,
                scheduler=ASHAScheduler(
                    time_attr="step",
                    metric=s.metric,
                    mode=s.direction,
                    max_t=steps,
                    grace_period=s.grace_period,
                    reduction_factor=s.reduction_factor,
                ),
                search_alg=BasicVariantGenerator(
                    random_state=s.seed, max_concurrent=concurrency(cfg, cap)
                ),
            ),
            run_config=ray.tune.RunConfig(
                storage_path=str(run_dir),
                name="tune",
                callbacks=[TBXLoggerCallback(), _release_callback()],
                verbose=0,
            ),
        )
    results = tuner.fit()
    return summarize(cfg, results, data, steps, restored)


def summarize(cfg: Config, results, data: str, max_steps: int, restored: bool) -> dict:
    """``trials.csv`` and ``best.yaml`` from Tune's results."""
    s = cfg.sweep
    run_dir = Path(cfg.run.dir).resolve()
    rows = []
    for r in results:
        m = r.metrics or {}
        values = _values(r.config or {})
        steps = int(m.get("step", 0))
        rows.append(
            {
                "trial_id": m.get("trial_id") or Path(r.path).name,
                **{f"param.{k}": v for k, v in sorted(values.items())},
                s.metric: m.get(s.metric, float("nan")),
                "status": "ERROR" if r.error else "TERMINATED",
                "stopped_early": r.error is None and steps < max_steps,
                "steps": steps,
                "path": r.path,
                "_values": values,
            }
        )
    rows.sort(key=lambda r: r["trial_id"])
    ok = [r for r in rows if r["status"] == "TERMINATED" and not math.isnan(r[s.metric])]
    if not ok:
        raise RuntimeError(f"sweep: no trial reported {s.metric}")
    top = max(r["steps"] for r in ok)
    sign = 1 if s.direction == "min" else -1
    best = min((r for r in ok if r["steps"] == top), key=lambda r: sign * r[s.metric])

    fields = [k for k in rows[0] if k != "_values"]
    tmp = run_dir / ".trials.csv.tmp"
    with tmp.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
    os.replace(tmp, run_dir / "trials.csv")

    base = to_dict(cfg)
    base["data"]["path"] = data
    base["run"]["dir"] = str(run_dir / "best")  # a pretrain of best.yaml writes beside
    best_cfg = apply(base, best["_values"])
    tmp = run_dir / ".best.yaml.tmp"
    tmp.write_text(dump_config(best_cfg))
    os.replace(tmp, run_dir / "best.yaml")
    return {
        "trials": len(rows),
        "stopped_early": sum(r["stopped_early"] for r in rows),
        "errored": sum(r["status"] == "ERROR" for r in rows),
        "metric": s.metric,
        "mode": s.direction,
        "best": {
            "trial_id": best["trial_id"],
            s.metric: best[s.metric],
            "steps": best["steps"],
            "params": best["_values"],
        },
        "best_yaml": str(run_dir / "best.yaml"),
        "trials_csv": str(run_dir / "trials.csv"),
        "restored": restored,
    }
