"""World presets: from seconds (tests) to the demo's training world and larger."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class WorldSpec:
    """Size and knobs of a synthetic screen. Sizes are per experiment unless noted."""

    genes: int
    experiments: int
    wells_per_plate: int = (
        96  # filled wells per plate (controls included), laid out on a 96/384 grid
    )
    controls_per_plate: int = 8  # non-targeting controls on every plate
    sites: int = 2  # fields of view per well
    size: int = 128  # site side in pixels
    cells: float = 14.0  # mean cells per 128 x 128 pixels
    strength: float = 1.0  # global phenotype strength
    active_fraction: float = 0.5  # share of genes with a phenotype
    # weight of the per-channel intensity features in every phenotype's direction, against
    # 1 for morphology and texture (scaling.world.biology): below 1, more of a gene's effect
    # is in what a crop shows after per-crop standardisation
    intensity: float = 1.0
    batch: float = 1.0  # batch-effect strength
    images: bool = True  # False: embeddings only, no images (the evaluation issue's genome preset)
    stains: str = "rxrx3"  # rxrx3: six channels; jump: JUMP's five (scaling.world.render.STAINS)
    gene_names: str = "synthetic"  # corum: real symbols, CORUM complexes (scaling.world.real)
    compounds: int = 0  # compounds, on plates after the gene plates (scaling.world.compounds)
    concentrations: int = 4  # doses per compound: a half-log series up to 10 uM


PRESETS: dict[str, WorldSpec] = {
    # tests: a few hundred sites, seconds
    "tiny": WorldSpec(genes=48, experiments=3, wells_per_plate=32, controls_per_plate=8),
    # the tiny world in JUMP Cell Painting's five channels (DNA, ER, RNA, AGP, Mito)
    "tiny-jump": WorldSpec(
        genes=48, experiments=3, wells_per_plate=32, controls_per_plate=8, stains="jump"
    ),
    # the demo's training world: a few hundred genes, 4 experiments, ~3,000 sites
    "small": WorldSpec(genes=320, experiments=4, wells_per_plate=96, controls_per_plate=12),
    # the small world with real gene symbols: complexes from CORUM, pathways from Reactome
    # the small world with real gene symbols (CORUM complexes) and 20 compounds at 4 doses
    # (one more plate per experiment): every benchmark of section 4 applies
    "small-real": WorldSpec(
        genes=320,
        experiments=4,
        wells_per_plate=96,
        controls_per_plate=12,
        gene_names="corum",
        compounds=20,
    ),
    # larger worlds for GPU runs: 256 px sites, 384-well plates
    "medium": WorldSpec(
        genes=1200, experiments=6, wells_per_plate=384, controls_per_plate=32, sites=4, size=256
    ),
    "large": WorldSpec(
        genes=6000, experiments=8, wells_per_plate=384, controls_per_plate=32, sites=4, size=512
    ),
    # whole-genome scale for the evaluation code: well embeddings only (scaling.world.genome),
    # ~18,000 genes x 4 experiments on 384-well plates with 32 controls each (~79,000 wells)
    "genome": WorldSpec(
        genes=18000, experiments=4, wells_per_plate=384, controls_per_plate=32, images=False
    ),
}
