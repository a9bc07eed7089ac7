import json

import pandas as pd
import pytest

from scaling.curate.select import curate
from scaling.errors import InputError
from scaling.shards.dataset import open_dataset, well_table
from scaling.shards.inspect import inspect_dataset


def test_random_fraction_is_a_manifest_with_controls(tiny_world, tmp_path):
    out = tmp_path / "cur"
    info = curate(tiny_world, "random", out, seed=1, fraction=0.5)
    all_wells = well_table(open_dataset(tiny_world))
    assert info["wells"] == round(0.5 * len(all_wells))
    # a manifest: no pixels copied
    assert sorted(p.name for p in out.iterdir()) == ["curation.json", "truth", "wells.parquet"]
    assert not list(out.rglob("shards"))
    chosen = pd.read_parquet(out / "wells.parquet")
    assert len(chosen) == info["wells"] and chosen["is_control"].sum() > 0
    assert json.loads((out / "curation.json").read_text())["source"] == str(tiny_world.resolve())
    # the selection opens like a dataset and inspects to the same counts
    s = inspect_dataset(out, progress=False)
    assert s["wells"] == info["wells"] and s["curation"] == "random"
    # deterministic for a seed, different for another
    again = curate(tiny_world, "random", tmp_path / "again", seed=1, fraction=0.5)
    curate(tiny_world, "random", tmp_path / "other", seed=2, fraction=0.5)
    assert again == {**info}
    a = pd.read_parquet(tmp_path / "again" / "wells.parquet")
    b = pd.read_parquet(tmp_path / "other" / "wells.parquet")
    assert a.equals(chosen) and not b.equals(chosen)


def test_well_count_and_curating_a_curation(tiny_world, tmp_path):
    curate(tiny_world, "random", tmp_path / "a", wells_count=100)
    info = curate(tmp_path / "a", "random", tmp_path / "b", wells_count=30)
    b = pd.read_parquet(tmp_path / "b" / "wells.parquet")
    a = pd.read_parquet(tmp_path / "a" / "wells.parquet")
    assert info["wells"] == 30 and info["source_wells"] == 100
    assert set(map(tuple, b[["experiment", "plate", "well"]].values)) <= set(
        map(tuple, a[["experiment", "plate", "well"]].values)
    )


@pytest.mark.parametrize(
    ("strategy", "kw", "needle"),
    [
        ("random", dict(fraction=1.5), "--fraction"),
        ("random", dict(wells_count=10**6), "--wells"),
        ("clustered", {}, "clustered"),
    ],
)
def test_bad_selection(tiny_world, tmp_path, strategy, kw, needle):
    with pytest.raises(InputError, match=needle):
        curate(tiny_world, strategy, tmp_path / "x", **kw)
    assert not (tmp_path / "x").exists()
