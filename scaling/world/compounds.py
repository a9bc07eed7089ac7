"""Compounds: perturbations that phenocopy the knockout of their gene targets, over doses.

``WorldSpec.compounds`` compounds, each imaged at ``WorldSpec.concentrations`` doses (a
half-log series up to ``TOP_DOSE`` uM: 0.316, 1.00, 3.16 and 10.0 for four). A compound
m has annotated gene targets T_m, a potency EC50_m (log-uniform within the dose range) and
an efficacy e_m; at concentration c its phenotype is::

    phenotype(m, c) = e_m * Hill(c; EC50_m) * mean_{g in T_m} phenotype(g),
    Hill(c; EC50) = c / (c + EC50)                     (Hill slope 1)

so an active compound phenocopies its targets' knockout, more strongly at higher doses.
Kinds (drawn per compound):

- selective (the rest): 1-3 targets, a first one (an active gene with probability
  ``ON_ACTIVE``, else any gene) and the others from its complex;
- promiscuous (share ``PROMISCUOUS``): 4-6 active targets from distinct complexes;
- inactive (share ``INACTIVE``): targets drawn as for a selective compound and annotated,
  but no phenotype at any dose.

Each (compound, concentration) is a treatment named ``{compound}@{concentration:#.3g}``
(``CPD0007@1.00``), imaged once per experiment on compound plates laid out after the gene
plates (``scaling.world.layout.make_layout``). Everything here is drawn from its own
random stream (seed, 6), so a world without compounds is the world of before.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from scaling.world.biology import N_FEATURES, Biology
from scaling.world.presets import WorldSpec

TOP_DOSE = 10.0  # uM, the highest concentration
STEP = 10**0.5  # half-log dilution series
INACTIVE = 0.2  # share of compounds without a phenotype
PROMISCUOUS = 0.15  # share of compounds with 4-6 targets across complexes
ON_ACTIVE = 0.9  # a selective compound's first target is an active gene with this probability
EFFICACY = (0.7, 1.3)  # uniform range of e_m
COLUMNS = [
    "perturbation",
    "compound",
    "concentration",
    "targets",
    "active",
    "promiscuous",
    "ec50",
    "efficacy",
]


@dataclass
class Compounds:
    names: list[str]  # (M,)
    targets: list[list[str]]  # per compound, its annotated gene targets
    active: np.ndarray  # (M,) bool
    promiscuous: np.ndarray  # (M,) bool
    ec50: np.ndarray  # (M,) uM
    efficacy: np.ndarray  # (M,)
    concentrations: np.ndarray  # (K,) uM, ascending
    full: np.ndarray  # (M, N_FEATURES): e_m x mean target phenotype (0 if inactive)

    def hill(self) -> np.ndarray:
        """(M, K) fraction of the full effect at each dose."""
        c = self.concentrations[None, :]
        return c / (c + self.ec50[:, None])

    def treatment_names(self) -> list[str]:
        """The M x K treatments (compound-major, doses ascending)."""
        return [f"{n}@{c:#.3g}" for n in self.names for c in self.concentrations]

    def phenotypes(self) -> dict[str, np.ndarray]:
        """Treatment name -> phenotype (N_FEATURES,) float32."""
        P = (self.hill()[:, :, None] * self.full[:, None, :]).reshape(-1, N_FEATURES)
        return dict(zip(self.treatment_names(), P.astype(np.float32), strict=True))

    def table(self) -> pd.DataFrame:
        """``truth/compounds.parquet``: one row per treatment (columns ``COLUMNS``)."""
        K = len(self.concentrations)
        return pd.DataFrame(
            {
                "perturbation": self.treatment_names(),
                "compound": np.repeat(self.names, K),
                "concentration": np.tile(self.concentrations, len(self.names)),
                "targets": np.repeat([";".join(t) for t in self.targets], K),
                "active": np.repeat(self.active, K),
                "promiscuous": np.repeat(self.promiscuous, K),
                "ec50": np.repeat(self.ec50, K),
                "efficacy": np.repeat(self.efficacy, K),
            },
            columns=COLUMNS,
        )


def concentrations(k: int) -> np.ndarray:
    """(k,) ascending half-log doses ending at ``TOP_DOSE`` uM."""
    return TOP_DOSE / STEP ** np.arange(k - 1, -1, -1)


def _targets(rng, bio: Biology, promiscuous: bool) -> list[int]:
    """Gene indices of one compound's targets (module doc)."""
    pool = np.flatnonzero(bio.active)
    pool = pool if len(pool) else np.arange(len(bio.genes))
    if promiscuous:
        n, picked, seen = int(rng.integers(4, 7)), [], set()
        for g in rng.permutation(pool):
            if len(picked) == n:
                break
            if bio.complex_of[g] not in seen:
                picked.append(int(g))
                seen.add(bio.complex_of[g])
        return picked
    first = int(rng.choice(pool) if rng.random() < ON_ACTIVE else rng.integers(len(bio.genes)))
    mates = np.flatnonzero(bio.complex_of == bio.complex_of[first])
    mates = mates[mates != first]
    extra = min(int(rng.integers(0, 3)), len(mates))
    return [first, *map(int, rng.choice(mates, size=extra, replace=False))]


def make_compounds(spec: WorldSpec, bio: Biology, seed: int) -> Compounds:
    """The world's ``spec.compounds`` compounds (module doc); none when it is 0."""
    if spec.compounds < 0 or spec.concentrations < 1:
        raise ValueError(
            f"compounds must be >= 0 and concentrations >= 1, got {spec.compounds} and "
            f"{spec.concentrations}"
        )
    rng = np.random.default_rng([seed, 6])
    m = spec.compounds
    conc = concentrations(spec.concentrations)
    kind = rng.random(m)
    active, promiscuous = kind >= INACTIVE, (kind >= INACTIVE) & (kind < INACTIVE + PROMISCUOUS)
    targets = [_targets(rng, bio, bool(p)) for p in promiscuous]
    lo, hi = np.log(conc[0]), np.log(conc[-1])
    ec50 = np.exp(rng.uniform(lo, hi, m))
    efficacy = rng.uniform(*EFFICACY, m)
    full = np.zeros((m, N_FEATURES))
    for i, t in enumerate(targets):
        if active[i]:
            full[i] = efficacy[i] * bio.phenotype[t].mean(axis=0)
    return Compounds(
        names=[f"CPD{i + 1:04d}" for i in range(m)],
        targets=[[bio.genes[g] for g in t] for t in targets],
        active=active,
        promiscuous=promiscuous,
        ec50=ec50,
        efficacy=efficacy,
        concentrations=conc,
        full=full,
    )
