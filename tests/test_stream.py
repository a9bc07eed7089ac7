"""The crop stream: crops are true windows of training sites, every epoch covers every
training site, hold-out is exclusive, and Ray Train shards the stream across workers."""

import json
import subprocess
import sys
from collections import Counter
from dataclasses import replace

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import ray
import torch

from scaling.config import DataConfig
from scaling.curate.select import curate
from scaling.errors import InputError
from scaling.model.mae import self_standardize
from scaling.shards.dataset import open_dataset
from scaling.stream import pipeline
from scaling.stream import plan as plan_module
from scaling.stream.collate import CropBatch
from scaling.stream.crops import crop_table, grid_tiles, held_out, site_ids
from scaling.stream.pipeline import crop_stream, validation_tiles
from scaling.stream.plan import site_index, stream_plan

CFG = DataConfig(crop=64, crops_per_site=3, batch_size=32, val_fraction=0.1, map_cpus=0.5)


def all_sites(world) -> dict[int, np.ndarray]:
    """site id -> pixels (C, H, W), read with plain pyarrow."""
    out = {}
    for f in open_dataset(world).files:
        t = pq.read_table(f)
        for i, r in zip(site_ids(t), t.to_pylist(), strict=True):
            out[int(i)] = np.frombuffer(r["pixels"], r["dtype"]).reshape(
                r["channels"], r["height"], r["width"]
            )
    return out


def is_window(crop: np.ndarray, site: np.ndarray) -> bool:
    """Brute force: does ``crop`` equal some crop-sized window of ``site``?"""
    k = crop.shape[-1]
    _, h, w = site.shape
    return any(
        np.array_equal(site[:, y : y + k, x : x + k], crop)
        for y in range(h - k + 1)
        for x in range(w - k + 1)
    )


def collect(stream, batch_size=32):
    crops, ids = [], []
    for b in stream.iter_torch_batches(batch_size=batch_size, collate_fn=CropBatch()):
        assert b["crop"].dtype == torch.uint8 and b["crop"].shape[1:] == (6, 64, 64)
        crops.append(b["crop"].numpy())
        ids.append(b["site_id"].numpy())
    return np.concatenate(crops), np.concatenate(ids)


def test_held_out_is_a_stable_seeded_fraction():
    ids = np.arange(20000, dtype=np.int64) * 7919 + 13
    h = held_out(ids, seed=0, fraction=0.1)
    assert abs(h.mean() - 0.1) < 0.01
    assert np.array_equal(h, held_out(ids, seed=0, fraction=0.1))
    assert not np.array_equal(h, held_out(ids, seed=1, fraction=0.1))
    assert not held_out(ids, 0, 0.0).any()


def test_crop_table_cuts_true_windows_of_training_sites(tiny_world):
    f = open_dataset(tiny_world).files[0]
    t = pq.read_table(f)
    sites = dict(
        zip(
            site_ids(t),
            [
                np.frombuffer(p, np.uint8).reshape(6, 128, 128)
                for p in t.column("pixels").to_pylist()
            ],
            strict=True,
        )
    )
    kw = dict(crop=64, crops_per_site=3, channels=6, dtype="uint8", val_fraction=0.25, seed=0)
    crops, ids = crop_table(t, np.random.default_rng(5), **kw)
    train = [i for i in sites if not held_out(np.array([i]), 0, 0.25)[0]]
    assert Counter(ids.tolist()) == {i: 3 for i in train}
    assert all(is_window(c, sites[i]) for c, i in zip(crops[:12], ids[:12], strict=True))
    again, _ = crop_table(t, np.random.default_rng(5), **kw)
    assert np.array_equal(again, crops)  # a pure function of the generator
    # the in-batch shuffle: crops of one site are not all adjacent
    assert len(set(ids[:9].tolist())) > 3


def test_epochs_cover_every_training_site(tiny_world, ray_session):
    sites = all_sites(tiny_world)
    train = {i for i in sites if not held_out(np.array([i]), CFG.seed, CFG.val_fraction)[0]}
    crops, ids = collect(crop_stream(tiny_world, CFG, epochs=2))
    assert Counter(ids.tolist()) == {i: 2 * CFG.crops_per_site for i in train}
    rng = np.random.default_rng(0)
    for j in rng.choice(len(ids), 10, replace=False):
        assert is_window(crops[j], sites[int(ids[j])])
    # deterministic for the seed, whatever the scheduling; epochs differ from each other
    crops2, ids2 = collect(crop_stream(tiny_world, CFG, epochs=2))
    key = lambda c, i: sorted(zip(i.tolist(), (x.tobytes() for x in c), strict=True))  # noqa: E731
    assert key(crops, ids) == key(crops2, ids2)
    one, one_ids = collect(crop_stream(tiny_world, CFG, epochs=1))
    assert len(set(key(one, one_ids)) & set(key(crops, ids))) == len(one)  # epoch 0 inside
    assert len(one) * 2 == len(crops)


def test_batches_held_stay_intact_after_later_blocks(tiny_world, ray_session, monkeypatch):
    """CropBatch does not copy the crops out of the stream's blocks: a batch held to the end
    of the stream, after later blocks came and went, still equals the copy taken when it
    arrived."""
    monkeypatch.setattr(plan_module, "TASK_BYTES", 1)  # one part a task: many blocks
    held, copies = [], []
    stream = crop_stream(tiny_world, CFG, epochs=3)
    for b in stream.iter_torch_batches(batch_size=CFG.batch_size, collate_fn=CropBatch()):
        held.append(b["crop"])
        copies.append(b["crop"].clone())
    assert len(held) > 10
    assert all(torch.equal(h, c) for h, c in zip(held, copies, strict=True))


def test_start_skips_consumed_tasks(tiny_world, ray_session, monkeypatch):
    monkeypatch.setattr(plan_module, "TASK_BYTES", 1)  # one part per task
    full = Counter(collect(crop_stream(tiny_world, CFG, epochs=1))[1].tolist())
    rest = Counter(collect(crop_stream(tiny_world, CFG, epochs=1, start=2))[1].tolist())
    assert 0 < sum(rest.values()) < sum(full.values()) and not (rest - full)
    with pytest.raises(InputError, match="past the end"):
        crop_stream(tiny_world, CFG, epochs=1, start=10**6)


def test_position_skips_tasks_without_reading_them(tiny_world, ray_session, monkeypatch):
    """A StreamPosition moved to task k before the stream runs: the stream yields exactly
    the crops of a stream started at k, and the tasks before k open no file."""
    monkeypatch.setattr(plan_module, "TASK_BYTES", 1)
    position = pipeline.StreamPosition.remote(0)
    stream = crop_stream(tiny_world, CFG, epochs=2, position=position)
    ray.get(position.set.remote(3))
    got = collect(stream)
    want = collect(crop_stream(tiny_world, CFG, epochs=2, start=3))
    key = lambda c, i: sorted(zip(i.tolist(), (x.tobytes() for x in c), strict=True))  # noqa: E731
    assert key(*got) == key(*want) and len(got[1]) > 0
    ds = open_dataset(tiny_world)
    plan = stream_plan(ds, CFG, site_index(ds, CFG), epochs=2)
    assert len(got[1]) == sum(plan.task_crops()[3:])


def test_tasks_cover_parts_once_per_epoch(tiny_world, monkeypatch):
    monkeypatch.setattr(plan_module, "TASK_BYTES", 4 << 20)  # a few parts a task
    ds = open_dataset(tiny_world)
    plan = stream_plan(ds, CFG, site_index(ds, CFG), epochs=3, part_bytes=1 << 20)
    assert len(plan.parts) > len(ds.files) and plan.per_epoch > 1  # shards split into parts
    orders = []
    for e in range(3):
        seen = [
            p for t in range(e * plan.per_epoch, (e + 1) * plan.per_epoch) for p in plan.task(t)
        ]
        assert sorted(seen, key=str) == sorted(plan.parts, key=str)
        orders.append(seen)
    assert orders[0] != orders[1] != orders[2]  # a new file order every epoch


def test_a_curation_plans_only_its_wells_row_groups(tiny_world, tmp_path, monkeypatch):
    """Shards of one well per row group (the layout of wells of GROUP_BYTES or more): a
    40% curation's plan is exactly the row groups holding one of its training sites
    (brute force over every row group)."""
    from scaling.shards import format as fmt

    monkeypatch.setattr(fmt, "GROUP_BYTES", 1)
    for f in open_dataset(tiny_world).files:
        fmt.write_shard(pq.read_table(f), tmp_path / "w" / "shards" / f.name)
    curate(tmp_path / "w", "random", tmp_path / "c", fraction=0.4)
    cur = open_dataset(tmp_path / "c")
    keep = cur.selected_keys()
    want, total = set(), 0
    for f in cur.files:
        pf = pq.ParquetFile(f)
        for g in range(pf.metadata.num_row_groups):
            t = pf.read_row_group(g, columns=["experiment", "plate", "well", "site"])
            wells = {f"{r['experiment']}/{r['plate']}/{r['well']}" for r in t.to_pylist()}
            assert len(wells) == 1  # one well a row group
            total += 1
            train = ~held_out(site_ids(t), CFG.seed, CFG.val_fraction)
            if wells <= keep and train.any():
                want.add((str(f), g))
    plan = stream_plan(cur, CFG, site_index(cur, CFG), epochs=1)
    got = {(p.path, g) for p in plan.parts for g in p.groups}
    assert got == want and 0.3 * total < len(got) < 0.5 * total


def test_curation_restricts_the_stream(tiny_world, tmp_path, ray_session):
    cur = tmp_path / "cur"
    curate(tiny_world, "random", cur, wells_count=40)
    wells = pa.Table.from_pandas(__import__("pandas").read_parquet(cur / "wells.parquet"))
    keep = {(r["experiment"], r["plate"], r["well"]) for r in wells.to_pylist()}
    allowed = set()
    for f in open_dataset(tiny_world).files:
        t = pq.read_table(f, columns=["experiment", "plate", "well", "site"])
        for i, r in zip(site_ids(t), t.to_pylist(), strict=True):
            if (r["experiment"], r["plate"], r["well"]) in keep:
                allowed.add(int(i))
    _, ids = collect(crop_stream(cur, CFG))
    assert set(ids.tolist()) <= allowed and len(set(ids.tolist())) > 0.7 * len(allowed)


def test_validation_tiles_are_fixed_held_out_grid_tiles(tiny_world, tmp_path, ray_session):
    cfg = replace(CFG, val_tiles=40)
    v = validation_tiles(tiny_world, cfg)
    assert v.shape == (40, 6, 64, 64) and v.dtype == np.uint8
    sites = all_sites(tiny_world)
    held = {
        i: s for i, s in sites.items() if held_out(np.array([i]), cfg.seed, cfg.val_fraction)[0]
    }
    # brute force: tile j of every held-out site (in id order) before tile j + 1
    tiled = [grid_tiles(held[i], 64) for i in sorted(held)]
    want = [t[j] for j in range(4) for t in tiled if j < len(t)][:40]
    assert np.array_equal(v, np.stack(want))
    # the same set for a curation: losses compare across curations
    curate(tiny_world, "random", tmp_path / "c", fraction=0.3)
    assert np.array_equal(v, validation_tiles(tmp_path / "c", cfg))
    # and none of it is trained on
    _, ids = collect(crop_stream(tiny_world, CFG))
    assert not set(ids.tolist()) & set(held)


def test_grid_tiles_and_self_standardize():
    site = np.arange(2 * 130 * 100).reshape(2, 130, 100)
    t = grid_tiles(site, 32)
    assert t.shape == (4 * 3, 2, 32, 32)
    assert np.array_equal(t[4], site[:, 32:64, 32:64])  # row 1, column 1
    x = torch.randint(0, 255, (5, 6, 16, 16), dtype=torch.uint8)
    x[0, 2] = 7  # a constant channel stays finite
    z = self_standardize(x)
    assert z.dtype == torch.float32 and torch.isfinite(z).all()
    m, s = z.mean(dim=(-2, -1)), z.std(dim=(-2, -1), unbiased=False)
    assert torch.allclose(m, torch.zeros_like(m), atol=1e-5)
    assert torch.allclose(s[1:], torch.ones_like(s[1:]), atol=1e-4)


def test_bad_stream_config(tiny_world):
    with pytest.raises(InputError, match="data.crop"):
        crop_stream(tiny_world, replace(CFG, crop=256))


def _train_loop(config):
    import ray.train

    it = ray.train.get_dataset_shard("train")
    ids = []
    for _epoch in range(2):  # each pass over the shard is one epoch
        for b in it.iter_torch_batches(batch_size=16, collate_fn=CropBatch()):
            assert b["crop"].shape[1:] == (6, 64, 64)
            ids += b["site_id"].tolist()
    rank = ray.train.get_context().get_world_rank()
    with open(f"{config['out']}/rank{rank}.json", "w") as f:
        json.dump(ids, f)


def test_ray_train_workers_share_the_stream(tiny_world, tmp_path, ray_session):
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    sites = all_sites(tiny_world)
    train = {i for i in sites if not held_out(np.array([i]), CFG.seed, CFG.val_fraction)[0]}
    trainer = TorchTrainer(
        _train_loop,
        train_loop_config={"out": str(tmp_path)},
        scaling_config=ScalingConfig(num_workers=2, resources_per_worker={"CPU": 0.25}),
        datasets={"train": crop_stream(tiny_world, CFG)},
        run_config=RunConfig(storage_path=str(tmp_path / "storage"), name="shard"),
    )
    trainer.fit()
    a, b = (json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1))
    # each epoch, the two workers together see the training crops once, in equal parts
    # (Train's equal split may drop a few rows to keep the parts equal, never adds any)
    seen, full = Counter(a) + Counter(b), {i: 2 * CFG.crops_per_site for i in train}
    assert set(seen) == set(full) and all(seen[i] <= full[i] for i in full)
    assert sum(full.values()) - sum(seen.values()) <= 0.01 * sum(full.values())
    assert len(a) == len(b)


def test_tasks_within_counts_whole_leading_tasks(tiny_world, monkeypatch):
    monkeypatch.setattr(plan_module, "TASK_BYTES", 1)  # one part per task
    ds = open_dataset(tiny_world)
    plan = stream_plan(ds, CFG, site_index(ds, CFG), epochs=2)
    sizes = plan.task_crops()
    first_two = sizes[0] + sizes[1]
    assert plan.tasks_within(0) == 0 and plan.crops_before(2) == first_two
    assert plan.tasks_within(first_two) == 2
    assert plan.tasks_within(first_two - 1) == 1
    assert plan.tasks_within(sum(sizes)) == plan.tasks
    # the per-task counts are what the stream really yields
    assert sum(sizes[: plan.per_epoch]) == len(collect(crop_stream(tiny_world, CFG))[1])


def test_staged_shards_stream_the_same_crops(tiny_world, tmp_path, ray_session):
    staged = replace(CFG, stage_dir=str(tmp_path / "nvme"))
    got, want = collect(crop_stream(tiny_world, staged)), collect(crop_stream(tiny_world, CFG))
    key = lambda c, i: sorted(zip(i.tolist(), (x.tobytes() for x in c), strict=True))  # noqa: E731
    assert key(*got) == key(*want)
    copies = sorted(p.name for p in (tmp_path / "nvme").rglob("*.parquet"))
    assert copies == sorted(f.name for f in open_dataset(tiny_world).files)


def test_memory_source_holds_exactly_the_training_sites(tiny_world, tmp_path):
    from scaling.stream.memory import load_sites, training_sites

    sites = all_sites(tiny_world)
    held = {i for i in sites if held_out(np.array([i]), CFG.seed, CFG.val_fraction)[0]}
    want = sorted(sites[i].tobytes() for i in sites if i not in held)
    got = load_sites(tiny_world, CFG)
    assert got.dtype == torch.uint8 and got.shape[1:] == (6, 128, 128)
    assert sorted(s.numpy().tobytes() for s in got) == want
    n, nbytes = training_sites(tiny_world, CFG)
    assert n == len(want) and nbytes == got.numel()
    # a curation: only its selected wells
    curate(tiny_world, "random", tmp_path / "c", fraction=0.3)
    assert len(load_sites(tmp_path / "c", CFG)) == training_sites(tmp_path / "c", CFG)[0] < n


def test_memory_crops_are_seeded_windows_visiting_every_site_per_epoch():
    from scaling.stream.memory import SiteCrops

    g = torch.Generator().manual_seed(0)
    sites = torch.randint(0, 256, (7, 3, 20, 24), generator=g, dtype=torch.uint8)
    crops = SiteCrops(sites, crop=8, crops_per_site=3, seed=5)
    assert crops.per_epoch == 21
    plan = crops.plan(0, 21)  # one epoch: every site crops_per_site times
    assert torch.bincount(plan[:, 0], minlength=7).tolist() == [3] * 7
    x = crops.batch(15, 12)  # across the epoch boundary
    for (s, y, xo), c in zip(crops.plan(15, 12).tolist(), x, strict=True):
        assert torch.equal(c, sites[s, :, y : y + 8, xo : xo + 8])  # brute force
    assert torch.equal(x, torch.cat([crops.batch(15, 6), crops.batch(21, 6)]))
    again = SiteCrops(sites, crop=8, crops_per_site=3, seed=5)
    assert torch.equal(again.batch(15, 12), x)  # a pure function of (seed, position)
    other = SiteCrops(sites, crop=8, crops_per_site=3, seed=6)
    assert not torch.equal(other.batch(15, 12), x)
    assert not torch.equal(crops.plan(21, 21), plan)  # each epoch draws anew


def test_read_side_modules_do_not_import_torch():
    """Processes that only plan, read or coordinate (a streaming_split's coordinator, the
    embedding read tasks) unpickle these modules: they must start without torch."""
    code = (
        "import sys, scaling.stream.pipeline, scaling.evaluate.tiles; print('torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
