"""The crop stream: crops are true windows of training sites, every epoch covers every
training site, hold-out is exclusive, and Ray Train shards the stream across workers."""

import json
from collections import Counter
from dataclasses import replace

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from scaling.config import DataConfig
from scaling.curate.select import curate
from scaling.errors import InputError
from scaling.model.mae import self_standardize
from scaling.shards.dataset import open_dataset
from scaling.stream.crops import crop_table, grid_tiles, held_out, site_ids
from scaling.stream.pipeline import CropBatch, crop_stream, validation_tiles

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


def test_start_skips_consumed_tasks(tiny_world, ray_session, monkeypatch):
    from scaling.stream import pipeline

    monkeypatch.setattr(pipeline, "TASK_BYTES", 1)  # one part per task: six tasks an epoch
    full = Counter(collect(crop_stream(tiny_world, CFG, epochs=1))[1].tolist())
    rest = Counter(collect(crop_stream(tiny_world, CFG, epochs=1, start=2))[1].tolist())
    assert 0 < sum(rest.values()) < sum(full.values()) and not (rest - full)
    with pytest.raises(InputError, match="past the end"):
        crop_stream(tiny_world, CFG, epochs=1, start=10**6)


def test_tasks_cover_parts_once_per_epoch(tiny_world):
    from scaling.stream.pipeline import plan_parts, plan_tasks

    parts = plan_parts(open_dataset(tiny_world), part_bytes=2 << 20)
    assert len(parts) > len(open_dataset(tiny_world).files)  # shards split into parts
    items = plan_tasks(parts, seed=0, epochs=3)
    for e in range(3):
        seen = [
            (p, tuple(g))
            for it in items
            if it["epoch"] == e
            for p, g in zip(it["paths"], it["groups"], strict=True)
        ]
        assert sorted(seen) == sorted((p, tuple(g)) for p, g, _ in parts)
    orders = [
        [
            (p, tuple(g))
            for it in items
            if it["epoch"] == e
            for p, g in zip(it["paths"], it["groups"], strict=True)
        ]
        for e in range(3)
    ]
    assert orders[0] != orders[1] != orders[2]  # a new file order every epoch
    assert [it["task"] for it in items] == list(range(len(items)))


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
    assert np.array_equal(v, validation_tiles(tiny_world, cfg))
    sites = all_sites(tiny_world)
    held = {
        i: s for i, s in sites.items() if held_out(np.array([i]), cfg.seed, cfg.val_fraction)[0]
    }
    tiles = {t.tobytes() for s in held.values() for t in grid_tiles(s, 64)}
    assert all(t.tobytes() in tiles for t in v)
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
    from scaling.stream import pipeline

    monkeypatch.setattr(pipeline, "TASK_BYTES", 1)  # one part per task
    ds = open_dataset(tiny_world)
    parts = pipeline.plan_parts(ds)
    counts = pipeline.part_crops(ds, CFG, parts)
    crops = dict(zip([(p, tuple(g)) for p, g, _ in parts], counts, strict=True))
    items = pipeline.plan_tasks(parts, CFG.seed, 2)
    sizes = [crops[(it["paths"][0], tuple(it["groups"][0]))] for it in items]
    first_two = sizes[0] + sizes[1]

    def within(done):
        return pipeline.tasks_within(parts, counts, CFG.seed, 2, done)

    assert within(0) == 0
    assert within(first_two) == 2
    assert within(first_two - 1) == 1
    assert within(sum(sizes)) == len(items)
    # the per-part counts are what the stream really yields
    assert sum(sizes[: len(parts)]) == len(collect(crop_stream(tiny_world, CFG))[1])


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
