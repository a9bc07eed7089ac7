"""The planted biology: genes in complexes, complexes in pathways, latent phenotypes.

A complex's phenotype mixes its pathway's direction with its own; some complexes oppose
another (negative cosine). A gene's phenotype is its complex's plus gene-level noise,
scaled by a strength; about half of the genes (whole complexes, plus dropouts inside active
ones) have no phenotype at all. Phenotypes live in a space of ``N_FEATURES`` morphology
features that the renderer turns into pixels (see ``render.FEATURES``).
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import combinations

import numpy as np
import pandas as pd

from scaling.world.presets import WorldSpec

N_FEATURES = 16
CONTROL = "NTC"  # the non-targeting control's perturbation name


@dataclass
class Biology:
    genes: list[str]
    complex_of: np.ndarray  # (G,) complex index per gene
    pathway_of_complex: np.ndarray  # (K,) pathway index per complex
    active: np.ndarray  # (G,) bool
    strength: np.ndarray  # (G,) phenotype norm (0 for inactive genes)
    phenotype: np.ndarray  # (G, N_FEATURES) float32
    opposes: dict[int, int]  # complex -> the complex it opposes
    real: pd.DataFrame | None = None  # real sources' pairs among the genes (gene_names corum)

    def gene_phenotype(self, perturbation: str) -> np.ndarray:
        if perturbation == CONTROL:
            return np.zeros(N_FEATURES, np.float32)
        return self.phenotype[self.index[perturbation]]

    def __post_init__(self):
        self.index = {g: i for i, g in enumerate(self.genes)}

    def perturbations_table(self) -> pd.DataFrame:
        k = self.complex_of
        return pd.DataFrame(
            {
                "perturbation": self.genes,
                "complex": [f"C{c:04d}" for c in k],
                "pathway": [f"P{p:03d}" for p in self.pathway_of_complex[k]],
                "active": self.active,
                "strength": self.strength.astype(np.float32),
                "opposes": [f"C{self.opposes[c]:04d}" if c in self.opposes else None for c in k],
            }
        )

    def relationships_table(self) -> pd.DataFrame:
        """Known relationships: every gene pair of a complex and of a pathway (a < b), then
        the real sources' pairs (corum, humap, ...) of a real-gene world."""
        rows = []
        for source, group in (
            ("complex", self.complex_of),
            ("pathway", self.pathway_of_complex[self.complex_of]),
        ):
            for g in np.unique(group):
                members = sorted(self.genes[i] for i in np.flatnonzero(group == g))
                rows += [(source, a, b) for a, b in combinations(members, 2)]
        planted = pd.DataFrame(rows, columns=["source", "gene_a", "gene_b"])
        return planted if self.real is None else pd.concat([planted, self.real], ignore_index=True)


def _unit(v: np.ndarray) -> np.ndarray:
    return v / np.linalg.norm(v, axis=-1, keepdims=True)


def _noise(rng, shape) -> np.ndarray:
    """Gaussian noise whose vectors have expected norm ~1 (per-feature sd 1/sqrt(F))."""
    return rng.standard_normal(shape) / np.sqrt(N_FEATURES)


def feature_weights(spec: WorldSpec) -> np.ndarray:
    """(N_FEATURES,) weights of the features in a phenotype's direction: ``spec.intensity``
    for the per-channel intensities, 1 for the rest (morphology, texture, density)."""
    from scaling.world.render import FEATURES

    return np.array([spec.intensity if f.startswith("intensity_") else 1.0 for f in FEATURES])


def _planted_groups(n: int, rng) -> tuple[np.ndarray, np.ndarray]:
    """Synthetic groups: complex_of (n,) of 3-10 genes each, pathway_of_complex (K,) of
    2-5 consecutive complexes each."""
    sizes, remaining = [], n  # complexes of 3-10 genes
    while remaining > 0:
        s = int(rng.integers(3, 11))
        s = remaining if remaining <= 10 else min(s, remaining - 3)
        sizes.append(s)
        remaining -= s
    complex_of = np.repeat(np.arange(len(sizes)), sizes)
    k = len(sizes)
    pathway_of_complex = np.zeros(k, dtype=int)
    p, i = 0, 0
    while i < k:  # pathways of 2-5 complexes
        step = int(rng.integers(2, 6))
        pathway_of_complex[i : i + step] = p
        i, p = i + step, p + 1
    return complex_of, pathway_of_complex


def make_biology(spec: WorldSpec, seed: int) -> Biology:
    rng = np.random.default_rng([seed, 1])
    n = spec.genes
    if spec.gene_names == "corum":
        from scaling.world.real import real_groups

        names, complex_of, pathway_of_complex = real_groups(n, seed)
    elif spec.gene_names == "synthetic":
        names = None
        complex_of, pathway_of_complex = _planted_groups(n, rng)
    else:
        raise ValueError(f"gene_names: {spec.gene_names!r} is neither synthetic nor corum")
    k = len(pathway_of_complex)
    n_pathways = int(pathway_of_complex.max()) + 1

    pathway_dir = _unit(rng.standard_normal((n_pathways, N_FEATURES)))
    own = _unit(rng.standard_normal((k, N_FEATURES)))
    complex_dir = _unit(0.6 * pathway_dir[pathway_of_complex] + 0.8 * own)
    # some complexes oppose another one from a different pathway: both tails of recall matter
    opposes: dict[int, int] = {}
    order = rng.permutation(k)
    for a, b in zip(order[0::2], order[1::2], strict=False):
        if rng.random() < 0.3 and pathway_of_complex[a] != pathway_of_complex[b]:
            complex_dir[b] = _unit(-complex_dir[a] + 0.3 * _noise(rng, N_FEATURES))
            opposes[int(a)], opposes[int(b)] = int(b), int(a)

    # activity: whole complexes are silent, and some genes drop out of active complexes
    dropout = 0.1
    complex_active = rng.random(k) < min(1.0, spec.active_fraction / (1 - dropout))
    active = complex_active[complex_of] & (rng.random(n) >= dropout)
    strength = np.where(active, spec.strength * rng.lognormal(0.0, 0.3, n), 0.0)
    direction = _unit(
        (complex_dir[complex_of] + 0.5 * _noise(rng, (n, N_FEATURES))) * feature_weights(spec)
    )
    phenotype = (strength[:, None] * direction).astype(np.float32)
    genes = [f"G{i + 1:05d}" for i in range(n)]
    gene_order = rng.permutation(n)  # names carry no hint of the complex
    if names is None:
        names = [genes[j] for j in np.argsort(gene_order)]
    return Biology(
        genes=names,
        complex_of=complex_of,
        pathway_of_complex=pathway_of_complex,
        active=active,
        strength=strength,
        phenotype=phenotype,
        opposes=opposes,
        real=None if spec.gene_names == "synthetic" else _real_pairs(names),
    )


def _real_pairs(genes: list[str]) -> pd.DataFrame:
    from scaling.world.real import real_relationships

    return real_relationships(genes)
