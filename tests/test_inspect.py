"""``scaling inspect`` accepts a good dataset and names the bad file for each kind of fault."""

import shutil

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from scaling.errors import InputError
from scaling.shards.format import CHANNELS, shard_schema, site_table, write_shard
from scaling.shards.inspect import inspect_dataset
from tests.conftest import run_cli

META = dict(experiment="E1", plate="P1", well="A01", site=0, perturbation="G1", is_control=False)


def one_shard(tmp_path, images, metas=None, name="P1.parquet"):
    metas = metas or [dict(META, site=i) for i in range(len(images))]
    write_shard(site_table(metas, images), tmp_path / "shards" / name)
    return tmp_path / "shards" / name


def test_summary_matches_the_world(tiny_world):
    import json

    s = inspect_dataset(tiny_world, progress=False)
    w = json.loads((tiny_world / "world.json").read_text())
    assert (s["experiments"], s["plates"], s["wells"], s["sites"]) == (
        w["experiments"],
        w["plates"],
        w["wells"],
        w["sites"],
    )
    assert s["perturbations"] == w["genes"]
    assert s["control_wells"] == w["plates"] * w["spec"]["controls_per_plate"]
    assert s["shapes"] == {"6x128x128 uint8": w["sites"]}


def test_truncated_shard_exit_2_names_it(tiny_world, tmp_path):
    copy = tmp_path / "w"
    shutil.copytree(tiny_world, copy)
    victim = sorted((copy / "shards").glob("*.parquet"))[2]
    data = victim.read_bytes()
    victim.write_bytes(data[: len(data) // 2])
    rc, out, err = run_cli("inspect", copy)
    assert rc == 2 and victim.name in err and err.strip().count("\n") == 0
    rc, out, _ = run_cli("inspect", tiny_world)
    assert rc == 0 and "OK" in out


def test_corrupt_bytes_in_the_middle(tiny_world, tmp_path):
    copy = tmp_path / "w"
    shutil.copytree(tiny_world, copy)
    victim = sorted((copy / "shards").glob("*.parquet"))[0]
    data = bytearray(victim.read_bytes())
    mid = len(data) // 2
    data[mid : mid + 4096] = bytes(4096)
    victim.write_bytes(bytes(data))
    with pytest.raises(InputError, match=victim.name):
        inspect_dataset(copy, progress=False)


def test_wrong_channel_count(tmp_path):
    one_shard(tmp_path, [np.zeros((5, 16, 16), np.uint8)])  # names ch1..ch5 recorded
    s = inspect_dataset(tmp_path, progress=False)
    assert s["sites"] == 1 and s["channel_names"] == ["ch1", "ch2", "ch3", "ch4", "ch5"]
    with pytest.raises(InputError, match=r"P1\.parquet.*5 channels, expected 6"):
        inspect_dataset(tmp_path, channels=6, progress=False)
    t = site_table([META], [np.zeros((5, 16, 16), np.uint8)])  # sites of 5, six names
    t = t.replace_schema_metadata(shard_schema(CHANNELS).metadata)
    write_shard(t, tmp_path / "shards" / "P1.parquet")
    with pytest.raises(InputError, match=r"P1\.parquet.*5 channels, expected 6"):
        inspect_dataset(tmp_path, progress=False)


def test_non_finite_pixels(tmp_path):
    img = np.ones((6, 8, 8), np.float32)
    img[3, 2, 2] = np.nan
    one_shard(tmp_path, [np.ones((6, 8, 8), np.float32), img])
    with pytest.raises(InputError, match=r"P1\.parquet.*s1: non-finite"):
        inspect_dataset(tmp_path, progress=False)


def test_missing_columns_and_wrong_byte_count(tmp_path):
    t = site_table([META], [np.zeros((6, 8, 8), np.uint8)])
    pq.write_table(t.drop_columns(["is_control"]), tmp_path / "x.parquet")
    (tmp_path / "shards").mkdir()
    shutil.move(tmp_path / "x.parquet", tmp_path / "shards" / "x.parquet")
    with pytest.raises(InputError, match=r"x\.parquet: missing columns \['is_control'\]"):
        inspect_dataset(tmp_path, progress=False)

    bad = tmp_path / "b"
    t = t.set_column(t.schema.get_field_index("height"), "height", pa.array([9], pa.int32()))
    write_shard(t, bad / "shards" / "P1.parquet")
    with pytest.raises(InputError, match=r"384 pixel bytes, expected 432"):
        inspect_dataset(bad, progress=False)


def test_duplicate_site_and_not_a_dataset(tmp_path):
    one_shard(tmp_path, [np.zeros((6, 8, 8), np.uint8)] * 2, [META, META])
    with pytest.raises(InputError, match="twice"):
        inspect_dataset(tmp_path, progress=False)
    with pytest.raises(InputError, match="not a dataset"):
        inspect_dataset(tmp_path / "shards", progress=False)


def test_row_groups_hold_whole_wells_up_to_the_group_bytes(tmp_path, monkeypatch):
    """Groups are runs of whole wells closed at GROUP_BYTES; a well of more than
    ROWS_PER_GROUP sites is cut into groups of its own (brute force over the written file)."""
    from scaling.shards import format as fmt

    monkeypatch.setattr(fmt, "GROUP_BYTES", 3 * 128)  # three 2 x 8 x 8 uint8 sites
    wells = ["A01"] * 20 + ["A02"] * 2 + ["A03"] * 1 + ["A04"] * 1 + ["B01"]
    metas = [dict(META, well=w, site=i) for i, w in enumerate(wells)]
    images = [np.full((2, 8, 8), i, np.uint8) for i in range(len(wells))]
    pf = pq.ParquetFile(one_shard(tmp_path, images, metas))
    groups = [
        [r["well"] for r in pf.read_row_group(g, columns=["well"]).to_pylist()]
        for g in range(pf.metadata.num_row_groups)
    ]
    split = fmt.ROWS_PER_GROUP
    assert groups == [
        ["A01"] * split,
        ["A01"] * (20 - split),
        ["A02", "A02", "A03"],  # closed once it holds 3 sites' bytes
        ["A04", "B01"],  # the rest
    ]
    monkeypatch.setattr(fmt, "GROUP_BYTES", 1 << 20)  # small wells share one group
    assert fmt.well_runs(wells[20:], [128] * 5) == [(0, 5)]
