"""Microns per pixel (µm/px, level 0) from a slide's own metadata.

Each reader returns an ``MppInfo``: the value (or None), where it came from, and — when the file
states a resolution that is not usable — a one-line ``problem`` so the user is told the MPP is
*invalid* (e.g. ``MPP = -0.5`` in an Aperio description) rather than *missing*.

Sources, in the order ``tiff_mpp`` tries them: Aperio ``MPP = x`` in the ImageDescription, OME-XML
``PhysicalSizeX`` (+ ``PhysicalSizeXUnit``, default µm), TIFF ``XResolution`` + ``ResolutionUnit``
(inch / cm); ``openslide_mpp`` reads OpenSlide's ``openslide.mpp-x`` property.
A TIFF resolution tag outside ``MPP_RANGE`` (e.g. the 72 dpi default many writers put in) is not a
scan resolution: treated as absent, with a note.
"""

from __future__ import annotations

import logging
import math
import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass

log = logging.getLogger(__name__)

#: sane MPP range in µm per pixel (0.05: beyond optical resolution; 20: very low-power thumbnails)
MPP_RANGE = (0.05, 20.0)

#: OME length units -> µm
_OME_UNITS = {"µm": 1.0, "um": 1.0, "\u03bcm": 1.0, "nm": 1e-3, "mm": 1e3, "cm": 1e4, "m": 1e6,
              "in": 25400.0, "pm": 1e-6, "Å": 1e-4}


@dataclass(frozen=True)
class MppInfo:
    """mpp: µm/px at level 0, or None. source: "aperio" | "ome" | "tiff-tags" | "openslide" |
    "user" | "" (none). problem: why a stated resolution was rejected (None when fine/absent)."""

    mpp: float | None = None
    source: str = ""
    problem: str | None = None

    @property
    def found(self) -> bool:
        return self.mpp is not None


def _valid(v: float) -> bool:
    lo, hi = MPP_RANGE
    return math.isfinite(v) and lo <= v <= hi


def _checked(raw: str, source: str, what: str) -> MppInfo:
    try:
        v = float(raw)
    except ValueError:
        v = float("nan")
    if _valid(v):
        return MppInfo(v, source)
    lo, hi = MPP_RANGE
    return MppInfo(None, source, f"MPP {raw} in the {what} is not valid (need a number of µm/px within {lo:g}-{hi:g})")


def aperio_mpp(description: str) -> MppInfo:
    """``MPP = x`` from an Aperio ImageDescription (``Aperio Image Library ... |MPP = 0.2527|...``)."""
    m = re.search(r"(?:^|\|)\s*MPP\s*=\s*([^|\r\n]*)", description or "")
    if not m:
        return MppInfo()
    return _checked(m.group(1).strip() or "''", "aperio", "Aperio description")


def ome_mpp(xml: str) -> MppInfo:
    """``PhysicalSizeX`` (µm unless ``PhysicalSizeXUnit`` says otherwise) of the first OME Image."""
    if not xml or "<OME" not in xml:
        return MppInfo()
    try:
        root = ET.fromstring(xml)
    except ET.ParseError as e:
        return MppInfo(None, "ome", f"OME-XML metadata cannot be parsed ({e})")
    for el in root.iter():
        if el.tag.endswith("}Pixels") or el.tag == "Pixels":
            raw = el.get("PhysicalSizeX")
            if raw is None:
                return MppInfo()
            unit = el.get("PhysicalSizeXUnit", "µm")
            factor = _OME_UNITS.get(unit)
            if factor is None:
                return MppInfo(None, "ome", f"OME PhysicalSizeXUnit {unit!r} is not a known length unit")
            try:
                v = float(raw) * factor
            except ValueError:
                return _checked(raw, "ome", "OME-XML PhysicalSizeX")
            return _checked(repr(v) if factor != 1.0 else raw, "ome", "OME-XML PhysicalSizeX")
    return MppInfo()


def resolution_tag_mpp(page, source: str = "") -> MppInfo:
    """µm/px from a tifffile page's XResolution + ResolutionUnit (2 inch, 3 cm)."""
    tags = page.tags
    xr, unit = tags.get("XResolution"), tags.get("ResolutionUnit")
    if xr is None or unit is None:
        return MppInfo()
    per = {2: 25400.0, 3: 10000.0}.get(int(unit.value))  # µm per inch / per cm
    num, den = xr.value if isinstance(xr.value, tuple) else (xr.value, 1)
    if per is None or not num or not den:
        return MppInfo()
    v = per / (num / den)
    yr = tags.get("YResolution")
    if yr is not None and isinstance(yr.value, tuple) and yr.value[0] and yr.value[1]:
        ympp = per / (yr.value[0] / yr.value[1])
        if abs(ympp - v) > 1e-3 * v:
            log.warning("%s: X and Y resolution differ (%.4g vs %.4g µm/px); using X", source, v, ympp)
    if not _valid(v):
        lo, hi = MPP_RANGE
        log.info("%s: TIFF XResolution gives %.4g µm/px, outside %g-%g: treated as unknown", source, v, lo, hi)
        return MppInfo()
    return MppInfo(v, "tiff-tags")


def tiff_mpp(page, source: str = "", ome_xml: str | None = None) -> MppInfo:
    """The first of Aperio, OME, resolution tags that states a resolution (valid or not)."""
    desc = getattr(page, "description", "") or ""
    for info in (aperio_mpp(desc), ome_mpp(ome_xml if ome_xml is not None else desc)):
        if info.found or info.problem:
            return info
    return resolution_tag_mpp(page, source)


def openslide_mpp(properties) -> MppInfo:
    """OpenSlide's ``openslide.mpp-x`` (set from the vendor's metadata)."""
    raw = properties.get("openslide.mpp-x")
    if raw is None:
        return MppInfo()
    return _checked(str(raw), "openslide", "OpenSlide property openslide.mpp-x")
