"""Scaling experiments on microscopy foundation models.

The sub-packages name the pipeline's stages, in order:
world (synthetic Cell Painting) -> shards (Parquet, ingest, inspect) -> curate -> stream (Ray Data)
-> ... (train, evaluate, ladder come with later stages).
"""

__version__ = "0.1.0"
