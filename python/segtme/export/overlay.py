"""Overlay PNG: nucleus outlines coloured by class (the model taxonomy's colours) over the image."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..inference.nuclei import NucleiTable
from .atomic import atomic_write


def render_overlay(
    rgb: np.ndarray, table: NucleiTable, *, max_size: int | None = 4096, line_width: int | None = None
) -> np.ndarray:
    """(h, w, 3) uint8 image with class-coloured outlines.

    rgb: the input image (H, W, 3) uint8 the table's coordinates refer to (input px).
    max_size: the longest edge of the output in px (the image is downscaled if larger; None:
    full size). line_width: outline width in output px (default 1, 2 above 1500 px).
    Coordinates are scaled by the same factor as the image (corner convention kept).
    """
    from PIL import Image, ImageDraw

    H, W = rgb.shape[:2]
    f = 1.0
    if max_size and max(H, W) > max_size:
        f = max_size / max(H, W)
    im = Image.fromarray(rgb)
    if f != 1.0:
        im = im.resize((max(1, round(W * f)), max(1, round(H * f))), Image.Resampling.BILINEAR)
    lw = line_width or (2 if max(im.size) > 1500 else 1)
    draw = ImageDraw.Draw(im)
    colours = [tuple(int(v) for v in c.color) for c in table.taxonomy.classes]
    for poly, cid in zip(table.polygons, table.class_id):
        p = np.asarray(poly, dtype=np.float64).reshape(-1, 2)
        if len(p) < 2:
            continue
        pts = [(float(x) * f, float(y) * f) for x, y in p]
        draw.line(pts + [pts[0]], fill=colours[int(cid)], width=lw)
    return np.asarray(im)


def write_overlay(path: str | Path, rgb: np.ndarray, table: NucleiTable, *, max_size: int | None = 4096) -> Path:
    """Render and write the overlay as PNG atomically."""
    from PIL import Image

    arr = render_overlay(rgb, table, max_size=max_size)
    with atomic_write(path, "wb") as f:
        Image.fromarray(arr).save(f, format="PNG")
    return Path(path)
