"""What part of a slide is analysed: the whole slide, a ``--roi x,y,w,h`` box (level-0 px), or
each annotation of a QuPath-exported GeoJSON (``--annotations FILE.geojson``), always
intersected with the tissue mask.

* ``parse_roi``, ``read_annotations``: validate user input up front (one-line ``InputError``).
* ``analysis_units``: the units a slide's report is made for (one TME report each): a ``Unit``
  has a name, a level-0 bounding box and, for annotations, the polygon nuclei must fall in.
* ``plan_regions``: the boxes actually read for a unit — bounding boxes of the tissue pieces
  inside it, grown by ``margin_um`` and merged until disjoint, so no nucleus straddles two
  regions (each is segmented as its own image; no seams between them).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..errors import InputError

#: GeoJSON nesting deeper than this is refused (hostile files; QuPath writes depth <= 6)
MAX_GEOJSON_DEPTH = 64


@dataclass
class Unit:
    """One analysis unit. box: level-0 (x0, y0, x1, y1) clipped to the slide; geometry: shapely
    polygon in level-0 px (annotations) or None (whole slide / ROI box)."""

    name: str
    kind: str  # "slide" | "roi" | "annotation"
    box: tuple[int, int, int, int]
    geometry: Any = None
    properties: dict = field(default_factory=dict)

    @property
    def box_xywh(self) -> tuple[int, int, int, int]:
        x0, y0, x1, y1 = self.box
        return x0, y0, x1 - x0, y1 - y0


def parse_roi(text: str | Sequence[int]) -> tuple[int, int, int, int]:
    """``"x,y,w,h"`` (level-0 px, integers, w and h > 0) -> (x, y, w, h)."""
    parts = text.split(",") if isinstance(text, str) else list(text)
    try:
        vals = [int(str(v).strip()) for v in parts]
    except ValueError:
        raise InputError(f"--roi must be x,y,w,h in level-0 pixels (integers), got {text!r}") from None
    if len(vals) != 4:
        raise InputError(f"--roi must be 4 numbers x,y,w,h (level-0 px), got {text!r}")
    x, y, w, h = vals
    if w <= 0 or h <= 0 or x < 0 or y < 0:
        raise InputError(f"--roi {text!r}: need x, y >= 0 and w, h > 0 (level-0 px)")
    return x, y, w, h


def clip_box(box_xywh: Sequence[int], size: tuple[int, int], what: str) -> tuple[int, int, int, int]:
    """(x0, y0, x1, y1) of an (x, y, w, h) box clipped to a (W, H) slide; InputError if outside."""
    x, y, w, h = (int(v) for v in box_xywh)
    W, H = size
    x0, y0, x1, y1 = max(0, x), max(0, y), min(W, x + w), min(H, y + h)
    if x1 <= x0 or y1 <= y0:
        raise InputError(f"{what} {x},{y},{w},{h} lies outside the {W}x{H} px slide")
    return x0, y0, x1, y1


def _depth_ok(o: Any, limit: int) -> bool:
    stack = [(o, 1)]
    while stack:
        v, d = stack.pop()
        if d > limit:
            return False
        if isinstance(v, dict):
            stack.extend((x, d + 1) for x in v.values())
        elif isinstance(v, list):
            stack.extend((x, d + 1) for x in v)
    return True


def read_annotations(path: str | Path) -> list[tuple[str, Any, dict]]:
    """(name, shapely polygon, properties) of each polygon annotation in a QuPath GeoJSON export
    (FeatureCollection, Feature list or single Feature). Detections/cells are ignored; names are
    ``properties.name``, else the classification name, else ``annotation-N``; duplicate names get
    ``-2``, ``-3``. Coordinates are level-0 px (QuPath's image coordinates)."""
    import shapely
    from shapely.geometry import shape

    p = Path(path)
    if not p.is_file():
        raise InputError(f"--annotations {p}: file not found")
    try:
        text = p.read_text(encoding="utf-8")
        if text.count("[") > 10_000_000:
            raise InputError(f"--annotations {p}: file too large")
        data = json.loads(text)
    except InputError:
        raise
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as e:
        raise InputError(f"--annotations {p}: not valid GeoJSON ({type(e).__name__}: {str(e)[:80]})") from None
    if not _depth_ok(data, MAX_GEOJSON_DEPTH):
        raise InputError(f"--annotations {p}: nested deeper than {MAX_GEOJSON_DEPTH} levels")
    if isinstance(data, dict) and data.get("type") == "FeatureCollection":
        feats = data.get("features")
    elif isinstance(data, dict) and data.get("type") == "Feature":
        feats = [data]
    elif isinstance(data, list):
        feats = data
    else:
        raise InputError(f"--annotations {p}: expected a GeoJSON FeatureCollection or a list of Features")
    if not isinstance(feats, list):
        raise InputError(f"--annotations {p}: 'features' is not a list")
    out: list[tuple[str, Any, dict]] = []
    seen: dict[str, int] = {}
    for i, f in enumerate(feats):
        if not isinstance(f, dict) or not isinstance(f.get("geometry"), dict):
            continue
        props = f.get("properties") or {}
        if not isinstance(props, dict):
            props = {}
        if props.get("objectType", "annotation") not in ("annotation", None):
            continue
        if f["geometry"].get("type") not in ("Polygon", "MultiPolygon"):
            continue
        try:
            g = shapely.make_valid(shape(f["geometry"]))
        except Exception as e:
            raise InputError(f"--annotations {p}: feature {i} has an invalid geometry ({e})") from None
        if g.is_empty or g.area <= 0 or not all(math.isfinite(v) for v in g.bounds):
            continue
        cls = props.get("classification")
        name = props.get("name") or (cls.get("name") if isinstance(cls, dict) else None) or f"annotation-{len(out) + 1}"
        name = str(name)
        if name in seen:
            seen[name] += 1
            name = f"{name}-{seen[name]}"
        else:
            seen[name] = 1
        out.append((name, g, props))
    if not out:
        raise InputError(f"--annotations {p}: no polygon annotations found")
    return out


def analysis_units(size: tuple[int, int], roi: Sequence[int] | None = None,
                   annotations: Sequence[tuple[str, Any, dict]] | None = None) -> list[Unit]:
    """The units of one slide: each annotation (clipped to the ROI if both are given), else the
    ROI, else the whole slide."""
    W, H = size
    if annotations:
        import shapely
        from shapely.geometry import box as sbox

        clip = sbox(*clip_box(roi, size, "--roi")) if roi is not None else sbox(0, 0, W, H)
        units = []
        for name, g, props in annotations:
            gg = shapely.intersection(g, clip)
            if gg.is_empty or gg.area <= 0:
                raise InputError(f"annotation {name!r} lies outside the {'ROI' if roi is not None else 'slide'} ({W}x{H} px)")
            x0, y0, x1, y1 = gg.bounds
            b = (max(0, int(math.floor(x0))), max(0, int(math.floor(y0))), min(W, int(math.ceil(x1))), min(H, int(math.ceil(y1))))
            units.append(Unit(name, "annotation", b, gg, dict(props)))
        return units
    if roi is not None:
        return [Unit("roi", "roi", clip_box(roi, size, "--roi"))]
    return [Unit("slide", "slide", (0, 0, W, H))]


def unit_mask(tissue, unit: Unit) -> np.ndarray:
    """The tissue mask restricted to the unit (its box; for annotations also its polygon)."""
    m = np.zeros_like(tissue.mask)
    c0, r0, c1, r1 = tissue.box_to_mask(unit.box)
    m[r0:r1, c0:c1] = tissue.mask[r0:r1, c0:c1]
    if unit.geometry is not None and m.any():
        import shapely

        f = tissue.factor
        rr, cc = np.nonzero(m)
        inside = shapely.intersects_xy(unit.geometry.buffer(f), (cc + 0.5) * f, (rr + 0.5) * f)
        m[rr[~inside], cc[~inside]] = False
    return m


def plan_regions(tissue, mask: np.ndarray, unit: Unit, margin_um: float = 64.0) -> list[tuple[int, int, int, int]]:
    """Level-0 (x0, y0, x1, y1) boxes to segment for ``unit``: bounding boxes of the connected
    tissue pieces of ``mask``, grown by ``margin_um``, clipped to the unit's box and merged until
    no two overlap. Empty when the unit has no tissue."""
    from scipy import ndimage as ndi

    if not mask.any():
        return []
    lab, n = ndi.label(mask, structure=np.ones((3, 3)))
    f = tissue.factor
    grow = margin_um / tissue.slide_mpp
    ux0, uy0, ux1, uy1 = unit.box
    boxes = []
    for sl in ndi.find_objects(lab):
        if sl is None:
            continue
        r0, r1, c0, c1 = sl[0].start, sl[0].stop, sl[1].start, sl[1].stop
        b = [c0 * f - grow, r0 * f - grow, c1 * f + grow, r1 * f + grow]
        boxes.append([max(ux0, int(math.floor(b[0]))), max(uy0, int(math.floor(b[1]))),
                      min(ux1, int(math.ceil(b[2]))), min(uy1, int(math.ceil(b[3])))])
    merged = True
    while merged:
        merged = False
        out: list[list[int]] = []
        for b in boxes:
            for o in out:
                if b[0] < o[2] and o[0] < b[2] and b[1] < o[3] and o[1] < b[3]:
                    o[0], o[1], o[2], o[3] = min(o[0], b[0]), min(o[1], b[1]), max(o[2], b[2]), max(o[3], b[3])
                    merged = True
                    break
            else:
                out.append(list(b))
        boxes = out
    return [tuple(b) for b in sorted(boxes, key=lambda b: (b[1], b[0])) if b[2] > b[0] and b[3] > b[1]]  # type: ignore[misc]
