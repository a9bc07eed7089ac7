"""``scaling ingest``: real Cell Painting plates (per-channel image files + a metadata CSV)
into the project's shards.

Input:

* ``images``: a folder of single-channel grayscale PNG or TIFF files, 8- or 16-bit, laid out
  as ``pattern`` says (a template relative to ``images`` with placeholders among
  ``{experiment}``, ``{plate}``, ``{well}``, ``{site}``, ``{channel}``; ``{channel}`` is
  required). The default is the RxRx layout ``{plate}/{well}_s{site}_w{channel}.png``.
  Channel numbers (1-based in RxRx names) are ordered numerically into the C axis. The
  pattern's extension picks the reader (``.png``: Pillow, ``.tif``/``.tiff``: tifffile);
  files that do not match the pattern are ignored.
* ``metadata``: a CSV with one row per well (no site column: the sites are discovered from
  the files) or one row per site. Columns default to the field names (experiment, plate,
  well, site, perturbation, is_control); ``mapping`` entries ``FIELD=COLUMN`` rename them.
  plate, well and perturbation are required. Without an experiment column or
  ``{experiment}`` placeholder every plate belongs to experiment ``EXP01``; without a site
  column or ``{site}`` placeholder each well has one site, numbered 1. Keys are compared as
  strings (site as an integer) on the fields that both the pattern and the CSV have.
* controls: ``control="COLUMN=VALUE"`` marks the rows where COLUMN equals VALUE; otherwise an
  ``is_control`` column (true/1/yes vs false/0/no/empty, case-insensitive), otherwise a
  ``well_type`` column equal to ``negative_control`` (RxRx1), otherwise no controls.

Output: ``out/shards/{plate}.parquet``, one shard per plate, rows sorted by well then site
(natural order: B2 before B10). File names are the plate names made file-safe; when plate
names repeat across experiments (RxRx1 plates are 1-4 in every experiment) every shard is
named ``{experiment}_{plate}``. Pixels keep the input bit depth, unscaled: uint8 when the
files are 8-bit, uint16 when they are 16-bit; a dataset that mixes both is an error (naming
the first file that differs) rather than a silent conversion. Nothing else is written (real
data has no truth tables).

Everything is validated before anything is written: the files are scanned, the CSV read,
keys matched both ways, channels checked complete and every image header read for its size
and bit depth. Each fault raises an ``InputError`` naming the first file or CSV line at
fault and the number of similar ones. Shards are then written under a hidden sibling folder
renamed into place at the end (as ``scaling synth`` does), so a failure leaves nothing
half-written. Shards are written a row group at a time, so a plate never has to fit in
memory.
"""

from __future__ import annotations

import re
import string
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import tifffile
from PIL import Image

from scaling.atomic import atomic_folder, check_out
from scaling.errors import InputError
from scaling.progress import bar as progress_bar
from scaling.shards.format import (
    KEY_COLUMNS,
    SCHEMA,
    WRITE_OPTIONS,
    site_table,
    well_runs,
)

FIELDS = ("experiment", "plate", "well", "site", "perturbation", "is_control")
KEYS = ("experiment", "plate", "well", "site")  # identify a site; in this order in key tuples
PLACEHOLDERS = KEYS + ("channel",)
DEFAULT_EXPERIMENT = "EXP01"
DEFAULT_SITE = 1
READERS = {".png": "png", ".tif": "tiff", ".tiff": "tiff"}
PNG_MODES = {"L": "uint8", "I;16": "uint16", "I;16L": "uint16", "I;16B": "uint16", "I": "uint16"}
TRUE = {"true", "1", "yes", "y", "t"}
FALSE = {"false", "0", "no", "n", "f", ""}


@dataclass
class Pattern:
    """A file path template compiled to a regex over paths relative to the images folder."""

    text: str
    regex: re.Pattern
    keys: tuple[str, ...]  # the KEYS it names, in KEYS order
    reader: str  # "png" or "tiff"


@dataclass
class Metadata:
    """The CSV's rows as dicts of FIELDS (those it has), plus each row's line number."""

    path: Path
    keys: tuple[str, ...]  # the KEYS it has, in KEYS order
    rows: list[dict]
    lines: list[int]


@dataclass
class Site:
    """One field of view: its metadata, channel files and the CSV line it came from."""

    meta: dict
    files: dict[int, Path]
    line: int = 0


def ingest(
    images,
    metadata,
    out,
    pattern: str = "{plate}/{well}_s{site}_w{channel}.png",
    mapping=(),
    control: str | None = None,
    overwrite: bool = False,
    progress: bool = True,
) -> dict:
    """Write the shards of the plates under ``images`` described by ``metadata`` to ``out``.

    ``mapping``: ``FIELD=COLUMN`` strings; ``control``: ``COLUMN=VALUE`` or None (see the
    module docstring). Returns a summary: ``plates``, ``wells``, ``sites``, ``channels``,
    ``dtype`` (the CLI prints these), plus ``experiments``, ``height`` and ``width``.
    """
    images, metadata, out = Path(images), Path(metadata), Path(out)
    check_paths(images, metadata, out, overwrite)
    pat = compile_pattern(pattern)
    files = scan_files(images, pat)
    meta = read_metadata(metadata, mapping, control)
    sites = match_sites(files, pat, meta, images)
    channels = check_channels(sites)
    dtype, (height, width) = check_images(sites, pat.reader)
    site_bytes = len(channels) * height * width * np.dtype(dtype).itemsize
    plates = group_plates(sites)
    write_dataset(plates, out, pat.reader, dtype, site_bytes, progress)
    return {
        "experiments": len({s.meta["experiment"] for s in sites}),
        "plates": len(plates),
        "wells": len({tuple(s.meta[k] for k in ("experiment", "plate", "well")) for s in sites}),
        "sites": len(sites),
        "channels": len(channels),
        "dtype": dtype,
        "height": height,
        "width": width,
    }


# -- arguments ---------------------------------------------------------------------------


def check_paths(images: Path, metadata: Path, out: Path, overwrite: bool) -> None:
    """The inputs exist; ``out`` is free (or may be replaced without deleting the inputs)."""
    if not images.is_dir():
        raise InputError(f"{images}: not a folder of images")
    if not metadata.is_file():
        raise InputError(f"{metadata}: no such metadata CSV")
    check_out(out, (images, metadata), overwrite)


def compile_pattern(text: str) -> Pattern:
    """``{plate}/{well}_s{site}_w{channel}.png`` -> a regex with one named group per field.

    Site and channel match digits; the other fields match any text within one folder level.
    The extension matches in any letter case (``.TIF`` too).
    """
    reader = READERS.get(Path(text).suffix.lower())
    if reader is None:
        raise InputError(f"--pattern {text}: the extension must be one of {', '.join(READERS)}")
    if text.startswith("/") or ".." in text.split("/"):
        raise InputError(f"--pattern {text}: must be a path relative to the images folder")
    try:
        parts = list(string.Formatter().parse(text))
    except ValueError as e:
        raise InputError(f"--pattern {text}: {e}") from None
    regex, names = "", []
    for literal, name, spec, conv in parts:
        regex += re.escape(literal)
        if name is None:
            continue
        if name not in PLACEHOLDERS or spec or conv:
            raise InputError(
                f"--pattern {text}: unknown placeholder {{{name}}} "
                f"(have {', '.join('{' + p + '}' for p in PLACEHOLDERS)})"
            )
        if name in names:
            raise InputError(f"--pattern {text}: {{{name}}} appears twice")
        names.append(name)
        regex += rf"(?P<{name}>\d+)" if name in ("site", "channel") else rf"(?P<{name}>[^/]+?)"
    if "channel" not in names:
        raise InputError(f"--pattern {text}: needs a {{channel}} placeholder")
    ext = re.escape(Path(text).suffix)
    if regex.endswith(ext):  # the extension is literal text (not inside a placeholder)
        regex = regex[: -len(ext)] + f"(?i:{ext})"
    keys = tuple(k for k in KEYS if k in names)
    return Pattern(text, re.compile(regex), keys, reader)


def parse_pairs(items, option: str, form: str) -> list[tuple[str, str]]:
    """``["A=B", ...]`` -> ``[("A", "B"), ...]``, split at the first ``=``."""
    pairs = []
    for item in items:
        left, sep, right = item.partition("=")
        if not sep or not left.strip() or not right.strip():
            raise InputError(f"{option} {item}: expected {form}")
        pairs.append((left.strip(), right.strip()))
    return pairs


# -- scan, read, match -------------------------------------------------------------------


def scan_files(images: Path, pat: Pattern) -> dict[tuple, dict[int, Path]]:
    """The files under ``images`` that match the pattern: site key -> {channel: path}.

    A site key is the tuple of the pattern's KEYS values (site as an int).
    """
    sites: dict[tuple, dict[int, Path]] = defaultdict(dict)
    other = None
    for path in sorted(images.rglob("*")):
        rel = path.relative_to(images).as_posix()
        m = pat.regex.fullmatch(rel)
        if m is None or not path.is_file():
            if other is None and path.is_file():
                other = rel
            continue
        key = tuple(int(m[k]) if k == "site" else m[k] for k in pat.keys)
        channel = int(m["channel"])
        if channel in sites[key]:
            raise InputError(f"{path}: same site and channel as {sites[key][channel]}")
        sites[key][channel] = path
    if not sites:
        seen = f" (first file there: {other})" if other else " (the folder has no files)"
        raise InputError(f"{images}: no files match --pattern {pat.text}{seen}")
    return dict(sites)


def read_metadata(path: Path, mapping, control: str | None) -> Metadata:
    """Read the CSV (all columns as strings) into rows of FIELDS, per the mapping and the
    control rule; duplicate keys are an error."""
    try:
        df = pd.read_csv(path, dtype=str, keep_default_na=False, encoding="utf-8-sig")
    except Exception as e:
        raise InputError(f"{path}: unreadable metadata CSV ({_short(e)})") from None
    df.columns = [str(c).strip() for c in df.columns]
    have = ", ".join(df.columns)
    cols = {f: f for f in FIELDS if f in df.columns}
    for name, col in parse_pairs(mapping, "--map", "FIELD=COLUMN"):
        if name not in FIELDS:
            raise InputError(
                f"--map {name}={col}: unknown field {name!r} (have {', '.join(FIELDS)})"
            )
        if col not in df.columns:
            raise InputError(f"{path}: no column {col!r} (--map {name}={col}; columns: {have})")
        cols[name] = col
    for name in ("plate", "well", "perturbation"):
        if name not in cols:
            raise InputError(
                f"{path}: no {name!r} column (columns: {have}; use --map {name}=COLUMN)"
            )
    is_control = control_rule(path, df, cols, control)
    keys = tuple(k for k in KEYS if k in cols)
    rows, lines, seen, dups = [], [], {}, []
    for i, rec in enumerate(df.to_dict("records")):
        line = i + 2  # line 1 is the header
        row = {f: str(rec[c]).strip() for f, c in cols.items() if f != "is_control"}
        if "site" in row:
            try:
                row["site"] = int(row["site"])
            except ValueError:
                raise InputError(
                    f"{path} line {line}: site {row['site']!r} is not an integer"
                ) from None
        row["is_control"] = is_control(rec, line)
        key = tuple(row[k] for k in keys)
        if key in seen:
            dups.append(f"{path} lines {seen[key]} and {line}: the same {_fmt(keys, key)}")
        seen.setdefault(key, line)
        rows.append(row)
        lines.append(line)
    _raise_first(dups)
    if not rows:
        raise InputError(f"{path}: no rows")
    return Metadata(path, keys, rows, lines)


def control_rule(path: Path, df: pd.DataFrame, cols: dict, control: str | None):
    """The function ``(record, line) -> bool`` that marks negative-control rows."""
    if control is not None:
        [(col, value)] = parse_pairs([control], "--control", "COLUMN=VALUE")
        if col not in df.columns:
            raise InputError(
                f"{path}: no column {col!r} (--control {control}; columns: {', '.join(df.columns)})"
            )
        return lambda rec, line: str(rec[col]).strip() == value
    if "is_control" in cols:
        col = cols["is_control"]

        def flag(rec, line):
            v = str(rec[col]).strip().lower()
            if v not in TRUE | FALSE:
                raise InputError(f"{path} line {line}: {col} {rec[col]!r} is not true/false")
            return v in TRUE

        return flag
    if "well_type" in df.columns:
        return lambda rec, line: str(rec["well_type"]).strip() == "negative_control"
    return lambda rec, line: False


def match_sites(files: dict, pat: Pattern, meta: Metadata, images: Path) -> list[Site]:
    """Pair every file site with its CSV row (per well or per site); both ways complete.

    Keys are compared on the fields both sides have. A CSV row without images, an image
    without a CSV row, or an image that matches several rows is an error.
    """
    join = tuple(k for k in KEYS if k in pat.keys and k in meta.keys)
    index: dict[tuple, list[int]] = defaultdict(list)
    for i, row in enumerate(meta.rows):
        index[tuple(row[k] for k in join)].append(i)
    sites, orphans, ambiguous, used = [], [], [], set()
    for fkey, chans in sorted(files.items(), key=lambda kv: _natural(kv[0])):
        values = dict(zip(pat.keys, fkey, strict=True))
        first = chans[min(chans)]
        jkey = tuple(values[k] for k in join)
        rows = index.get(jkey, [])
        if not rows:
            orphans.append(f"{first}: no row in {meta.path} for {_fmt(join, jkey)}")
            continue
        if len(rows) > 1:
            differ = [k for k in meta.keys if len({meta.rows[i][k] for i in rows}) > 1]
            ambiguous.append(
                f"{first}: matches {len(rows)} rows of {meta.path} (lines "
                f"{', '.join(str(meta.lines[i]) for i in rows[:3])}{', ...' * (len(rows) > 3)}) "
                f"that differ in "
                f"{', '.join(differ)}; add {' '.join('{' + k + '}' for k in differ)} to --pattern"
            )
            continue
        used.add(jkey)
        row = meta.rows[rows[0]]
        m = {"experiment": DEFAULT_EXPERIMENT, "site": DEFAULT_SITE, **row, **values}
        sites.append(Site(m, dict(sorted(chans.items())), meta.lines[rows[0]]))
    _raise_first(orphans)
    _raise_first(ambiguous)
    _raise_first(
        [
            f"{meta.path} line {line}: no images for {_fmt(join, jkey)} under {images}"
            for row, line in zip(meta.rows, meta.lines, strict=True)
            if (jkey := tuple(row[k] for k in join)) not in used
        ]
    )
    check_wells(sites, meta.path)
    return sites


def check_wells(sites: list[Site], csv: Path) -> None:
    """The sites of one well agree on perturbation and control (a per-site CSV may not)."""
    first: dict[tuple, Site] = {}
    problems = []
    for s in sites:
        well = tuple(s.meta[k] for k in ("experiment", "plate", "well"))
        ref = first.setdefault(well, s)
        for name in ("perturbation", "is_control"):
            if s.meta[name] != ref.meta[name]:
                problems.append(
                    f"{csv} line {s.line}: well {'/'.join(well)} has {name} "
                    f"{s.meta[name]!r} but {ref.meta[name]!r} on line {ref.line}"
                )
    _raise_first(problems)


# -- images ------------------------------------------------------------------------------


def check_channels(sites: list[Site]) -> list[int]:
    """Every site has every channel seen in the dataset; returns the channels, sorted."""
    channels = sorted({c for s in sites for c in s.files})
    problems = []
    for s in sites:
        missing = [c for c in channels if c not in s.files]
        if missing:
            folder = next(iter(s.files.values())).parent
            problems.append(
                f"{folder}: site {_site_name(s)} lacks channel "
                f"{', '.join(map(str, missing))} (have "
                f"{', '.join(map(str, s.files))})"
            )
    _raise_first(problems)
    return channels


def check_images(sites: list[Site], reader: str) -> tuple[str, tuple[int, int]]:
    """Read every file's header: readable, grayscale, one size and one bit depth throughout.

    The most common size and bit depth are the reference; a fault names the first file that
    differs and a file that has the reference. Returns the dtype name and (height, width).
    """
    headers, unreadable = [], []
    for s in sites:
        for path in s.files.values():
            try:
                headers.append((path, *image_header(path, reader)))
            except InputError as e:
                unreadable.append(str(e))
    _raise_first(unreadable)
    shape = Counter(h[1] for h in headers).most_common(1)[0][0]
    dtype = Counter(h[2] for h in headers).most_common(1)[0][0]
    like_shape = next(h[0] for h in headers if h[1] == shape)
    like_dtype = next(h[0] for h in headers if h[2] == dtype)
    _raise_first(
        [
            f"{p}: {_hw(hw)} pixels, but {like_shape} is {_hw(shape)}"
            for p, hw, _ in headers
            if hw != shape
        ]
    )
    _raise_first(
        [
            f"{p}: {dt} pixels, but {like_dtype} is {dtype} (a dataset must have one bit depth)"
            for p, _, dt in headers
            if dt != dtype
        ]
    )
    return dtype, shape


def image_header(path: Path, reader: str) -> tuple[tuple[int, int], str]:
    """(height, width) and dtype name of one grayscale image, from its header."""
    try:
        if reader == "png":
            with Image.open(path) as im:
                mode, (w, h) = im.mode, im.size
            if mode not in PNG_MODES:
                raise InputError(f"{path}: image mode {mode!r} is not 8- or 16-bit grayscale")
            return (h, w), PNG_MODES[mode]
        with tifffile.TiffFile(path) as tif:
            page = tif.pages[0]
            shape, dtype = _squeeze(page.shape), np.dtype(page.dtype)
            pages = len(tif.pages)
    except InputError:
        raise
    except Exception as e:
        raise InputError(f"{path}: unreadable image ({_short(e)})") from None
    if pages != 1 or len(shape) != 2:
        raise InputError(
            f"{path}: {pages} page(s) of shape {shape}; expected one 2-D grayscale plane"
        )
    if dtype.kind != "u" or dtype.itemsize not in (1, 2):
        raise InputError(f"{path}: {dtype} pixels; expected 8- or 16-bit unsigned")
    return shape, f"uint{dtype.itemsize * 8}"


def load_image(path: Path, reader: str, dtype: str) -> np.ndarray:
    """One channel's pixels as a native-endian (H, W) array of ``dtype``, values unchanged."""
    try:
        if reader == "png":
            with Image.open(path) as im:
                a = np.asarray(im)
        else:
            a = np.asarray(tifffile.imread(path, key=0))
        a = a.reshape(_squeeze(a.shape))
    except Exception as e:
        raise InputError(f"{path}: unreadable image ({_short(e)})") from None
    if a.dtype.kind not in "ui" or a.size and (a.min() < 0 or a.max() > np.iinfo(dtype).max):
        raise InputError(f"{path}: pixel values do not fit {dtype}")
    return a.astype(dtype, copy=False)


def load_site(site: Site, reader: str, dtype: str) -> np.ndarray:
    """A site's channel files stacked into (C, H, W), channels in numeric order."""
    planes = [load_image(p, reader, dtype) for p in site.files.values()]
    for p, a in zip(site.files.values(), planes, strict=True):
        if a.shape != planes[0].shape:
            raise InputError(
                f"{p}: {_hw(a.shape)} pixels, but "
                f"{next(iter(site.files.values()))} is {_hw(planes[0].shape)}"
            )
    return np.stack(planes)


# -- write -------------------------------------------------------------------------------


def group_plates(sites: list[Site]) -> dict[str, list[Site]]:
    """Shard file name -> its sites sorted by well then site.

    One shard per (experiment, plate), named after the plate, or ``{experiment}_{plate}``
    for every shard when plate names repeat across experiments.
    """
    plates: dict[tuple, list[Site]] = defaultdict(list)
    for s in sites:
        plates[(s.meta["experiment"], s.meta["plate"])].append(s)
    names = {k: _file_name(k[1]) for k in plates}
    if len(set(names.values())) < len(names):
        names = {k: _file_name(f"{k[0]}_{k[1]}") for k in plates}
    if len(set(names.values())) < len(names):
        clash = sorted(names.values())
        dup = next(a for a, b in zip(clash, clash[1:], strict=False) if a == b)
        raise InputError(
            f"plates {sorted(k for k in names if names[k] == dup)}: same shard "
            f"file name {dup}.parquet"
        )
    return {
        names[k]: sorted(v, key=lambda s: (_natural(s.meta["well"]), s.meta["site"]))
        for k, v in sorted(plates.items(), key=lambda kv: _natural(kv[0]))
    }


def write_dataset(
    plates: dict, out: Path, reader: str, dtype: str, site_bytes: int, progress: bool
) -> None:
    """Write the shards under a hidden sibling of ``out``, then rename it into place."""
    total = sum(len(v) for v in plates.values())
    with atomic_folder(out) as tmp:
        (tmp / "shards").mkdir()
        with progress_bar(total=total, desc="ingest", unit="site", enabled=progress) as bar:
            for name, sites in plates.items():
                path = tmp / "shards" / f"{name}.parquet"
                write_shard(sites, path, reader, dtype, site_bytes, bar)


def write_shard(
    sites: list[Site], path: Path, reader: str, dtype: str, site_bytes: int, bar
) -> None:
    """One plate's sites (sorted by well) into one Parquet file, in row groups of whole
    wells (``well_runs``), written a row group at a time."""
    with pq.ParquetWriter(path, SCHEMA, **WRITE_OPTIONS) as writer:
        wells = [tuple(s.meta[k] for k in KEY_COLUMNS) for s in sites]
        for start, end in well_runs(wells, [site_bytes] * len(sites)):
            chunk = sites[start:end]
            images = [load_site(s, reader, dtype) for s in chunk]
            meta = [{k: s.meta[k] for k in FIELDS} for s in chunk]
            writer.write_table(site_table(meta, images), row_group_size=end - start)
            bar.update(len(chunk))


# -- helpers -----------------------------------------------------------------------------


def _raise_first(problems: list[str]) -> None:
    """Raise the first problem, with the count of the others."""
    if problems:
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise InputError(problems[0] + more)


def _fmt(names, values) -> str:
    return " ".join(f"{n}={v}" for n, v in zip(names, values, strict=True)) or "(no key)"


def _site_name(s: Site) -> str:
    return f"{s.meta['experiment']}/{s.meta['plate']}/{s.meta['well']}/s{s.meta['site']}"


def _hw(shape) -> str:
    return f"{shape[0]}x{shape[1]}" if len(shape) == 2 else "x".join(map(str, shape))


def _squeeze(shape) -> tuple[int, ...]:
    """Drop length-1 axes while more than two remain, e.g. (1, H, W) -> (H, W)."""
    shape = tuple(shape)
    while len(shape) > 2 and 1 in shape:
        shape = shape[: shape.index(1)] + shape[shape.index(1) + 1 :]
    return shape


def _natural(value):
    """Sort key: digits compare as numbers (B2 < B10); works on strings, ints and tuples."""
    if isinstance(value, tuple):
        return tuple(_natural(v) for v in value)
    if isinstance(value, int):
        return ((0, value),)
    return tuple((0, int(t)) if t.isdigit() else (1, t) for t in re.split(r"(\d+)", value) if t)


def _file_name(name: str) -> str:
    """A plate name made safe for a file name (no separators, no leading dot)."""
    safe = re.sub(r"[^A-Za-z0-9._=-]+", "_", name).lstrip(".")
    return safe or "_"


def _short(e: Exception) -> str:
    return str(e).splitlines()[0][:200] if str(e) else type(e).__name__
