"""Model sizes: the paper's ViTs (ARCHITECTURE section 5) and a ladder of small CPU sizes."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ViTSize:
    name: str
    depth: int
    width: int
    heads: int
    mlp: int
    patch: int
    dec_depth: int = 8
    dec_width: int = 512
    dec_heads: int = 16

    @property
    def dec_mlp(self) -> int:
        return 4 * self.dec_width


def _cpu(name, depth, width, heads, patch=8):
    return ViTSize(
        name, depth, width, heads, 4 * width, patch, dec_depth=2, dec_width=64, dec_heads=4
    )


SIZES: dict[str, ViTSize] = {
    s.name: s
    for s in (
        # CPU ladder for 64 px crops (patch 8 -> 64 patches): ~300x in encoder parameters
        _cpu("cpu-2xs", depth=2, width=16, heads=2),
        _cpu("cpu-xs", depth=2, width=32, heads=2),
        _cpu("cpu-s", depth=4, width=64, heads=4),
        _cpu("cpu-sm", depth=5, width=96, heads=4),
        _cpu("cpu-m", depth=6, width=128, heads=4),
        _cpu("cpu-l", depth=8, width=192, heads=6),
        # the paper's sizes, 256 px crops
        ViTSize("S/16", 12, 384, 6, 1536, 16),
        ViTSize("B/8", 12, 768, 12, 3072, 8),
        ViTSize("L/8", 24, 1024, 16, 4096, 8),
        ViTSize("H/8", 32, 1280, 16, 5120, 8),
        ViTSize("G/8", 48, 1664, 16, 8192, 8),
    )
}
