"""The command line end to end: synth, stream with a montage, the demo, the data bench."""

import json
from pathlib import Path

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


def test_demo_end_to_end_on_a_finished_tiny_ladder(tiny_ladder):
    """``scaling demo`` on the tiny world with the tiny ladder, whose runs the session's
    fixture finished (the ladder is idempotent, so the demo reuses them): it fits, writes
    the report and prints where it is, three findings and its checks (a)-(e). The tiny
    ladder trains far too little to show learning, so check (a) fails, and a failed check
    is exit status 1; the status always follows the printed checks."""
    out, *_ = tiny_ladder
    config = Path(__file__).parent.parent / "jobs/configs/ladder-tiny.yaml"
    rc, stdout, err = run_cli(
        "demo", "--preset", "tiny", "--config", config, "--out", out, timeout=600
    )
    assert "ladder: 8 runs, 8 already done, 0 to run" in stdout
    report = out / "ladder" / "report" / "report.html"
    assert report.is_file() and f"The report: {report}" in stdout
    fit = json.loads((out / "ladder" / "fit" / "fit.json").read_text())
    assert {"E", "A", "B", "alpha", "beta", "ci", "determined"} <= set(fit["loss_law"])
    findings = stdout.split("Findings:")[1].split("Checks:")[0].strip().splitlines()
    assert len(findings) == 3 and all(f.strip().startswith("- ") for f in findings)
    checks = stdout.split("Checks:")[1].strip().splitlines()
    marks = [c.strip().split("]")[0] + "]" for c in checks[:5]]
    assert marks[3:] == ["[info]", "[info]"] and set(marks[:3]) <= {"[ok]", "[NOT MET]"}
    assert "at the top budget" in checks[0] and "[NOT MET]" in checks[0]
    assert rc == (1 if "[NOT MET]" in marks else 0), err
    assert "compute utilisation:" in stdout
    assert "data:image/png;base64," in report.read_text()


def test_data_bench_lines(tiny_world, ray_session):
    lines = list(bench_data(str(tiny_world), epochs=1, repeats=1, wells=False))
    assert [x["case"] for x in lines] == [
        "stream-1-consumer",
        "stream-1-consumer-batch64",
        "stream-2-consumers",
        "read_parquet-1-consumer",
        "curation-40pct-bytes",
        "validation-tiles-bytes",
    ]
    for x in lines:
        assert set(x) >= BENCH_KEYS and x["ours"] > 0 and x["anchor_value"] > 0
        assert abs(x["ratio"] - x["ours"] / x["anchor_value"]) < 1e-12
        json.dumps(x)
    # the two-consumer split may drop a few rows to keep its parts equal
    assert 0.99 * lines[0]["crops"] <= lines[2]["crops"] <= lines[0]["crops"]
    # the tiny world's small wells share row groups: a 40% curation reads about the bytes
    # it read before; the validation tiles read less than every shard's pixels
    small, tiles = lines[4:]
    assert small["ratio"] < 1.1 and tiles["ratio"] < 1.0


def test_curation_bytes_follow_the_wells_kept(tiny_world, tmp_path, monkeypatch):
    """Wells of a row group each (as real plates' wells): one epoch of a 40% curation
    reads about 40% of the bytes the earlier layout and reads took, for the same crops."""
    import pyarrow.parquet as pq

    from scaling.bench.data import curation_bytes
    from scaling.config import DataConfig
    from scaling.shards import format as fmt
    from scaling.shards.dataset import open_dataset

    monkeypatch.setattr(fmt, "GROUP_BYTES", 1)
    for f in open_dataset(tiny_world).files:
        fmt.write_shard(pq.read_table(f), tmp_path / "w" / "shards" / f.name)
    x = curation_bytes(open_dataset(tmp_path / "w"), DataConfig(), "curation")
    assert 0.3 < x["ratio"] < 0.5 and x["crops"] > 0


def test_flops_bench_lines():
    rc, out, err = run_cli("bench", "flops", "--json")
    assert rc == 0, err
    lines = [json.loads(x) for x in out.splitlines()]
    assert [x["case"].split()[0] for x in lines] == [
        "cpu-2xs",
        "cpu-xs",
        "cpu-s",
        "cpu-sm",
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
