"""The image files ``scaling ingest`` reads: grayscale PNG and TIFF (single-page, multi-page,
ImageJ hyperstacks, OME-TIFF), 8- or 16-bit unsigned.

A file is read as an array (Z, C, H, W): focal planes, channels, rows, columns. The rule
for files with more than one plane:

* axes of length 1 are dropped;
* a labelled channel axis holds channels (OME/ImageJ ``C``, planar samples ``S``), a
  labelled ``Z`` axis holds focal planes;
* unlabelled pages (a plain multi-page TIFF: tifffile's ``I`` or ``Q`` axis) hold the
  channels, in page order, in a *per-site* file (a file that holds a whole site: a
  ``--pattern`` without ``{channel}``), and the focal planes of one channel in a
  *per-channel* file;
* any other axis longer than one (time ``T``, ...) is an error.

Planes are picked by ``plane``: None (the file must have one), a 1-based plane number, or
``"max"`` (the maximum-intensity projection, which keeps the dtype).
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tifffile
from PIL import Image

from scaling.errors import InputError

READERS = {".png": "png", ".tif": "tiff", ".tiff": "tiff"}
PNG_MODES = {"L": "uint8", "I;16": "uint16", "I;16L": "uint16", "I;16B": "uint16", "I": "uint16"}
CHANNEL_AXES = {"C": "C", "S": "C", "Z": "Z"}  # labelled axes and their role
PAGE_AXES = ("I", "Q")  # tifffile's names for unlabelled pages


@dataclass(frozen=True)
class Header:
    """What a file holds, from its header: Z planes, C channels, (H, W), dtype name, and the
    channel names an OME-TIFF records (empty when it records none)."""

    planes: int
    channels: int
    shape: tuple[int, int]
    dtype: str
    names: tuple[str, ...] = ()


def reader(path) -> str:
    """``png`` or ``tiff``, from the file name's extension."""
    kind = READERS.get(Path(path).suffix.lower())
    if kind is None:
        raise InputError(f"{path}: not a PNG or TIFF file (extensions {', '.join(READERS)})")
    return kind


def read_header(path: Path, per_site: bool) -> Header:
    """The header of one image file (see the module docstring for the axes rule)."""
    try:
        if reader(path) == "png":
            with Image.open(path) as im:
                mode, (w, h) = im.mode, im.size
            if mode not in PNG_MODES:
                raise InputError(f"{path}: image mode {mode!r} is not 8- or 16-bit grayscale")
            return Header(1, 1, (h, w), PNG_MODES[mode])
        with tifffile.TiffFile(path) as tif:
            series = tif.series[0]
            axes, shape, dtype = series.axes, tuple(series.shape), np.dtype(series.dtype)
            names = ome_names(tif.ome_metadata) if tif.is_ome else ()
    except InputError:
        raise
    except Exception as e:
        raise InputError(f"{path}: unreadable image ({short(e)})") from None
    if dtype.kind != "u" or dtype.itemsize not in (1, 2):
        raise InputError(f"{path}: {dtype} pixels; expected 8- or 16-bit unsigned")
    roles = axis_roles(path, axes, shape, per_site)
    size = {r: shape[i] for i, r in roles}
    c = size.get("C", 1)
    return Header(
        size.get("Z", 1), c, (size["Y"], size["X"]), dtype.name, names if len(names) == c else ()
    )


def axis_roles(path, axes: str, shape: tuple, per_site: bool) -> list[tuple[int, str]]:
    """The axes that matter, as (position, role), role one of Z, C, Y, X."""
    roles = []
    for i, (axis, n) in enumerate(zip(axes, shape, strict=True)):
        if axis in "YX":
            roles.append((i, axis))
        elif n > 1:
            role = CHANNEL_AXES.get(axis) or (
                ("C" if per_site else "Z") if axis in PAGE_AXES else None
            )
            if role is None:
                raise InputError(
                    f"{path}: axis {axis} of length {n} (axes {axes}, shape {shape}); expected "
                    f"channels (C), focal planes (Z) or pages"
                )
            roles.append((i, role))
    kinds = [r for _, r in roles]
    if sorted(kinds) != sorted(set(kinds)) or "Y" not in kinds or "X" not in kinds:
        raise InputError(f"{path}: axes {axes} of shape {shape}; cannot tell channels and planes")
    return roles


def ome_names(xml: str | None) -> tuple[str, ...]:
    """The channel names of an OME-XML document's first image (empty if any is unnamed)."""
    try:
        pixels = ET.fromstring(xml).find("{*}Image/{*}Pixels")
        names = tuple(ch.get("Name", "") for ch in pixels.findall("{*}Channel"))
    except Exception:
        return ()
    return names if all(names) else ()


def read_image(path: Path, per_site: bool, plane, dtype: str) -> np.ndarray:
    """A file's pixels as a native-endian (C, H, W) array of ``dtype``, values unchanged,
    with the focal plane picked by ``plane`` (None, a 1-based number or ``"max"``)."""
    try:
        if reader(path) == "png":
            with Image.open(path) as im:
                a, axes = np.asarray(im), "YX"
        else:
            with tifffile.TiffFile(path) as tif:
                series = tif.series[0]
                a, axes = series.asarray(), series.axes
    except Exception as e:
        raise InputError(f"{path}: unreadable image ({short(e)})") from None
    roles = axis_roles(path, axes, a.shape, per_site)
    a = a.reshape([a.shape[i] for i, _ in roles])
    kinds = [r for _, r in roles]
    for r in ("C", "Z"):
        if r not in kinds:
            a, kinds = a[None], [r, *kinds]
    a = a.transpose([kinds.index(r) for r in "ZCYX"])
    a = pick_plane(path, a, plane)
    if a.dtype.kind not in "ui" or a.size and (a.min() < 0 or a.max() > np.iinfo(dtype).max):
        raise InputError(f"{path}: pixel values do not fit {dtype}")
    return a.astype(dtype, copy=False)


def pick_plane(path, a: np.ndarray, plane) -> np.ndarray:
    """(Z, C, H, W) -> (C, H, W): the one plane, plane number ``plane``, or their maximum."""
    z = a.shape[0]
    if plane == "max":
        return a.max(axis=0)
    if plane is None and z > 1:
        raise InputError(f"{path}: {z} focal planes; choose one with --plane N or --plane max")
    index = 1 if plane is None else plane
    if index > z:
        raise InputError(f"{path}: no focal plane {index} (it has {z})")
    return a[index - 1]


def short(e: Exception) -> str:
    """An exception's first line, at most 200 characters."""
    return str(e).splitlines()[0][:200] if str(e) else type(e).__name__
