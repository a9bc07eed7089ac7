"""The well-embeddings Parquet layout (contract, ARCHITECTURE section 6).

One row per well: ``experiment``, ``plate``, ``well``, ``perturbation`` (strings),
``is_control`` (bool) and ``features``, a ``fixed_size_list<float32>`` of length D. Other
columns are kept: scalar ones come back in the wells table, list ones can be read instead
of ``features`` with ``column=`` (e.g. one column per block).

The reader also takes other labs' files: key columns of other scalar types (plate numbers)
are read as strings, ``is_control`` may be 0/1 integers, and ``features`` may be a plain
``list<float64>`` (or of integers) as long as every row has the same length. Anything
else raises ``InputError`` naming the file and the column at fault.

Also here: ``read_truth`` (a truth folder's two tables, contract columns checked),
``read_compounds`` (its optional compound table) and
``write_json`` (strict JSON, NaN as null, written atomically) for ``scaling benchmark``.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from scaling.errors import InputError
from scaling.shards.format import write_atomic

WELL_COLUMNS = ["experiment", "plate", "well", "perturbation", "is_control"]
STRING_COLUMNS = WELL_COLUMNS[:4]
FEATURES = "features"
ROWS_PER_GROUP = 8192  # embeddings are small rows: large row groups compress and read best


def _list_column(X: np.ndarray) -> pa.FixedSizeListArray:
    X = np.ascontiguousarray(X, dtype=np.float32)
    return pa.FixedSizeListArray.from_arrays(pa.array(X.reshape(-1)), X.shape[1])


def embeddings_table(wells: pd.DataFrame, X: np.ndarray, extra_columns=None) -> pa.Table:
    """wells (n rows, WELL_COLUMNS) + X (n, D) -> the contract's Arrow table.

    ``extra_columns``: a mapping (or DataFrame) name -> values of length n; a 2-D array
    (n, D') is stored as another fixed-size list of float32.
    """
    missing = [c for c in WELL_COLUMNS if c not in wells.columns]
    if missing:
        raise ValueError(f"wells: missing column(s) {', '.join(missing)}")
    X = np.asarray(X)
    if X.ndim != 2 or len(X) != len(wells):
        raise ValueError(f"X: expected shape ({len(wells)}, D), got {X.shape}")
    cols = {c: pa.array(wells[c].astype(str).to_numpy(), pa.string()) for c in STRING_COLUMNS}
    cols["is_control"] = pa.array(wells["is_control"].to_numpy(dtype=bool), pa.bool_())
    cols[FEATURES] = _list_column(X)
    if extra_columns is None:
        extra_columns = {}
    if not isinstance(extra_columns, Mapping | pd.DataFrame):
        raise TypeError("extra_columns: a mapping or DataFrame of name -> values")
    for name, values in extra_columns.items():
        if name in cols:
            raise ValueError(f"extra_columns: {name!r} is a contract column")
        v = np.asarray(values)
        if len(v) != len(wells):
            raise ValueError(f"extra_columns: {name!r} has {len(v)} rows, wells has {len(wells)}")
        cols[name] = _list_column(v) if v.ndim == 2 else pa.array(v)
    return pa.table(cols)


def write_embeddings(path, wells: pd.DataFrame, X: np.ndarray, extra_columns=None) -> None:
    """Write well embeddings (contract layout) atomically: a temporary file, then a rename."""
    write_atomic(embeddings_table(wells, X, extra_columns), Path(path), ROWS_PER_GROUP)


def _features(path: Path, col: pa.ChunkedArray, name: str) -> np.ndarray:
    """A list column -> float32 (n, D); InputError naming ``path`` and ``name`` otherwise."""
    t = col.type
    is_list = pa.types.is_fixed_size_list(t) or pa.types.is_list(t) or pa.types.is_large_list(t)
    if not is_list or not (pa.types.is_floating(t.value_type) or pa.types.is_integer(t.value_type)):
        raise InputError(f"{path}: column {name!r} must be a list of numbers, got {t}")
    if col.null_count:
        row = int(np.flatnonzero(col.is_null().to_numpy(zero_copy_only=False))[0])
        raise InputError(f"{path}: column {name!r} is null in row {row}")
    n = len(col)
    lengths = pc.list_value_length(col).to_numpy(zero_copy_only=False)
    d = int(lengths[0])
    if np.any(lengths != d):
        row = int(np.flatnonzero(lengths != d)[0])
        raise InputError(
            f"{path}: column {name!r} has rows of different lengths "
            f"(row 0 has {d} values, row {row} has {int(lengths[row])})"
        )
    if d == 0:
        raise InputError(f"{path}: column {name!r} holds empty lists")
    values = pa.chunked_array([c.flatten() for c in col.chunks], t.value_type)
    if values.null_count:
        row = int(np.flatnonzero(values.is_null().to_numpy(zero_copy_only=False))[0]) // d
        raise InputError(f"{path}: column {name!r} has a null value in row {row}")
    X = values.to_numpy().astype(np.float32, copy=False).reshape(n, d)
    bad = ~np.isfinite(X)
    if bad.any():
        row = int(np.flatnonzero(bad.any(axis=1))[0])
        raise InputError(
            f"{path}: column {name!r} has non-finite values (row {row}; "
            f"float32 overflow counts as non-finite)"
        )
    return X


def read_embeddings(path, column: str = FEATURES) -> tuple[pd.DataFrame, np.ndarray]:
    """Read a well-embeddings file -> (wells, X float32 (n, D)).

    ``wells`` has the contract's key columns (strings; ``is_control`` bool) followed by any
    other scalar columns of the file, one row per well in file order; ``column`` picks the
    list column read as X. Raises ``InputError`` naming the file on a missing or unreadable
    file, missing columns, nulls in key columns, a non-boolean ``is_control``, ``column``
    not a list of numbers, lists of different lengths, and non-finite values.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such file")
    try:
        table = pq.read_table(path)
    except Exception as e:  # pyarrow raises several types for a corrupt or foreign file
        msg = " ".join(str(e).split())
        raise InputError(f"{path}: not a readable Parquet file ({msg})") from None
    need = WELL_COLUMNS + [column]
    missing = [c for c in need if c not in table.column_names]
    if missing:
        raise InputError(f"{path}: missing column(s) {', '.join(missing)} (need {', '.join(need)})")
    if table.num_rows == 0:
        raise InputError(f"{path}: no rows")
    X = _features(path, table.column(column), column)
    wells = {}
    for c in WELL_COLUMNS:
        col = table.column(c)
        if col.null_count:
            raise InputError(f"{path}: column {c!r} has null values")
        if c == "is_control":
            wells[c] = _bool_column(path, col)
        else:
            wells[c] = col.to_numpy(zero_copy_only=False).astype(str).astype(object)
    for c in table.column_names:
        t = table.schema.field(c).type
        if c not in wells and c != column and not pa.types.is_nested(t):
            wells[c] = table.column(c).to_numpy(zero_copy_only=False)
    return pd.DataFrame(wells), X


def _bool_column(path: Path, col: pa.ChunkedArray) -> np.ndarray:
    if pa.types.is_boolean(col.type):
        return col.to_numpy(zero_copy_only=False).astype(bool)
    if pa.types.is_integer(col.type):
        v = col.to_numpy(zero_copy_only=False)
        if np.isin(v, (0, 1)).all():
            return v.astype(bool)
    raise InputError(f"{path}: column 'is_control' must be boolean (or 0/1), got {col.type}")


TRUTH_COLUMNS = {
    "perturbations": ["perturbation", "complex", "pathway", "active"],
    "relationships": ["source", "gene_a", "gene_b"],
}


COMPOUND_COLUMNS = ["perturbation", "compound", "concentration", "targets"]


def _read_table(path: Path, need: list[str]) -> pd.DataFrame:
    """A truth table with its columns checked; InputError naming the file."""
    if not path.is_file():
        raise InputError(f"{path}: no such file")
    try:
        df = pd.read_parquet(path)
    except Exception as e:  # pyarrow raises several types for a corrupt or foreign file
        raise InputError(
            f"{path}: not a readable Parquet file ({' '.join(str(e).split())})"
        ) from None
    missing = [c for c in need if c not in df.columns]
    if missing:
        raise InputError(f"{path}: missing column(s) {', '.join(missing)} (need {', '.join(need)})")
    return df


def read_truth(truth) -> tuple[pd.DataFrame, pd.DataFrame]:
    """``truth/perturbations.parquet`` and ``truth/relationships.parquet`` (contract columns
    checked); InputError naming the file on a missing or bad table. The optional third
    table, ``compounds.parquet``, is read by ``read_compounds``."""
    truth = Path(truth)
    if not truth.is_dir():
        raise InputError(f"{truth}: no such truth folder")
    tables = [_read_table(truth / f"{name}.parquet", need) for name, need in TRUTH_COLUMNS.items()]
    return tables[0], tables[1]


def read_compounds(truth) -> pd.DataFrame | None:
    """``truth/compounds.parquet`` (one row per compound treatment, columns
    ``COMPOUND_COLUMNS`` checked; see scaling.world.compounds), or None when the truth
    folder has none; InputError naming the file on a bad table."""
    path = Path(truth) / "compounds.parquet"
    return _read_table(path, COMPOUND_COLUMNS) if path.exists() else None


def _plain(obj):
    """JSON-ready: NaN and infinities become null, numpy scalars Python numbers."""
    if isinstance(obj, dict):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_plain(v) for v in obj]
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not np.isfinite(obj):
        return None
    return obj


def write_json(path, obj) -> None:
    """Write ``obj`` as JSON atomically (a temporary file in the same folder, then a rename);
    NaN becomes null, so the file is strict JSON."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        tmp.write_text(json.dumps(_plain(obj), indent=2, allow_nan=False) + "\n")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
