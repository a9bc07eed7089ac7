"""Training sites held in memory (on the training device), cut into random crops per batch.

For a dataset whose training sites fit in memory (``data.source: memory``, or ``auto`` under
``data.memory_gb``), each training process reads the sites once (the same hold-out and
selection rules as the Ray Data stream) and cuts every batch itself with one gather: no
stream to start, no decode or copy per crop, and on a GPU the crops are cut on the device.

Crops are a pure function of (seed, global position): epoch e visits every (site, k) pair,
k < ``crops_per_site``, once in a seeded random order, each at a seeded random offset, as
the stream does. The global batch at crop position p is ``[p, p + batch * world)``; rank r
takes its r-th slice. A resumed run starts at its ``crops_seen`` and sees exactly the crops
the straight run would have.
"""

from __future__ import annotations

import numpy as np
import torch

from scaling.config import DataConfig
from scaling.errors import InputError
from scaling.shards.dataset import Dataset, open_dataset
from scaling.stream.crops import GEOMETRY, decode_sites
from scaling.stream.plan import read_sites, site_index


def training_sites(data, cfg: DataConfig, index=None) -> tuple[int, int]:
    """Which training sites ``data`` has and their bytes: (site count, uint8 bytes), from
    the index (no pixels read). Bytes are -1 where the sites are not all uint8 of one shape
    (the memory source cannot hold them). ``index``: the dataset's site index, if read."""
    ds = data if isinstance(data, Dataset) else open_dataset(data)
    train = (site_index(ds, cfg) if index is None else index).query("train")
    shapes = set(train[GEOMETRY].itertuples(index=False, name=None))
    if len(shapes) != 1 or next(iter(shapes))[3] != "uint8":
        return len(train), -1
    c, h, w, _ = shapes.pop()
    return len(train), len(train) * c * h * w


def load_sites(data, cfg: DataConfig) -> torch.Tensor:
    """Every training site of ``data`` (hold-out and selection applied): (S, C, H, W) uint8,
    in file and row order; only the row groups that hold one are read."""
    ds = data if isinstance(data, Dataset) else open_dataset(data)
    train = site_index(ds, cfg).query("train")
    if train.empty:
        raise InputError(f"{ds.root}: no training sites after the hold-out and the selection")
    out = decode_sites(read_sites(ds, train, GEOMETRY + ["pixels"]))
    if len({(s.shape, s.dtype) for s in out}) != 1 or out[0].dtype != np.uint8:
        raise InputError(f"{ds.root}: data.source=memory needs uint8 sites of one size")
    return torch.from_numpy(np.stack(out))


class SiteCrops:
    """Random crops of sites held in memory: ``batch(position, size)``.

    sites (S, C, H, W) uint8 on any device -> crops (size, C, crop, crop) uint8.
    """

    def __init__(self, sites: torch.Tensor, crop: int, crops_per_site: int, seed: int):
        s, _, h, w = sites.shape
        if crop > min(h, w):
            raise InputError(f"data.crop: {crop} px is larger than the site side ({h}x{w} px)")
        self.sites, self.crop, self.seed = sites, crop, seed
        self.per_epoch = s * crops_per_site
        self.crops_per_site = crops_per_site
        self._epoch: tuple[int, torch.Tensor] | None = None

    def epoch(self, e: int) -> torch.Tensor:
        """Epoch ``e``'s plan: (per_epoch, 3) int64 rows of (site, y, x), in visiting order."""
        if self._epoch is None or self._epoch[0] != e:
            g = torch.Generator().manual_seed(
                int(np.random.SeedSequence([self.seed, 11, e]).generate_state(1)[0])
            )
            _, _, h, w = self.sites.shape
            n = self.per_epoch
            site = torch.randperm(n, generator=g) // self.crops_per_site
            y = torch.randint(0, h - self.crop + 1, (n,), generator=g)
            x = torch.randint(0, w - self.crop + 1, (n,), generator=g)
            self._epoch = (e, torch.stack([site, y, x], 1))  # on the CPU: read as a list
        return self._epoch[1]

    def plan(self, position: int, size: int) -> torch.Tensor:
        """(size, 3) rows of (site, y, x) of the crops at ``[position, position + size)``."""
        parts = []
        while size > 0:
            e, i = divmod(position, self.per_epoch)
            take = min(size, self.per_epoch - i)
            parts.append(self.epoch(e)[i : i + take])
            position, size = position + take, size - take
        return torch.cat(parts)

    def batch(self, position: int, size: int) -> torch.Tensor:
        """The crops at ``[position, position + size)`` of the endless seeded sequence: views
        of the sites, stacked (one copy; on a CPU ten times faster than an index gather)."""
        k = self.crop
        rows = self.plan(position, size).tolist()
        return torch.stack([self.sites[s, :, y : y + k, x : x + k] for s, y, x in rows])
