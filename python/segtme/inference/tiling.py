"""Tiling: the working-resolution tile grid with smooth blend windows, and the streaming tile plan.

Two different jobs, both pure functions:

1. **Working-resolution grid** (``tile_starts``, ``tile_grid``, ``blend_window``): how the engine
   cuts an image that is already at the model's working MPP into overlapping ``tile``-px tiles and
   blends their outputs. Every tile has the full tile size unless the image is smaller than a
   tile; the last tile of a row/column is aligned to the image edge. The blend window is separable
   and ramps smoothly (``sin^2``) over the overlap, is 1 in the tile centre and never drops below a
   small floor, so weights at image borders (covered by one tile only) are still positive. The
   same window is used for class probabilities and for HV maps.

2. **Streaming tile plan** (``plan_stream_tiles``, ``owns``): the rule in docs/INTERFACES.md
   ("The streaming tile plan"), shared with the Java client ``client/TilePlanner.java``. It plans
   tiles over an annotation's bounds in *full-resolution* (input) pixels; each tile has a *core*
   (the cores partition the bounds, half-open) and a *region* to read (core plus margin, clipped
   to the image). Shared examples: ``tests/data/tile_plan_examples.json`` (made by
   ``scripts/make_tile_plan_examples.py``).

   Arithmetic is IEEE double with exactly these operations (Java must do the same):
   ``d = model_mpp / image_mpp``; ``C = (T - O) * d``; core edges ``floor(i * C)``;
   ``m = floor((O / 2.0) * d)``; ``Tf = floor(T * d + 0.5)`` (round half up, = Java ``Math.round``).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Sequence

import numpy as np

from .stitch import owns

# --------------------------------------------------------------------------- working-res grid


def tile_starts(length: int, tile: int, overlap: int) -> list[int]:
    """Start offsets (working px) of tiles along one axis of ``length`` px.

    Step is ``tile - overlap``; the last tile is aligned to the end (so it may overlap its
    neighbour by more than ``overlap``). If ``length <= tile`` there is one tile at 0 (the caller
    pads it). Raises ValueError for ``tile <= 0`` or ``not 0 <= overlap < tile``.
    """
    if tile <= 0 or not 0 <= overlap < tile:
        raise ValueError(f"need tile > 0 and 0 <= overlap < tile, got tile={tile}, overlap={overlap}")
    if length <= tile:
        return [0]
    step = tile - overlap
    starts = list(range(0, length - tile, step))
    starts.append(length - tile)
    return sorted(set(starts))


def tile_grid(height: int, width: int, tile: int, overlap: int) -> list[tuple[int, int, int, int]]:
    """Tiles covering a (height, width) working-px image as (y0, x0, h, w), row-major.

    ``h = min(tile, height)``, ``w = min(tile, width)``.
    """
    ys = tile_starts(height, tile, overlap)
    xs = tile_starts(width, tile, overlap)
    h, w = min(tile, height), min(tile, width)
    return [(y, x, h, w) for y in ys for x in xs]


def blend_ramp(length: int, ramp: int, floor: float = 1e-3) -> np.ndarray:
    """1-D blend weights (float32, length ``length``): ``sin^2`` rising over the first ``ramp``
    px, 1 in the middle, falling over the last ``ramp`` px, clipped below at ``floor``.

    Pixel ``t`` is sampled at its centre (t + 0.5). Over an overlap of exactly ``ramp`` px the
    falling edge of one tile and the rising edge of the next sum to 1 (sin^2 + cos^2).
    """
    t = np.arange(length, dtype=np.float64) + 0.5
    w = np.ones(length, dtype=np.float64)
    r = max(0, min(int(ramp), length // 2))
    if r > 0:
        up = np.sin(0.5 * np.pi * t[:r] / r) ** 2
        w[:r] = up
        w[length - r :] = up[::-1]
    return np.maximum(w, floor).astype(np.float32)


def blend_window(height: int, width: int, overlap: int, floor: float = 1e-3) -> np.ndarray:
    """Separable 2-D blend window (float32, (height, width)) for one tile: outer product of
    ``blend_ramp`` along y and x, ramp length = ``overlap`` (working px)."""
    return np.outer(blend_ramp(height, overlap, floor), blend_ramp(width, overlap, floor)).astype(np.float32)


@dataclass(frozen=True)
class CoarseAxis:
    """Where one tile's coarse map (one value per ``stride`` working px) lands on a region's
    coarse grid, along one axis; see ``coarse_axis``. ``dst``: the region's coarse px covered;
    ``j0`` / ``j1`` / ``f``: the tile's coarse px to blend linearly, ``(1 - f) * v[j0] + f * v[j1]``
    (``f`` all 0 when the tile is on the region's grid); ``px``: the tile's working px under each
    destination px centre (for the blend window)."""

    dst: slice
    j0: np.ndarray
    j1: np.ndarray
    f: np.ndarray
    px: np.ndarray

    @property
    def aligned(self) -> bool:
        return not self.f.any()


def coarse_axis(tile0: int, tile_len: int, region0: int, region_len: int, stride: int) -> CoarseAxis | None:
    """A tile covering working px ``[tile0, tile0 + tile_len)`` with a coarse map whose px ``j``
    covers tile px ``[stride*j, stride*j + stride)``, placed on the coarse grid of a region
    starting at working px ``region0`` (px ``m`` covers ``[region0 + stride*m, ...)``, ``ceil
    (region_len / stride)`` px; the last one may reach beyond the region, as a padded tile's
    does). A region px is covered by the tile when the centre of its part inside the region lies
    inside the tile (None when none is); it takes the tile's value at its block's centre
    ``region0 + stride*m + (stride - 1)/2`` (linear between the tile's px centres, clamped at the
    tile's first / last px: the convention ``inference.maps.class_map`` upsamples with). Exact
    copies (``f`` = 0) when ``tile0 - region0`` is a multiple of ``stride``."""
    st = int(stride)
    n = -(-int(tile_len) // st)
    m = np.arange(-(-int(region_len) // st))
    d = float(int(tile0) - int(region0))
    c = (st * m + np.minimum(st * m + st, int(region_len)) - 1) / 2.0  # centres of the parts in the region
    inside = np.flatnonzero((c >= d) & (c < d + int(tile_len)))
    if inside.size == 0:
        return None
    m0, m1 = int(inside[0]), int(inside[-1]) + 1
    t = c[m0:m1] - d  # tile px of those centres (for the blend window)
    u = (st * m[m0:m1] - d) / st  # tile coarse coordinate of each block's centre (integer on the grid)
    j = np.floor(u)
    f = (u - j).astype(np.float32)
    j0 = np.clip(j, 0, n - 1).astype(np.int64)
    j1 = np.clip(j + 1, 0, n - 1).astype(np.int64)
    f = np.where(j0 == j1, 0.0, f).astype(np.float32)
    px = np.clip(np.floor(t + 0.5), 0, int(tile_len) - 1).astype(np.int64)
    return CoarseAxis(slice(m0, m1), j0, j1, f, px)


def coarse_take(v: np.ndarray, ay: CoarseAxis, ax: CoarseAxis) -> np.ndarray:
    """The values of a tile's coarse map ``v`` (C, n_y, n_x) at the destination px of ``ay`` /
    ``ax`` (``coarse_axis``): (C, len(dst_y), len(dst_x)) float32, linear where off-grid."""
    if ay.aligned:
        a = v[:, ay.j0[0]:ay.j0[-1] + 1] if ay.j0[-1] - ay.j0[0] + 1 == len(ay.j0) else v[:, ay.j0]
    else:
        fy = ay.f[None, :, None]
        a = v[:, ay.j0] * (1.0 - fy) + v[:, ay.j1] * fy
    if ax.aligned:
        return a[:, :, ax.j0[0]:ax.j0[-1] + 1] if ax.j0[-1] - ax.j0[0] + 1 == len(ax.j0) else a[:, :, ax.j0]
    fx = ax.f[None, None, :]
    return a[:, :, ax.j0] * (1.0 - fx) + a[:, :, ax.j1] * fx


# --------------------------------------------------------------------------- streaming plan


@dataclass(frozen=True)
class StreamTile:
    """One tile of the streaming plan. All coordinates are full-resolution (input) pixels.

    i, j: column and row index of the tile in the plan (row-major order: j outer, i inner).
    core: (x0, y0, x1, y1) half-open; the cores of a plan partition the bounds exactly.
    region: (x, y, w, h) to read, clipped to the image; read at downsample ``d``.
    d: downsample = model_mpp / image_mpp (full-res px per working px).
    """

    i: int
    j: int
    core: tuple[int, int, int, int]
    region: tuple[int, int, int, int]
    d: float

    def owns(self, x: float, y: float) -> bool:
        """True if the point (full-res px) lies in this tile's core (half-open)."""
        return owns(self.core, x, y)

    def to_dict(self) -> dict:
        out = asdict(self)
        out["core"] = list(self.core)
        out["region"] = list(self.region)
        return out


# the ownership rule and the border split live in the one stitcher (``inference.stitch``)


def _round_half_up(v: float) -> int:
    return int(math.floor(v + 0.5))


def plan_stream_tiles(
    bounds: Sequence[int],
    image_size: Sequence[int],
    image_mpp: float,
    model_mpp: float,
    tile: int,
    overlap: int,
) -> list[StreamTile]:
    """The streaming tile plan of docs/INTERFACES.md.

    bounds: (bx, by, bw, bh) full-res integer pixels (annotation bounding box), bw, bh > 0.
    image_size: (W, H) full-res pixels.
    image_mpp / model_mpp: µm per pixel of the image's full resolution and of the model.
    tile / overlap: T and O in working px (0 <= O < T).
    Returns tiles row-major (j outer, i inner).
    """
    bx, by, bw, bh = (int(v) for v in bounds)
    W, H = (int(v) for v in image_size)
    T, O = int(tile), int(overlap)
    for name, v in (("image_mpp", image_mpp), ("model_mpp", model_mpp)):
        if not (isinstance(v, (int, float)) and math.isfinite(v) and v > 0):
            raise ValueError(f"{name} must be a finite positive number, got {v!r}")
    if T <= 0 or not 0 <= O < T:
        raise ValueError(f"need tile > 0 and 0 <= overlap < tile, got tile={T}, overlap={O}")
    if bw <= 0 or bh <= 0 or W <= 0 or H <= 0:
        raise ValueError(f"bounds and image size must be positive, got bounds={bounds}, image_size={image_size}")
    # 0. bounds are clipped to the image (annotations may extend past its edges)
    x1, y1 = min(bx + bw, W), min(by + bh, H)
    bx, by = max(bx, 0), max(by, 0)
    bw, bh = x1 - bx, y1 - by
    if bw <= 0 or bh <= 0:
        raise ValueError(f"bounds {tuple(bounds)} do not overlap the image (0, 0, {W}, {H})")
    d = float(model_mpp) / float(image_mpp)
    C = (T - O) * d
    nx = max(1, math.ceil(bw / C))
    ny = max(1, math.ceil(bh / C))
    m = math.floor((O / 2.0) * d)
    Tf = _round_half_up(T * d)

    def core_edges(b0: int, blen: int, n: int, k: int) -> tuple[int, int]:
        c0 = b0 + math.floor(k * C)
        c1 = b0 + blen if k == n - 1 else b0 + math.floor((k + 1) * C)
        return c0, c1

    def clip(a: int, length: int, limit: int) -> tuple[int, int]:
        a2 = max(0, a)
        return a2, min(a + length, limit) - a2

    tiles = []
    for j in range(ny):
        cy0, cy1 = core_edges(by, bh, ny, j)
        ry, rh = clip(cy0 - m, Tf, H)
        for i in range(nx):
            cx0, cx1 = core_edges(bx, bw, nx, i)
            rx, rw = clip(cx0 - m, Tf, W)
            tiles.append(StreamTile(i, j, (cx0, cy0, cx1, cy1), (rx, ry, rw, rh), d))
    return tiles


def owner_index(tiles: Sequence[StreamTile], x: float, y: float) -> int | None:
    """Index of the tile whose core holds (x, y) (full-res px), or None if outside the bounds."""
    for k, t in enumerate(tiles):
        if t.owns(x, y):
            return k
    return None


# --------------------------------------------------------------------------- chunks with halo


@dataclass(frozen=True)
class Chunk:
    """A chunk of a large input image (input px).

    core: (x0, y0, x1, y1) half-open; cores partition the image. A nucleus is kept only by the
    chunk whose core holds its centroid.
    region: (x0, y0, x1, y1) half-open = core grown by the halo and clipped to the image; this is
    what is read, rescaled and predicted.
    """

    core: tuple[int, int, int, int]
    region: tuple[int, int, int, int]


def chunk_grid(width: int, height: int, chunk: int, halo: int, align: int = 1) -> list[Chunk]:
    """Chunks of at most ``chunk`` x ``chunk`` input px (cores, row-major) with a ``halo`` px
    margin on every side (clipped to the image). Cores are near-equal in size. ``align``: every
    core and region starts on a multiple of it (a model's class-map grid, ``io.sem_stride``; it
    must divide ``chunk`` and ``halo``); only the image's right / bottom edge may be off-grid. An
    inner edge moves by up to ``align / 2`` px to its grid, so a core may exceed ``chunk`` by up
    to ``align`` px when ``align`` > 1."""
    if chunk <= 0 or halo < 0:
        raise ValueError(f"need chunk > 0 and halo >= 0, got chunk={chunk}, halo={halo}")
    if align < 1 or chunk % align or halo % align:
        raise ValueError(f"align {align} must divide chunk {chunk} and halo {halo}")

    def edges(n: int) -> list[int]:
        k = max(1, math.ceil(n / chunk))
        inner = [align * round(i * n / (k * align)) for i in range(1, k)]
        return [0, *inner, n]

    xs, ys = edges(width), edges(height)
    out = []
    for y0, y1 in zip(ys[:-1], ys[1:]):
        for x0, x1 in zip(xs[:-1], xs[1:]):
            region = (max(0, x0 - halo), max(0, y0 - halo), min(width, x1 + halo), min(height, y1 + halo))
            out.append(Chunk((x0, y0, x1, y1), region))
    return out
