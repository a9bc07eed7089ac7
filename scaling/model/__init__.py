"""The MAE, its sizes and FLOPs. ``load_pretrained`` reads a ``scaling export`` folder; it is
imported on first use, so ``scaling.model.sizes`` stays free of torch."""

__all__ = ["load_pretrained"]


def __getattr__(name: str):
    if name == "load_pretrained":
        from scaling.model.export import load_pretrained

        return load_pretrained
    raise AttributeError(f"module 'scaling.model' has no attribute {name!r}")
