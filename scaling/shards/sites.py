"""Pieces every ``scaling ingest`` layout shares: the ``Site`` record, CSV reading, the
control rule, plate grouping and one-line error helpers."""

from __future__ import annotations

import re
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from scaling.errors import InputError
from scaling.shards.imagefile import short

FIELDS = ("experiment", "plate", "well", "site", "perturbation", "is_control")
KEYS = ("experiment", "plate", "well", "site")  # identify a site; in this order in key tuples
DEFAULT_EXPERIMENT = "EXP01"
DEFAULT_SITE = 1
TRUE = {"true", "1", "yes", "y", "t"}
FALSE = {"false", "0", "no", "n", "f", ""}

Source = tuple[Path, int | None]  # a file and the index of the channel in it (None: its only)


@dataclass
class Site:
    """One field of view: its metadata (FIELDS), its channels in output order (each the
    files it is read from: one, or several focal-plane files projected by their maximum),
    and the CSV line it came from. ``found`` holds a pattern layout's files (channel ->
    plane -> path) until its channels are resolved."""

    meta: dict
    channels: list[list[Source]] = field(default_factory=list)
    line: int = 0
    found: dict | None = None

    @property
    def paths(self) -> list[Path]:
        """The site's files, each once, in channel order."""
        return list(dict.fromkeys(p for ch in self.channels for p, _ in ch))

    @property
    def name(self) -> str:
        m = self.meta
        return f"{m['experiment']}/{m['plate']}/{m['well']}/s{m['site']}"


def read_csv(path: Path, what: str) -> pd.DataFrame:
    """A CSV file (tab-separated if its header has tabs and no commas, as JUMP's plate maps),
    every column a string, names stripped, no NA parsing."""
    opts = dict(dtype=str, keep_default_na=False, encoding="utf-8-sig")
    try:
        df = pd.read_csv(path, **opts)
        if len(df.columns) == 1 and "\t" in str(df.columns[0]):
            df = pd.read_csv(path, sep="\t", **opts)
    except Exception as e:
        raise InputError(f"{path}: unreadable {what} ({short(e)})") from None
    df.columns = [str(c).strip() for c in df.columns]
    if df.empty:
        raise InputError(f"{path}: no rows")
    return df


def parse_pairs(items, option: str, form: str) -> list[tuple[str, str]]:
    """``["A=B", ...]`` -> ``[("A", "B"), ...]``, split at the first ``=``."""
    pairs = []
    for item in items:
        left, sep, right = item.partition("=")
        if not sep or not left.strip() or not right.strip():
            raise InputError(f"{option} {item}: expected {form}")
        pairs.append((left.strip(), right.strip()))
    return pairs


def control_rule(path: Path, df: pd.DataFrame, cols: dict, control: str | None):
    """The function ``(record, line) -> bool`` that marks negative-control rows:
    ``control`` (``COLUMN=VALUE``), else the ``is_control`` field's column (true/false),
    else ``well_type == negative_control`` (RxRx1), else none."""
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


def group_plates(sites: list[Site]) -> dict[str, list[Site]]:
    """Shard file name -> its sites sorted by well then site.

    One shard per (experiment, plate), named after the plate, or ``{experiment}_{plate}``
    for every shard when plate names repeat across experiments.
    """
    plates: dict[tuple, list[Site]] = defaultdict(list)
    for s in sites:
        plates[(s.meta["experiment"], s.meta["plate"])].append(s)
    names = {k: file_name(k[1]) for k in plates}
    if len(set(names.values())) < len(names):
        names = {k: file_name(f"{k[0]}_{k[1]}") for k in plates}
    if len(set(names.values())) < len(names):
        clash = sorted(names.values())
        dup = next(a for a, b in zip(clash, clash[1:], strict=False) if a == b)
        raise InputError(
            f"plates {sorted(k for k in names if names[k] == dup)}: same shard "
            f"file name {dup}.parquet"
        )
    return {
        names[k]: sorted(v, key=lambda s: (natural(s.meta["well"]), s.meta["site"]))
        for k, v in sorted(plates.items(), key=lambda kv: natural(kv[0]))
    }


def well_name(text: str) -> str:
    """A well in the JUMP/Harmony spelling: row letters, two-digit column (``a1`` -> ``A01``);
    other spellings are kept as they are."""
    m = re.fullmatch(r"([A-Za-z]{1,2})0*(\d{1,3})", text.strip())
    return f"{m[1].upper()}{int(m[2]):02d}" if m else text.strip()


def raise_first(problems: list[str]) -> None:
    """Raise the first problem, with the count of the others."""
    if problems:
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise InputError(problems[0] + more)


def fmt(names, values) -> str:
    return " ".join(f"{n}={v}" for n, v in zip(names, values, strict=True)) or "(no key)"


def hw(shape) -> str:
    return f"{shape[0]}x{shape[1]}" if len(shape) == 2 else "x".join(map(str, shape))


def natural(value):
    """Sort key: digits compare as numbers (B2 < B10); works on strings, ints and tuples."""
    if isinstance(value, tuple):
        return tuple(natural(v) for v in value)
    if isinstance(value, int):
        return ((0, value),)
    return tuple((0, int(t)) if t.isdigit() else (1, t) for t in re.split(r"(\d+)", value) if t)


def file_name(name: str) -> str:
    """A plate name made safe for a file name (no separators, no leading dot)."""
    safe = re.sub(r"[^A-Za-z0-9._=-]+", "_", name).lstrip(".")
    return safe or "_"
