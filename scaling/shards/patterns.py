"""The file-pattern layouts of ``scaling ingest`` (RxRx, Phenix/Harmony, any template): a
folder of image files named by a template plus a metadata CSV of wells or sites.

A pattern is a path relative to the images folder with placeholders ``{experiment}``,
``{plate}``, ``{well}`` (or ``{row}`` and ``{column}``, numbers: row 1 is A, 27 is AA;
column 1 is 01), ``{site}`` (or ``{field}``), ``{channel}`` (a number) and ``{plane}``
(a focal-plane number), and ``*`` for any text within one folder level. Without
``{channel}`` every file holds a whole site (a multi-page TIFF or OME-TIFF, see
``scaling.shards.imagefile``). The extension picks the reader.
"""

from __future__ import annotations

import re
import string
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

from scaling.errors import InputError
from scaling.shards.format import default_channel_names
from scaling.shards.imagefile import READERS
from scaling.shards.sites import (
    DEFAULT_EXPERIMENT,
    DEFAULT_SITE,
    FIELDS,
    KEYS,
    Site,
    control_rule,
    fmt,
    natural,
    parse_pairs,
    raise_first,
    read_csv,
)

RXRX_PATTERN = "{plate}/{well}_s{site}_w{channel}.png"
HARMONY_PATTERN = "{plate}/Images/r{row}c{column}f{field}p{plane}-ch{channel}sk*.tiff"
NUMBERS = ("row", "column", "site", "field", "channel", "plane")  # placeholders of digits
PLACEHOLDERS = ("experiment", "plate", "well", "row", "column", "site", "field", "channel")
PLACEHOLDERS += ("plane",)


@dataclass
class Pattern:
    """A file path template compiled to a regex over paths relative to the images folder."""

    text: str
    regex: re.Pattern
    keys: tuple[str, ...]  # the KEYS it gives, in KEYS order
    names: tuple[str, ...]  # its placeholders

    @property
    def per_site(self) -> bool:
        """Each file holds a whole site (no ``{channel}``)."""
        return "channel" not in self.names


@dataclass
class Metadata:
    """The CSV's rows as dicts of FIELDS (those it has), plus each row's line number."""

    path: Path
    keys: tuple[str, ...]  # the KEYS it has, in KEYS order
    rows: list[dict]
    lines: list[int]


def compile_pattern(text: str) -> Pattern:
    """``{plate}/{well}_s{site}_w{channel}.png`` -> a regex with one named group per
    placeholder. Numbers match digits, the other fields any text within one folder level;
    the extension matches in any letter case (``.TIF`` too)."""
    if READERS.get(Path(text).suffix.lower()) is None:
        raise InputError(f"--pattern {text}: the extension must be one of {', '.join(READERS)}")
    if text.startswith("/") or ".." in text.split("/"):
        raise InputError(f"--pattern {text}: must be a path relative to the images folder")
    try:
        parts = list(string.Formatter().parse(text))
    except ValueError as e:
        raise InputError(f"--pattern {text}: {e}") from None
    regex, names = "", []
    for literal, name, spec, conv in parts:
        regex += "[^/]*".join(re.escape(piece) for piece in literal.split("*"))
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
        regex += rf"(?P<{name}>\d+)" if name in NUMBERS else rf"(?P<{name}>[^/]+?)"
    check_placeholders(text, names)
    ext = re.escape(Path(text).suffix)
    if regex.endswith(ext):  # the extension is literal text (not inside a placeholder)
        regex = regex[: -len(ext)] + f"(?i:{ext})"
    aliases = {"row": "well", "field": "site"}  # {row}{column} give the well, {field} the site
    given = {aliases.get(n, n) for n in names}
    return Pattern(text, re.compile(regex), tuple(k for k in KEYS if k in given), tuple(names))


def check_placeholders(text: str, names: list[str]) -> None:
    """{well} or {row}+{column}, {site} or {field}; {channel} unless TIFF files hold sites."""
    if ("row" in names) != ("column" in names):
        raise InputError(f"--pattern {text}: {{row}} and {{column}} go together")
    if "well" in names and "row" in names:
        raise InputError(f"--pattern {text}: {{well}} or {{row}}{{column}}, not both")
    if "site" in names and "field" in names:
        raise InputError(f"--pattern {text}: {{site}} or {{field}}, not both")
    if "channel" not in names and READERS[Path(text).suffix.lower()] == "png":
        raise InputError(
            f"--pattern {text}: needs a {{channel}} placeholder (only multi-page TIFF files "
            f"hold a whole site)"
        )


def row_well(row: int, column: int, path) -> str:
    """Harmony's r03c07 -> C07 (rows past Z go on AA, AB, ... as on 1536-well plates)."""
    if not 1 <= row <= 52 or column < 1:
        raise InputError(f"{path}: no well at row {row}, column {column}")
    letters = chr(64 + row) if row <= 26 else "A" + chr(64 + row - 26)
    return f"{letters}{column:02d}"


# -- scan, read, match -------------------------------------------------------------------


def scan_files(images: Path, pat: Pattern) -> dict[tuple, dict]:
    """The files under ``images`` that match the pattern: site key -> {channel: {plane:
    path}} (channel and plane None when the pattern lacks them). A site key is the tuple of
    the pattern's KEYS values (site as an int)."""
    sites: dict[tuple, dict] = defaultdict(lambda: defaultdict(dict))
    other = None
    for path in sorted(images.rglob("*")):
        rel = path.relative_to(images).as_posix()
        m = pat.regex.fullmatch(rel)
        if m is None or not path.is_file():
            if other is None and path.is_file():
                other = rel
            continue
        values = m.groupdict()
        if "row" in values:
            values["well"] = row_well(int(values["row"]), int(values["column"]), path)
        values["site"] = values.get("site") or values.get("field")
        key = tuple(int(values[k]) if k == "site" else values[k] for k in pat.keys)
        channel, plane = (int(values[k]) if values.get(k) else None for k in ("channel", "plane"))
        slot = sites[key][channel]
        if plane in slot:
            raise InputError(f"{path}: same site, channel and plane as {slot[plane]}")
        slot[plane] = path
    if not sites:
        seen = f" (first file there: {other})" if other else " (the folder has no files)"
        raise InputError(f"{images}: no files match --pattern {pat.text}{seen}")
    return {k: {c: dict(v) for c, v in chans.items()} for k, chans in sites.items()}


def first_file(found: dict) -> Path:
    """A site's first file: lowest channel, lowest plane."""
    chan = found[min(found, key=lambda c: c or 0)]
    return chan[min(chan, key=lambda p: p or 0)]


def read_metadata(path: Path, mapping, control: str | None) -> Metadata:
    """Read the CSV into rows of FIELDS, per the mapping and the control rule; duplicate
    keys are an error."""
    df = read_csv(path, "metadata CSV")
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
            dups.append(f"{path} lines {seen[key]} and {line}: the same {fmt(keys, key)}")
        seen.setdefault(key, line)
        rows.append(row)
        lines.append(line)
    raise_first(dups)
    return Metadata(path, keys, rows, lines)


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
    for fkey, found in sorted(files.items(), key=lambda kv: natural(kv[0])):
        values = dict(zip(pat.keys, fkey, strict=True))
        jkey = tuple(values[k] for k in join)
        rows = index.get(jkey, [])
        if not rows:
            orphans.append(f"{first_file(found)}: no row in {meta.path} for {fmt(join, jkey)}")
            continue
        if len(rows) > 1:
            ambiguous.append(ambiguity(first_file(found), rows, meta))
            continue
        used.add(jkey)
        row = meta.rows[rows[0]]
        m = {"experiment": DEFAULT_EXPERIMENT, "site": DEFAULT_SITE, **row, **values}
        sites.append(Site(m, line=meta.lines[rows[0]], found=found))
    raise_first(orphans)
    raise_first(ambiguous)
    raise_first(
        [
            f"{meta.path} line {line}: no images for {fmt(join, jkey)} under {images}"
            for row, line in zip(meta.rows, meta.lines, strict=True)
            if (jkey := tuple(row[k] for k in join)) not in used
        ]
    )
    check_wells(sites, meta.path)
    return sites


def ambiguity(first: Path, rows: list[int], meta: Metadata) -> str:
    differ = [k for k in meta.keys if len({meta.rows[i][k] for i in rows}) > 1]
    return (
        f"{first}: matches {len(rows)} rows of {meta.path} (lines "
        f"{', '.join(str(meta.lines[i]) for i in rows[:3])}{', ...' * (len(rows) > 3)}) "
        f"that differ in "
        f"{', '.join(differ)}; add {' '.join('{' + k + '}' for k in differ)} to --pattern"
    )


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
    raise_first(problems)


# -- channels and planes -----------------------------------------------------------------


def check_channels(sites: list[Site]) -> list[int]:
    """Every site has every channel number seen in the dataset; returns them, sorted."""
    channels = sorted({c for s in sites for c in s.found})
    problems = []
    for s in sites:
        missing = [c for c in channels if c not in s.found]
        if missing:
            problems.append(
                f"{first_file(s.found).parent}: site {s.name} lacks channel "
                f"{', '.join(map(str, missing))} (have {', '.join(map(str, sorted(s.found)))})"
            )
    raise_first(problems)
    return channels


def name_channels(option, numbers: list[int], defaults) -> list[tuple[int, str]]:
    """The (number, name) of each output channel, in order, from ``--channels``: names for
    every channel in numeric order (``DNA,ER,...``), or a selection (``1=DNA,3=RNA``).
    Without it every channel, named ``defaults``."""
    if not option:
        return list(zip(numbers, defaults, strict=True))
    items = [i.strip() for i in option.split(",")]
    if all("=" in i for i in items):
        pairs = [(n.strip(), v.strip()) for n, _, v in (i.partition("=") for i in items)]
        bad = [n for n, v in pairs if not n.isdigit() or int(n) not in numbers or not v]
        if bad:
            raise InputError(
                f"--channels {option}: no channel {bad[0]} (have {', '.join(map(str, numbers))})"
            )
        chosen = [(int(n), v) for n, v in pairs]
    elif any("=" in i for i in items) or len(items) != len(numbers) or not all(items):
        raise InputError(
            f"--channels {option}: {len(items)} names for {len(numbers)} channels "
            f"({', '.join(map(str, numbers))}); name them all or pick some as N=NAME"
        )
    else:
        chosen = list(zip(numbers, items, strict=True))
    check_unique(option, [n for _, n in chosen])
    return chosen


def check_unique(option, names) -> None:
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise InputError(f"--channels {option}: {dup[0]} given twice")


def pick_planes(site: Site, number, plane) -> list[Path]:
    """The files of one channel of a site (``number`` None: a per-site file) at the focal
    plane ``plane`` of a pattern with ``{plane}``: its only file, that plane's, or all
    (``max``)."""
    slot = site.found[number]
    if None in slot or plane == "max":
        return [slot[p] for p in sorted(slot, key=lambda p: p or 0)]
    if plane is None and len(slot) > 1:
        raise InputError(
            f"{slot[min(slot)]}: site {site.name} has focal planes "
            f"{', '.join(map(str, sorted(slot)))}; choose one with --plane N or --plane max"
        )
    index = min(slot) if plane is None else plane
    if index not in slot:
        raise InputError(
            f"{slot[min(slot)]}: site {site.name} has no focal plane {index} "
            f"(have {', '.join(map(str, sorted(slot)))})"
        )
    return [slot[index]]


def resolve_channels(sites: list[Site], pat: Pattern, option, plane) -> list[str] | None:
    """Fill each site's channels from its files; returns the channel names (None for
    per-site files, named once their headers are read, see ``name_pages``)."""
    if pat.per_site:
        for s in sites:
            s.channels = [[(p, None) for p in pick_planes(s, None, plane)]]
        return None
    numbers = check_channels(sites)
    harmony = "row" in pat.names
    defaults = [f"ch{n}" for n in numbers] if harmony else default_channel_names(len(numbers))
    chosen = name_channels(option, numbers, defaults)
    for s in sites:
        s.channels = [[(p, 0) for p in pick_planes(s, n, plane)] for n, _ in chosen]
    return [name for _, name in chosen]


def name_pages(sites: list[Site], channels: int, option, names) -> list[str]:
    """Per-site files: each site's channels are its file's pages (or OME channels) in
    order, named by ``--channels``, else the OME-TIFF's names, else the defaults."""
    defaults = names or default_channel_names(channels)
    chosen = name_channels(option, list(range(1, channels + 1)), defaults)
    for s in sites:
        [files] = s.channels
        s.channels = [[(p, n - 1) for p, _ in files] for n, _ in chosen]
    return [name for _, name in chosen]


def pattern_sites(images: Path, metadata: Path, pattern: str, mapping, control, option, plane):
    """The sites of a pattern layout, with their channels and (unless the files hold whole
    sites) the channel names; returns (sites, names or None, pattern)."""
    pat = compile_pattern(pattern)
    files = scan_files(images, pat)
    meta = read_metadata(metadata, mapping, control)
    sites = match_sites(files, pat, meta, images)
    names = resolve_channels(sites, pat, option, plane)
    return sites, names, pat
