"""``scaling ingest`` on small real image files (PNG and TIFF, 8- and 16-bit) and CSVs."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import tifffile
from PIL import Image

from scaling.errors import InputError
from scaling.shards.ingest import ingest

RXRX = "{plate}/{well}_s{site}_w{channel}.png"
WELLS = ("B02", "B10", "C03")  # B10 sorts after B02 and before C03
SIZE = (12, 16)  # height, width


def make_images(
    root,
    pattern=RXRX,
    experiments=("EXP01",),
    plates=("P1", "P2"),
    channels=6,
    sites=(1, 2),
    dtype=np.uint8,
    size=SIZE,
    seed=0,
) -> dict:
    """Write random single-channel images; returns (experiment, plate, well, site) -> (C,H,W)."""
    rng = np.random.default_rng(seed)
    top = np.iinfo(dtype).max
    truth = {}
    for exp in experiments:
        for plate in plates:
            for well in WELLS:
                for site in sites:
                    px = rng.integers(0, top, size=(channels, *size), endpoint=True, dtype=dtype)
                    truth[(exp, plate, well, site)] = px
                    for c in range(channels):
                        name = pattern.format(
                            experiment=exp, plate=plate, well=well, site=site, channel=c + 1
                        )
                        write_image(Path(root) / name, px[c])
    return truth


def write_image(path: Path, plane: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".png":
        Image.fromarray(plane).save(path)
    else:
        tifffile.imwrite(path, plane)


def write_csv(path, truth: dict, per_site=True, perturbation="perturbation", extra=None) -> Path:
    """One row per site (or well): plate, well, [site], perturbation, well_type."""
    rows = []
    for exp, plate, well, site in truth:
        if not per_site and site != min(k[3] for k in truth):
            continue
        row = {
            "experiment": exp,
            "plate": plate,
            "well": well,
            "site": site,
            perturbation: f"g{well}",
            "well_type": "treatment",
        }
        if well == "B10":
            row.update({perturbation: "EMPTY", "well_type": "negative_control"})
        if not per_site:
            del row["site"]
        rows.append(row | (extra or {}))
    pd.DataFrame(rows).to_csv(path, index=False)
    return Path(path)


def read_shards(out) -> dict:
    """(experiment, plate, well, site) -> (row metadata, pixels (C,H,W)), in file order."""
    got = {}
    for f in sorted((Path(out) / "shards").glob("*.parquet")):
        for r in pq.read_table(f).to_pylist():
            px = np.frombuffer(r["pixels"], r["dtype"]).reshape(
                r["channels"], r["height"], r["width"]
            )
            got[(r["experiment"], r["plate"], r["well"], r["site"])] = (r, px)
    return got


def assert_round_trip(out, truth, dtype):
    got = read_shards(out)
    assert set(got) == set(truth)
    for key, px in truth.items():
        row, back = got[key]
        assert back.dtype == dtype and back.shape == px.shape
        np.testing.assert_array_equal(back, px)
        assert row["is_control"] == (key[2] == "B10")
        assert row["perturbation"] == ("EMPTY" if key[2] == "B10" else f"g{key[2]}")


@pytest.fixture
def rxrx(tmp_path):
    """A 2-plate RxRx-layout set: 6 channels, 3 wells, 2 sites, 8-bit PNGs, per-site CSV."""
    truth = make_images(tmp_path / "images")
    csv = write_csv(tmp_path / "meta.csv", truth)
    return tmp_path / "images", csv, tmp_path / "out", truth


def test_rxrx_png_round_trip(rxrx, monkeypatch):
    from scaling.shards import format as fmt

    monkeypatch.setattr(fmt, "GROUP_BYTES", 1)  # every well a row group of its own
    images, csv, out, truth = rxrx
    s = ingest(images, csv, out, progress=False)
    assert {k: s[k] for k in ("plates", "wells", "sites", "channels", "dtype")} == {
        "plates": 2,
        "wells": 6,
        "sites": 12,
        "channels": 6,
        "dtype": "uint8",
    }
    assert sorted(p.name for p in out.rglob("*")) == ["P1.parquet", "P2.parquet", "shards"]
    assert_round_trip(out, truth, np.uint8)
    rows = pq.read_table(out / "shards" / "P1.parquet", columns=["well", "site"]).to_pylist()
    assert [(r["well"], r["site"]) for r in rows] == [(w, s) for w in WELLS for s in (1, 2)]
    # row groups of whole wells (here one each): a curation reads only its wells' groups
    pf = pq.ParquetFile(out / "shards" / "P1.parquet")
    groups = [pf.read_row_group(g, columns=["well"]).column("well").to_pylist() for g in range(3)]
    assert pf.metadata.num_row_groups == 3 and groups == [[w, w] for w in WELLS]
    assert not list(out.parent.glob(".out.partial-*"))


def test_png_16bit_round_trip(tmp_path):
    truth = make_images(tmp_path / "images", plates=("P1",), dtype=np.uint16)
    assert max(px.max() for px in truth.values()) > 255
    csv = write_csv(tmp_path / "meta.csv", truth)
    s = ingest(tmp_path / "images", csv, tmp_path / "out", progress=False)
    assert s["dtype"] == "uint16"
    assert_round_trip(tmp_path / "out", truth, np.uint16)


def test_tiff_custom_pattern_and_mapping(tmp_path):
    """RxRx1-like: plates named 1, 2 in each experiment, so shards are named exp_plate."""
    pattern = "{experiment}/Plate{plate}/{well}_s{site}_w{channel}.tif"
    truth = make_images(
        tmp_path / "images",
        pattern=pattern,
        experiments=("HEPG2-01", "U2OS-01"),
        plates=("1", "2"),
        channels=3,
        dtype=np.uint16,
    )
    csv = write_csv(tmp_path / "meta.csv", truth, perturbation="sirna")
    s = ingest(
        tmp_path / "images",
        csv,
        tmp_path / "out",
        pattern=pattern,
        mapping=["perturbation=sirna"],
        progress=False,
    )
    assert (s["plates"], s["wells"], s["sites"], s["channels"], s["dtype"]) == (
        4,
        12,
        24,
        3,
        "uint16",
    )
    names = sorted(p.name for p in (tmp_path / "out" / "shards").iterdir())
    assert names == [
        "HEPG2-01_1.parquet",
        "HEPG2-01_2.parquet",
        "U2OS-01_1.parquet",
        "U2OS-01_2.parquet",
    ]
    assert_round_trip(tmp_path / "out", truth, np.uint16)


def test_per_well_csv_and_control_option(tmp_path):
    truth = make_images(tmp_path / "images", plates=("P1",), sites=(1, 2, 3))
    csv = write_csv(tmp_path / "meta.csv", truth, per_site=False)
    df = pd.read_csv(csv).drop(columns=["experiment"])
    df["treatment"] = np.where(df["well"] == "B10", "DMSO", "compound")
    df.drop(columns=["well_type"]).to_csv(csv, index=False)
    s = ingest(tmp_path / "images", csv, tmp_path / "out", control="treatment=DMSO", progress=False)
    assert (s["wells"], s["sites"]) == (3, 9)
    assert_round_trip(tmp_path / "out", truth, np.uint8)


def test_overwrite(rxrx):
    images, csv, out, _ = rxrx
    ingest(images, csv, out, progress=False)
    with pytest.raises(InputError, match="exists and is not empty"):
        ingest(images, csv, out, progress=False)
    ingest(images, csv, out, overwrite=True, progress=False)
    assert len(read_shards(out)) == 12


# -- errors: one line naming the file or row, nothing written -------------------------------


def raises(images, csv, out, match, **kw) -> str:
    with pytest.raises(InputError, match=match) as e:
        ingest(images, csv, out, progress=False, **kw)
    assert "\n" not in str(e.value)
    assert not out.exists() and not list(out.parent.glob(f".{out.name}*"))
    return str(e.value)


def test_missing_channel(rxrx):
    images, csv, out, _ = rxrx
    (images / "P1" / "B10_s2_w4.png").unlink()
    (images / "P2" / "C03_s1_w1.png").unlink()
    msg = raises(images, csv, out, "lacks channel 4")
    assert "P1/B10/s2" in msg and str(images / "P1") in msg and msg.endswith("(and 1 more)")


def test_mismatched_size(rxrx):
    images, csv, out, _ = rxrx
    bad = images / "P2" / "B02_s1_w3.png"
    write_image(bad, np.zeros((20, 16), np.uint8))
    msg = raises(images, csv, out, "20x16 pixels")
    assert str(bad) in msg and "12x16" in msg


def test_csv_row_without_images(rxrx):
    images, csv, out, _ = rxrx
    with open(csv, "a") as f:
        f.write("EXP01,P1,D07,1,gD07,treatment\n")
    msg = raises(images, csv, out, "no images for")
    assert f"{csv} line 14" in msg and "well=D07" in msg


def test_image_without_csv_row(rxrx):
    images, csv, out, _ = rxrx
    df = pd.read_csv(csv)
    df[~((df["plate"] == "P2") & (df["well"] == "C03"))].to_csv(csv, index=False)
    msg = raises(images, csv, out, "no row in")
    assert str(images / "P2" / "C03_s1_w1.png") in msg and msg.endswith("(and 1 more)")


def test_other_errors(rxrx, tmp_path):
    images, csv, out, _ = rxrx
    raises(images, csv, out, "unknown field 'gene'", mapping=["gene=sirna"])
    raises(images, csv, out, "no column 'sirna'", mapping=["perturbation=sirna"])
    raises(images, csv, out, "needs a {channel}", pattern="{plate}/{well}_s{site}.png")
    raises(tmp_path / "nope", csv, out, "not a folder")
    raises(images, tmp_path / "nope.csv", out, "no such metadata CSV")
    pd.read_csv(csv).drop(columns=["perturbation"]).to_csv(tmp_path / "m.csv", index=False)
    raises(images, tmp_path / "m.csv", out, "no 'perturbation' column")
    write_image(images / "P1" / "B02_s1_w1.png", np.zeros(SIZE, np.uint16))
    raises(images, csv, out, r"B02_s1_w1.png: uint16 pixels, but .* is uint8")
    (images / "P1" / "B02_s1_w2.png").write_bytes(b"not a png")
    raises(images, csv, out, r"B02_s1_w2.png: unreadable image")


# -- the command line ---------------------------------------------------------------------


def scaling(*args) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "scaling", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_cli(rxrx):
    images, csv, out, _ = rxrx
    bad = scaling(
        "ingest", "--images", images, "--metadata", csv, "--out", out, "--map", "perturbation=sirna"
    )
    assert bad.returncode == 2
    assert len(bad.stderr.splitlines()) == 1 and bad.stderr.startswith("error:")
    assert not out.exists()
    ok = scaling(
        "ingest",
        "--images",
        images,
        "--metadata",
        csv,
        "--out",
        out,
        "--control",
        "well_type=negative_control",
    )
    assert ok.returncode == 0, ok.stderr
    assert "2 plates, 6 wells, 12 sites, 6 channels, uint8" in ok.stdout
    check = scaling("inspect", out)
    assert check.returncode == 0, check.stderr
