"""The read side of embedding, without torch (its Ray tasks start light): what a screen
holds (``screen``: wells, their sites and tile counts, from metadata), the read tasks that
cut its tiles (``tile_tasks``, ``TileReads``: a Ray Data datasource of one block of tiles
per task, reading only the row groups of wanted sites), and ``WellMeans``, which adds the
actors' per-well sums and hands on each well once all its tiles are in.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

import numpy as np
import pandas as pd
import pyarrow as pa
from ray.data.block import BlockAccessor, BlockMetadata
from ray.data.datasource import Datasource, ReadTask

from scaling.config import DataConfig
from scaling.errors import InputError
from scaling.shards.dataset import Dataset, open_dataset, read_groups, well_keys
from scaling.shards.format import KEY_COLUMNS
from scaling.stream.crops import GEOMETRY, decode_sites, grid_tiles
from scaling.stream.plan import site_index

TASK_BYTES = 64 << 20  # uncompressed pixels a read task reads
READ_COLUMNS = KEY_COLUMNS + GEOMETRY + ["pixels"]


@dataclass(frozen=True)
class Screen:
    """What to embed: ``wells`` (sorted by key: experiment, plate, well, perturbation,
    is_control, ``key`` and ``tiles``, the crops it yields) and ``sites`` (the site index
    rows of those wells, ``scaling.stream.plan.site_index``)."""

    ds: Dataset
    crop: int
    wells: pd.DataFrame
    sites: pd.DataFrame


def screen(data, crop: int) -> Screen:
    """Every well of ``data`` (a folder, curation or ``Dataset``; its selection respected)
    with the number of ``crop`` tiles its sites give; metadata only. An ``InputError``
    when there is no well, or a well has no tile."""
    ds = data if isinstance(data, Dataset) else open_dataset(data)
    sites = site_index(ds, DataConfig(crop=crop))
    sites["key"] = well_keys(pa.Table.from_pandas(sites[KEY_COLUMNS])).to_numpy(
        zero_copy_only=False
    )
    selected = ds.selected_keys()
    if selected is not None:
        sites = sites[sites["key"].isin(selected)]
    sites = sites.assign(tiles=(sites["height"] // crop) * (sites["width"] // crop))
    wells = (
        sites.groupby("key", sort=True)
        .agg(
            **{c: (c, "first") for c in KEY_COLUMNS + ["perturbation", "is_control"]},
            tiles=("tiles", "sum"),
        )
        .reset_index()
    )
    if not len(wells):
        raise InputError(f"{ds.root}: no wells to embed")
    if (wells["tiles"] == 0).any():
        raise InputError(
            f"{ds.root}: well {wells.loc[wells['tiles'] == 0, 'key'].iloc[0]} has no tile of {crop} px"
        )
    return Screen(
        ds, crop, wells[KEY_COLUMNS + ["perturbation", "is_control", "key", "tiles"]], sites
    )


def tile_tasks(scr: Screen, keys=None, task_bytes: int = TASK_BYTES) -> list[dict]:
    """Read tasks for the sites of ``keys`` (default: every well of the screen): row groups
    of one shard, about ``task_bytes`` (uncompressed) a task, each with the rows it keeps."""
    rows = scr.sites if keys is None else scr.sites[scr.sites["key"].isin(keys)]
    tasks, cur, size = [], None, 0
    for (f, g), r in rows.groupby(["file", "group"], sort=True):
        if cur is None or cur["file"] != str(scr.ds.files[f]) or size >= task_bytes:
            cur, size = {"file": str(scr.ds.files[f]), "groups": [], "rows": []}, 0
            tasks.append(cur)
        cur["groups"].append(int(g))
        cur["rows"].append(r["row"].to_numpy().tolist())
        size += int(r["group_bytes"].iloc[0])
        cur["nbytes"] = size
    return tasks


class TileReads(Datasource):
    """The read tasks of ``tile_tasks``, one block of tiles each, made when it runs."""

    def __init__(self, tasks: list[dict], crop: int):
        self.tasks, self.crop = tasks, crop

    def estimate_inmemory_data_size(self) -> int:
        return sum(t["nbytes"] for t in self.tasks)

    def get_read_tasks(self, parallelism: int, per_task_row_limit=None, data_context=None):
        return [
            ReadTask(
                partial(_tile_block, t, self.crop),
                BlockMetadata(num_rows=None, size_bytes=t["nbytes"], exec_stats=None),
            )
            for t in self.tasks
        ]


def _tile_block(task: dict, crop: int) -> list:
    return [BlockAccessor.batch_to_block(read_tiles(task, crop))]


def read_tiles(task: dict, crop: int) -> dict:
    """A read task (``tile_tasks``) -> its sites' grid tiles with their well keys."""
    keys, tiles = [], []
    for g, rows in zip(task["groups"], task["rows"], strict=True):
        t = read_groups(task["file"], [g], READ_COLUMNS).take(pa.array(rows))
        grid = [grid_tiles(s, crop) for s in decode_sites(t)]
        keys.append(np.repeat(well_keys(t).to_numpy(zero_copy_only=False), [len(x) for x in grid]))
        tiles += grid
    return {"key": np.concatenate(keys), "tiles": np.concatenate(tiles)}


class WellMeans:
    """Adds per-batch well sums (``Embedder``'s output) and hands on each well once all its
    tiles are in: ``add`` -> (keys, means (k, blocks, D) float32) of the wells it completed.
    Holds only wells still missing tiles."""

    def __init__(self, expected: dict[str, int]):
        self.expected, self.open = expected, {}

    def add(self, batch: dict) -> tuple[list[str], np.ndarray]:
        done, means = [], []
        for key, n, s in zip(batch["key"], batch["n"], batch["sum"], strict=True):
            seen, total = self.open.get(key, (0, 0.0))
            seen, total = seen + int(n), total + s
            if seen < self.expected[key]:
                self.open[key] = (seen, total)
                continue
            self.open.pop(key, None)
            done.append(key)
            means.append((total / seen).astype(np.float32))
        return done, np.stack(means) if means else np.zeros(
            (0, *batch["sum"].shape[1:]), np.float32
        )
