"""``scaling embed``: the well embeddings of a whole screen at one block, no truth needed.

The encoder runs only up to the block asked for (``--block N``, or ``best``: the b* that
the model's evaluation chose on its validation probes), tiles are embedded by Ray Data
actors and averaged to wells as they complete (``scaling.evaluate.embed.embed_stream``),
and wells are written in parts of ``part_wells`` rows to a hidden sibling folder of
``--out``. When every well is in, the parts are merged into ``--out`` (a temporary file
renamed into place). An interrupted job leaves its parts: run the same command again and
it embeds only the wells they lack. The parts folder is named for the job (checkpoint,
data, block, crop), so another job never takes them for its own.

Output: the embeddings contract's columns (``experiment``, ``plate``, ``well``,
``perturbation``, ``is_control``, ``features`` fixed-size list of float32) plus ``tiles``,
the crops averaged into each well, in the order wells completed; the file's metadata
records the checkpoint, block and channel names.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
import uuid
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from scaling.atomic import check_out
from scaling.errors import InputError
from scaling.evaluate.embed import (
    check_channels,
    default_actors,
    embed_stream,
    find_checkpoint,
    load_spec,
    screen,
)
from scaling.evaluate.table import ROWS_PER_GROUP, embeddings_table
from scaling.progress import bar

PART_WELLS = 4096  # wells a part holds: what an interruption can cost


def best_block(checkpoint, evaluation=None) -> int:
    """b* of ``scaling evaluate``'s ``summary.json`` (``mae.best_block``): in ``evaluation``
    when given, else the evaluation a ladder keeps beside the run (``eval/``), looked for in
    the checkpoint folder and up to three folders above it."""
    if evaluation is not None:
        places = [Path(evaluation) / "summary.json"]
    else:
        p = Path(checkpoint).resolve()
        places = [d / sub / "summary.json" for d in [p, *p.parents[:3]] for sub in ("eval", ".")]
    for path in places:
        if path.is_file():
            try:
                return int(json.loads(path.read_text())["mae"]["best_block"])
            except (ValueError, KeyError, TypeError) as e:
                raise InputError(f"{path}: no mae.best_block ({e})") from None
    where = evaluation or f"{checkpoint} or its run folder's eval/"
    raise InputError(f"--block best: no evaluation summary.json in {where} (pass --evaluation)")


def resolve_block(block, checkpoint, evaluation, depth: int) -> int:
    """``--block``: a block number 1..depth, or ``best``."""
    b = best_block(checkpoint, evaluation) if str(block) == "best" else block
    try:
        b = int(b)
    except ValueError:
        raise InputError(f"--block: {block!r} is neither a block number nor 'best'") from None
    if not 1 <= b <= depth:
        raise InputError(f"--block: {b} is not a block of this model (1..{depth})")
    return b


def parts_folder(out: Path, checkpoint: Path, ds, block: int, crop: int) -> Path:
    """The hidden sibling of ``out`` that holds this job's parts."""
    weights = checkpoint / "model.safetensors"
    job = [str(weights.resolve()), weights.stat().st_mtime_ns, str(ds.root.resolve()), block, crop]
    job.append(sorted(ds.selected_keys() or []))
    digest = hashlib.blake2b(json.dumps(job).encode(), digest_size=6).hexdigest()
    return out.with_name(f".{out.name}.{digest}.parts")


def done_keys(parts: Path) -> set[str]:
    """The wells the finished parts hold."""
    keys = set()
    for f in sorted(parts.glob("part-*.parquet")):
        t = pq.read_table(f, columns=["experiment", "plate", "well"])
        keys.update("/".join(r) for r in zip(*(c.to_pylist() for c in t.columns), strict=True))
    return keys


def write_part(parts: Path, wells, x, meta: dict) -> None:
    """One part, under a temporary name renamed into place."""
    t = embeddings_table(wells, x, {"tiles": wells["tiles"].to_numpy()})
    t = t.replace_schema_metadata({b"scaling": json.dumps(meta).encode()})
    n = len(list(parts.glob("part-*.parquet")))
    tmp = parts / f".part-{uuid.uuid4().hex[:8]}.tmp"
    pq.write_table(t, tmp, compression="zstd")
    os.replace(tmp, parts / f"part-{n:05d}-{uuid.uuid4().hex[:6]}.parquet")


def merge_parts(parts: Path, out: Path) -> int:
    """Every part into ``out`` (a temporary file renamed into place); returns the rows."""
    files = sorted(parts.glob("part-*.parquet"))
    tmp = out.with_name(f".{out.name}.{uuid.uuid4().hex[:8]}.tmp")
    rows = 0
    try:
        with pq.ParquetWriter(tmp, pq.read_schema(files[0]), compression="zstd") as w:
            for f in files:
                t = pq.read_table(f)
                w.write_table(t, row_group_size=ROWS_PER_GROUP)
                rows += t.num_rows
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    return rows


def embed_screen(
    checkpoint,
    data,
    out,
    block="best",
    evaluation=None,
    batch_size: int = 256,
    actors: int | None = None,
    overwrite: bool = False,
    progress: bool = True,
    part_wells: int = PART_WELLS,
) -> dict:
    """Embed every well of ``data`` at ``block`` of the checkpoint's encoder into the
    Parquet file ``out`` (module docstring); returns a summary."""
    t0 = time.perf_counter()
    ckpt = find_checkpoint(checkpoint)
    spec = load_spec(ckpt)
    b = resolve_block(block, checkpoint, evaluation, spec.depth)
    out = Path(out)
    if out.suffix != ".parquet":
        raise InputError(f"--out: {out} is not a .parquet file")
    scr = screen(data, spec.crop)  # metadata only
    inputs = [data, scr.ds.root, ckpt, Path(checkpoint) / "result.json"]  # RUN/x is free
    check_out(out, inputs, overwrite=overwrite)
    check_channels(scr.ds, spec)
    parts = parts_folder(out, ckpt, scr.ds, b, spec.crop)
    parts.mkdir(parents=True, exist_ok=True)
    done = done_keys(parts)
    todo = [k for k in scr.wells["key"] if k not in done]
    meta = {"checkpoint": str(ckpt), "block": b, "channels": list(scr.ds.channel_names)}
    wells = scr.wells.set_index("key", drop=False)
    stream = embed_stream(
        scr, spec, depth=b, last_only=True, keys=todo, batch_size=batch_size,
        actors=actors or default_actors(),
    )  # fmt: skip
    keys, xs = [], []
    with bar(total=len(scr.wells), initial=len(done), desc=f"embed block {b}", unit="well",
             enabled=progress) as pbar:  # fmt: skip
        for k, x in stream:
            keys += k
            xs.append(x[:, 0])
            pbar.update(len(k))
            if len(keys) >= part_wells:
                write_part(parts, wells.loc[keys], np.concatenate(xs), meta)
                keys, xs = [], []
        if keys:
            write_part(parts, wells.loc[keys], np.concatenate(xs), meta)
    rows = merge_parts(parts, out)
    shutil.rmtree(parts)
    return {
        "out": str(out), "wells": rows, "block": b, "depth": spec.depth,
        "resumed_wells": len(done), "seconds": round(time.perf_counter() - t0, 2),
    }  # fmt: skip
