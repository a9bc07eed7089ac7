"""``scaling ingest`` on the JUMP (LoadData + plate map), Phenix/Harmony, multi-page TIFF,
OME-TIFF and 8-bit PNG layouts, illumination correction, channel names and errors; small
real files (32x32, 2 plates x 2-3 wells x 2 sites)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import tifffile
from PIL import Image
from scipy.ndimage import gaussian_filter

from scaling import parallel
from scaling.errors import InputError
from scaling.shards.dataset import open_dataset
from scaling.shards.format import decode_pixels
from scaling.shards.ingest import ingest
from scaling.shards.jump import choose_channels
from tests.conftest import run_cli

SIZE = (32, 32)
PLATES = ("BR001", "BR002")
WELLS = ("A01", "A02", "B01")  # A02 holds the negative control (DMSO)
SITES = (1, 2)
FLUO = ("DNA", "ER", "RNA", "AGP", "Mito")
CSV_ORDER = ("Brightfield", "ER", "DNA", "Mito", "RNA", "AGP")  # LoadData column order
DMSO = "JCP2022_033924"


def pixels(rng, dtype, shape=SIZE) -> np.ndarray:
    return rng.integers(0, np.iinfo(dtype).max, size=shape, endpoint=True, dtype=dtype)


def read_shards(out) -> dict:
    """(plate, well, site) -> (row metadata, pixels (C,H,W)), decoded with decode_pixels."""
    got = {}
    for f in sorted((Path(out) / "shards").glob("*.parquet")):
        for r in pq.read_table(f).to_pylist():
            px = decode_pixels(r["pixels"], r["channels"], r["height"], r["width"], r["dtype"])
            got[(r["plate"], r["well"], r["site"])] = (r, px)
    return got


def assert_pixels(out, truth: dict, dtype) -> dict:
    got = read_shards(out)
    assert set(got) == set(truth)
    for key, px in truth.items():
        back = got[key][1]
        assert back.dtype == dtype and back.shape == px.shape, key
        np.testing.assert_array_equal(back, px, err_msg=str(key))
    return got


def raises(match, out, **kw) -> str:
    """ingest(**kw) fails with one line matching ``match`` and writes nothing."""
    with pytest.raises(InputError, match=match) as e:
        ingest(out=out, **({"progress": False} | kw))
    assert "\n" not in str(e.value)
    assert not out.exists() and not list(out.parent.glob(f".{out.name}*"))
    return str(e.value)


# -- JUMP --------------------------------------------------------------------------------


def make_jump(root: Path, plates=PLATES, dtype=np.uint16, folder=lambda root, plate: plate):
    """16-bit TIFFs of 5 fluorescent channels and a bright-field plane under root/images,
    a LoadData CSV (with Metadata_Batch) and a per-plate plate map. Returns (loaddata,
    platemap, {(plate, well, site): {channel: plane}})."""
    rng = np.random.default_rng(0)
    rows, truth = [], {}
    for plate in plates:
        for well in WELLS:
            for site in SITES:
                planes, row = {}, {"Metadata_Plate": plate, "Metadata_Well": well}
                row |= {"Metadata_Site": site, "Metadata_Batch": "2021_Batch1"}
                for name in CSV_ORDER:
                    planes[name] = pixels(rng, dtype)
                    file = f"r{well}_f{site:02d}_{name}.tiff"
                    path = root / "images" / plate / file
                    path.parent.mkdir(parents=True, exist_ok=True)
                    tifffile.imwrite(path, planes[name])
                    row |= {
                        f"FileName_Orig{name}": file,
                        f"PathName_Orig{name}": folder(root, plate),
                    }
                truth[(plate, well, site)] = planes
                rows.append(row)
    loaddata = root / "load_data.csv"
    pd.DataFrame(rows).to_csv(loaddata, index=False)
    platemap = root / "platemap.csv"
    pd.DataFrame(
        [
            {
                "Metadata_Plate": plate,
                "Metadata_Well": well,
                "Metadata_JCP2022": DMSO if well == "A02" else f"JCP2022_{plate}_{well}",
                "Metadata_control_type": "negcon" if well == "A02" else "",
            }
            for plate in plates
            for well in WELLS + ("P24",)  # a well without images is fine
        ]
    ).to_csv(platemap, index=False)
    return loaddata, platemap, truth


@pytest.fixture
def jump(tmp_path):
    loaddata, platemap, truth = make_jump(tmp_path)
    return dict(metadata=loaddata, platemap=platemap, images=tmp_path / "images"), truth


def stacked(truth: dict, names) -> dict:
    return {k: np.stack([v[n] for n in names]) for k, v in truth.items()}


def test_jump_round_trip(jump, tmp_path, ray_session, monkeypatch):
    args, truth = jump
    out = tmp_path / "out"
    tasks, real = [], parallel.parallel_map

    def spy(fn, args, **kw):
        tasks.append((kw["desc"], len(args)))
        return real(fn, args, **kw)

    monkeypatch.setattr(parallel, "parallel_map", spy)
    s = ingest(out=out, layout="jump", progress=False, **args)
    assert tasks == [("headers", 2), ("ingest", 2)]  # Ray tasks, one a plate
    assert (s["plates"], s["wells"], s["sites"], s["channels"], s["dtype"]) == (
        2,
        6,
        12,
        5,
        "uint16",
    )
    assert s["channel_names"] == list(FLUO) and s["left_out"] == ["Brightfield"]
    got = assert_pixels(out, stacked(truth, FLUO), np.uint16)
    assert open_dataset(out).channel_names == FLUO
    for (plate, well, _), (row, _) in got.items():
        assert row["experiment"] == "2021_Batch1"
        assert row["is_control"] == (well == "A02")
        assert row["perturbation"] == (DMSO if well == "A02" else f"JCP2022_{plate}_{well}")
    assert sorted(p.name for p in (out / "shards").iterdir()) == ["BR001.parquet", "BR002.parquet"]
    assert not (out / "illum").exists()


def test_jump_channels_option_keeps_brightfield(jump, tmp_path, ray_session):
    args, truth = jump
    out = tmp_path / "out"
    s = ingest(out=out, layout="jump", channels="mito, dna,Brightfield", progress=False, **args)
    names = ("Mito", "DNA", "Brightfield")
    assert s["channel_names"] == list(names) and s["left_out"] == ["ER", "RNA", "AGP"]
    assert_pixels(out, stacked(truth, names), np.uint16)
    assert open_dataset(out).channel_names == names


def test_choose_channels_defaults():
    csv = Path("load_data.csv")
    found = ["HighZBF", "AGP", "LowZBF", "Mito", "DNA", "Brightfield", "ER", "RNA"]
    assert choose_channels(csv, found, None) == (
        ["DNA", "ER", "RNA", "AGP", "Mito"],
        ["HighZBF", "LowZBF", "Brightfield"],
    )
    # not the JUMP five: the fluorescent ones in CSV order; only bright-field: all of them
    assert choose_channels(csv, ["Actin", "BF", "DNA"], None) == (["DNA", "Actin"], ["BF"])
    assert choose_channels(csv, ["HighZBF", "LowZBF"], None) == (["HighZBF", "LowZBF"], [])
    rest = ["HighZBF", "AGP", "Mito", "Brightfield", "ER", "RNA"]
    assert choose_channels(csv, found, "lowzbf,DNA") == (["LowZBF", "DNA"], rest)


def test_jump_tsv_platemap_path_map_one_plate(tmp_path):
    """One plate (no Ray): the PathName is an s3:// URL mapped to the copy, the plate map is
    JUMP's tab-separated kind without a plate column, wells spelled a1 in the LoadData."""
    loaddata, _, truth = make_jump(
        tmp_path, plates=("BR009",), folder=lambda root, plate: f"s3://cellpainting/x/{plate}/"
    )
    df = pd.read_csv(loaddata)
    df["Metadata_Well"] = df["Metadata_Well"].str.lower().str.replace("0", "")
    df.drop(columns=["Metadata_Batch"]).to_csv(loaddata, index=False)
    platemap = tmp_path / "platemap.txt"
    pd.DataFrame(
        {
            "well_position": WELLS,
            "broad_sample": ["BRD-1", "DMSO", "BRD-2"],
            "pert_type": ["trt", "control", "trt"],
        }
    ).to_csv(platemap, sep="\t", index=False)
    out = tmp_path / "out"
    common = dict(layout="jump", metadata=loaddata, platemap=platemap, images=None)
    msg = raises(r"is a URL", out, **common)
    assert f"{loaddata} line 2: PathName_OrigDNA s3://cellpainting/x/BR009/" in msg
    s = ingest(
        out=out,
        progress=False,
        **common,
        path_map=["s3://cellpainting/x/=images/"],  # under the LoadData CSV's folder
        control="pert_type=control",
    )
    assert s["experiments"] == 1 and s["channels"] == 5
    got = assert_pixels(out, stacked(truth, FLUO), np.uint16)
    assert {
        (k[1], r["perturbation"], r["is_control"], r["experiment"]) for k, (r, _) in got.items()
    } == {
        ("A01", "BRD-1", False, "EXP01"),
        ("A02", "DMSO", True, "EXP01"),
        ("B01", "BRD-2", False, "EXP01"),
    }


def test_jump_errors(jump, tmp_path):
    args, _ = jump
    out = tmp_path / "out"
    csv = args["metadata"]
    # a file the LoadData CSV names is missing: its line, column and path
    gone = args["images"] / "BR002" / "rB01_f02_ER.tiff"
    gone.rename(gone.with_suffix(".bak"))
    msg = raises("no such file", out, layout="jump", **args)
    assert msg.startswith(f"{csv} line 13: FileName_OrigER: no such file {gone}")
    gone.with_suffix(".bak").rename(gone)
    # a missing left-out channel is no fault
    (args["images"] / "BR001" / "rA01_f01_Brightfield.tiff").unlink()
    # a plate-map well missing: the plate map, the well, the LoadData line
    pm = pd.read_csv(args["platemap"])
    pm[~((pm["Metadata_Plate"] == "BR002") & (pm["Metadata_Well"] == "B01"))].to_csv(
        tmp_path / "pm.csv", index=False
    )
    msg = raises("no row for", out, layout="jump", **(args | {"platemap": tmp_path / "pm.csv"}))
    assert msg == (
        f"{tmp_path / 'pm.csv'}: no row for plate=BR002 well=B01 (the well of {csv} line 12)"
    )
    # an unknown channel: the option, the CSV and the channels it has
    msg = raises("no such channel", out, layout="jump", channels="DNA,Actin", **args)
    assert msg.startswith(f"--channels Actin: no such channel in {csv} (have Brightfield, ER, DNA")
    # bright-field asked for but missing now
    raises(
        "FileName_OrigBrightfield: no such file", out, layout="jump", channels="Brightfield", **args
    )
    pm.drop(columns=["Metadata_JCP2022"]).to_csv(tmp_path / "pm.csv", index=False)
    raises(
        "no perturbation column .*--map perturbation=COLUMN",
        out,
        layout="jump",
        **(args | {"platemap": tmp_path / "pm.csv"}),
    )
    raises("--platemap: required", out, layout="jump", metadata=csv, images=None)
    raises("unknown field 'site'", out, layout="jump", mapping=["site=Metadata_Field"], **args)
    pd.read_csv(csv).drop(columns=["Metadata_Site"]).to_csv(tmp_path / "ld.csv", index=False)
    raises(
        f"{tmp_path / 'ld.csv'}: no Metadata_Site column",
        out,
        layout="jump",
        **(args | {"metadata": tmp_path / "ld.csv"}),
    )


def test_fault_in_a_plate_task(jump, tmp_path, ray_session):
    """A file whose header reads but whose pixels do not: the Ray task's one line, and
    nothing written."""
    args, _ = jump
    bad = args["images"] / "BR002" / "rA02_f01_RNA.tiff"
    with open(bad, "r+b") as f:
        f.truncate(bad.stat().st_size - 1000)
    msg = raises("unreadable image", tmp_path / "out", layout="jump", **args)
    assert msg.startswith(f"{bad}: unreadable image (")


def test_jump_cli(tmp_path):
    loaddata, platemap, truth = make_jump(tmp_path, plates=("BR001",))
    out = tmp_path / "out"
    common = ["ingest", "--layout", "jump", "--metadata", loaddata, "--out", out]
    code, _, err = run_cli(*common, "--platemap", platemap, "--channels", "DNA,Actin")
    assert code == 2 and len(err.splitlines()) == 1 and err.startswith("error: --channels Actin")
    assert not out.exists()
    code, stdout, err = run_cli(*common, "--platemap", platemap, "--images", tmp_path / "images")
    assert code == 0, err
    assert "1 plates, 3 wells, 6 sites, 5 channels, uint16 (DNA, ER, RNA, AGP, Mito)" in stdout
    assert "left out Brightfield" in stdout
    assert_pixels(out, stacked(truth, FLUO), np.uint16)


# -- Harmony, multi-page TIFF, OME-TIFF, PNG ------------------------------------------------


def write_meta(path: Path, plates, wells) -> Path:
    rows = [
        {"plate": p, "well": w, "perturbation": "DMSO" if w == wells[0] else f"g{w}"}
        for p in plates
        for w in wells
    ]
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


def make_harmony(root: Path, plates=("Meas1", "Meas2")) -> dict:
    """Harmony exports: {plate}/Images/r{row}c{col}f{field}p{plane}-ch{ch}sk1fk1fl1.tiff, 3
    channels, 2 focal planes, 8-bit; returns (plate, well, site) -> (Z, C, H, W)."""
    rng = np.random.default_rng(1)
    truth = {}
    for plate in plates:
        for (row, col), well in (((1, 1), "A01"), ((2, 3), "B03")):
            for field in (1, 2):
                stack = pixels(rng, np.uint8, (2, 3, *SIZE))
                truth[(plate, well, field)] = stack
                for p in (1, 2):
                    for ch in (1, 2, 3):
                        name = f"r{row:02d}c{col:02d}f{field:02d}p{p:02d}-ch{ch}sk1fk1fl1.tiff"
                        path = root / plate / "Images" / name
                        path.parent.mkdir(parents=True, exist_ok=True)
                        tifffile.imwrite(path, stack[p - 1, ch - 1])
    (root / "Meas1" / "Images" / "Index.idx.xml").write_text("<xml/>")  # not an image
    return truth


def test_harmony_planes_and_channels(tmp_path, ray_session):
    images = tmp_path / "images"
    truth = make_harmony(images)
    csv = write_meta(tmp_path / "meta.csv", ("Meas1", "Meas2"), ("A01", "B03"))
    out = tmp_path / "out"
    common = dict(images=images, metadata=csv, layout="harmony", progress=False)
    msg = raises("choose one with --plane", out, **common)
    assert "r01c01f01p01-ch1sk1fk1fl1.tiff: site EXP01/Meas1/A01/s1 has focal planes 1, 2" in msg
    s = ingest(out=out, plane="max", **common)
    assert (s["plates"], s["wells"], s["sites"], s["channel_names"]) == (
        2,
        4,
        8,
        ["ch1", "ch2", "ch3"],
    )
    got = assert_pixels(out, {k: v.max(axis=0) for k, v in truth.items()}, np.uint8)
    assert {k[1]: r["is_control"] for k, (r, _) in got.items()} == {"A01": False, "B03": False}
    out2 = tmp_path / "out2"
    s = ingest(out=out2, plane=2, channels="3=Mito,1=DNA", **common)
    assert open_dataset(out2).channel_names == ("Mito", "DNA")
    assert_pixels(out2, {k: v[1][[2, 0]] for k, v in truth.items()}, np.uint8)
    raises("no channel 4", tmp_path / "o3", plane=1, channels="4=X", **common)
    raises("2 names for 3 channels", tmp_path / "o3", plane=1, channels="A,B", **common)


def test_multipage_tiff_per_site(tmp_path):
    """A plain multi-page TIFF a site: its pages are the channels, in page order."""
    rng = np.random.default_rng(2)
    truth = {}
    for well in WELLS:
        for site in SITES:
            stack = pixels(rng, np.uint16, (4, *SIZE))
            truth[("P1", well, site)] = stack
            path = tmp_path / "images" / "P1" / f"{well}_s{site}.tif"
            path.parent.mkdir(parents=True, exist_ok=True)
            tifffile.imwrite(path, stack, photometric="minisblack")
    csv = write_meta(tmp_path / "meta.csv", ("P1",), WELLS)
    out = tmp_path / "out"
    common = dict(images=tmp_path / "images", metadata=csv, pattern="{plate}/{well}_s{site}.tif")
    s = ingest(out=out, progress=False, **common)
    assert s["channel_names"] == ["ch1", "ch2", "ch3", "ch4"] and s["dtype"] == "uint16"
    assert_pixels(out, truth, np.uint16)
    s = ingest(out=out, overwrite=True, channels="DNA,ER,RNA,Mito", progress=False, **common)
    assert open_dataset(out).channel_names == ("DNA", "ER", "RNA", "Mito")
    assert_pixels(out, truth, np.uint16)
    # a file of another channel count is named with the reference
    bad = tmp_path / "images" / "P1" / "B01_s2.tif"
    tifffile.imwrite(bad, truth[("P1", "B01", 2)][:3], photometric="minisblack")
    msg = raises("3 channels, but", tmp_path / "o2", **common)
    assert msg.startswith(f"{bad}: 3 channels, but ") and msg.endswith("has 4")


def test_ome_tiff_names_and_plane(tmp_path, ray_session):
    """OME-TIFF (Z, C, Y, X) a site: channel names from the OME-XML, a plane picked."""
    rng = np.random.default_rng(3)
    truth = {}
    for plate in ("P1", "P2"):
        for well in WELLS[:2]:
            for site in SITES:
                stack = pixels(rng, np.uint16, (3, 3, *SIZE))
                truth[(plate, well, site)] = stack
                path = tmp_path / "images" / plate / f"{well}_f{site}.ome.tiff"
                path.parent.mkdir(parents=True, exist_ok=True)
                meta = {"axes": "ZCYX", "Channel": {"Name": ["DNA", "ER", "RNA"]}}
                tifffile.imwrite(path, stack, metadata=meta)
    csv = write_meta(tmp_path / "meta.csv", ("P1", "P2"), WELLS[:2])
    common = dict(
        images=tmp_path / "images", metadata=csv, pattern="{plate}/{well}_f{site}.ome.tiff"
    )
    msg = raises("3 focal planes", tmp_path / "out", **common)
    assert msg.startswith(str(tmp_path / "images" / "P1" / "A01_f1.ome.tiff"))
    raises("no focal plane 4", tmp_path / "out", plane=4, **common)
    s = ingest(out=tmp_path / "out", plane=2, progress=False, **common)
    assert s["channel_names"] == ["DNA", "ER", "RNA"] and s["sites"] == 8
    assert_pixels(tmp_path / "out", {k: v[1] for k, v in truth.items()}, np.uint16)
    ingest(out=tmp_path / "o2", plane="max", channels="2=ER", progress=False, **common)
    assert open_dataset(tmp_path / "o2").channel_names == ("ER",)
    assert_pixels(tmp_path / "o2", {k: v.max(axis=0)[1:2] for k, v in truth.items()}, np.uint16)


def test_png_8bit_names(tmp_path):
    """The RxRx layout, 8-bit PNGs: default names (RxRx3 for six channels), or --channels."""
    rng = np.random.default_rng(4)
    truth = {}
    for well in WELLS:
        for site in SITES:
            truth[("P1", well, site)] = stack = pixels(rng, np.uint8, (6, *SIZE))
            for c in range(6):
                path = tmp_path / "images" / "P1" / f"{well}_s{site}_w{c + 1}.png"
                path.parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(stack[c]).save(path)
    csv = write_meta(tmp_path / "meta.csv", ("P1",), WELLS)
    common = dict(images=tmp_path / "images", metadata=csv, progress=False)
    s = ingest(out=tmp_path / "out", **common)
    assert s["channel_names"] == ["nuclei", "er", "actin", "rna", "mito", "golgi"]
    assert_pixels(tmp_path / "out", truth, np.uint8)
    schema = pq.read_schema(tmp_path / "out" / "shards" / "P1.parquet")
    assert b"scaling.channel_names" in schema.metadata
    names = "Hoechst,ConA,Phalloidin,SYTO14,MitoTracker,WGA"
    ingest(out=tmp_path / "o2", channels=names, **common)
    assert open_dataset(tmp_path / "o2").channel_names == tuple(names.split(","))
    raises("unknown layout", tmp_path / "o3", layout="cellprofiler", **common)
    raises("--plane 0: expected", tmp_path / "o3", plane="0", **common)


# -- illumination correction ----------------------------------------------------------------


def gradient(channel: int) -> np.ndarray:
    """A known multiplicative vignette: 1 at the dimmest corner, up to ~1.8 across."""
    y, x = np.mgrid[0 : SIZE[0], 0 : SIZE[1]] / (SIZE[0] - 1)
    return 1 + (0.3 + 0.2 * channel) * x + 0.3 * y - 0.2 * x * y


def test_illumination_correction(tmp_path, ray_session):
    """Flat images times a planted gradient: the corrected images are flat (to ~1%), and
    the saved functions match an independent computation of CellProfiler's recipe."""
    rng = np.random.default_rng(5)
    loaddata, platemap, _ = make_jump(tmp_path)
    truth = {}
    for (plate, _, _), row in (
        pd.read_csv(loaddata)
        .set_index(["Metadata_Plate", "Metadata_Well", "Metadata_Site"])
        .iterrows()
    ):
        level = rng.uniform(8000, 20000)  # each site its own brightness
        for c, name in enumerate(FLUO):
            noise = rng.normal(1, 0.003, SIZE)
            img = np.rint(level * gradient(c) * noise).astype(np.uint16)
            tifffile.imwrite(tmp_path / "images" / plate / row[f"FileName_Orig{name}"], img)
            truth.setdefault(plate, {}).setdefault(c, []).append(img.astype(np.float64))
    out = tmp_path / "out"
    s = ingest(
        images=tmp_path / "images",
        metadata=loaddata,
        platemap=platemap,
        out=out,
        layout="jump",
        illum=True,
        progress=False,
    )
    assert s["illum"] and sorted(p.name for p in (out / "illum").iterdir()) == [
        "BR001.npy",
        "BR002.npy",
    ]
    sigma = max(SIZE) / 20
    for plate in PLATES:
        flat = np.load(out / "illum" / f"{plate}.npy")
        assert flat.shape == (5, *SIZE) and flat.dtype == np.float32
        for c in range(5):
            smooth = gaussian_filter(np.mean(truth[plate][c], axis=0), sigma)
            expect = np.maximum(smooth / np.percentile(smooth, 2), 1)
            np.testing.assert_allclose(flat[c], expect, rtol=1e-5)
            # the function is the planted gradient up to a scale (edges blurred a little)
            ratio = flat[c] / gradient(c)
            assert ratio.std() / ratio.mean() < 0.02
    for (plate, _, _), (_, px) in read_shards(out).items():
        assert px.dtype == np.uint16
        for c in range(5):
            plane = px[c].astype(np.float64)
            raw_cv = truth[plate][c][0].std() / truth[plate][c][0].mean()
            assert raw_cv > 0.05  # the planted gradient
            assert plane.std() / plane.mean() < 0.02  # flat after correction
