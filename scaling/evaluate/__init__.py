"""Evaluation: embeddings of wells, batch correction and the biology benchmarks.

Modules, in pipeline order:

- ``table``: the well-embeddings Parquet layout (contract), truth tables, JSON output.
- ``embed``: a checkpoint's every-block embeddings of every well (Ray Data).
- ``baselines``: hand-crafted CellProfiler-like features, raw-pixel PCA, random-init ViT.
- ``tvn``: typical variation normalisation (ARCHITECTURE section 4).
- ``recall``: aggregation to perturbations, known-relationship recall.
- ``consistency``: replicate consistency and per-perturbation p-values.
- ``compounds``: compound-gene activity, and the gene part of a screen with compounds.
- ``maps``: the map benchmarks (TVN, recall, consistency) and ``scaling benchmark``.
- ``probes``: linear probes and the best-block search.
- ``evaluate``: ``scaling evaluate``, all of the above for one model.
- ``during``: probes of every block inside training (``train.eval_every``).

Well embeddings travel as a pair ``(wells, X)``: a DataFrame with columns experiment,
plate, well, perturbation, is_control (one row per well) and a float32 array (n_wells, D)
in the same order.
"""
