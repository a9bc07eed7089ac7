"""Real annotation sources (scaling.annotations) and the real-gene world (scaling.world.real).

The efaar pair files are fetched into the cache at set-up (``scaling sources fetch``), or
here on first use; they are never part of the repository.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from itertools import combinations

import numpy as np
import pandas as pd
import pytest

from scaling import annotations
from scaling.cli import main
from scaling.evaluate.maps import benchmark
from scaling.evaluate.table import write_embeddings


@pytest.fixture(scope="module")
def cache():
    return annotations.ensure()


def _pairs(df: pd.DataFrame) -> set[tuple[str, str, str]]:
    return set(df[["source", "gene_a", "gene_b"]].itertuples(index=False, name=None))


def _wells_map(genes, rng, experiments=2, controls=4, planted=None, dim=16):
    """Wells of ``genes`` in each experiment plus controls; a gene's vector is noise plus
    its planted group's direction (``planted``: gene -> group id)."""
    groups = rng.standard_normal((max((planted or {0: 0}).values()) + 1, dim))
    rows, X = [], []
    for e in range(experiments):
        for g in genes:
            base = groups[planted[g]] * 1.5 if planted and g in planted else 0.0
            rows.append((f"E{e}", f"E{e}-P1", "A01", g, False))
            X.append(base + rng.standard_normal(dim))
        for c in range(controls):
            rows.append((f"E{e}", f"E{e}-P1", f"H{c:02d}", "NTC", True))
            X.append(rng.standard_normal(dim))
    cols = ["experiment", "plate", "well", "perturbation", "is_control"]
    return pd.DataFrame(rows, columns=cols), np.asarray(X, np.float32)


def test_recall_against_real_sources_equals_a_pair_loop(cache, tmp_path):
    """300 real symbols, CORUM clusters planted in the map: scaling benchmark --sources
    corum,humap equals a loop over the raw pair files (no TVN, to compare recall alone)."""
    rng = np.random.default_rng(0)
    clusters = annotations.corum_clusters()
    planted, genes, taken = {}, [], 0
    for i in rng.permutation(len(clusters)):
        fresh = [g for g in clusters[i] if g not in planted]
        if 3 <= len(fresh) <= 10 and len(genes) + len(fresh) <= 300:
            genes += fresh
            planted.update({g: taken % 40 for g in fresh})
            taken += 1
    humap = pd.read_csv(cache / "HuMAP.txt")
    extra = sorted(set(humap["entity1"]) - set(genes))
    genes += list(rng.choice(extra, 300 - len(genes), replace=False))
    wells, X = _wells_map(genes, rng, planted=planted)
    write_embeddings(tmp_path / "emb.parquet", wells, X)
    r = benchmark(
        tmp_path / "emb.parquet", None, tmp_path / "b.json", tvn=False, sources=["corum", "humap"]
    )

    names = sorted(genes)
    mean = {g: X[(wells.perturbation == g).to_numpy()].mean(axis=0) for g in names}
    unit = {g: v / np.linalg.norm(v) for g, v in mean.items()}
    cos = {(a, b): float(unit[a] @ unit[b]) for a, b in combinations(names, 2)}
    lo, hi = np.percentile(np.array(list(cos.values()), np.float32), [5, 95])
    for source, file in (("corum", "CORUM.txt"), ("humap", "HuMAP.txt")):
        pairs = set()
        with open(cache / file) as f:
            next(f)
            for line in f:
                a, b = line.strip().split(",")
                if a in mean and b in mean and a != b:
                    pairs.add((min(a, b), max(a, b)))
        hits = sum(cos[p] <= lo or cos[p] >= hi for p in pairs)
        assert r["pairs"][source] == len(pairs) > 50
        assert r["recall"][source] == pytest.approx(hits / len(pairs), abs=1e-12)
    assert r["recall"]["corum"] > 0.3  # planted clusters: far above chance (0.10)
    saved = json.loads((tmp_path / "b.json").read_text())
    assert saved["relationship_files"] == [str(cache / "CORUM.txt"), str(cache / "HuMAP.txt")]
    assert saved["known_perturbations"] == 300


def test_readers_of_source_formats(tmp_path):
    """CORUM 4 and 5 tables, GMT, STRING links (symbols, and ids through protein.info),
    efaar pairs and tidy tables give exactly the hand-listed pairs."""
    corum4 = tmp_path / "allComplexes.txt"
    corum4.write_text(
        "ComplexID\tComplexName\tOrganism\tsubunits(Gene name)\n"
        "1\tA-B-C\tHuman\tB;A;C\n"
        "2\tmouse\tMouse\tX;Y\n"
        "3\tD-E\tHuman\tE; D;D\n"
    )
    abc = {("a", "A", "B"), ("a", "A", "C"), ("a", "B", "C")}
    expect = {(s, a, b) for _, a, b in abc for s in ["allcomplexes"]}
    assert _pairs(annotations.read_relationships(corum4)) == expect | {("allcomplexes", "D", "E")}
    corum5 = tmp_path / "corum5.csv"
    corum5.write_text('complex_id,complex_name,subunits_gene_name\n1,x,"C;B;A"\n')
    assert _pairs(annotations.read_relationships(corum5)) == {("corum5", a, b) for _, a, b in abc}

    gmt = tmp_path / "sets.gmt"
    gmt.write_text("S1\tdesc\tB\tA\tC\nS2\thttp://x\tA\tB\n")
    assert _pairs(annotations.read_relationships(gmt)) == {("sets", a, b) for _, a, b in abc}

    links = tmp_path / "links.txt"
    links.write_text("protein1 protein2 combined_score\nA B 900\nB A 900\nA C 400\nC D 700\n")
    got = _pairs(annotations.read_relationships(links))
    assert got == {("links", "A", "B"), ("links", "C", "D")}
    assert len(annotations.read_relationships(links, min_score=300)) == 3

    ids = tmp_path / "9606.protein.links.v12.0.txt"
    ids.write_text("protein1 protein2 combined_score\n9606.ENSP1 9606.ENSP2 800\n")
    ids.write_text(ids.read_text() + "9606.ENSP1 9606.ENSP9 990\n")  # 9 unmapped: left out
    info = tmp_path / "info.txt"
    info.write_text("#string_protein_id\tpreferred_name\tsize\n9606.ENSP1\tTP53\t1\n")
    info.write_text(info.read_text() + "9606.ENSP2\tMDM2\t2\n")
    got = annotations.read_relationships(ids, string_info=info)
    assert _pairs(got) == {("9606.protein.links.v12.0", "MDM2", "TP53")}

    efaar = tmp_path / "Mine.txt"
    efaar.write_text("entity1,entity2\nB,A\nA,B\nA,A\n")
    assert _pairs(annotations.read_relationships(efaar)) == {("mine", "A", "B")}
    tidy = tmp_path / "tidy.csv"
    tidy.write_text("source,gene_a,gene_b\ns,B,A\ns,A,B\nt,C,A\n")
    assert _pairs(annotations.read_relationships(tidy)) == {("s", "A", "B"), ("t", "A", "C")}


def test_benchmark_cli_sources_and_bad_files(cache, tmp_path, capsys):
    """scaling benchmark --sources corum --relationships FILE scores both without a truth
    folder; an unknown source name, an unreadable format, a short GMT line and STRING ids
    without protein.info exit 2 with one line naming the value or file."""
    wells, X = _wells_map(["A", "B", "C"], np.random.default_rng(0))
    emb = tmp_path / "emb.parquet"
    write_embeddings(emb, wells, X)
    (tmp_path / "mine.gmt").write_text("S\td\tA\tB\tZ\n")
    args = ["benchmark", "--embeddings", emb, "--out", tmp_path / "ok.json", "--sources", "corum"]
    assert main([*map(str, args), "--relationships", str(tmp_path / "mine.gmt")]) == 0
    saved = json.loads((tmp_path / "ok.json").read_text())
    assert saved["pairs"] == {"corum": 0, "mine": 1} and set(saved["recall"]) == {"mine"}
    assert saved["relationship_files"] == [str(cache / "CORUM.txt"), str(tmp_path / "mine.gmt")]
    files = {
        "odd.txt": ("gene1\tgene2\nA\tB\n", "unrecognised relationships format"),
        "short.gmt": ("S1\tA\n", "line 1"),
        "ids.txt": ("protein1 protein2 combined_score\n9606.ENSP1 9606.ENSP2 900\n", "protein."),
    }
    cases = [(["--sources", "corum,nope"], "unknown source nope")]
    for name, (text, why) in files.items():
        (tmp_path / name).write_text(text)
        cases.append((["--relationships", str(tmp_path / name)], why))
    cases.append(([], "give --truth, --sources or --relationships"))
    for extra, why in cases:
        out = tmp_path / "b.json"
        code = main(["benchmark", "--embeddings", str(emb), "--out", str(out), *extra])
        err = capsys.readouterr().err.strip()
        assert code == 2 and len(err.splitlines()) == 1 and why in err, (extra, err)
        assert not out.exists()
        if extra and extra[0] == "--relationships":
            assert extra[1] in err


def test_real_gene_biology_takes_corum_complexes(cache):
    """small-real: every complex is a subset of one CORUM cluster, names are unique,
    pathways group 2-5 complexes and prefer Reactome-linked ones."""
    from scaling.world.biology import make_biology
    from scaling.world.presets import PRESETS

    bio = make_biology(PRESETS["small-real"], seed=0)
    assert len(bio.genes) == len(set(bio.genes)) == 320
    clusters = [set(c) for c in annotations.corum_clusters()]
    k = bio.complex_of.max() + 1
    members = [{bio.genes[i] for i in np.flatnonzero(bio.complex_of == c)} for c in range(k)]
    assert all(3 <= len(m) <= 10 and any(m <= c for c in clusters) for m in members)
    sizes = np.bincount(bio.pathway_of_complex)
    assert sizes.max() <= 5 and (sizes >= 2).sum() >= len(sizes) - 1
    reactome = annotations.load_sources(["reactome"])
    linked = {frozenset(p) for p in zip(reactome.gene_a, reactome.gene_b, strict=True)}

    def link(a, b):
        return any(frozenset((x, y)) in linked for x in members[a] for y in members[b])

    same = [
        link(a, b)
        for a, b in combinations(range(k), 2)
        if bio.pathway_of_complex[a] == bio.pathway_of_complex[b]
    ]
    other = [
        link(a, b)
        for a, b in combinations(range(k), 2)
        if bio.pathway_of_complex[a] != bio.pathway_of_complex[b]
    ]
    assert np.mean(same) > 3 * np.mean(other)


def test_synthetic_names_world_unchanged():
    """gene_names='synthetic' keeps make_biology's output bit for bit (digests computed
    before real gene names existed)."""
    from scaling.world.biology import make_biology
    from scaling.world.presets import PRESETS

    for preset, seed, digest in (("tiny", 0, "6f2ab195cbbb8ebe"), ("small", 3, "35b2db16a23f7139")):
        b = make_biology(PRESETS[preset], seed)
        m = hashlib.sha256()
        for a in (b.phenotype, b.complex_of, b.pathway_of_complex, b.active, b.strength):
            m.update(np.ascontiguousarray(a).tobytes())
        m.update(json.dumps([b.genes, sorted(b.opposes.items())]).encode())
        m.update(b.relationships_table().to_csv().encode())
        assert m.hexdigest()[:16] == digest, preset


def test_real_gene_world_recall(cache, tmp_path):
    """An embeddings-only small-real world: its truth holds the planted and the real
    sources, benchmark --sources corum scores well above chance (its complexes are CORUM's),
    and evaluate's metrics carry recall_corum beside recall_complex."""
    from scaling.evaluate.evaluate import score_blocks
    from scaling.evaluate.table import read_embeddings, read_truth
    from scaling.world.presets import PRESETS
    from scaling.world.synth import synthesize

    spec = dataclasses.replace(PRESETS["small-real"], images=False)
    synthesize(tmp_path / "w", preset="small-real", seed=0, progress=False, spec=spec)
    perts, rel = read_truth(tmp_path / "w" / "truth")
    assert set(rel.source) == {"complex", "pathway", *annotations.SOURCES}
    corum = _pairs(rel[rel.source == "corum"].assign(source=""))
    planted = _pairs(rel[rel.source == "complex"].assign(source=""))
    assert len(planted & corum) >= 0.95 * len(planted)  # the pair file misses a few
    r = benchmark(
        tmp_path / "w" / "embeddings.parquet", None, tmp_path / "b.json", sources=["corum"]
    )
    assert r["recall"]["corum"] > 0.2 and r["pairs"]["corum"] > 300
    wells, X = read_embeddings(tmp_path / "w" / "embeddings.parquet")
    metrics, _ = score_blocks(wells, X[None].copy(), [0], perts, rel, progress=False)
    values = dict(zip(metrics.metric, metrics.value, strict=True))
    assert values["recall_corum"] == pytest.approx(r["recall"]["corum"])
    assert {"recall_complex", "recall_humap", "recall_stringdb"} <= set(values)
