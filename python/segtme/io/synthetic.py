"""Build pyramidal, tiled, JPEG-compressed test slides from real H&E patches (tests, benchmarks).

``write_slide(path, size, patches, mpp)`` writes a BigTIFF whose level 0 is ``size`` = (W, H)
px of white glass with the given RGB ``patches`` placed at level-0 positions; reduced levels
(downsample 4, 16, ... until the level fits ``min_level_px``) are the patches resized with
Pillow's antialiased filter. Every tile is JPEG-encoded on its own (``imagecodecs``) and written
pre-compressed, and the all-background tile is encoded once and repeated, so a 100 000² px slide
that is mostly glass takes seconds and ~100 MB instead of 30 GB of pixels. ``flavour``:
"aperio" (Aperio ImageDescription with ``MPP = x``, reduced pages) or "ome" (OME-XML with
``PhysicalSizeX``, SubIFD pyramid). Never commit files made with this.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

BACKGROUND = (243, 243, 241)


def _level_patches(patches, d: int):
    from PIL import Image

    out = []
    for x, y, rgb in patches:
        h, w = rgb.shape[:2]
        nw, nh = max(1, round(w / d)), max(1, round(h / d))
        small = rgb if d == 1 else np.asarray(Image.fromarray(rgb).resize((nw, nh), Image.BILINEAR, reducing_gap=None))
        out.append((int(round(x / d)), int(round(y / d)), small))
    return out


def _thumb(patches, W: int, H: int, edge: int = 512) -> np.ndarray:
    d = max(W, H) / edge
    t = np.empty((max(1, round(H / d)), max(1, round(W / d)), 3), np.uint8)
    t[:] = BACKGROUND
    for x, y, small in _level_patches(patches, max(1, int(round(d)))):
        h, w = min(small.shape[0], t.shape[0] - y), min(small.shape[1], t.shape[1] - x)
        if h > 0 and w > 0:
            t[y:y + h, x:x + w] = small[:h, :w]
    return t


def _tiles(W: int, H: int, tile: int, patches, quality: int, background: bytes) -> Iterator[bytes]:
    import imagecodecs

    # patch index per tile row for speed
    for ty in range(0, H, tile):
        rows = [p for p in patches if p[1] < ty + tile and p[1] + p[2].shape[0] > ty]
        for tx in range(0, W, tile):
            hit = [p for p in rows if p[0] < tx + tile and p[0] + p[2].shape[1] > tx]
            if not hit:
                yield background
                continue
            t = np.empty((tile, tile, 3), np.uint8)
            t[:] = BACKGROUND
            for px, py, rgb in hit:
                x0, y0 = max(tx, px), max(ty, py)
                x1, y1 = min(tx + tile, px + rgb.shape[1]), min(ty + tile, py + rgb.shape[0])
                t[y0 - ty:y1 - ty, x0 - tx:x1 - tx] = rgb[y0 - py:y1 - py, x0 - px:x1 - px]
            yield imagecodecs.jpeg_encode(t, level=quality)


def write_slide(path: str | Path, size: tuple[int, int], patches: Sequence[tuple[int, int, np.ndarray]], mpp: float = 0.25,
                *, flavour: str = "aperio", tile: int = 256, quality: int = 85, min_level_px: int = 2048,
                description: str | None = None) -> Path:
    """Write the slide (see the module docstring). patches: (x, y, rgb uint8) at level 0.
    description: override the Aperio description (e.g. with an invalid MPP for tests)."""
    import imagecodecs
    import tifffile

    W, H = (int(v) for v in size)
    bg = np.empty((tile, tile, 3), np.uint8)
    bg[:] = BACKGROUND
    background = imagecodecs.jpeg_encode(bg, level=quality)
    downs = [1]
    while max(W, H) / downs[-1] > min_level_px:
        downs.append(downs[-1] * 4)
    p = Path(path)
    kw = dict(dtype="uint8", tile=(tile, tile), compression="jpeg", photometric="rgb")
    with tifffile.TiffWriter(p, bigtiff=True, ome=(flavour == "ome")) as tw:
        for i, d in enumerate(downs):
            lw, lh = math.ceil(W / d), math.ceil(H / d)
            data = _tiles(lw, lh, tile, _level_patches(patches, d), quality, background)
            if flavour == "ome":
                if i == 0:
                    tw.write(data, shape=(lh, lw, 3), subifds=len(downs) - 1, resolution=None,
                             metadata={"axes": "YXS", "PhysicalSizeX": mpp, "PhysicalSizeY": mpp,
                                       "PhysicalSizeXUnit": "µm", "PhysicalSizeYUnit": "µm"}, **kw)
                else:
                    tw.write(data, shape=(lh, lw, 3), subfiletype=1, metadata=None, **kw)
            else:
                desc = description if description is not None else (
                    f"Aperio Image Library v12.0.15\n{W}x{H} [0,0 {W}x{H}] ({tile}x{tile}) JPEG/RGB Q={quality}"
                    f"|AppMag = {round(10 / mpp)}|MPP = {mpp}")
                if i == 0:
                    tw.write(data, shape=(lh, lw, 3), description=desc, metadata=None, **kw)
                    # an SVS has a small stripped thumbnail as its second page
                    tw.write(_thumb(patches, W, H), photometric="rgb", compression="jpeg", metadata=None,
                             description=f"Aperio Image Library v12.0.15\n{W}x{H} -> thumbnail")
                else:
                    tw.write(data, shape=(lh, lw, 3), subfiletype=0, metadata=None,
                             description=f"Aperio Image Library v12.0.15\n{lw}x{lh} -> {lw}x{lh}", **kw)
    return p


def tissue_patches(images: Sequence[np.ndarray], size: tuple[int, int], fraction: float, seed: int = 0,
                   block: int = 4096) -> list[tuple[int, int, np.ndarray]]:
    """Patches covering ~``fraction`` of a ``size`` slide: the slide is divided into ``block``²
    px cells and a random ``fraction`` of the cells get a ``block``² mosaic of the real
    ``images`` (tiled, each flipped/rotated at random so it is not one repeated picture)."""
    rng = np.random.default_rng(seed)
    W, H = size
    cells = [(x, y) for y in range(0, H - block + 1, block) for x in range(0, W - block + 1, block)]
    k = int(round(fraction * W * H / (block * block)))
    if k > len(cells):
        raise ValueError(f"fraction {fraction} needs {k} cells of {block} px, the slide has {len(cells)}")
    pick = rng.choice(len(cells), size=k, replace=False) if k else []
    out = []
    for c in sorted(int(i) for i in pick):
        x, y = cells[c]
        mosaic = np.empty((block, block, 3), np.uint8)
        for yy in range(0, block, 1000):
            for xx in range(0, block, 1000):
                im = images[int(rng.integers(len(images)))]
                im = np.rot90(im, int(rng.integers(4)))
                if rng.random() < 0.5:
                    im = im[:, ::-1]
                h, w = min(1000, block - yy, im.shape[0]), min(1000, block - xx, im.shape[1])
                mosaic[yy:yy + h, xx:xx + w] = im[:h, :w]
        out.append((x, y, mosaic))
    return out
