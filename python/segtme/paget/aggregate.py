"""PAGET's taxonomy-aware multi-teacher aggregation (paget-paper.txt, section 3.4.2) and the flat
(max-logit) aggregation of the ablation (section 5.2, Appendix D).

All functions here are pure (arrays in, arrays out) and work in the pixels of the image the
teachers saw (the paper: 40x, ~0.25 µm/px). Teacher outputs are **logit maps**: one (H, W) float
array per class name, a teacher "fires" at a pixel when its logit is > 0 (probability > 0.5).

The five steps (each is a function below and is unit-tested on its own):

1. ``step1_spatial``   nucleus instances N from an instance source; background B = pixels brighter
   than Otsu's threshold on the Gaussian-smoothed grey image; tissue region Ω' = Ω \\ (N ∪ B).
2. ``step2_tissue``    t(p) = argmax of the tissue logits {smooth muscle, epithelium} if the max is
   > 0, else stroma (Eq. 1).
3. ``step3_pixels`` + ``step3_nuclei``   pixel level: deeper levels override coarser labels where
   their teachers fire (level 2 over the tissue / baseline label, level 3 subtypes over their
   parent "leukocyte"); nucleus level: c*(i) = most frequent non-background label; if c* is
   leukocyte, refine to the most frequent subtype when any subtype pixel exists.
4. ``step4_complete``  (a) unclassified nuclei within epithelium -> epithelial cell;
   (b) nuclei classified only as "connective" by the instance source (HoverNet) -> fibroblast.
5. ``step5_mitosis``   mitosis detections -> discs of radius 30 px; overlapping nuclei -> mitotic cell.

Choices the paper leaves open are parameters (``AggregationParams``), documented in docs/paget.md:
the Gaussian sigma, an optional brightness floor for the background threshold, whether subtype
teachers may override only their parent (``strict_hierarchy``), how the instance source's own
classes enter (a *baseline* used only where no teacher fires in a nucleus — "refined by more
specific teachers", section 3.3), and what unresolved nuclei become (``unresolved``: ignored by
the loss, or the surrounding tissue label).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping

import numpy as np

from ..inference.postprocess import relabel_sequential  # also used as ag.relabel_sequential
from . import taxonomy as pt

LogitMaps = Mapping[str, np.ndarray]


@dataclass(frozen=True)
class AggregationParams:
    """Parameters of the aggregation (pixel units = the teachers' image pixels).

    sigma_px: Gaussian sigma for the background (step 1) smoothing; the paper does not state it.
    background_min_gray: optional floor (0-1 grey) for the background threshold: a pixel is
        background only if brighter than max(Otsu, floor). None = Otsu only (the paper). Useful on
        tiles fully covered by tissue, where plain Otsu splits pale stroma from dark tissue.
    mitosis_radius_px: radius of the disc around each mitosis detection (paper: 30 px at 40x).
    strict_hierarchy: level-3 subtype teachers override only pixels labelled with their parent
        (leukocyte); False lets them override any nucleus pixel.
    max_level: 3 = full hierarchy; 2 = without the subtype level (the ablation's partial hierarchy).
    unresolved: what nuclei without a final class become in the label map: "ignore" (IGNORE_INDEX,
        not supervised) or "tissue" (the surrounding tissue label).
    """

    sigma_px: float = 2.0
    background_min_gray: float | None = None
    mitosis_radius_px: float = 30.0
    strict_hierarchy: bool = True
    max_level: int = 3
    unresolved: str = "ignore"

    def __post_init__(self) -> None:
        if self.unresolved not in ("ignore", "tissue"):
            raise ValueError(f"unresolved must be 'ignore' or 'tissue', got {self.unresolved!r}")
        if self.max_level not in (2, 3):
            raise ValueError(f"max_level must be 2 or 3, got {self.max_level}")
        if self.mitosis_radius_px < 0 or self.sigma_px < 0:
            raise ValueError("mitosis_radius_px and sigma_px must be >= 0")


@dataclass
class AggregationResult:
    """Output of one aggregation.

    label: (H, W) uint8 training target, PAGET13 ids 0..13, ``IGNORE_INDEX`` where unresolved.
    background: (H, W) bool, B of step 1. region: (H, W) bool, Ω' (tissue pixels outside nuclei).
    tissue: (H, W) int tissue context t(p) (step 2, evaluated on every pixel, also under nuclei).
    pixel: (H, W) int pixel-level labels s(p) of step 3 (aggregation ids, 0 = none).
    inst: (H, W) int32 sequential instance map (1..N).
    nucleus_label: (N + 1,) int aggregation id per instance after step 5 (index 0 unused):
        PAGET ids, or 0 / LEUKOCYTE for unresolved nuclei.
    """

    label: np.ndarray
    background: np.ndarray
    region: np.ndarray
    tissue: np.ndarray
    pixel: np.ndarray
    inst: np.ndarray
    nucleus_label: np.ndarray
    method: str = "hierarchical"
    stats: dict = field(default_factory=dict)


# --------------------------------------------------------------------------- helpers
def _check_maps(logits: LogitMaps, shape: tuple[int, int]) -> None:
    for name, a in logits.items():
        if name not in pt.AGG_ID:
            raise ValueError(f"teacher class {name!r} is not a PAGET aggregation label; known: {list(pt.AGG_NAMES[1:])}")
        if np.shape(a) != shape:
            raise ValueError(f"teacher logits for {name!r} have shape {np.shape(a)}, expected {shape}")


def _argmax_positive(logits: LogitMaps, names: tuple[str, ...], shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """(winner aggregation id, fires) over the classes of ``names`` present in ``logits``:
    winner = argmax logit, fires = max logit > 0. Absent classes never fire."""
    present = [n for n in names if n in logits]
    if not present:
        return np.zeros(shape, np.int64), np.zeros(shape, bool)
    stack = np.stack([np.asarray(logits[n], np.float32) for n in present])
    k = stack.argmax(axis=0)
    mx = np.take_along_axis(stack, k[None], axis=0)[0]
    ids = np.asarray(pt.agg_ids(present), np.int64)
    return ids[k], mx > 0


def _per_nucleus_counts(inst: np.ndarray, values: np.ndarray, mask: np.ndarray, n: int, k: int) -> np.ndarray:
    """(n + 1, k) pixel counts of each value per instance over ``mask``."""
    m = mask & (inst > 0)
    return np.bincount(inst[m].astype(np.int64) * k + values[m].astype(np.int64), minlength=(n + 1) * k).reshape(n + 1, k)


# --------------------------------------------------------------------------- step 1
def step1_spatial(
    rgb: np.ndarray, inst: np.ndarray, sigma_px: float = 2.0, background_min_gray: float | None = None
) -> tuple[np.ndarray, np.ndarray, float]:
    """Step 1: background B (Otsu on the Gaussian-smoothed grey image: brighter = glass) and the
    tissue region Ω' = Ω \\ (N ∪ B). Returns (background, region, threshold in grey 0-1).

    rgb: (H, W, 3) uint8; inst: (H, W) instance map (> 0 = nucleus). Nucleus pixels are never
    background. A constant image has no Otsu threshold: it is all background if brighter than
    0.8 grey, else all tissue."""
    from skimage.color import rgb2gray
    from skimage.filters import gaussian, threshold_otsu

    rgb = np.asarray(rgb)
    if rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f"rgb must be (H, W, 3), got {rgb.shape}")
    if rgb.shape[:2] != np.shape(inst):
        raise ValueError(f"instance map shape {np.shape(inst)} differs from image {rgb.shape[:2]}")
    grey = rgb2gray(rgb)
    smooth = gaussian(grey, sigma=sigma_px) if sigma_px > 0 else grey
    if float(smooth.max() - smooth.min()) < 1e-6:
        thr = 0.8
    else:
        thr = float(threshold_otsu(smooth))
    if background_min_gray is not None:
        thr = max(thr, float(background_min_gray))
    nuclei = np.asarray(inst) > 0
    background = (smooth > thr) & ~nuclei
    region = ~background & ~nuclei
    return background, region, thr


# --------------------------------------------------------------------------- step 2
def step2_tissue(logits: LogitMaps, shape: tuple[int, int]) -> np.ndarray:
    """Step 2 (Eq. 1): t(p) = argmax_c l_c(p) over c in {smooth muscle, epithelium} if the max is
    > 0, else stroma. Evaluated on every pixel (the caller restricts to Ω'; under nuclei it is the
    tissue context used by step 4a). Returns (H, W) int64 PAGET ids."""
    win, fires = _argmax_positive(logits, pt.TISSUE_TEACHER_CLASSES, shape)
    return np.where(fires, win, pt.STROMA)


# --------------------------------------------------------------------------- step 3
def step3_pixels(
    inst: np.ndarray,
    region: np.ndarray,
    tissue: np.ndarray,
    logits: LogitMaps,
    baseline: np.ndarray | None = None,
    *,
    strict_hierarchy: bool = True,
    max_level: int = 3,
) -> tuple[np.ndarray, np.ndarray]:
    """Step 3, pixel level: s(p) following the hierarchy. Returns (s, from_teacher).

    Ω' pixels start from the tissue label t(p); nucleus pixels start from the instance source's
    baseline label (``baseline[i]`` aggregation id per instance i, index 0 unused; 0 = none).
    Level 2 (leukocyte, endothelial cell, red blood cell, ...) overrides where the argmax level-2
    logit is > 0 (inside nuclei; on Ω' only pixel-scope classes: red blood cell). Level 3 subtypes
    override where the argmax subtype logit is > 0 — only pixels labelled leukocyte when
    ``strict_hierarchy`` (a coarse decision constrains its subtypes), any nucleus pixel otherwise.
    ``from_teacher`` marks pixels whose label came from a teacher (not the baseline)."""
    shape = np.shape(inst)
    nuc = np.asarray(inst) > 0
    s = np.zeros(shape, np.int64)
    s[region] = tissue[region]
    if baseline is not None:
        base = np.asarray(baseline, np.int64)
        if base.shape[0] != int(np.max(inst, initial=0)) + 1:
            raise ValueError(f"baseline needs {int(np.max(inst, initial=0)) + 1} entries (index 0 unused), got {base.shape[0]}")
        s[nuc] = base[inst[nuc]]
    from_teacher = np.zeros(shape, bool)

    # level 2 inside nuclei: every level-2 class competes
    win, fires = _argmax_positive(logits, pt.LEVEL2_CLASSES, shape)
    m = nuc & fires
    s[m], from_teacher[m] = win[m], True
    # level 2 on Ω': pixel-scope classes only (anucleate red blood cells)
    win, fires = _argmax_positive(logits, pt.PIXEL_SCOPE_CLASSES, shape)
    m = region & fires
    s[m], from_teacher[m] = win[m], True

    if max_level >= 3:
        win, fires = _argmax_positive(logits, pt.LEUKOCYTE_SUBTYPES, shape)
        m = nuc & fires
        if strict_hierarchy:
            m &= s == pt.LEUKOCYTE
        s[m], from_teacher[m] = win[m], True
    return s, from_teacher


def step3_nuclei(inst: np.ndarray, s: np.ndarray, from_teacher: np.ndarray | None = None) -> np.ndarray:
    """Step 3, nucleus level: y(i) per instance (index 0 unused; 0 = unclassified).

    c*(i) = argmax_{c != 0} count_c(i) over the nucleus' pixels (ties -> lowest id). The counts use
    teacher-labelled pixels when the nucleus has any, else the baseline pixels (the instance
    source's class is refined by more specific teachers). If c* is leukocyte and any subtype
    pixel exists, y(i) = the most frequent subtype, else leukocyte."""
    inst = np.asarray(inst)
    n = int(inst.max(initial=0))
    k = len(pt.AGG_NAMES)
    if from_teacher is None:
        from_teacher = np.ones(inst.shape, bool)
    ct = _per_nucleus_counts(inst, s, from_teacher, n, k)
    cb = _per_nucleus_counts(inst, s, ~from_teacher, n, k)
    ct[:, 0] = 0
    cb[:, 0] = 0
    counts = np.where(ct.sum(axis=1, keepdims=True) > 0, ct, cb)
    y = counts.argmax(axis=1)
    y[counts.max(axis=1) == 0] = 0
    sub = np.asarray(pt.agg_ids(pt.LEUKOCYTE_SUBTYPES))
    sc = counts[:, sub]
    refine = (y == pt.LEUKOCYTE) & (sc.max(axis=1) > 0)
    y[refine] = sub[sc[refine].argmax(axis=1)]
    y[0] = 0
    return y


# --------------------------------------------------------------------------- step 4
def nucleus_tissue_context(inst: np.ndarray, tissue: np.ndarray) -> np.ndarray:
    """Majority tissue label t(p) over each nucleus' pixels, (N + 1,) (index 0 unused)."""
    inst = np.asarray(inst)
    n = int(inst.max(initial=0))
    k = len(pt.AGG_NAMES)
    c = _per_nucleus_counts(inst, tissue, np.ones(inst.shape, bool), n, k)
    ctx = c.argmax(axis=1)
    ctx[0] = 0
    return ctx


def step4_complete(y: np.ndarray, tissue_context: np.ndarray) -> np.ndarray:
    """Step 4, label completion: (a) unclassified nuclei (y = 0) whose tissue context is epithelium
    -> epithelial cell; (b) nuclei classified only as "connective" by the instance source ->
    fibroblast."""
    y = np.asarray(y).copy()
    ctx = np.asarray(tissue_context)
    y[(y == 0) & (ctx == pt.EPITHELIUM)] = pt.EPITHELIAL_CELL
    y[y == pt.CONNECTIVE] = pt.FIBROBLAST
    y[0] = 0
    return y


# --------------------------------------------------------------------------- step 5
def mitosis_discs(shape: tuple[int, int], points_xy: np.ndarray, radius_px: float) -> np.ndarray:
    """Union of discs (H, W) bool. Points are (x, y) in pixel-corner coordinates (pixel (r, c)
    covers [c, c+1) x [r, r+1), its centre is (c + 0.5, r + 0.5)); a pixel is inside when its
    centre lies within ``radius_px`` of a point."""
    h, w = shape
    out = np.zeros(shape, bool)
    pts = np.asarray(points_xy, np.float64).reshape(-1, 2)
    r = float(radius_px)
    for x, y in pts:
        x0, x1 = max(0, int(np.floor(x - r))), min(w, int(np.ceil(x + r)) + 1)
        y0, y1 = max(0, int(np.floor(y - r))), min(h, int(np.ceil(y + r)) + 1)
        if x0 >= x1 or y0 >= y1:
            continue
        yy, xx = np.mgrid[y0:y1, x0:x1]
        out[y0:y1, x0:x1] |= (xx + 0.5 - x) ** 2 + (yy + 0.5 - y) ** 2 <= r * r
    return out


def step5_mitosis(y: np.ndarray, inst: np.ndarray, points_xy: np.ndarray | None, radius_px: float = 30.0) -> np.ndarray:
    """Step 5: each mitosis detection becomes a disc of ``radius_px``; every nucleus overlapping a
    disc (at least one pixel) is reclassified as mitotic cell."""
    y = np.asarray(y).copy()
    if points_xy is None or len(points_xy) == 0:
        return y
    inst = np.asarray(inst)
    disc = mitosis_discs(inst.shape, points_xy, radius_px)
    hit = np.unique(inst[disc & (inst > 0)])
    y[hit] = pt.MITOTIC_CELL
    y[0] = 0
    return y


# --------------------------------------------------------------------------- composition
def compose_label(
    background: np.ndarray,
    region: np.ndarray,
    pixel: np.ndarray,
    inst: np.ndarray,
    y: np.ndarray,
    tissue: np.ndarray,
    unresolved: str = "ignore",
) -> np.ndarray:
    """Final map S (H, W) uint8: background 0; Ω' pixels their pixel label (tissue class or red
    blood cell); nucleus pixels their nucleus' class y(i). Nuclei without an output class
    (unclassified, or leukocyte without subtype) get IGNORE_INDEX or the tissue label."""
    lab = np.zeros(np.shape(inst), np.uint8)
    ok = region & (pixel > 0) & (pixel < len(pt.NAMES))
    lab[ok] = pixel[ok]
    lab[region & ~ok] = pt.STROMA
    nuc = np.asarray(inst) > 0
    yy = np.asarray(y)[inst[nuc]]
    resolved = (yy > 0) & (yy < len(pt.NAMES))
    fill = np.full(yy.shape, pt.IGNORE_INDEX, np.int64) if unresolved == "ignore" else tissue[nuc]
    lab[nuc] = np.where(resolved, yy, fill).astype(np.uint8)
    lab[background] = pt.BACKGROUND
    return lab


def _stats(lab: np.ndarray, y: np.ndarray) -> dict:
    n = len(y) - 1
    yy = y[1:]
    return {
        "n_nuclei": int(n),
        "nuclei_per_class": {pt.AGG_NAMES[c]: int((yy == c).sum()) for c in np.unique(yy) if c > 0},
        "unclassified_nuclei": int((yy == 0).sum()),
        "pixels_per_class": {
            (pt.NAMES[c] if c < len(pt.NAMES) else "ignore"): int(v)
            for c, v in zip(*np.unique(lab, return_counts=True))
        },
    }


def aggregate_hierarchical(
    rgb: np.ndarray,
    inst: np.ndarray,
    logits: LogitMaps,
    *,
    baseline: np.ndarray | None = None,
    mitoses_xy: np.ndarray | None = None,
    params: AggregationParams = AggregationParams(),
) -> AggregationResult:
    """PAGET's hierarchical aggregation (steps 1-5) of one image.

    rgb: (H, W, 3) uint8 image the teachers saw. inst: (H, W) nucleus instances (any ids).
    logits: class name -> (H, W) logit map, from all teachers together (tissue, level 2, level 3).
    baseline: (N + 1,) aggregation id per *sequential* instance from the instance source's own
        classes (see ``taxonomy.baseline_ids``), or None. mitoses_xy: (K, 2) detections (x, y) px.
    """
    inst = relabel_sequential(inst)
    shape = inst.shape
    _check_maps(logits, shape)
    background, region, thr = step1_spatial(rgb, inst, params.sigma_px, params.background_min_gray)
    tissue = step2_tissue(logits, shape)
    s, from_teacher = step3_pixels(
        inst, region, tissue, logits, baseline, strict_hierarchy=params.strict_hierarchy, max_level=params.max_level
    )
    y = step3_nuclei(inst, s, from_teacher)
    y = step4_complete(y, nucleus_tissue_context(inst, tissue))
    y = step5_mitosis(y, inst, mitoses_xy, params.mitosis_radius_px)
    lab = compose_label(background, region, s, inst, y, tissue, params.unresolved)
    st = _stats(lab, y)
    st["otsu_threshold"] = thr
    return AggregationResult(lab, background, region, tissue, s, inst, y, "hierarchical", st)


def aggregate_flat(
    rgb: np.ndarray,
    inst: np.ndarray,
    logits: LogitMaps,
    *,
    baseline: np.ndarray | None = None,
    mitoses_xy: np.ndarray | None = None,
    params: AggregationParams = AggregationParams(),
) -> AggregationResult:
    """Flat aggregation (ablation, section 5.2): every pixel takes the class with the maximum logit
    among the 9 directly predicted types (epithelium, smooth muscle, red blood cell, endothelial
    cell and the five leukocyte subtypes) if it is > 0. No level-2 leukocyte and no hierarchy.

    Ω' pixels keep the tissue label of Eq. 1 unless red blood cell is the flat winner. A nucleus takes the most
    frequent cell-type winner among its pixels; without one, the instance source's baseline.
    Stroma, epithelial cells, fibroblasts and mitotic cells come from the same rules as the
    hierarchical method (steps 1, 4, 5), so only the aggregation differs."""
    inst = relabel_sequential(inst)
    shape = inst.shape
    _check_maps(logits, shape)
    background, region, thr = step1_spatial(rgb, inst, params.sigma_px, params.background_min_gray)
    tissue = step2_tissue(logits, shape)
    win, fires = _argmax_positive(logits, pt.FLAT_CLASSES, shape)
    nuc = inst > 0
    s = np.zeros(shape, np.int64)
    s[region] = tissue[region]
    keep = region & fires & (win == pt.RED_BLOOD_CELL)
    s[keep] = win[keep]
    cell = nuc & fires & ~np.isin(win, (pt.EPITHELIUM, pt.SMOOTH_MUSCLE))
    s[cell] = win[cell]
    from_teacher = cell.copy()
    if baseline is not None:
        base = np.asarray(baseline, np.int64)
        bm = nuc & ~cell
        s[bm] = base[inst[bm]]
    y = step3_nuclei(inst, s, from_teacher)
    y = step4_complete(y, nucleus_tissue_context(inst, tissue))
    y = step5_mitosis(y, inst, mitoses_xy, params.mitosis_radius_px)
    lab = compose_label(background, region, s, inst, y, tissue, params.unresolved)
    st = _stats(lab, y)
    st["otsu_threshold"] = thr
    return AggregationResult(lab, background, region, tissue, s, inst, y, "flat", st)


def aggregate(method: str = "hierarchical", **kwargs) -> AggregationResult:
    """Dispatch: ``method`` "hierarchical" (PAGET) or "flat" (ablation)."""
    if method == "hierarchical":
        return aggregate_hierarchical(**kwargs)
    if method == "flat":
        return aggregate_flat(**kwargs)
    raise ValueError(f"unknown aggregation method {method!r}; use 'hierarchical' or 'flat'")
