"""Overlay PNG: nucleus outlines coloured by class (the model taxonomy's colours) over the image,
and for PAGET models the tissue regions tinted in their class colours underneath."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..inference.nuclei import NucleiTable
from .atomic import atomic_write

#: opacity of the tissue-region tint
TISSUE_ALPHA = 0.35


def _rings(geometry: dict) -> list[tuple[list, list[list]]]:
    """[(exterior, [holes])] of a GeoJSON Polygon / MultiPolygon (coordinates as given)."""
    t, c = geometry.get("type"), geometry.get("coordinates") or []
    polys = [c] if t == "Polygon" else c if t == "MultiPolygon" else []
    return [(p[0], list(p[1:])) for p in polys if p]


def tint_regions(im, features: Sequence[dict[str, Any]], f: float, alpha: float = TISSUE_ALPHA):
    """Blend each annotation Feature's region (holes excluded) into the PIL RGB image ``im`` in
    its classification colour with opacity ``alpha``; coordinates (input px) are scaled by ``f``.
    Returns a new image."""
    from PIL import Image, ImageDraw

    out = im
    for feat in features:
        cls = (feat.get("properties") or {}).get("classification") or {}
        color = cls.get("color")
        if not color:
            continue
        mask = Image.new("L", im.size, 0)
        draw = ImageDraw.Draw(mask)
        for ext, holes in _rings(feat.get("geometry") or {}):
            if len(ext) >= 3:
                draw.polygon([(float(x) * f, float(y) * f) for x, y in ext], fill=int(round(255 * alpha)))
            for h in holes:
                if len(h) >= 3:
                    draw.polygon([(float(x) * f, float(y) * f) for x, y in h], fill=0)
        layer = Image.new("RGB", im.size, tuple(int(v) for v in color[:3]))
        out = Image.composite(layer, out, mask)
    return out


def _downscale(rgb: np.ndarray, size: tuple[int, int], rows: int = 1024):
    """PIL bilinear resize of an (H, W, 3) array to ``size`` (w, h), converted to PIL in strips of
    ``rows`` output rows (each with a margin of source rows beyond the filter's support), so no
    full-size PIL copy of a large image is made; the same filter and source box per output row
    as one ``Image.resize`` of the whole image."""
    from PIL import Image

    H, W = rgb.shape[:2]
    ow, oh = size
    sy = H / oh
    if oh <= rows:
        return Image.fromarray(rgb).resize(size, Image.Resampling.BILINEAR)
    out = Image.new("RGB", size)
    margin = int(np.ceil(2 * max(sy, 1.0))) + 2  # bilinear support is sy source rows each side
    for j0 in range(0, oh, rows):
        j1 = min(oh, j0 + rows)
        y0, y1 = j0 * sy, j1 * sy  # source box of these output rows
        a, b = max(0, int(np.floor(y0)) - margin), min(H, int(np.ceil(y1)) + margin)
        strip = Image.fromarray(rgb[a:b])
        part = strip.resize((ow, j1 - j0), Image.Resampling.BILINEAR, box=(0, y0 - a, W, y1 - a))
        out.paste(part, (0, j0))
    return out


def render_overlay(
    rgb: np.ndarray, table: NucleiTable, *, max_size: int | None = 4096, line_width: int | None = None,
    tissue_features: Sequence[dict[str, Any]] = (),
) -> np.ndarray:
    """``render_overlay_image`` as an (h, w, 3) uint8 array."""
    return np.asarray(render_overlay_image(rgb, table, max_size=max_size, line_width=line_width,
                                           tissue_features=tissue_features))


def render_overlay_image(
    rgb: np.ndarray, table: NucleiTable, *, max_size: int | None = 4096, line_width: int | None = None,
    tissue_features: Sequence[dict[str, Any]] = (),
):
    """PIL RGB image with class-coloured outlines.

    rgb: the input image (H, W, 3) uint8 the table's coordinates refer to (input px).
    max_size: the longest edge of the output in px (the image is downscaled if larger; None:
    full size). line_width: outline width in output px (default 1, 2 above 1500 px).
    tissue_features: annotation Features (PAGET tissue regions, input px) tinted underneath the
    outlines in their class colours (opacity ``TISSUE_ALPHA``).
    Coordinates are scaled by the same factor as the image (corner convention kept).
    """
    from PIL import Image, ImageDraw

    H, W = rgb.shape[:2]
    f = 1.0
    if max_size and max(H, W) > max_size:
        f = max_size / max(H, W)
    if f != 1.0:
        im = _downscale(rgb, (max(1, round(W * f)), max(1, round(H * f))))
    else:
        im = Image.fromarray(rgb)
    if tissue_features:
        im = tint_regions(im, tissue_features, f)
    lw = line_width or (2 if max(im.size) > 1500 else 1)
    draw = ImageDraw.Draw(im)
    colours = [tuple(int(v) for v in c.color) for c in table.taxonomy.classes]
    for poly, cid in zip(table.polygons, table.class_id):
        p = np.asarray(poly, dtype=np.float64).reshape(-1, 2)
        if len(p) < 2:
            continue
        pts = (np.vstack([p, p[:1]]) * f).ravel().tolist()  # closed outline, flat x0, y0, x1, y1, ...
        draw.line(pts, fill=colours[int(cid)], width=lw)
    return im


def write_overlay(path: str | Path, rgb: np.ndarray, table: NucleiTable, *, max_size: int | None = 4096,
                  tissue_features: Sequence[dict[str, Any]] = ()) -> Path:
    """Render and write the overlay as PNG atomically (``tissue_features``: see ``render_overlay``)."""
    im = render_overlay_image(rgb, table, max_size=max_size, tissue_features=tissue_features)
    with atomic_write(path, "wb") as f:
        # zlib level 1: ~2x faster to encode than PIL's default 6 for a ~5 % larger file
        # (a quick-look image; the GeoJSON is the result)
        im.save(f, format="PNG", compress_level=1)
    return Path(path)
