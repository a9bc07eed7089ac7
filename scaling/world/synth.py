"""``scaling synth``: render a synthetic screen into shards plus its truth tables.

Output layout (contract)::

    DIR/shards/{plate}.parquet       one row per site, see scaling.shards.format
    DIR/truth/perturbations.parquet  perturbation, complex, pathway, active, strength, opposes
    DIR/truth/relationships.parquet  source, gene_a, gene_b
    DIR/truth/compounds.parquet      with compounds only: one row per treatment
                                     (scaling.world.compounds.COLUMNS)
    DIR/world.json                   preset, seed, spec and counts

A preset without images (``genome``) writes ``DIR/embeddings.parquet`` (well embeddings
in the evaluation table layout, see scaling.world.genome) instead of shards.

Everything is built under a hidden sibling folder and renamed into place at the end, so
an interrupted run leaves no half-written dataset. Plates render in parallel as Ray tasks;
each site's random stream is seeded by (seed, plate, well, site), so the output does not
depend on scheduling.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import ray

from scaling.atomic import atomic_folder, check_out
from scaling.errors import InputError
from scaling.parallel import init_ray, parallel_map
from scaling.shards.format import site_table, write_shard
from scaling.world.biology import N_FEATURES, Biology, make_biology
from scaling.world.compounds import make_compounds
from scaling.world.layout import Plate, make_layout
from scaling.world.presets import PRESETS, WorldSpec
from scaling.world.render import FEATURES, STAINS, in_stains, render_site

WELL_JITTER = 0.05  # biological well-to-well variation of the phenotype


def render_plate(
    plate: Plate, spec: WorldSpec, bio: Biology, seed: int, path: str, treatments=None
) -> int:
    """Render every site of one plate into one shard; returns the number of sites.
    ``treatments``: compound treatment name -> phenotype (``Compounds.phenotypes``)."""
    meta, images = [], []
    treatments = treatments or {}
    for w, (well, pert, ctrl) in enumerate(plate.wells):
        jitter = np.random.default_rng([seed, 4, plate.index, w]).normal(0, WELL_JITTER, N_FEATURES)
        phen = treatments[pert] if pert in treatments else bio.gene_phenotype(pert)
        phen = phen + jitter
        for site in range(spec.sites):
            rng = np.random.default_rng([seed, 3, plate.index, w, site])
            site_img = render_site(phen, plate.batch, spec.size, spec.cells, rng)
            images.append(in_stains(site_img, spec.stains))
            meta.append(
                dict(
                    experiment=plate.experiment,
                    plate=plate.plate,
                    well=well,
                    site=site,
                    perturbation=pert,
                    is_control=ctrl,
                )
            )
    write_shard(site_table(meta, images, STAINS[spec.stains]), Path(path))
    return len(images)


def synthesize(
    out,
    preset: str = "tiny",
    seed: int = 0,
    overwrite: bool = False,
    progress: bool = True,
    spec: WorldSpec | None = None,
) -> dict:
    """Write a world to ``out``; returns the summary also saved as ``world.json``.
    ``spec`` replaces the preset's (e.g. ``dataclasses.replace(PRESETS[p], strength=0.5)``);
    ``preset`` then only names it."""
    if spec is None:
        if preset not in PRESETS:
            raise InputError(f"--preset: unknown preset {preset!r} (have {', '.join(PRESETS)})")
        spec = PRESETS[preset]
    out = check_out(out, overwrite=overwrite)
    with atomic_folder(out) as tmp:
        bio = make_biology(spec, seed)
        compounds = make_compounds(spec, bio, seed)
        plates = make_layout(spec, bio, seed, compounds.treatment_names())
        treatments = compounds.phenotypes()
        (tmp / "truth").mkdir()
        bio.perturbations_table().to_parquet(tmp / "truth" / "perturbations.parquet", index=False)
        bio.relationships_table().to_parquet(tmp / "truth" / "relationships.parquet", index=False)
        if spec.compounds:
            compounds.table().to_parquet(tmp / "truth" / "compounds.parquet", index=False)
        sites, extra = 0, {}
        if not spec.images:
            from scaling.world.genome import write_genome

            extra = write_genome(tmp / "embeddings.parquet", spec, bio, plates, seed, treatments)
        else:
            init_ray()
            bio_ref = ray.put(bio)  # one copy in the object store, shared by every plate task
            jobs = [
                (p, spec, bio_ref, seed, str(tmp / "shards" / f"{p.plate}.parquet"), treatments)
                for p in plates
            ]
            sites = sum(parallel_map(render_plate, jobs, desc=f"synth {preset}", progress=progress))
        summary = {
            "preset": preset,
            "seed": seed,
            "spec": dataclasses.asdict(spec),
            "features": list(FEATURES),
            "genes": len(bio.genes),
            "active_genes": int(bio.active.sum()),
            "complexes": int(bio.complex_of.max() + 1),
            "pathways": int(bio.pathway_of_complex.max() + 1),
            "experiments": spec.experiments,
            "plates": len(plates),
            "wells": sum(len(p.wells) for p in plates),
            "sites": sites,
            **extra,
        }
        if spec.compounds:
            summary.update(
                compounds=spec.compounds,
                active_compounds=int(compounds.active.sum()),
                treatments=len(treatments),
            )
        (tmp / "world.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary
