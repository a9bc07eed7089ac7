"""``scaling ingest``: real Cell Painting plates into the project's shards.

Layouts (``layout``):

* ``rxrx`` (default): a folder of image files laid out as ``pattern`` says (default the
  RxRx layout ``{plate}/{well}_s{site}_w{channel}.png``; placeholders and multi-page
  files in ``scaling.shards.patterns``), plus a metadata CSV with one row per well (no
  site column: the sites are discovered from the files) or one row per site. Columns
  default to the field names (experiment, plate, well, site, perturbation, is_control);
  ``mapping`` entries ``FIELD=COLUMN`` rename them. plate, well and perturbation are
  required. Without an experiment column or ``{experiment}`` placeholder every plate
  belongs to experiment ``EXP01``; without a site column or ``{site}`` placeholder each
  well has one site, numbered 1. Keys are compared as strings (site as an integer) on the
  fields that both the pattern and the CSV have. Controls: ``control="COLUMN=VALUE"``
  marks the rows where COLUMN equals VALUE; otherwise an ``is_control`` column
  (true/1/yes vs false/0/no/empty, case-insensitive), otherwise a ``well_type`` column
  equal to ``negative_control`` (RxRx1), otherwise no controls.
* ``harmony``: the same with Phenix/Harmony file names, default pattern
  ``{plate}/Images/r{row}c{column}f{field}p{plane}-ch{channel}sk*.tiff`` (r02c03 is well
  B03, the field is the site).
* ``jump``: a CellProfiler LoadData CSV (``metadata``) and a plate map (``platemap``), see
  ``scaling.shards.jump``.

Channels (``channels``, the ``--channels`` text): numbered layouts take names for every
channel in numeric order (``DNA,ER,RNA,AGP,Mito``) or a selection ``1=DNA,3=RNA``;
without it RxRx names six channels in the RxRx3 order (``ch1..chN`` for other counts) and
Harmony ``ch1..chN``; files that hold whole sites take their OME-TIFF channel names when
they record them. JUMP picks channels by name. The names are recorded in every shard
(``scaling.channel_names``). Focal planes (``plane``): None (each channel must have one),
a 1-based plane number, or ``"max"`` (the maximum-intensity projection), applied to a
pattern's ``{plane}`` files or to the planes inside a file.

Output: ``out/shards/{plate}.parquet``, one shard per plate, rows sorted by well then site
(natural order: B2 before B10). File names are the plate names made file-safe; when plate
names repeat across experiments (RxRx1 plates are 1-4 in every experiment) every shard is
named ``{experiment}_{plate}``. Pixels keep the input bit depth, unscaled: uint8 when the
files are 8-bit, uint16 when they are 16-bit; a dataset that mixes both is an error (naming
the first file that differs) rather than a silent conversion. With ``illum`` each plate's
images are divided by its flat fields (``scaling.shards.illum``), saved as
``out/illum/{plate}.npy`` (float32, channels x height x width, in the shard's channel
order). Nothing else is written (real data has no truth tables).

Everything is validated before anything is written: the files are found, the CSVs read,
keys matched both ways, channels checked complete and every image header read for its
size, planes, channels and bit depth. Each fault raises an ``InputError`` naming the first
file or CSV line at fault and the number of similar ones. The shards are then written
under a hidden sibling folder renamed into place at the end (as ``scaling synth`` does),
so a failure leaves nothing half-written; a row group at a time, so a plate never has to
fit in memory. Headers and plates are read and written by Ray tasks, one a plate
(``scaling.parallel``), when there are several plates and Ray is running already or they
hold ``RAY_MIN_FILES`` files or more; smaller jobs run in this process, without Ray's
start-up. A fault in a task comes back as its one line.
"""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from scaling.atomic import atomic_folder, check_out
from scaling.errors import InputError
from scaling.progress import bar as progress_bar
from scaling.shards import illum as illumination
from scaling.shards.format import KEY_COLUMNS, WRITE_OPTIONS, shard_schema, site_table, well_runs
from scaling.shards.imagefile import Header, read_header, read_image
from scaling.shards.jump import jump_sites
from scaling.shards.patterns import HARMONY_PATTERN, RXRX_PATTERN, name_pages, pattern_sites
from scaling.shards.sites import FIELDS, Site, group_plates, hw, raise_first

LAYOUTS = ("rxrx", "harmony", "jump")
RAY_MIN_FILES = 1000  # fewer files (and no Ray running): this process, spared Ray's start-up


@dataclass(frozen=True)
class Plan:
    """How every plate is read and written."""

    per_site: bool  # each file holds a whole site (its pages are the channels)
    plane: int | str | None  # the focal plane picked inside each file
    dtype: str
    names: tuple[str, ...]  # the channels, in order
    sigma: float | None  # illumination correction's smoothing (pixels); None: no correction


def ingest(
    images,
    metadata,
    out,
    pattern: str | None = None,
    mapping=(),
    control: str | None = None,
    overwrite: bool = False,
    progress: bool = True,
    *,
    layout: str = "rxrx",
    platemap=None,
    channels: str | None = None,
    plane=None,
    illum: bool = False,
    illum_sigma: float | None = None,
    path_map=(),
) -> dict:
    """Write the shards of the plates described by ``metadata`` to ``out``.

    See the module docstring for the layouts and options. Returns a summary: ``plates``,
    ``wells``, ``sites``, ``channels``, ``dtype`` (the CLI prints these), plus
    ``experiments``, ``height``, ``width``, ``channel_names``, ``left_out`` (channels not
    kept) and ``illum``.
    """
    images = None if images is None else Path(images)
    metadata, out = Path(metadata), Path(out)
    platemap = None if platemap is None else Path(platemap)
    plane = parse_plane(plane)
    check_options(layout, images, platemap, pattern, path_map, illum_sigma)
    check_paths(images, metadata, platemap, out, overwrite)
    if layout == "jump":
        sites, names, left_out = jump_sites(
            metadata, platemap, images, channels, mapping, control, path_map
        )
        per_site, file_plane = False, plane
    else:
        default = HARMONY_PATTERN if layout == "harmony" else RXRX_PATTERN
        sites, names, pat = pattern_sites(
            images, metadata, pattern or default, mapping, control, channels, plane
        )
        per_site, left_out = pat.per_site, []
        file_plane = None if "plane" in pat.names else plane  # else picked among the files
    plates = group_plates(sites)
    run = Runner(progress, use_ray(plates))
    dtype, (height, width), pages, ome = check_images(plates, per_site, file_plane, run)
    if names is None:
        names = name_pages(sites, pages, channels, ome)
    sigma = (illum_sigma or illumination.default_sigma(height, width)) if illum else None
    plan = Plan(per_site, file_plane, dtype, tuple(names), sigma)
    site_bytes = len(names) * height * width * np.dtype(dtype).itemsize
    write_dataset(plates, out, plan, site_bytes, run)
    return {
        "experiments": len({s.meta["experiment"] for s in sites}),
        "plates": len(plates),
        "wells": len({tuple(s.meta[k] for k in KEY_COLUMNS) for s in sites}),
        "sites": len(sites),
        "channels": len(names),
        "dtype": dtype,
        "height": height,
        "width": width,
        "channel_names": list(names),
        "left_out": list(left_out),
        "illum": illum,
    }


# -- arguments ---------------------------------------------------------------------------


def parse_plane(plane):
    """``--plane``: None, ``max`` or a plane number from 1."""
    if plane is None or plane == "max":
        return plane
    try:
        number = int(plane)
    except (TypeError, ValueError):
        number = 0
    if number < 1:
        raise InputError(f"--plane {plane}: expected a focal plane number (1, 2, ...) or max")
    return number


def check_options(layout, images, platemap, pattern, path_map, illum_sigma) -> None:
    """The options that go with the layout."""
    if layout not in LAYOUTS:
        raise InputError(f"--layout {layout}: unknown layout (have {', '.join(LAYOUTS)})")
    if illum_sigma is not None and not illum_sigma > 0:
        raise InputError(f"--illum-sigma {illum_sigma}: expected a positive number of pixels")
    if layout == "jump":
        if platemap is None:
            raise InputError("--platemap: required with --layout jump")
        if pattern is not None:
            raise InputError("--pattern: not with --layout jump (the LoadData CSV names files)")
        return
    if images is None:
        raise InputError(f"--images: required with --layout {layout}")
    for given, option in ((platemap, "--platemap"), (path_map, "--path-map")):
        if given:
            raise InputError(f"{option}: only with --layout jump")


def check_paths(images, metadata: Path, platemap, out: Path, overwrite: bool) -> None:
    """The inputs exist; ``out`` is free (or may be replaced without deleting the inputs)."""
    if images is not None and not images.is_dir():
        raise InputError(f"{images}: not a folder of images")
    if not metadata.is_file():
        raise InputError(f"{metadata}: no such metadata CSV")
    if platemap is not None and not platemap.is_file():
        raise InputError(f"{platemap}: no such plate map")
    check_out(out, (images, metadata, platemap), overwrite)


# -- headers -----------------------------------------------------------------------------


def check_images(plates: dict, per_site: bool, plane, run: Runner):
    """Read every file's header (a Ray task a plate): readable, the planes ``plane`` needs,
    one channel a file (or, for files of whole sites, one channel count), one size and one
    bit depth throughout. The most common size, bit depth and channel count are the
    reference; a fault names the first file that differs and a file that has the
    reference. Returns the dtype name, (height, width), channels a file and its OME names."""
    jobs = [([p for s in sites for p in s.paths], per_site) for sites in plates.values()]
    headers = [h for part in run(read_headers, jobs, "headers") for h in part]
    raise_first([h for _, h in headers if isinstance(h, str)])
    raise_first([msg for p, h in headers if (msg := layout_fault(p, h, per_site, plane))])
    shape, _ = reference(
        headers,
        lambda h: h.shape,
        lambda p, v, like, c: f"{p}: {hw(v)} pixels, but {like} is {hw(c)}",
    )
    pages, first = reference(
        headers,
        lambda h: h.channels,
        lambda p, v, like, c: f"{p}: {v} channels, but {like} has {c}",
    )
    dtype, _ = reference(
        headers,
        lambda h: h.dtype,
        lambda p, v, like, c: (
            f"{p}: {v} pixels, but {like} is {c} (a dataset must have one bit depth)"
        ),
    )
    return dtype, shape, pages, first.names


def reference(headers: list, get, message):
    """The most common value of ``get(header)`` and a header that has it; a file with
    another value is an error, ``message(path, value, reference path, reference value)``."""
    common = Counter(get(h) for _, h in headers).most_common(1)[0][0]
    like, good = next((p, h) for p, h in headers if get(h) == common)
    raise_first([message(p, get(h), like, common) for p, h in headers if get(h) != common])
    return common, good


def read_headers(paths: list[Path], per_site: bool) -> list[tuple[Path, Header | str]]:
    """Each file's header, or the one-line fault that stops it being read."""
    out = []
    for p in paths:
        try:
            out.append((p, read_header(p, per_site)))
        except InputError as e:
            out.append((p, str(e)))
    return out


def layout_fault(path: Path, h: Header, per_site: bool, plane) -> str | None:
    """What a file lacks for its layout: one channel a file, the planes asked for."""
    if not per_site and h.channels != 1:
        return (
            f"{path}: holds {h.channels} channels; a file named per channel (a --pattern with "
            f"{{channel}}, a LoadData file) must hold one"
        )
    if plane is None and h.planes > 1:
        return f"{path}: {h.planes} focal planes; choose one with --plane N or --plane max"
    if isinstance(plane, int) and plane > h.planes:
        return f"{path}: no focal plane {plane} (it has {h.planes})"
    return None


# -- write -------------------------------------------------------------------------------


def use_ray(plates: dict) -> bool:
    """Ray tasks for several plates when Ray runs already (a test session, a cluster job) or
    they hold ``RAY_MIN_FILES`` files or more; else this process does the work."""
    import ray

    if len(plates) < 2:
        return False
    files = sum(len(s.paths) for sites in plates.values() for s in sites)
    return ray.is_initialized() or bool(os.environ.get("RAY_ADDRESS")) or files >= RAY_MIN_FILES


@dataclass(frozen=True)
class Runner:
    """Runs one task a plate: as Ray tasks (``parallel``) or here, with a progress bar."""

    progress: bool
    parallel: bool

    def __call__(self, fn, jobs: list[tuple], desc: str) -> list:
        """``[fn(*job) for job in jobs]``; an ``InputError`` in any is raised here (the
        first, with the count of the others)."""
        if self.parallel:
            from scaling.parallel import parallel_map

            todo = [(fn, *j) for j in jobs]
            results = parallel_map(guarded, todo, desc=desc, progress=self.progress)
        else:
            with progress_bar(total=len(jobs), desc=desc, unit="plate", enabled=self.progress) as b:
                results = []
                for j in jobs:
                    results.append(guarded(fn, *j))
                    b.update()
        raise_first([err for err, _ in results if err is not None])
        return [r for _, r in results]


def guarded(fn, *args) -> tuple[str | None, object]:
    """(None, ``fn(*args)``), or (the message, None) when it raises an ``InputError``: the
    one line travels back from a Ray task without a traceback."""
    try:
        return None, fn(*args)
    except InputError as e:
        return str(e), None


def write_dataset(plates: dict, out: Path, plan: Plan, site_bytes: int, run: Runner) -> None:
    """Write the shards (and flat fields) under a hidden sibling of ``out``, then rename it
    into place. Row groups hold whole wells (``well_runs``, worked out here)."""
    with atomic_folder(out) as tmp:
        (tmp / "shards").mkdir()
        if plan.sigma is not None:
            (tmp / "illum").mkdir()
        jobs = []
        for name, sites in plates.items():
            wells = [tuple(s.meta[k] for k in KEY_COLUMNS) for s in sites]
            jobs.append((sites, well_runs(wells, [site_bytes] * len(sites)), tmp, name, plan))
        run(write_plate, jobs, "ingest")


def write_plate(sites: list[Site], runs: list, tmp: Path, name: str, plan: Plan) -> int:
    """One plate: its flat fields (with illumination correction), then its shard."""
    flat = None
    if plan.sigma is not None:
        flat = flat_field(sites, plan)
        np.save(tmp / "illum" / f"{name}.npy", flat)
    write_shard(sites, runs, tmp / "shards" / f"{name}.parquet", plan, flat)
    return len(sites)


def flat_field(sites: list[Site], plan: Plan) -> np.ndarray:
    """The plate's flat fields (C, H, W) from the mean of its images, channel by channel."""
    total = None
    for s in sites:
        image = load_site(s, plan)
        total = image.astype(np.float64) if total is None else total + image
    return illumination.estimate(total, len(sites), plan.sigma)


def write_shard(sites: list[Site], runs: list, path: Path, plan: Plan, flat) -> None:
    """One plate's sites (sorted by well) into one Parquet file, a row group for each of
    ``runs`` (row ranges), written a row group at a time."""
    with pq.ParquetWriter(path, shard_schema(plan.names), **WRITE_OPTIONS) as writer:
        for start, end in runs:
            chunk = sites[start:end]
            images = [load_site(s, plan) for s in chunk]
            if flat is not None:
                images = [illumination.correct(im, flat) for im in images]
            meta = [{k: s.meta[k] for k in FIELDS} for s in chunk]
            table = site_table(meta, images, plan.names)
            writer.write_table(table, row_group_size=end - start)


def load_site(site: Site, plan: Plan) -> np.ndarray:
    """A site's channels stacked into (C, H, W), each file read once; a channel of several
    focal-plane files is their maximum."""
    files = {p: read_image(p, plan.per_site, plan.plane, plan.dtype) for p in site.paths}
    planes = []
    for channel in site.channels:
        stack = [files[p][i or 0] for p, i in channel]
        planes.append(stack[0] if len(stack) == 1 else np.maximum.reduce(stack))
    for (p, _), a in zip((ch[0] for ch in site.channels), planes, strict=True):
        if a.shape != planes[0].shape:
            raise InputError(
                f"{p}: {hw(a.shape)} pixels, but {site.channels[0][0][0]} is {hw(planes[0].shape)}"
            )
    return np.stack(planes)
