"""Whole-genome worlds without images: well embeddings written straight from the biology.

For benchmarking the evaluation code at whole-genome scale (the ``genome`` preset: about
18,000 genes, 4 experiments, 384-well plates): the same biology (``make_biology``) and
plate layouts (``make_layout``) as the rendered worlds, but each well's embedding is
computed from its latent phenotype by a fixed "model", and technical variation is added
in embedding space so that uncorrected embeddings are confounded and TVN has work to do.

A well w of gene g on plate p of experiment e, with z = phenotype(g) + well jitter (the
16 latent features; zero plus jitter for controls)::

    h_w = z A + 0.3 tanh(2 z B)               # the "model": (16,) -> (D,), D = 128
    x_w = (h_w + noise_w) G_e + o_e + o_p + f_w N_e

- A (16, D) has orthonormal rows (|zA| = |z|), B (16, D) is Gaussian: a mild nonlinearity.
- noise_w: isotropic well noise, norm about ``WELL_NOISE``.
- G_e: per-experiment linear distortion (anisotropic gains times a small mixing).
- o_e, o_p: per-experiment and per-plate additive offsets (norms ``EXP_OFFSET`` and
  ``PLATE_OFFSET``).
- f_w N_e: correlated nuisance, ``NUISANCE_RANK`` standard normal factors per well on
  loadings shared by all experiments plus an experiment-specific part (norm
  ``NUISANCE``): large variance in a few directions, which whitening on controls removes.

All batch terms scale with ``spec.batch``, phenotypes with ``spec.strength``. Deterministic
for a seed.

Compound treatments (``scaling.world.compounds``) get wells the same way, z being the
treatment's phenotype, on the compound plates after the gene plates; their noise comes
from their own stream, so the gene wells are those of the world without compounds.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from scaling.world.biology import N_FEATURES, Biology
from scaling.world.layout import Plate
from scaling.world.presets import WorldSpec

EMBED_DIM = 128
WELL_JITTER = 0.05  # biological well-to-well variation of the phenotype (as the renderer's)
WELL_NOISE = 2.0  # norm of the per-well embedding noise
EXP_OFFSET = 4.0  # norm of an experiment's additive offset
PLATE_OFFSET = 0.4  # norm of a plate's additive offset
EXP_GAIN = 0.3  # log-sd of an experiment's per-dimension gains
EXP_MIX = 0.15  # size of an experiment's mixing of dimensions
NUISANCE = 4.0  # norm of a well's correlated nuisance
NUISANCE_RANK = 8


def well_table(plates: list[Plate]) -> pd.DataFrame:
    """One row per well of the layout: experiment, plate, well, perturbation, is_control."""
    rows = [(p.experiment, p.plate, w, pert, ctrl) for p in plates for w, pert, ctrl in p.wells]
    return pd.DataFrame(rows, columns=["experiment", "plate", "well", "perturbation", "is_control"])


def _latent(z: np.ndarray, A: np.ndarray, B: np.ndarray, rng) -> np.ndarray:
    """Phenotypes z (n, 16) -> the "model"'s h (n, D): well jitter, the map, well noise."""
    z = z + rng.normal(0.0, WELL_JITTER, z.shape)
    h = z @ A + 0.3 * np.tanh(2.0 * z @ B)
    return h + rng.standard_normal(h.shape) * (WELL_NOISE / np.sqrt(A.shape[1]))


def _plate_offsets(wells: pd.DataFrame, dim: int, b: float, rng) -> np.ndarray:
    """(n, D): each well's plate offset (one draw per plate, in order of appearance)."""
    codes, _ = pd.factorize(wells["plate"])
    return (rng.standard_normal((codes.max() + 1, dim)) * (PLATE_OFFSET * b / np.sqrt(dim)))[codes]


def _factors(n: int, b: float, rng) -> np.ndarray:
    """(n, NUISANCE_RANK) standard normal nuisance factors, scaled to ``NUISANCE``."""
    return rng.standard_normal((n, NUISANCE_RANK)) * (NUISANCE * b / np.sqrt(NUISANCE_RANK))


def genome_embeddings(
    spec: WorldSpec,
    bio: Biology,
    plates: list[Plate],
    seed: int,
    dim: int = EMBED_DIM,
    treatments: dict[str, np.ndarray] | None = None,
) -> tuple[pd.DataFrame, np.ndarray]:
    """The wells of the layout and their embeddings: (wells, X float32 (n_wells, dim)).

    Compound plates (``Plate.compound``) take their phenotypes from ``treatments`` (name ->
    (16,), ``Compounds.phenotypes``) and their wells come last, through the same model and
    their experiments' distortions, with their own noise (stream (seed, 6, 2)); the gene
    plates' wells are those of a world without compounds."""
    rng = np.random.default_rng([seed, 5])
    b = spec.batch
    A = np.linalg.qr(rng.standard_normal((dim, N_FEATURES)))[0].T  # (16, D) orthonormal rows
    B = rng.standard_normal((N_FEATURES, dim)) / np.sqrt(N_FEATURES)
    shared = rng.standard_normal((NUISANCE_RANK, dim))

    wells = well_table([p for p in plates if not p.compound])
    ctrl = wells["is_control"].to_numpy(dtype=bool)
    gene = np.zeros(len(wells), dtype=np.int64)
    gene[~ctrl] = pd.Index(bio.genes).get_indexer(wells["perturbation"][~ctrl])
    h = _latent(np.where(ctrl[:, None], 0.0, bio.phenotype[gene].astype(np.float64)), A, B, rng)

    X = np.empty((len(wells), dim), dtype=np.float32)
    exp_codes, exps = pd.factorize(wells["experiment"])
    plate_offset = _plate_offsets(wells, dim, b, rng)
    distortion = {}
    for e in range(len(exps)):
        rows = exp_codes == e
        gains = np.exp(rng.normal(0.0, EXP_GAIN * b, dim))
        mix = np.eye(dim) + rng.standard_normal((dim, dim)) * (EXP_MIX * b / np.sqrt(dim))
        G = gains[:, None] * mix
        offset = rng.standard_normal(dim) * (EXP_OFFSET * b / np.sqrt(dim))
        loadings = (shared + rng.standard_normal((NUISANCE_RANK, dim))) / np.sqrt(2 * dim)
        f = _factors(int(rows.sum()), b, rng)
        X[rows] = h[rows] @ G + offset + plate_offset[rows] + f @ loadings
        distortion[exps[e]] = (G, offset, loadings)
    compound = [p for p in plates if p.compound]
    if not compound:
        return wells, X
    cw, CX = _compound_embeddings(compound, treatments or {}, A, B, distortion, b, seed)
    return pd.concat([wells, cw], ignore_index=True), np.concatenate([X, CX])


def _compound_embeddings(plates, treatments, A, B, distortion, b, seed):
    """The compound plates' (wells, X): as the gene wells, from the stream (seed, 6, 2)."""
    rng = np.random.default_rng([seed, 6, 2])
    wells = well_table(plates)
    zero = np.zeros(N_FEATURES)
    z = np.stack(
        [zero if c else treatments[p] for p, c in wells[["perturbation", "is_control"]].values]
    )
    h = _latent(z.astype(np.float64), A, B, rng)
    plate_offset = _plate_offsets(wells, A.shape[1], b, rng)
    X = np.empty(h.shape, dtype=np.float32)
    for exp, (G, offset, loadings) in distortion.items():
        rows = (wells["experiment"] == exp).to_numpy()
        f = _factors(int(rows.sum()), b, rng)
        X[rows] = h[rows] @ G + offset + plate_offset[rows] + f @ loadings
    return wells, X


def write_genome(
    path, spec: WorldSpec, bio: Biology, plates: list[Plate], seed: int, treatments=None
) -> dict:
    """Write the genome world's well embeddings to ``path`` (the evaluation table layout);
    ``treatments``: the compound treatments' phenotypes (``genome_embeddings``)."""
    from scaling.evaluate.table import write_embeddings

    wells, X = genome_embeddings(spec, bio, plates, seed, treatments=treatments)
    write_embeddings(Path(path), wells, X)
    return {"embedding_dim": X.shape[1], "control_wells": int(wells["is_control"].sum())}


def synthesize_genome(
    out, spec: WorldSpec | None = None, seed: int = 0, overwrite: bool = False
) -> dict:
    """``scaling synth --preset genome`` with an optional modified spec (e.g. a lower
    ``strength``): ``out/embeddings.parquet``, ``out/truth/``, ``out/world.json``."""
    from scaling.world.presets import PRESETS
    from scaling.world.synth import synthesize

    return synthesize(
        out,
        preset="genome",
        seed=seed,
        overwrite=overwrite,
        progress=False,
        spec=spec or PRESETS["genome"],
    )
