"""Six-channel crops to a PNG montage: one colour composite per crop, channels below."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

# RxRx-style colours for nuclei, ER, actin, RNA, mitochondria, Golgi/membrane
COLOURS = np.array(
    [[0, 0.35, 1], [0, 1, 0], [1, 0, 0], [0, 1, 1], [1, 0, 1], [1, 1, 0]], np.float32
)


def composite(crop: np.ndarray) -> np.ndarray:
    """(C, H, W) any dtype -> (H, W, 3) uint8, each channel stretched to its 99.5th percentile."""
    x = crop.astype(np.float32)
    top = np.percentile(x.reshape(len(x), -1), 99.5, axis=1)[:, None, None]
    x = np.clip(x / np.maximum(top, 1e-6), 0, 1)
    colours = COLOURS[np.arange(len(x)) % len(COLOURS)]
    rgb = np.einsum("chw,ck->hwk", x, colours) / max(1.0, len(x) / 3)
    return (np.clip(rgb, 0, 1) * 255).astype(np.uint8)


def write_montage(
    crops: np.ndarray, path: str | Path, columns: int = 8, channels: bool = True
) -> Path:
    """Crops (N, C, H, W) -> a PNG grid: composites on top, each channel in grey beneath."""
    crops = np.asarray(crops)[: columns * 4]
    n, c, h, w = crops.shape
    rows_per_crop = 1 + (c if channels else 0)
    cols = min(columns, n)
    grid_rows = -(-n // cols)
    pad = 2
    canvas = np.full((grid_rows * rows_per_crop * (h + pad), cols * (w + pad), 3), 255, np.uint8)
    for i, crop in enumerate(crops):
        r0, c0 = (i // cols) * rows_per_crop * (h + pad), (i % cols) * (w + pad)
        canvas[r0 : r0 + h, c0 : c0 + w] = composite(crop)
        if channels:
            x = crop.astype(np.float32)
            top = np.percentile(x.reshape(c, -1), 99.5, axis=1)
            for k in range(c):
                grey = (np.clip(x[k] / max(top[k], 1e-6), 0, 1) * 255).astype(np.uint8)
                y0 = r0 + (k + 1) * (h + pad)
                canvas[y0 : y0 + h, c0 : c0 + w] = grey[..., None]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    Image.fromarray(canvas).save(tmp, format="PNG")
    tmp.replace(path)
    return path
