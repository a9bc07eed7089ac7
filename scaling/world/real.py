"""Real gene names for the synthetic world (``WorldSpec.gene_names = "corum"``).

Complexes are CORUM clusters (the efaar CORUM clusters file, scaling.annotations): clusters
of 3-10 members in a seeded order, each taken whole when none of its genes is used yet,
until the world has ``spec.genes`` genes (a second pass takes the unused members of the
remaining clusters, when at least 3; the last complex is trimmed so the total is exact and
every complex keeps at least 3 genes). Pathways group 2-5 complexes, preferring complexes
linked by Reactome pairs between their members: a seeded seed complex, then repeatedly the
unassigned complex with the most Reactome pairs to the group (ties and unlinked picks in
the seeded order). The world's truth adds the real sources' pairs among its genes.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from scaling import annotations

MIN, MAX = 3, 10  # complex sizes
PATHWAY = (2, 5)  # complexes per pathway


def pick_complexes(clusters: list[list[str]], n: int, rng) -> list[list[str]]:
    """Disjoint gene lists (each a subset of one cluster of 3-10) with ``n`` genes in all."""
    pool = [c for c in clusters if MIN <= len(c) <= MAX]
    order = rng.permutation(len(pool))
    used: set[str] = set()
    out: list[list[str]] = []
    for whole in (True, False):
        for i in order:
            need = n - len(used)
            if need == 0:
                return out
            fresh = [g for g in pool[i] if g not in used]
            if (whole and len(fresh) < len(pool[i])) or len(fresh) < MIN:
                continue
            k = min(len(fresh), need)
            if 0 < need - k < MIN:  # leave room for one more complex of at least 3
                k = need - MIN
            if k < MIN:
                continue
            out.append(fresh[:k])
            used.update(fresh[:k])
    if len(used) < n:
        raise ValueError(f"CORUM clusters hold only {len(used)} disjoint genes, asked {n}")
    return out


def group_pathways(complexes: list[list[str]], reactome: pd.DataFrame, rng) -> np.ndarray:
    """Pathway index per complex: groups of 2-5 complexes, linked by Reactome pairs first."""
    k = len(complexes)
    owner = {g: c for c, members in enumerate(complexes) for g in members}
    ca = reactome["gene_a"].map(owner)
    cb = reactome["gene_b"].map(owner)
    both = ca.notna() & cb.notna() & (ca != cb)
    links = np.zeros((k, k))
    np.add.at(links, (ca[both].astype(int), cb[both].astype(int)), 1.0)
    links += links.T
    pathway = np.full(k, -1)
    order = rng.permutation(k)
    rank = np.empty(k)
    rank[order] = np.arange(k) / k  # tie-break: earlier in the seeded order wins
    p = 0
    for seed_complex in order:
        if pathway[seed_complex] >= 0:
            continue
        group = [seed_complex]
        pathway[seed_complex] = p
        size = int(rng.integers(PATHWAY[0], PATHWAY[1] + 1))
        while len(group) < size and (pathway < 0).any():
            score = links[group].sum(axis=0) - rank
            score[pathway >= 0] = -np.inf
            best = int(np.argmax(score))
            pathway[best] = p
            group.append(best)
        p += 1
    return pathway


def real_groups(n: int, seed: int) -> tuple[list[str], np.ndarray, np.ndarray]:
    """(genes (G,), complex_of (G,), pathway_of_complex (K,)) of a real-gene world."""
    rng = np.random.default_rng([seed, 8])
    complexes = pick_complexes(annotations.corum_clusters(), n, rng)
    reactome = annotations.load_sources(["reactome"])
    pathway = group_pathways(complexes, reactome, rng)
    genes = [g for members in complexes for g in members]
    complex_of = np.repeat(np.arange(len(complexes)), [len(c) for c in complexes])
    return genes, complex_of, pathway


def real_relationships(genes: list[str]) -> pd.DataFrame:
    """The real sources' pairs with both genes among ``genes`` (tidy, source per name)."""
    pairs = annotations.load_sources(list(annotations.SOURCES))
    keep = pairs["gene_a"].isin(genes) & pairs["gene_b"].isin(genes)
    return pairs[keep].reset_index(drop=True)
