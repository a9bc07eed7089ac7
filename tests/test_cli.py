"""The command line end to end: synth, stream with a montage, the demo, the data bench."""

import json

import numpy as np
from PIL import Image

from scaling.bench.data import bench_data
from tests.conftest import run_cli

BENCH_KEYS = {"bench", "case", "ours", "anchor", "anchor_value", "ratio", "unit"}


def test_synth_then_stream_with_montage(tmp_path):
    rc, out, err = run_cli("synth", "--out", tmp_path / "w", "--preset", "tiny", "--seed", "3")
    assert rc == 0, err
    assert "48 genes" in out and (tmp_path / "w" / "world.json").is_file()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no partial folder
    rc, _, err = run_cli("synth", "--out", tmp_path / "w", "--preset", "tiny")
    assert rc == 2 and "--overwrite" in err  # never clobbers silently
    png = tmp_path / "m.png"
    rc, out, err = run_cli(
        "stream",
        "--data",
        tmp_path / "w",
        "--batches",
        "3",
        "--set",
        "data.batch_size=16",
        "--montage",
        png,
    )
    assert rc == 0, err
    assert "streamed 48 crops" in out
    img = np.asarray(Image.open(png))
    assert img.ndim == 3 and img.shape[2] == 3 and img.std() > 10  # a real picture


def test_demo_tells_what_it_made(tmp_path):
    rc, out, err = run_cli("demo", "--preset", "tiny", "--out", tmp_path / "demo")
    assert rc == 0, err
    for made in ("world", "curated-random", "crops.png"):
        assert (tmp_path / "demo" / made).exists() and made in out
    assert "experiments" in out and "crops/s" in out


def test_data_bench_lines(tiny_world, ray_session):
    lines = list(bench_data(str(tiny_world), epochs=1, repeats=1))
    assert [x["case"] for x in lines] == [
        "stream-1-consumer",
        "stream-1-consumer-batch64",
        "stream-2-consumers",
        "read_parquet-1-consumer",
    ]
    for x in lines:
        assert set(x) >= BENCH_KEYS and x["ours"] > 0 and x["anchor_value"] > 0
        assert abs(x["ratio"] - x["ours"] / x["anchor_value"]) < 1e-12
        json.dumps(x)
    # the two-consumer split may drop a few rows to keep its parts equal
    assert 0.99 * lines[0]["crops"] <= lines[2]["crops"] <= lines[0]["crops"]


def test_flops_bench_lines():
    rc, out, err = run_cli("bench", "flops", "--json")
    assert rc == 0, err
    lines = [json.loads(x) for x in out.splitlines()]
    assert [x["case"].split()[0] for x in lines] == [
        "cpu-xs",
        "cpu-s",
        "cpu-m",
        "cpu-l",
        "S/16",
        "B/8",
        "L/8",
        "H/8",
        "G/8",
    ]
    for x in lines:
        assert set(x) >= BENCH_KEYS and abs(x["ratio"] - 1) < 0.02
        assert x["encoder"] + x["decoder"] == x["total"]
