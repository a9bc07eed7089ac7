"""The JUMP layout of ``scaling ingest``: a CellProfiler LoadData CSV plus a plate map.

LoadData CSV: one row per site with ``Metadata_Plate``, ``Metadata_Well``,
``Metadata_Site`` and, per channel ``<Name>``, ``FileName_Orig<Name>`` and
``PathName_Orig<Name>`` (the folder). Relative folders are taken under ``images`` (default:
the CSV's own folder); ``path_map`` entries ``OLD=NEW`` replace a folder's leading ``OLD``
first (e.g. the ``s3://cellpainting-gallery/`` prefix of JUMP's CSVs by a local copy). The
experiment is ``Metadata_Batch`` when the CSV has it (or the column ``--map experiment=``
names), else ``EXP01``. Each file holds one channel (pages: focal planes).

Channels: ``--channels DNA,ER,...`` picks and orders them (names as in the column names,
any letter case). By default the fluorescent channels: DNA, ER, RNA, AGP, Mito (those
present, in this order), then any other channel that is not bright-field; bright-field
planes (``Brightfield``, names ending in ``BF`` such as ``HighZBF``/``LowZBF``) are left
out unless named; if every channel is bright-field, all are kept.

Plate map (CSV, or tab-separated as JUMP's ``platemap/*.txt``): one row per well, or per
plate and well when it has a plate column (``Metadata_Plate``, one file for several plate
maps). Columns, changed with ``--map FIELD=COLUMN``: well ``Metadata_Well`` or
``well_position``; perturbation ``Metadata_JCP2022``, ``Metadata_broad_sample`` or
``broad_sample``; negative controls by ``--control COLUMN=VALUE``, else
``Metadata_control_type`` equal to ``negcon``, else an ``is_control`` column
(true/false), else none. Wells are compared as ``A01`` (``a1`` matches ``A01``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from scaling.errors import InputError
from scaling.shards.sites import (
    DEFAULT_EXPERIMENT,
    Site,
    control_rule,
    fmt,
    parse_pairs,
    raise_first,
    read_csv,
    well_name,
)

FLUORESCENT = ("DNA", "ER", "RNA", "AGP", "Mito")
BRIGHTFIELD = re.compile(r"(?i)brightfield|bf$|^bf")
LOADDATA = {"plate": "Metadata_Plate", "well": "Metadata_Well", "site": "Metadata_Site"}
BATCH = "Metadata_Batch"
PLATEMAP = {
    "plate": ("Metadata_Plate",),
    "well": ("Metadata_Well", "well_position"),
    "perturbation": ("Metadata_JCP2022", "Metadata_broad_sample", "broad_sample"),
    "is_control": ("is_control",),
}
CONTROL = ("Metadata_control_type", "negcon")
MAP_FIELDS = ("experiment", *PLATEMAP)  # --map: experiment in the LoadData CSV, the rest


@dataclass
class PlateMap:
    """A plate map's wells: (plate, well) or (well,) -> (perturbation, is_control, line)."""

    path: Path
    by_plate: bool
    wells: dict


def jump_sites(loaddata: Path, platemap: Path, images, option, mapping, control, path_map):
    """The sites of a LoadData CSV, their wells' perturbations from the plate map; returns
    (sites, channel names, channels left out)."""
    df = read_csv(loaddata, "LoadData CSV")
    maps = map_columns(mapping)
    found = channel_columns(loaddata, df)
    names, left_out = choose_channels(loaddata, found, option)
    plates = read_platemap(platemap, maps, control)
    experiment = experiment_column(loaddata, df, maps)
    base = Path(images) if images is not None else loaddata.parent
    rewrite = parse_pairs(path_map, "--path-map", "OLD=NEW")
    sites, seen, problems = [], {}, []
    for i, rec in enumerate(df.to_dict("records")):
        line = i + 2
        site = loaddata_site(loaddata, line, rec, experiment)
        key = (site.meta["plate"], site.meta["well"], site.meta["site"])
        if key in seen:
            raise InputError(f"{loaddata} lines {seen[key]} and {line}: the same site {key}")
        seen[key] = line
        site.meta.update(well_treatment(plates, site, loaddata))
        site.channels, missing = channel_files(loaddata, line, rec, names, base, rewrite)
        problems += missing
        sites.append(site)
    raise_first(problems)
    return sites, names, left_out


def map_columns(mapping) -> dict:
    """``--map FIELD=COLUMN`` entries as a dict, fields checked."""
    maps = dict(parse_pairs(mapping, "--map", "FIELD=COLUMN"))
    for name, col in maps.items():
        if name not in MAP_FIELDS:
            raise InputError(
                f"--map {name}={col}: unknown field {name!r} for --layout jump "
                f"(have {', '.join(MAP_FIELDS)})"
            )
    return maps


def channel_columns(csv: Path, df: pd.DataFrame) -> list[str]:
    """The channel names of the ``FileName_Orig<Name>`` columns, in column order."""
    for col in df.columns:
        if col.startswith("Frame_Orig") or col.startswith("Series_Orig"):
            raise InputError(f"{csv}: column {col}: multi-frame image files are not supported")
    names = [c.removeprefix("FileName_Orig") for c in df.columns if c.startswith("FileName_Orig")]
    if not names:
        raise InputError(f"{csv}: no FileName_Orig<Name> columns (not a LoadData CSV?)")
    for name in names:
        if f"PathName_Orig{name}" not in df.columns:
            raise InputError(f"{csv}: column FileName_Orig{name} has no PathName_Orig{name}")
    for col in LOADDATA.values():
        if col not in df.columns:
            raise InputError(f"{csv}: no {col} column (columns: {', '.join(df.columns)})")
    return names


def choose_channels(csv: Path, found: list[str], option) -> tuple[list[str], list[str]]:
    """The channels to keep, in order, and those left out (see the module docstring)."""
    if option:
        lower = {n.lower(): n for n in found}
        names = []
        for item in (i.strip() for i in option.split(",")):
            if item.lower() not in lower:
                raise InputError(
                    f"--channels {item}: no such channel in {csv} (have {', '.join(found)}; "
                    f"from its FileName_Orig<Name> columns)"
                )
            names.append(lower[item.lower()])
        if len(set(names)) < len(names):
            raise InputError(f"--channels {option}: a channel given twice")
    else:
        known = {n.lower(): n for n in found}
        first = [known[f.lower()] for f in FLUORESCENT if f.lower() in known]
        names = first + [n for n in found if n not in first and not BRIGHTFIELD.search(n)]
        names = names or list(found)
    return names, [n for n in found if n not in names]


def experiment_column(csv: Path, df: pd.DataFrame, maps: dict) -> str | None:
    """The LoadData column that names each site's experiment, if any."""
    col = maps.get("experiment", BATCH if BATCH in df.columns else None)
    if col is not None and col not in df.columns:
        raise InputError(f"{csv}: no column {col!r} (--map experiment={col})")
    return col


def loaddata_site(csv: Path, line: int, rec: dict, experiment) -> Site:
    """One LoadData row's site: its experiment, plate, well (as A01) and site number."""
    try:
        number = int(str(rec[LOADDATA["site"]]).strip())
    except ValueError:
        raise InputError(
            f"{csv} line {line}: {LOADDATA['site']} {rec[LOADDATA['site']]!r} is not an integer"
        ) from None
    meta = {
        "experiment": str(rec[experiment]).strip() if experiment else DEFAULT_EXPERIMENT,
        "plate": str(rec[LOADDATA["plate"]]).strip(),
        "well": well_name(str(rec[LOADDATA["well"]])),
        "site": number,
    }
    for name, col in LOADDATA.items():
        if meta[name] == "":
            raise InputError(f"{csv} line {line}: {col} is empty")
    return Site(meta, line=line)


def channel_files(csv: Path, line: int, rec: dict, names, base: Path, rewrite):
    """A row's channel files (one per channel), and a problem for each that is missing."""
    channels, problems = [], []
    for name in names:
        folder = str(rec[f"PathName_Orig{name}"]).strip()
        for old, new in sorted(rewrite, key=lambda p: -len(p[0])):
            if folder.startswith(old):
                folder = new + folder[len(old) :]
                break
        if "://" in folder:
            raise InputError(
                f"{csv} line {line}: PathName_Orig{name} {folder} is a URL; copy the images "
                f"and map its prefix to the copy with --path-map PREFIX=FOLDER"
            )
        path = base / folder / str(rec[f"FileName_Orig{name}"]).strip()
        if not path.is_file():
            problems.append(
                f"{csv} line {line}: FileName_Orig{name}: no such file {path} "
                f"(PathName_Orig{name} + FileName_Orig{name})"
            )
        channels.append([(path, 0)])
    return channels, problems


def read_platemap(path: Path, maps: dict, control) -> PlateMap:
    """The plate map's wells, per its columns and the control rule."""
    df = read_csv(path, "plate map")
    cols = {}
    for name, defaults in PLATEMAP.items():
        col = maps.get(name) or next((c for c in defaults if c in df.columns), None)
        if col is not None and col not in df.columns:
            raise InputError(f"{path}: no column {col!r} (--map {name}={col})")
        if col is None and name in ("well", "perturbation"):
            raise InputError(
                f"{path}: no {name} column (looked for {', '.join(defaults)}; columns: "
                f"{', '.join(df.columns)}; use --map {name}=COLUMN)"
            )
        if col is not None:
            cols[name] = col
    if control is None and CONTROL[0] in df.columns:
        control = "=".join(CONTROL)
    is_control = control_rule(path, df, cols, control)
    wells = {}
    for i, rec in enumerate(df.to_dict("records")):
        line = i + 2
        key = (str(rec[cols["plate"]]).strip(),) if "plate" in cols else ()
        key += (well_name(str(rec[cols["well"]])),)
        if key in wells:
            raise InputError(f"{path} lines {wells[key][2]} and {line}: the same well {key}")
        wells[key] = (str(rec[cols["perturbation"]]).strip(), is_control(rec, line), line)
    return PlateMap(path, "plate" in cols, wells)


def well_treatment(plates: PlateMap, site: Site, loaddata: Path) -> dict:
    """A site's perturbation and control flag from the plate map."""
    names = ("plate", "well") if plates.by_plate else ("well",)
    key = tuple(site.meta[n] for n in names)
    if key not in plates.wells:
        raise InputError(
            f"{plates.path}: no row for {fmt(names, key)} (the well of {loaddata} line {site.line})"
        )
    perturbation, control, _ = plates.wells[key]
    return {"perturbation": perturbation, "is_control": control}
