"""No command destroys its input, and a replaced output is never missing: ``check_out``
refuses an --out that is, holds or lies inside an input (symlinks too) before any work,
and ``atomic_folder`` keeps the old output until the new one is in place."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from scaling import atomic
from scaling.atomic import atomic_folder, check_out
from scaling.errors import InputError
from tests.conftest import run_cli

# -- helpers -----------------------------------------------------------------------------------


@pytest.fixture
def world(tiny_world, tmp_path):
    """A private copy of the tiny world (a broken guard must not wreck the session's)."""
    path = tmp_path / "world"
    shutil.copytree(tiny_world, path)
    return path


def refused(match: str, fn, *args, **kw) -> str:
    with pytest.raises(InputError, match=match) as e:
        fn(*args, **kw)
    assert "\n" not in str(e.value)
    return str(e.value)


def fingerprint(folder: Path) -> dict:
    return {p.relative_to(folder): p.stat().st_size for p in sorted(folder.rglob("*"))}


def make_checkpoint(folder: Path, data) -> Path:
    """A checkpoint folder as training writes one, with untrained weights (no training)."""
    from safetensors.torch import save_file

    from scaling.config import dump_config, load_config
    from scaling.model.mae import MAE

    cfg = load_config(
        Path(__file__).parent.parent / "jobs/configs/smoke.yaml", [f"data.path={data}"]
    )
    folder.mkdir(parents=True)
    state = {k: v.contiguous() for k, v in MAE.from_config(cfg).state_dict().items()}
    save_file(state, str(folder / "model.safetensors"))
    (folder / "config.yaml").write_text(dump_config(cfg))
    (folder / "state.json").write_text(json.dumps({"step": 0, "crops_seen": 0, "flops": 0}))
    return folder


def no_embedding(monkeypatch):
    """Embedding raises: a check that passes is seen to come before any embedding."""

    def fail(*a, **kw):
        raise RuntimeError("embedding started")

    monkeypatch.setattr("scaling.evaluate.embed.embed_wells", fail)
    monkeypatch.setattr("scaling.evaluate.evaluate.embed_wells", fail)


# -- check_out -------------------------------------------------------------------------------


def test_check_out_names_every_overlap(tmp_path):
    src = tmp_path / "data"
    (src / "shards").mkdir(parents=True)
    (tmp_path / "link").symlink_to(src)
    for out, how in [
        (src, "is"),
        (src / "shards", "is inside"),
        (tmp_path, "holds"),
        (tmp_path / "link", "is"),  # a symlink to the input
        (tmp_path / "link" / "new", "is inside"),
    ]:
        msg = refused(f"{how} the input", check_out, out, [src], overwrite=True)
        assert msg.startswith(f"{out}: ")
    # a link inside --out to the input: replacing --out would remove the path given
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "l").symlink_to(src)
    refused("holds the input", check_out, tmp_path / "x", [tmp_path / "x" / "l"], True)
    assert check_out(tmp_path / "apart", [src, None, tmp_path / "gone"]) == tmp_path / "apart"


def test_check_out_refuses_to_replace_the_working_directory(tmp_path, monkeypatch):
    (tmp_path / "w" / "sub").mkdir(parents=True)
    monkeypatch.chdir(tmp_path / "w" / "sub")
    refused("holds the working directory", check_out, tmp_path / "w", overwrite=True)
    refused("is the working directory", check_out, ".", overwrite=True)
    assert check_out(tmp_path / "elsewhere", overwrite=True)


# -- atomic replacement ----------------------------------------------------------------------


def build(out: Path, text: str, fail: bool = False) -> None:
    with atomic_folder(out) as tmp:
        (tmp / "v").write_text(text)
        if fail:
            raise RuntimeError("build failed")


def hidden(out: Path) -> list[str]:
    return sorted(p.name for p in out.parent.iterdir() if p.name.startswith(f".{out.name}."))


def test_a_failed_build_keeps_the_old_output(tmp_path):
    out = tmp_path / "out"
    build(out, "old")
    with pytest.raises(RuntimeError, match="build failed"):
        build(out, "new", fail=True)
    assert (out / "v").read_text() == "old" and hidden(out) == []


def test_replacement_always_has_the_old_or_the_new_output(tmp_path, monkeypatch):
    out = tmp_path / "out"
    build(out, "old")
    real, calls = os.replace, []

    def whole() -> bool:  # the old output somewhere, or the new one in place
        homes = [out, *out.parent.glob(f".{out.name}.old-*")]
        return any((h / "v").is_file() for h in homes)

    def spy(src, dst):
        assert whole()
        real(src, dst)
        calls.append((Path(src).name, Path(dst).name))
        assert whole()

    monkeypatch.setattr(atomic.os, "replace", spy)
    build(out, "new")
    assert [c[1] for c in calls] == [calls[0][1], "out"]  # old aside, then new in place
    assert calls[0][0] == "out" and calls[0][1].startswith(".out.old-")
    assert calls[1][0].startswith(".out.partial-")
    assert (out / "v").read_text() == "new" and hidden(out) == []  # the old one is gone


def test_a_failed_move_into_place_restores_the_old_output(tmp_path, monkeypatch):
    out = tmp_path / "out"
    build(out, "old")
    real = os.replace

    def spy(src, dst):
        if Path(src).name.startswith(".out.partial-"):
            raise OSError("disk gone")
        real(src, dst)

    monkeypatch.setattr(atomic.os, "replace", spy)
    with pytest.raises(OSError, match="disk gone"):
        build(out, "new")
    assert (out / "v").read_text() == "old" and hidden(out) == []


def test_a_file_output_is_replaced_by_a_folder(tmp_path):
    out = tmp_path / "out"
    out.write_text("a file")
    build(out, "new")
    assert (out / "v").read_text() == "new" and hidden(out) == []


# -- the commands ----------------------------------------------------------------------------


def test_synth_refuses_before_rendering(tmp_path, monkeypatch):
    from scaling.world.synth import synthesize

    (tmp_path / "w" / "sub").mkdir(parents=True)
    (tmp_path / "w" / "keep").write_text("x")
    monkeypatch.chdir(tmp_path / "w" / "sub")
    monkeypatch.setattr("scaling.world.synth.make_biology", lambda *a: pytest.fail("rendered"))
    refused("holds the working directory", synthesize, tmp_path / "w", overwrite=True)
    monkeypatch.chdir(tmp_path)
    refused("exists and is not empty", synthesize, tmp_path / "w")  # without --overwrite
    assert (tmp_path / "w" / "keep").read_text() == "x"


def test_synth_keeps_the_old_world_when_rendering_fails(tmp_path, monkeypatch):
    from scaling.world.synth import synthesize

    out = tmp_path / "w"
    out.mkdir()
    (out / "world.json").write_text("old")

    def broken(*a):
        raise RuntimeError("render failed")

    monkeypatch.setattr("scaling.world.synth.make_layout", broken)
    with pytest.raises(RuntimeError, match="render failed"):
        synthesize(out, preset="tiny", overwrite=True, progress=False)
    assert (out / "world.json").read_text() == "old" and hidden(out) == []


def test_curate_refuses_its_data_and_the_curations_source(world, tmp_path):
    from scaling.curate.select import curate

    before = fingerprint(world)
    refused("is the input", curate, world, "random", world, overwrite=True)
    refused("is inside the input", curate, world, "random", world / "shards", overwrite=True)
    refused("holds the input", curate, world, "random", tmp_path, overwrite=True)
    (tmp_path / "link").symlink_to(world)
    refused("is the input", curate, world, "random", tmp_path / "link", overwrite=True)
    # a curation's source counts as input: curating a curation may not replace the world
    curate(world, "random", tmp_path / "cur", wells_count=50)
    msg = refused("is the input", curate, tmp_path / "cur", "random", world, overwrite=True)
    assert msg.startswith(f"{world}: ")
    refused("is the input", curate, tmp_path / "cur", "random", tmp_path / "cur", overwrite=True)
    assert fingerprint(world) == before


def test_curate_refuses_its_reference_checkpoint_before_embedding(world, tmp_path, monkeypatch):
    from scaling.curate.select import curate

    ckpt = make_checkpoint(tmp_path / "run" / "ckpt", world)
    no_embedding(monkeypatch)
    for out, how in [(ckpt, "is"), (ckpt / "sub", "is inside"), (tmp_path / "run", "holds")]:
        refused(f"{how} the input", curate, world, "phenoprints", out, reference=ckpt)
    with pytest.raises(RuntimeError, match="embedding started"):  # a free --out gets that far
        curate(world, "phenoprints", tmp_path / "free", reference=ckpt)


def test_evaluate_refuses_checkpoint_data_and_source_before_embedding(world, tmp_path, monkeypatch):
    from scaling.curate.select import curate
    from scaling.evaluate.evaluate import evaluate

    run = tmp_path / "run"
    ckpt = make_checkpoint(run / "ray" / "checkpoint_000001", world)
    (run / "result.json").write_text(json.dumps({"checkpoint": str(ckpt)}))
    curate(world, "random", tmp_path / "cur", wells_count=50)
    no_embedding(monkeypatch)
    for checkpoint, data, out, how in [
        (ckpt, world, ckpt, "is"),
        (ckpt, world, ckpt / "eval", "is inside"),
        (ckpt, world, run / "ray", "holds"),
        (run, world, run, "holds"),  # the run folder holds its result.json and checkpoint
        (ckpt, world, world, "is"),
        (ckpt, tmp_path / "cur", world / "truth", "is inside"),  # the curation's source
        (ckpt, tmp_path / "cur", tmp_path / "cur", "is"),
    ]:
        msg = refused(f"{how} the input", evaluate, checkpoint, data, out, overwrite=True)
        assert msg.startswith(f"{out}: ")
    with pytest.raises(RuntimeError, match="embedding started"):  # RUN/eval is a fine --out
        evaluate(run, world, run / "eval")
    assert (ckpt / "model.safetensors").is_file() and (world / "shards").is_dir()


def write_plate(images: Path) -> Path:
    """One well, one site, six 8 x 8 PNG channels in the RxRx layout, and its CSV."""
    rng = np.random.default_rng(0)
    for c in range(1, 7):
        (images / "P1").mkdir(parents=True, exist_ok=True)
        px = rng.integers(0, 255, (8, 8), dtype=np.uint8)
        Image.fromarray(px).save(images / "P1" / f"B02_s1_w{c}.png")
    csv = images.parent / "meta.csv"
    pd.DataFrame({"plate": ["P1"], "well": ["B02"], "perturbation": ["g1"]}).to_csv(csv)
    return csv


def test_ingest_refuses_its_images_and_metadata(tmp_path):
    from scaling.shards.ingest import ingest

    images = tmp_path / "images"
    csv = write_plate(images)
    before = fingerprint(tmp_path)
    for out, how in [
        (images, "is"),
        (images / "P1" / "out", "is inside"),
        (tmp_path, "holds"),
        (csv, "is"),
    ]:
        refused(f"{how} the input", ingest, images, csv, out, overwrite=True, progress=False)
    assert fingerprint(tmp_path) == before
    ingest(images, csv, tmp_path / "out", progress=False)
    ingest(images, csv, tmp_path / "out", overwrite=True, progress=False)  # replaced whole
    assert len(list((tmp_path / "out" / "shards").glob("*.parquet"))) == 1


def test_cli_exit_2_one_line_and_the_input_untouched(world, tmp_path):
    before = fingerprint(world)
    rc, _, err = run_cli(
        "curate", "--data", world, "--strategy", "random", "--out", world, "--overwrite"
    )
    assert rc == 2 and len(err.strip().splitlines()) == 1 and str(world) in err
    emb = tmp_path / "e.parquet"
    emb.write_bytes(b"not parquet, and must stay so")
    rc, _, err = run_cli("benchmark", "--embeddings", emb, "--truth", world / "truth", "--out", emb)
    assert rc == 2 and len(err.strip().splitlines()) == 1 and str(emb) in err
    assert emb.read_bytes() == b"not parquet, and must stay so"
    assert fingerprint(world) == before
