"""Reading and validating input images: PNG/JPEG/TIFF -> RGB uint8 + microns per pixel.

* Chosen by content (magic bytes), not by the file name: TIFF/BigTIFF with ``tifffile`` (first
  page / full-resolution level; JPEG/LZW/zlib/JPEG2000 tiles via ``imagecodecs``); everything
  else with PIL. Whole slides are read lazily by ``segtme.io.source.open_source`` instead.
* MPP comes from an Aperio ``MPP = x`` description, OME-XML ``PhysicalSizeX`` or TIFF resolution
  tags (``segtme.io.mpp``); otherwise ``mpp`` is None and the caller (CLI) must ask for ``--mpp``
  (``Image.missing_mpp_message()`` says whether the stated MPP was invalid or absent). A
  tag-derived value outside the sane range (e.g. the 72 dpi default) is treated as unknown.
* Conversions, each with a logged note (kept in ``Image.notes``): RGBA/LA -> composite on white;
  greyscale -> RGB; 16-bit -> 8-bit (``v / 257``, full 16-bit range to full 8-bit range);
  palette/CMYK/YCbCr -> RGB. Any other layout (float, 2 channels, >4 channels, stacks) is refused.
* Refused with one ``InputError`` each: missing/empty file, zero-size image, corrupt or truncated
  file, more pixels than ``max_pixels`` (decompression-bomb guard, checked from the header before
  decoding), invalid MPP.
"""

from __future__ import annotations

import logging
import math
import os
import re
import threading
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import InputError
from .mpp import MPP_RANGE, MppInfo, tiff_mpp

log = logging.getLogger(__name__)

#: default pixel limit (width x height at full resolution); override with $SEGTME_MAX_PIXELS
DEFAULT_MAX_PIXELS = 20_000 * 20_000
#: TIFF / BigTIFF magic bytes (the reader is chosen by content, never by the file name)
TIFF_MAGIC = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")
_PIL_LOCK = threading.Lock()


@dataclass
class Image:
    """An input image ready for the engine.

    rgb: (H, W, 3) uint8, C-contiguous.
    mpp: µm per pixel of ``rgb`` (from the file), or None when the file does not say.
    source: the path read (or "<array>").
    notes: conversions applied (human-readable; also logged at INFO).
    """

    rgb: np.ndarray
    mpp: float | None
    source: str = "<array>"
    notes: list[str] = field(default_factory=list)
    #: where ``mpp`` came from ("aperio", "ome", "tiff-tags", "user", "" when unknown)
    mpp_source: str = ""
    #: why a resolution the file states was rejected (e.g. "MPP -0.5 in the Aperio description is
    #: not valid ..."); None when the MPP is fine or simply absent
    mpp_problem: str | None = None

    def missing_mpp_message(self) -> str:
        """One-line error for a caller that needs an MPP the file does not (validly) give."""
        if self.mpp_problem:
            return f"{self.source}: {self.mpp_problem}; pass its microns per pixel (--mpp)"
        return f"{self.source}: the image has no resolution information; pass its microns per pixel (--mpp)"

    @property
    def size(self) -> tuple[int, int]:
        """(width, height) in pixels."""
        return int(self.rgb.shape[1]), int(self.rgb.shape[0])


def max_pixels_default() -> int:
    v = os.environ.get("SEGTME_MAX_PIXELS")
    if v:
        try:
            n = int(float(v))
        except ValueError:
            raise InputError(f"SEGTME_MAX_PIXELS must be a number, got {v!r}") from None
        if n <= 0:
            raise InputError(f"SEGTME_MAX_PIXELS must be positive, got {v!r}")
        return n
    return DEFAULT_MAX_PIXELS


def validate_mpp(mpp: object, what: str = "MPP") -> float:
    """Return ``mpp`` as float if finite and within MPP_RANGE (µm/px), else raise InputError."""
    try:
        v = float(mpp)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise InputError(f"{what} must be a number (microns per pixel), got {mpp!r}") from None
    if not math.isfinite(v) or v <= 0:
        raise InputError(f"{what} must be a finite positive number of microns per pixel, got {mpp!r}")
    lo, hi = MPP_RANGE
    if not lo <= v <= hi:
        raise InputError(
            f"{what} = {v:g} µm/px is outside the supported range {lo:g}-{hi:g} µm/px "
            "(40x scanners give ~0.25, 20x ~0.5)"
        )
    return v


def _check_size(width: int, height: int, max_pixels: int, source: str) -> None:
    if width <= 0 or height <= 0:
        raise InputError(f"{source}: image has zero size ({width}x{height} px)")
    if width * height > max_pixels:
        raise InputError(
            f"{source}: {width}x{height} px = {width * height / 1e6:.0f} Mpx exceeds the limit of "
            f"{max_pixels / 1e6:.0f} Mpx (decompression-bomb guard; raise it with max_pixels or "
            "$SEGTME_MAX_PIXELS, or analyse a region)"
        )


# --------------------------------------------------------------------------- array conversion


def _note(notes: list[str], msg: str) -> None:
    notes.append(msg)
    log.info(msg)


def _to_uint8(a: np.ndarray, notes: list[str], source: str) -> np.ndarray:
    if a.dtype == np.uint8:
        return a
    if a.dtype == np.uint16 or (a.dtype.kind in "iu" and a.size and a.min() >= 0 and a.max() <= 65535):
        _note(notes, f"{source}: 16-bit image scaled to 8 bit (value / 257)")
        return np.round(a.astype(np.float32) / 257.0).astype(np.uint8)
    if a.dtype == bool:
        raise InputError(f"{source}: binary (1-bit) image is not an H&E image")
    raise InputError(
        f"{source}: unsupported pixel type {a.dtype} (expected 8- or 16-bit unsigned integers); "
        "convert the image to 8-bit RGB"
    )


def as_rgb_uint8(arr: np.ndarray, source: str = "<array>", notes: list[str] | None = None) -> np.ndarray:
    """Convert an image array to (H, W, 3) uint8 RGB, or raise InputError.

    Accepts (H, W) greyscale, (H, W, 1), (H, W, 2) grey+alpha, (H, W, 3) RGB, (H, W, 4) RGBA with
    uint8 or uint16 values. Alpha is composited on white. ``notes`` collects the conversions.
    """
    notes = notes if notes is not None else []
    a = np.asarray(arr)
    if a.ndim not in (2, 3):
        raise InputError(f"{source}: expected an (H, W) or (H, W, C) image, got shape {a.shape}")
    if a.shape[0] == 0 or a.shape[1] == 0:
        raise InputError(f"{source}: image has zero size ({a.shape[1]}x{a.shape[0]} px)")
    if a.ndim == 3 and a.shape[2] not in (1, 2, 3, 4):
        raise InputError(
            f"{source}: {a.shape[2]} channels are not supported (expected greyscale, RGB or RGBA)"
        )
    a = _to_uint8(a, notes, source)
    if a.ndim == 2 or a.shape[2] == 1:
        _note(notes, f"{source}: greyscale image replicated to RGB (H&E colour information is missing)")
        g = a.reshape(a.shape[0], a.shape[1])
        return np.ascontiguousarray(np.repeat(g[:, :, None], 3, axis=2))
    if a.shape[2] in (2, 4):
        _note(notes, f"{source}: alpha channel composited on white")
        colour = a[:, :, :-1].astype(np.float32)
        alpha = a[:, :, -1:].astype(np.float32) / 255.0
        out = np.round(colour * alpha + 255.0 * (1.0 - alpha)).astype(np.uint8)
        if out.shape[2] == 1:
            _note(notes, f"{source}: greyscale image replicated to RGB (H&E colour information is missing)")
            out = np.repeat(out, 3, axis=2)
        return np.ascontiguousarray(out)
    return np.ascontiguousarray(a)


# --------------------------------------------------------------------------- TIFF


def _tiff_mpp(page, source: str) -> float | None:
    """µm/px from an Aperio description, OME-XML or X/YResolution tags (``io.mpp.tiff_mpp``);
    None when absent or invalid (``read_image`` records why in ``Image.mpp_problem``)."""
    return tiff_mpp(page, source).mpp


def _read_tiff(path: Path, max_pixels: int, notes: list[str]) -> tuple[np.ndarray, MppInfo]:
    import tifffile

    try:
        with tifffile.TiffFile(path) as tif:
            if not tif.pages:
                raise InputError(f"{path}: TIFF has no images")
            page = tif.pages[0]
            axes, shape = page.axes, page.shape
            dims = dict(zip(axes, shape))
            _check_size(int(dims.get("X", 0)), int(dims.get("Y", 0)), max_pixels, str(path))
            extra = {a: n for a, n in dims.items() if a not in "YXS" and n > 1}
            if extra:
                raise InputError(f"{path}: TIFF page has axes {axes} {shape}; only 2-D (Y, X[, samples]) images are supported")
            arr = page.asarray()
            info = tiff_mpp(page, str(path), tif.ome_metadata if tif.is_ome else None)
            if len(tif.pages) > 1:
                _note(notes, f"{path}: TIFF has {len(tif.pages)} pages; using the first (full resolution)")
    except InputError:
        raise
    except Exception as e:  # tifffile raises TiffFileError, ValueError, struct.error, ... on bad files
        raise InputError(f"{path}: cannot read TIFF (corrupt or truncated?): {e}") from None
    # bring samples to the last axis and drop singleton axes
    axes_kept = [a for a in axes if a in "YXS"]
    arr = arr.reshape([dims[a] for a in axes_kept])
    if "S" in axes_kept and axes_kept.index("S") != len(axes_kept) - 1:
        arr = np.moveaxis(arr, axes_kept.index("S"), -1)
    if arr.dtype.kind == "f":
        raise InputError(f"{path}: floating-point TIFF is not supported; convert to 8-bit RGB")
    return arr, info


# --------------------------------------------------------------------------- PIL


def _read_pil(path: Path, max_pixels: int, notes: list[str]) -> np.ndarray:
    from PIL import Image as PILImage
    from PIL import UnidentifiedImageError

    with _PIL_LOCK:
        old = PILImage.MAX_IMAGE_PIXELS
        PILImage.MAX_IMAGE_PIXELS = None  # our own limit below is explicit and configurable
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", PILImage.DecompressionBombWarning)
                im = PILImage.open(path)
        except UnidentifiedImageError:
            raise InputError(f"{path}: not a readable image (corrupt, or not PNG/JPEG/TIFF)") from None
        except Exception as e:
            raise InputError(f"{path}: cannot read image (corrupt?): {e}") from None
        finally:
            PILImage.MAX_IMAGE_PIXELS = old
    with im:
        _check_size(im.width, im.height, max_pixels, str(path))
        if getattr(im, "n_frames", 1) > 1:
            _note(notes, f"{path}: file has {im.n_frames} frames; using the first")
        try:
            im.load()
        except Exception as e:  # truncated data: OSError("image file is truncated ..."), SyntaxError, ...
            raise InputError(f"{path}: image data is corrupt or truncated: {e}") from None
        mode = im.mode
        if mode in ("RGB", "L", "RGBA", "LA"):
            arr = np.asarray(im)
        elif mode in ("I;16", "I;16B", "I;16L", "I;16N"):
            arr = np.asarray(im).astype(np.uint16)
        elif mode == "I":
            arr = np.asarray(im)
            if arr.size and (arr.min() < 0 or arr.max() > 65535):
                raise InputError(f"{path}: 32-bit integer image is not supported; convert to 8-bit RGB")
            arr = arr.astype(np.uint16)
        elif mode in ("P", "PA"):
            has_alpha = mode == "PA" or "transparency" in im.info
            _note(notes, f"{path}: palette image converted to RGB")
            arr = np.asarray(im.convert("RGBA" if has_alpha else "RGB"))
        elif mode in ("CMYK", "YCbCr", "LAB", "HSV"):
            _note(notes, f"{path}: {mode} image converted to RGB")
            arr = np.asarray(im.convert("RGB"))
        elif mode == "1":
            raise InputError(f"{path}: binary (1-bit) image is not an H&E image")
        else:
            raise InputError(f"{path}: unsupported image mode {mode!r}; convert to 8-bit RGB")
    return arr


# --------------------------------------------------------------------------- public


def read_image(path: str | os.PathLike[str], *, max_pixels: int | None = None) -> Image:
    """Read an image file as RGB uint8 plus its MPP (µm/px, None if the file does not say).

    max_pixels: refuse images with more pixels than this (default: $SEGTME_MAX_PIXELS or
    DEFAULT_MAX_PIXELS), checked from the header before any pixel data is decoded.
    Raises InputError for every unreadable / unsupported input.
    """
    if not isinstance(path, (str, os.PathLike)):
        raise InputError(f"read_image: expected an image file path, got {type(path).__name__}")
    p = Path(path)
    limit = int(max_pixels) if max_pixels is not None else max_pixels_default()
    if not p.exists():
        raise InputError(f"image not found: {p}")
    if not p.is_file():
        raise InputError(f"not a file: {p}")
    if p.stat().st_size == 0:
        raise InputError(f"{p}: file is empty (0 bytes)")
    notes: list[str] = []
    with p.open("rb") as f:
        magic = f.read(4)
    if magic in TIFF_MAGIC:
        arr, info = _read_tiff(p, limit, notes)
    else:  # PNG / JPEG / ... by content (a PNG named .tif is a PNG)
        arr, info = _read_pil(p, limit, notes), MppInfo()
    rgb = as_rgb_uint8(arr, str(p), notes)
    return Image(rgb=rgb, mpp=info.mpp, source=str(p), notes=notes, mpp_source=info.source if info.found else "",
                 mpp_problem=info.problem)


def image_from_array(arr: np.ndarray, mpp: float | None = None, *, max_pixels: int | None = None) -> Image:
    """Validate / convert an in-memory array the same way files are (see ``as_rgb_uint8``)."""
    a = np.asarray(arr)
    limit = int(max_pixels) if max_pixels is not None else max_pixels_default()
    if a.ndim >= 2:
        _check_size(int(a.shape[1]), int(a.shape[0]), limit, "<array>")
    notes: list[str] = []
    rgb = as_rgb_uint8(a, "<array>", notes)
    return Image(rgb=rgb, mpp=validate_mpp(mpp) if mpp is not None else None, source="<array>", notes=notes)
