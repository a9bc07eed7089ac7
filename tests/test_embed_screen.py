"""``scaling embed``: a whole screen's well embeddings at one block, streamed, resumable."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import torch

from scaling.errors import InputError
from scaling.evaluate import screen as screen_mod
from scaling.evaluate.embed import (
    ModelSpec,
    build,
    embed_stream,
    embed_wells,
    find_checkpoint,
    load_spec,
)
from scaling.evaluate.screen import embed_screen
from scaling.evaluate.table import read_embeddings
from scaling.evaluate.tiles import WellMeans, screen
from scaling.shards.dataset import open_dataset, well_keys
from scaling.stream.crops import decode_sites, grid_tiles
from tests.conftest import run_cli

KEY = ["experiment", "plate", "well"]


def by_key(wells: pd.DataFrame, X: np.ndarray) -> dict:
    return {"/".join(r): x for r, x in zip(wells[KEY].itertuples(index=False), X, strict=True)}


def direct_loop(model, data) -> dict:
    """Every well at every block, by a direct loop: each shard's sites cut into grid tiles,
    every tile through ``embed_blocks``, tiles averaged per well: {key: (depth, D)}."""
    tiles: dict[str, list] = {}
    for f in open_dataset(data).files:
        t = pq.read_table(f)
        for key, site in zip(well_keys(t).to_pylist(), decode_sites(t), strict=True):
            tiles.setdefault(key, []).append(grid_tiles(site, 64))
    with torch.no_grad():
        return {
            k: model.embed_blocks(torch.from_numpy(np.concatenate(v))).mean(0).numpy()
            for k, v in tiles.items()
        }


@pytest.fixture(scope="module")
def brute_force(smoke_run, tiny_world):
    _, result, _ = smoke_run
    return direct_loop(build(load_spec(result["checkpoint"])), tiny_world)


def feed(expected: dict, tiles: list, order) -> tuple[dict, list[int], WellMeans]:
    """Tiles in ``order``, in batches of 7 summed per well as the actors do."""
    means, got, held = WellMeans(expected), {}, []
    for start in range(0, len(order), 7):
        batch = [tiles[i] for i in order[start : start + 7]]
        keys = sorted({k for k, _ in batch})
        sums = np.array([[sum(v for k2, v in batch if k2 == k)] for k in keys])
        n = np.array([sum(k2 == k for k2, _ in batch) for k in keys])
        done, x = means.add({"key": np.array(keys, object), "n": n, "sum": sums})
        got.update(zip(done, x[:, 0], strict=True))
        held.append(len(means.open))
    return got, held, means


def test_wellmeans_hands_on_each_well_once_complete_and_holds_only_open_ones():
    rng = np.random.default_rng(0)
    expected = {f"w{i}": int(rng.integers(1, 6)) for i in range(40)}
    tiles = [(k, rng.normal(size=3)) for k, n in expected.items() for _ in range(n)]
    got, _, means = feed(expected, tiles, rng.permutation(len(tiles)))  # any order
    assert set(got) == set(expected) and not means.open
    for k in expected:  # brute force: the mean of the well's tiles
        want = np.mean([v for k2, v in tiles if k2 == k], axis=0)
        np.testing.assert_allclose(got[k], want, rtol=1e-6)
    _, held, _ = feed(expected, tiles, np.arange(len(tiles)))  # as read: well after well
    assert max(held) <= 2  # only the wells a batch cuts through are held


def test_an_interrupted_embed_resumes_from_its_parts_and_equals_the_direct_loop(
    smoke_run, tiny_world, brute_force, tmp_path, monkeypatch
):
    _, result, _ = smoke_run
    out = tmp_path / "emb.parquet"
    real, calls = screen_mod.write_part, []

    def crash_after_two(*a):
        if len(calls) == 2:
            raise KeyboardInterrupt  # the job is killed after two parts
        calls.append(1)
        real(*a)

    monkeypatch.setattr(screen_mod, "write_part", crash_after_two)
    with pytest.raises(KeyboardInterrupt):
        embed_screen(result["checkpoint"], tiny_world, out, block=1, progress=False, part_wells=40)
    assert not out.exists() and len(list(tmp_path.glob(".emb.parquet.*/part-*"))) == 2
    monkeypatch.setattr(screen_mod, "write_part", real)
    s = embed_screen(result["checkpoint"], tiny_world, out, block=1, progress=False, part_wells=40)
    assert s["resumed_wells"] >= 80 and s["wells"] == len(brute_force) and s["block"] == 1
    got_wells, X = read_embeddings(out)
    assert not got_wells.duplicated(KEY).any() and X.dtype == np.float32
    assert set(pq.read_schema(out).names) >= {*KEY, "perturbation", "is_control", "features"}
    got = by_key(got_wells, X)
    assert got.keys() == brute_force.keys()
    for k, want in brute_force.items():
        np.testing.assert_allclose(got[k], want[0], rtol=1e-4, atol=1e-5)
    assert not list(tmp_path.glob(".emb.parquet.*"))  # parts merged and removed
    meta = json.loads(pq.read_schema(out).metadata[b"scaling"])
    assert meta["block"] == 1 and len(meta["channels"]) == 6


def test_block_best_reads_the_evaluation_and_bad_blocks_are_refused(
    smoke_run, tiny_world, brute_force, tmp_path
):
    _, result, _ = smoke_run
    ev = tmp_path / "eval"
    ev.mkdir()
    (ev / "summary.json").write_text(json.dumps({"mae": {"best_block": 2, "blocks": 2}}))
    out = tmp_path / "e.parquet"
    s = embed_screen(result["checkpoint"], tiny_world, out, evaluation=ev, progress=False)
    assert s["block"] == 2 and s["depth"] == 2
    got = by_key(*read_embeddings(out))
    for k, want in brute_force.items():
        np.testing.assert_allclose(got[k], want[1], rtol=1e-4, atol=1e-5)
    code, _, err = run_cli(
        "embed", "--checkpoint", result["checkpoint"], "--data", tiny_world,
        "--out", tmp_path / "f.parquet", "--block", "7",
    )  # fmt: skip
    assert code == 2 and "not a block" in err and len(err.strip().splitlines()) == 1
    for block, msg in (("best", "no evaluation summary.json"), ("x", "neither")):
        with pytest.raises(InputError, match=msg):
            embed_screen(result["checkpoint"], tiny_world, tmp_path / "f.parquet", block=block)
    assert not (tmp_path / "f.parquet").exists()
    with pytest.raises(InputError, match="is inside the input"):
        embed_screen(result["checkpoint"], tiny_world, tiny_world / "e.parquet", block=1)


def test_fixed_and_marginal_recovers_a_planted_line():
    from scaling.bench.embed import fixed_and_marginal

    fixed, marginal = fixed_and_marginal((2.5 + 0.01 * 96, 96), (2.5 + 0.01 * 1472, 1472))
    assert fixed == pytest.approx(2.5) and marginal == pytest.approx(0.01)
    with pytest.raises(ValueError, match="must be larger"):
        fixed_and_marginal((1.0, 96), (2.0, 96))


def test_bench_embed_lines(tiny_world):
    from scaling.bench.embed import bench_embed

    lines = list(bench_embed(str(tiny_world), size="cpu-xs", repeats=1))  # depth 2
    from scaling.bench.embed import ANCHOR, TUNED

    assert [x["case"] for x in lines] == [
        "wells-block-1-of-2", "startup-block-1-of-2", "job-block-1-of-2",
        "wells-block-1-of-2", "job-block-1-of-2",
        "wells-block-2-of-2", "startup-block-2-of-2", "job-block-2-of-2",
        "wells-block-2-of-2", "job-block-2-of-2",
        "truncation-block-1-of-2",
    ]  # fmt: skip
    # the plain loop in this process, then the same loop in a process under our allocator
    assert [x["anchor"] for x in lines[:5]] == [ANCHOR] * 3 + [TUNED] * 2
    for x in lines:
        assert np.isfinite(x["ours"]) and x["anchor_value"] != 0
        assert x["ratio"] == pytest.approx(x["ours"] / x["anchor_value"])
    wells, startup, job = lines[:3]
    assert wells["wells"] == 192 and 0 < wells["small_wells"] < 192
    assert wells["unit"] == job["unit"] == "s/well" and startup["unit"] == "s"
    # the line through the two jobs passes through the whole job: fixed + marginal * wells
    # (medians of one repeat are the values themselves)
    assert startup["ours"] + wells["ours"] * 192 == pytest.approx(job["ours"] * 192)
    assert job["ours"] > 0 and job["anchor_value"] > 0


def test_a_kept_model_is_rebuilt_when_its_weights_change(
    smoke_run, tiny_world, brute_force, tmp_path
):
    """Embedding workers keep their model for the next job; new weights at the same path
    (a run that trained on) must not be embedded with the old ones."""
    from safetensors.torch import save_file

    _, result, _ = smoke_run
    ckpt = tmp_path / "ckpt"
    shutil.copytree(find_checkpoint(result["checkpoint"]), ckpt)
    wells, E = embed_wells(tiny_world, load_spec(ckpt), progress=False)
    got = by_key(wells, E[0])
    for k, want in brute_force.items():
        np.testing.assert_allclose(got[k], want[0], rtol=1e-4, atol=1e-5)
    other = build(ModelSpec(load_spec(ckpt).cfg, seed=1))  # different weights, same path
    save_file(other.state_dict(), str(ckpt / "model.safetensors"))
    wells, E = embed_wells(tiny_world, load_spec(ckpt), progress=False)
    got, want = by_key(wells, E[0]), direct_loop(other, tiny_world)
    assert got.keys() == want.keys()
    for k in want:
        np.testing.assert_allclose(got[k], want[k][0], rtol=1e-4, atol=1e-5)
        assert not np.allclose(got[k], brute_force[k][0], rtol=1e-2)


def test_the_gpu_clusters_actor_pool_embeds_as_the_tasks_do(smoke_run, tiny_world, brute_force):
    """GPU clusters embed in an actor pool (one bf16 actor a GPU); the same pool on CPU must
    give what the direct loop gives, so that path runs in a suite without GPUs."""
    _, result, _ = smoke_run
    spec = load_spec(result["checkpoint"])
    scr = screen(tiny_world, spec.crop)
    got = {}
    for keys, x in embed_stream(scr, spec, actors=1, actor_pool=True):
        got.update(zip(keys, x, strict=True))
    assert got.keys() == brute_force.keys()
    for k, want in brute_force.items():
        np.testing.assert_allclose(got[k], want, rtol=1e-4, atol=1e-5)
