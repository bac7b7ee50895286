"""One streamed tile at the model's resolution: rescaling, padding, per-tile post-processing and
the ownership rule.

Pure functions and small dataclasses (validation and decoding of the incoming messages live in
``requests.py``). Coordinates: a tile's pixel ``(i, j)`` covers full-resolution pixels
``[x + i*d, x + (i+1)*d) x [y + j*d, y + (j+1)*d)`` with ``d = tile.downsample``; its resolution is
``image_mpp * d`` µm/px. After rescaling to the model's working MPP (``s`` working px per tile
px) a working-px position maps back by ``x_full = tile.x + x_work / s * d``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..inference.nuclei import NucleiTable
from ..models.config import ModelConfig
from .requests import DecodedTile, invalid


# --------------------------------------------------------------------------- working resolution
@dataclass
class WorkTile:
    """A tile rescaled to the model's working MPP and padded for batching.

    padded: (P, P', 3) uint8 fed to the model; valid: (h, w) of the real content (top-left);
    s: working px per *tile* px; full_scale: working px per *full-resolution* px (= s / d).
    """

    tile: DecodedTile
    padded: np.ndarray
    valid: tuple[int, int]
    s: float
    full_scale: float


def to_work_tile(tile: DecodedTile, image_mpp: float, cfg: ModelConfig, field: str) -> WorkTile:
    """Rescale from the tile's resolution (``image_mpp * d``) to ``cfg.mpp`` (``engine.to_working``
    = the one resampler, ``segtme.resample``) and pad short edge tiles to the model tile size
    (``resample.pad_to``: reflect, bottom/right — the one padding) so tiles batch together. A
    tile larger than the model tile is padded to a multiple of ``cfg.pad_multiple`` only."""
    from ..inference.engine import to_working
    from ..resample import pad_to

    try:
        rgb_work, s = to_working(tile.rgb, image_mpp * tile.d, cfg)
    except Exception as e:
        raise invalid(f"{field}: cannot rescale to the model's resolution ({e})") from None
    h, w = rgb_work.shape[:2]
    T, m = int(cfg.tile_size), int(cfg.pad_multiple)
    H = max(T, h + (-h) % m)
    W = max(T, w + (-w) % m)
    padded = pad_to(rgb_work, (H, W))
    return WorkTile(tile, np.ascontiguousarray(padded), (h, w), s, s / tile.d)


def tile_nuclei(wt: WorkTile, out: dict[str, np.ndarray], cfg: ModelConfig, image_mpp: float,
                geometry=None) -> NucleiTable:
    """Nuclei of one tile (the one maps -> nuclei step, ``inference.maps.nuclei_from_maps``) in
    full-resolution px (``x_full = tile.x + x_work / full_scale``), keeping those whose centroid
    lies inside ``geometry`` when given. Which tile owns each nucleus is the job's stitcher's
    decision (``inference.stitch.Stitcher``, fed with the tile's core)."""
    from ..inference.maps import Maps, nuclei_from_maps

    h, w = wt.valid
    maps = Maps(prob=out["prob"][:, :h, :w], hv=out["hv"][:, :h, :w] if "hv" in out else None)
    table = nuclei_from_maps(maps, cfg.post, cfg.tax, work_mpp=cfg.mpp, rgb=wt.padded[:h, :w],
                             scale=wt.full_scale, offset_xy=(wt.tile.x, wt.tile.y), input_mpp=image_mpp)
    if geometry is not None and len(table):
        import shapely

        table = table.subset(shapely.intersects_xy(geometry, table.centroid[:, 0], table.centroid[:, 1]))
    return table


def owned(table: NucleiTable, core: tuple[int, int, int, int], geometry=None) -> np.ndarray:
    """Boolean mask of the nuclei a tile reports: centroid in the tile's core (half-open,
    full-res px) and inside ``geometry`` when given (the ownership rule)."""
    import shapely

    if len(table) == 0:
        return np.zeros(0, bool)
    x, y = table.centroid[:, 0], table.centroid[:, 1]
    x0, y0, x1, y1 = core
    keep = (x >= x0) & (x < x1) & (y >= y0) & (y < y1)
    if geometry is not None and keep.any():
        keep &= shapely.intersects_xy(geometry, x, y)
    return keep


#: ``NucleiTable.extra`` column of a PAGET job's nuclei: the PAGET id of the tissue region under
#: each nucleus (server-internal; not an exported measurement)
TISSUE_ID = "paget_tissue_id"


@dataclass
class PagetTile:
    """What one streamed tile contributes to a PAGET job (all in full-resolution px).

    table: the tile's nuclei inside ``geometry`` (margins included: which tile owns each nucleus
    is the job's stitcher's decision, as for nucleus models), with the PAGET id of the tissue
    region under each nucleus in ``table.extra[TISSUE_ID]`` (so it follows the stitcher's
    subsets); nucleus_tissue: the same ids as an int array; tissue_features: the tile's tissue annotations clipped to its core
    (cores partition the annotation bounds, so merging the tiles' pieces per class gives seamless
    regions without overlaps between classes)."""

    table: NucleiTable
    nucleus_tissue: np.ndarray
    tissue_features: list[dict]


def paget_instances(iwt: WorkTile, iout: dict[str, np.ndarray], icfg: ModelConfig, out_shape: tuple[int, int],
                    s_out: float) -> tuple[np.ndarray, np.ndarray]:
    """PAGET-H: the instance-source model's output for one tile (its own working tile ``iwt``)
    -> ``(instance map on the PAGET working grid (``out_shape``), each instance's class in the
    source's taxonomy)``; ``s_out`` = PAGET working px per tile px, so PAGET px per instance px =
    ``s_out / iwt.s``."""
    from ..paget.runner import instances_from_maps, instances_to_grid_with_classes

    h, w = iwt.valid
    prob = iout["prob"][:, :h, :w]
    hv = iout["hv"][:, :h, :w] if "hv" in iout else None
    inst, cls = instances_from_maps(prob, hv, icfg)
    return instances_to_grid_with_classes(inst, cls, out_shape, s_out / iwt.s)


def tile_paget(wt: WorkTile, out: dict[str, np.ndarray], cfg: ModelConfig, image_mpp: float, geometry=None, *,
               mode: str = "semantic", inst: np.ndarray | None = None, mitosis=None,
               inst_class: np.ndarray | None = None, inst_taxonomy=None) -> PagetTile:
    """PAGET-S / PAGET-H for one tile from the student's output (``out["prob"]``, padded tile):
    nuclei in full-resolution px kept by the ownership rule, their tissue context, and the tile's
    tissue annotations clipped to its core. ``inst``: PAGET-H instance map on the valid working
    grid of ``wt``. ``mitosis``: PAGET-H's mitosis marker (``paget.runner.resolve_mitosis``, the
    CLI's): marks "Mitotic cell" and adds ``mitosis_prob`` / ``mitosis_atypical_prob`` on the
    tile's working pixels, as ``analyze_paget`` does. ``inst_class`` / ``inst_taxonomy``: the
    instance source's class per instance, for a config with the guided vote (as ``analyze_paget``)."""
    import shapely

    from ..paget.geometry import merge_tissue_features
    from ..paget.outputs import paget_result_from_prob
    from ..paget.runner import core_marker

    h, w = wt.valid
    st = int(cfg.io.sem_stride)  # the class map's grid (padded tiles hold whole blocks)
    s = float(wt.full_scale)
    x0, y0, x1, y1 = wt.tile.core  # full-resolution px
    if mitosis is not None:  # only the nuclei the stitcher can keep (core on the tile's working grid)
        mitosis = core_marker(mitosis, ((x0 - wt.tile.x) * s, (y0 - wt.tile.y) * s, (x1 - wt.tile.x) * s,
                                        (y1 - wt.tile.y) * s))
    res = paget_result_from_prob(
        out["prob"][:, :-(-h // st), :-(-w // st)], wt.padded[:h, :w], cfg, scale=s, input_mpp=image_mpp, mode=mode,
        inst=inst, offset_xy=(wt.tile.x, wt.tile.y), compute_features=False, mitosis=mitosis,
        inst_class=inst_class, inst_taxonomy=inst_taxonomy)
    t = res.nuclei
    keep = np.ones(len(t), bool)
    if geometry is not None and len(t):
        keep = shapely.intersects_xy(geometry, t.centroid[:, 0], t.centroid[:, 1])
    t = t.subset(keep)
    ids = np.asarray(res.nucleus_tissue)[keep]
    t.extra[TISSUE_ID] = ids.astype(np.float64)
    tissue = merge_tissue_features(res.tissue_features, clip=shapely.box(x0, y0, x1, y1), mpp=image_mpp)
    return PagetTile(t, ids, tissue)
