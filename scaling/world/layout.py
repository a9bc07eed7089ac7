"""Plate layouts and batch effects.

Every gene appears once per experiment (its replicates are across experiments); each
plate carries non-targeting controls; well positions are randomised per plate. Compound
treatments (scaling.world.compounds), if any, fill extra plates after all the gene plates.
Batch effects act per experiment (channel gain and offset, cell density), per plate (gain,
illumination gradient, focus blur) and per well (gain), so raw images are confounded.
"""

from __future__ import annotations

import string
from dataclasses import dataclass

import numpy as np

from scaling.world.biology import CONTROL, Biology
from scaling.world.presets import WorldSpec

N_CHANNELS = 6


@dataclass
class PlateBatch:
    """Technical variation of one plate (its experiment's and its own, combined)."""

    gain: np.ndarray  # (C,) multiplicative channel gain
    offset: np.ndarray  # (C,) additive background, in [0, 1] intensity units
    gradient: float  # illumination gradient amplitude across the site
    gradient_angle: float  # its direction, radians
    blur: float  # focus blur, Gaussian sigma in pixels
    density: float  # log multiplier of cell density
    well_gain_sd: float  # per-well log gain spread


@dataclass
class Plate:
    experiment: str
    plate: str
    index: int  # global plate number: seeds every site of the plate
    wells: list[tuple[str, str, bool]]  # (well, perturbation, is_control)
    batch: PlateBatch
    compound: bool = False  # a compound plate (laid out after every gene plate)


def well_names(n_wells: int) -> list[str]:
    rows, cols = (8, 12) if n_wells <= 96 else (16, 24)
    return [f"{string.ascii_uppercase[r]}{c + 1:02d}" for r in range(rows) for c in range(cols)]


def _plate(rng, spec: WorldSpec, experiment, name, index, chunk, exp, compound=False) -> Plate:
    """One plate of ``chunk`` perturbations plus the controls, wells placed at random, with
    its experiment's batch ``exp`` = (gain, offset, density) and its own variation."""
    b = spec.batch
    grid = well_names(spec.wells_per_plate)
    content = [(g, False) for g in chunk] + [(CONTROL, True)] * spec.controls_per_plate
    positions = rng.choice(len(grid), size=len(content), replace=False)
    wells = sorted(
        (grid[pos], pert, ctrl) for pos, (pert, ctrl) in zip(positions, content, strict=True)
    )
    exp_gain, exp_offset, exp_density = exp
    batch = PlateBatch(
        gain=exp_gain * rng.lognormal(0.0, 0.08 * b, N_CHANNELS),
        offset=exp_offset,
        gradient=float(rng.uniform(0.0, 0.3 * b)),
        gradient_angle=float(rng.uniform(0, 2 * np.pi)),
        blur=float(rng.uniform(0.0, 1.0 * b)),
        density=float(exp_density + rng.normal(0.0, 0.05 * b)),
        well_gain_sd=0.05 * b,
    )
    return Plate(experiment, name, index, wells, batch, compound)


def make_layout(spec: WorldSpec, bio: Biology, seed: int, treatments=()) -> list[Plate]:
    """Gene plates (every gene once per experiment), then compound plates (every treatment
    of ``treatments`` once per experiment, named ``{experiment}-C{j}``, ``compound=True``)
    with the same experiment batch effects; the compound plates draw from their own random
    stream (seed, 6, 1), so the gene plates do not depend on them."""
    rng = np.random.default_rng([seed, 2])
    b = spec.batch
    per_plate = spec.wells_per_plate - spec.controls_per_plate
    if per_plate < 1:
        raise ValueError("wells_per_plate must exceed controls_per_plate")
    plates: list[Plate] = []
    experiments = []
    for e in range(spec.experiments):
        experiment = f"EXP{e + 1:02d}"
        exp = (
            rng.lognormal(0.0, 0.25 * b, N_CHANNELS),
            rng.uniform(0.0, 0.05 * b, N_CHANNELS),
            rng.normal(0.0, 0.15 * b),
        )
        experiments.append((experiment, exp))
        genes = [bio.genes[i] for i in rng.permutation(len(bio.genes))]
        for j, start in enumerate(range(0, len(genes), per_plate)):
            chunk = genes[start : start + per_plate]
            name = f"{experiment}-P{j + 1:02d}"
            plates.append(_plate(rng, spec, experiment, name, len(plates), chunk, exp))
    rng = np.random.default_rng([seed, 6, 1])
    for experiment, exp in experiments:
        order = [treatments[i] for i in rng.permutation(len(treatments))]
        for j, start in enumerate(range(0, len(order), per_plate)):
            chunk = order[start : start + per_plate]
            name = f"{experiment}-C{j + 1:02d}"
            plates.append(_plate(rng, spec, experiment, name, len(plates), chunk, exp, True))
    return plates
