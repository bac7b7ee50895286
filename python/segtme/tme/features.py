"""TME features (SegTME-UNI2 paper, section 7, "Phase 1").

One implementation, two entry points:

* :func:`analyze_tme_from_nuclei` - the features of any nuclei table (a patch, a tile mosaic, a
  whole QuPath annotation). This is the one implementation.
* :func:`analyze_tme_from_maps` - the paper's entry point: validates an instance map and a class
  map, builds a :class:`~segtme.inference.nuclei.NucleiTable` from them and calls the function above.

Feature names are the paper's (PanNuke names via ``taxonomy.ROLE_NAMES``): ``N_Neoplastic``,
``r_Inflammatory``, ``mean_area_Connective``, ``f_TS``, ``f_II``,
``min_dist_Inflammatory_to_Neoplastic``, ``mean_dist_Inflammatory_to_Neoplastic``,
``count_engaged_immune``, ``mean_spatial_entropy``. Any taxonomy works through its class -> TME
role mapping (``taxonomy.py``): a class whose role is ``tumour`` counts as Neoplastic, etc.
Classes with role ``other`` are counted in ``N_total`` (and as ``N_Other``); ``background``,
``tissue`` and ``excluded`` (e.g. red blood cells) are not nuclei of the TME and only appear in
``N_uncounted``.

Units: lengths in **px of the table's coordinates** (the analysis resolution) with suffix-free
names as in the paper, plus ``*_um`` / ``*_um2`` twins when the table's ``mpp`` is known.
Undefined values (zero denominators, missing compartments, too few cells) are ``None`` and their
reason is in ``features["undefined"][name]``; values are native Python ``int``/``float`` only.

Extending: feature groups are functions ``group(ctx: TMEContext, out: FeatureSet) -> None``. The
core groups run first; groups registered with :func:`register_feature_group` (optionally limited
to some taxonomies, e.g. PAGET's lymphocyte/plasma fractions) and ``extra_groups`` passed by the
caller run after them, on the same context (shared KD-trees, masks), without copying this code.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, Callable, Iterable, Sequence

import numpy as np
from scipy.spatial import cKDTree

from ..errors import InputError
from ..inference.nuclei import NucleiTable
from ..taxonomy import ROLE_NAMES, ROLES, Taxonomy, get_taxonomy
from .thresholds import DEFAULT_THRESHOLDS, TMEThresholds

__all__ = [
    "FeatureSet",
    "TMEContext",
    "FeatureGroup",
    "register_feature_group",
    "registered_feature_groups",
    "analyze_tme_from_nuclei",
    "analyze_tme_from_maps",
    "nuclei_table_from_maps",
    "validate_maps",
    "majority_class",
    "COUNTED_ROLES",
    "OTHER_NAME",
]

log = logging.getLogger(__name__)

#: roles whose nuclei are counted in N_total (TME compartments + "other" nuclei).
COUNTED_ROLES: tuple[str, ...] = (*ROLES, "other")
#: feature-name stem for the "other" role (not a PanNuke class; used by CoNSeP "Other" etc.).
OTHER_NAME = "Other"
_TUMOUR = ROLE_NAMES["tumour"]
_IMMUNE = ROLE_NAMES["immune"]


def role_name(role: str) -> str:
    """Feature-name stem of a role: the PanNuke name (``tumour`` -> ``Neoplastic``)."""
    return ROLE_NAMES.get(role, OTHER_NAME if role == "other" else role.capitalize())


# ------------------------------------------------------------------------------------------------
# output container


def _native(v: Any) -> Any:
    """numpy scalars -> int/float; non-finite floats -> None (caller records a reason)."""
    if v is None or isinstance(v, (bool, str)):
        return v
    if isinstance(v, (np.bool_,)):
        return bool(v)
    if isinstance(v, (int, np.integer)):
        return int(v)
    if isinstance(v, (float, np.floating)):
        f = float(v)
        return f if math.isfinite(f) else None
    raise TypeError(f"feature values must be numbers or None, got {type(v).__name__}")


@dataclass
class FeatureSet:
    """Ordered feature values plus the reason for every undefined (None) value."""

    values: dict[str, int | float | None] = field(default_factory=dict)
    undefined: dict[str, str] = field(default_factory=dict)

    def put(self, name: str, value: Any, reason: str | None = None) -> None:
        """Store ``value`` (cast to a native type). ``None``/NaN/inf are stored as None with
        ``reason`` (required for an undefined value, so every null is explained)."""
        v = _native(value)
        if v is None:
            self.values[name] = None
            self.undefined[name] = reason or "not a finite number"
        else:
            self.values[name] = v
            self.undefined.pop(name, None)

    def undefined_like(self, name: str, reason: str) -> None:
        self.put(name, None, reason)

    def to_dict(self, mpp: float | None) -> dict:
        d: dict[str, Any] = dict(self.values)
        d["mpp"] = None if mpp is None else float(mpp)
        d["undefined"] = dict(self.undefined)
        return d


# ------------------------------------------------------------------------------------------------
# shared context for all feature groups


class TMEContext:
    """What every feature group reads: the table, thresholds and cached per-role index/trees.

    ``xy`` / ``area_px`` / ``role`` / ``class_id`` cover only the *counted* nuclei (roles in
    COUNTED_ROLES); ``table`` is the full table. ``inst_mask``/``cls_mask`` are set when the
    features come from maps (tissue-level groups such as PAGET's tissue fractions use them).
    """

    def __init__(
        self,
        table: NucleiTable,
        thresholds: TMEThresholds = DEFAULT_THRESHOLDS,
        inst_mask: np.ndarray | None = None,
        cls_mask: np.ndarray | None = None,
    ) -> None:
        self.table = table
        self.taxonomy: Taxonomy = table.taxonomy
        self.thresholds = thresholds
        self.mpp: float | None = None if table.mpp is None else float(table.mpp)
        self.inst_mask = inst_mask
        self.cls_mask = cls_mask
        role_of_class = np.array([c.role for c in self.taxonomy.classes], dtype=object)
        all_roles = role_of_class[np.asarray(table.class_id, dtype=np.int64)] if len(table) else np.zeros(0, object)
        self.counted = np.isin(all_roles, COUNTED_ROLES) if len(table) else np.zeros(0, bool)
        self.role = all_roles[self.counted]
        self.class_id = np.asarray(table.class_id)[self.counted].astype(np.int64)
        self.xy = np.asarray(table.centroid, dtype=np.float64).reshape(-1, 2)[self.counted]
        self.area_px = np.asarray(table.area_px, dtype=np.float64)[self.counted]

    @property
    def n_total(self) -> int:
        return int(self.counted.sum())

    @property
    def n_uncounted(self) -> int:
        return int(len(self.table) - self.n_total)

    def index(self, role: str) -> np.ndarray:
        """Positions (into the counted arrays) of nuclei with this role."""
        return np.flatnonzero(self.role == role)

    def count(self, role: str) -> int:
        return int((self.role == role).sum())

    def has_role(self, role: str) -> bool:
        """Whether the taxonomy has any class with this role (decides if a feature exists)."""
        return any(c.role == role for c in self.taxonomy.classes)

    @cached_property
    def tree_all(self) -> cKDTree:
        """KD-tree over all counted centroids (px)."""
        return cKDTree(self.xy)

    def tree(self, role: str) -> cKDTree:
        """KD-tree over the centroids of one role (cached)."""
        cache = self.__dict__.setdefault("_trees", {})
        if role not in cache:
            cache[role] = cKDTree(self.xy[self.index(role)])
        return cache[role]

    @cached_property
    def nearest_tumour_dist_px(self) -> np.ndarray | None:
        """Per inflammatory nucleus, distance (px) to the nearest neoplastic centroid; None when
        either compartment is empty."""
        imm, tum = self.index("immune"), self.index("tumour")
        if len(imm) == 0 or len(tum) == 0:
            return None
        d, _ = self.tree("tumour").query(self.xy[imm], k=1)
        return np.asarray(d, dtype=np.float64).reshape(-1)

    def um(self, px: float | None) -> float | None:
        return None if px is None or self.mpp is None else float(px) * self.mpp

    def um2(self, px2: float | None) -> float | None:
        return None if px2 is None or self.mpp is None else float(px2) * self.mpp**2


FeatureGroup = Callable[[TMEContext, FeatureSet], None]


@dataclass(frozen=True)
class _GroupSpec:
    name: str
    fn: FeatureGroup
    taxonomies: frozenset[str] | None  # None: every taxonomy


_REGISTRY: dict[str, _GroupSpec] = {}


def register_feature_group(
    name: str, fn: FeatureGroup | None = None, *, taxonomies: Iterable[str] | None = None
):
    """Register an extra feature group, run after the core groups for tables whose taxonomy name
    is in ``taxonomies`` (all taxonomies if None). Usable as a decorator::

        @register_feature_group("paget_immune_subtypes", taxonomies=["paget13"])
        def _subtypes(ctx: TMEContext, out: FeatureSet) -> None:
            out.put("r_Lymphocyte", ...)
    """

    def deco(f: FeatureGroup) -> FeatureGroup:
        _REGISTRY[name] = _GroupSpec(name, f, None if taxonomies is None else frozenset(taxonomies))
        return f

    return deco(fn) if fn is not None else deco


def registered_feature_groups(taxonomy: Taxonomy | str) -> list[str]:
    """Names of the registered extra groups that apply to ``taxonomy``."""
    tname = taxonomy if isinstance(taxonomy, str) else taxonomy.name
    return [s.name for s in _REGISTRY.values() if s.taxonomies is None or tname in s.taxonomies]


# ------------------------------------------------------------------------------------------------
# core feature groups (paper section 7, items 1-4)


def _ratio(num: int, den: int) -> float | None:
    return None if den == 0 else num / den


def composition(ctx: TMEContext, out: FeatureSet) -> None:
    """N_total; per role: N_c, r_c = N_c / N_total, mean_area_c (px^2, pixel-count area of the table) and
    mean_area_c_um2 (µm^2, when mpp is known). ``N_Other``/... only if the taxonomy has an
    ``other`` class. Roles the taxonomy has no class for are None ("taxonomy ... has no ... class"). ``N_uncounted``: table rows that are not TME nuclei (background, tissue,
    excluded roles)."""
    n = ctx.n_total
    out.put("N_total", n)
    out.put("N_uncounted", ctx.n_uncounted)
    roles = [r for r in ROLES] + (["other"] if ctx.has_role("other") else [])
    # a role the taxonomy cannot detect (CoNSeP has no Dead class) is undefined, not zero
    absent = {r: f"taxonomy {ctx.taxonomy.name} has no {role_name(r)} class" for r in roles if not ctx.has_role(r)}
    for role in roles:
        nm = role_name(role)
        out.put(f"N_{nm}", None if role in absent else len(ctx.index(role)), absent.get(role))
    for role in roles:
        nm = role_name(role)
        why = absent.get(role, "no nuclei (N_total = 0)")
        out.put(f"r_{nm}", None if role in absent else _ratio(len(ctx.index(role)), n), why)
    for role in roles:
        nm = role_name(role)
        idx = ctx.index(role)
        mean = float(ctx.area_px[idx].mean()) if len(idx) else None
        why = absent.get(role, f"no {nm} nuclei")
        out.put(f"mean_area_{nm}", mean, why)
        if ctx.mpp is not None:
            out.put(f"mean_area_{nm}_um2", ctx.um2(mean), why)


def clinical_ratios(ctx: TMEContext, out: FeatureSet) -> None:
    """f_TS = N_neo / (N_neo + N_conn), f_II = N_inf / (N_neo + N_inf) (paper Eq. 8)."""
    neo, inf, conn = ctx.count("tumour"), ctx.count("immune"), ctx.count("stroma")
    out.put("f_TS", _ratio(neo, neo + conn), f"no {_TUMOUR} or {ROLE_NAMES['stroma']} nuclei")
    out.put("f_II", _ratio(inf, neo + inf), f"no {_TUMOUR} or {_IMMUNE} nuclei")


def spatial_interaction(ctx: TMEContext, out: FeatureSet) -> None:
    """cKDTree over neoplastic centroids queried with every inflammatory centroid (px):
    min_dist / mean_dist_Inflammatory_to_Neoplastic, count_engaged_immune (nearest neoplastic
    centroid <= the engagement radius, inclusive), fraction_engaged_immune (= count / N_inf, the
    seventh axis), engagement_radius (the radius used, in px of this table) and µm twins."""
    t = ctx.thresholds
    radius_px = t.length_px(t.engagement_radius_px, ctx.mpp)
    n_inf, n_neo = ctx.count("immune"), ctx.count("tumour")
    d = ctx.nearest_tumour_dist_px
    if n_inf == 0:
        why = f"no {_IMMUNE} nuclei"
    elif n_neo == 0:
        why = f"no {_TUMOUR} nuclei"
    else:
        why = ""
    names = (f"min_dist_{_IMMUNE}_to_{_TUMOUR}", f"mean_dist_{_IMMUNE}_to_{_TUMOUR}")
    vals = (None, None) if d is None else (float(d.min()), float(d.mean()))
    for nm, v in zip(names, vals):
        out.put(nm, v, why)
        if ctx.mpp is not None:
            out.put(f"{nm}_um", ctx.um(v), why)
    engaged = 0 if d is None else int((d <= radius_px).sum())
    out.put("count_engaged_immune", engaged)
    out.put("fraction_engaged_immune", None if d is None else engaged / n_inf, why)
    out.put("engagement_radius", radius_px)
    if ctx.mpp is not None:
        out.put("engagement_radius_um", ctx.um(radius_px))


def spatial_entropy(ctx: TMEContext, out: FeatureSet) -> None:
    """mean_spatial_entropy (bits): per cell, Shannon entropy (log2) of the TME-role distribution
    of its ``k`` nearest neighbours (k = thresholds.entropy_neighbours = 5; the cell itself is not
    a neighbour; KD-tree query with k + 1), averaged over all counted cells (paper Eq. 9).
    Undefined with fewer than k + 1 cells. Roles (not raw classes) are used so that the value
    means the same for every taxonomy (PanNuke: identical to its classes)."""
    k = ctx.thresholds.entropy_neighbours
    n = ctx.n_total
    if n < k + 1:
        out.put("mean_spatial_entropy", None, f"fewer than {k + 1} nuclei (N_total = {n}); {k} neighbours per cell needed")
        return
    _, nbr = ctx.tree_all.query(ctx.xy, k=k + 1)
    nbr = np.asarray(nbr).reshape(n, k + 1)
    own = np.arange(n)[:, None]
    # drop the cell itself wherever it appears (duplicate centroids may put it off column 0)
    is_self = nbr == own
    keep = ~is_self
    # rows where the cell itself was not returned (k+1 exact duplicates): drop the last column
    no_self = ~is_self.any(axis=1)
    keep[no_self, -1] = False
    nbr = nbr[keep].reshape(n, k)
    role_codes = {r: i for i, r in enumerate(COUNTED_ROLES)}
    codes = np.array([role_codes[r] for r in ctx.role], dtype=np.int64)[nbr]  # (n, k)
    counts = np.stack([(codes == c).sum(axis=1) for c in range(len(COUNTED_ROLES))], axis=1)
    p = counts / float(k)
    with np.errstate(divide="ignore", invalid="ignore"):
        h = -np.where(p > 0, p * np.log2(p), 0.0).sum(axis=1)
    # -0.0 for single-class neighbourhoods -> 0.0
    out.put("mean_spatial_entropy", float(h.mean()) + 0.0)


CORE_GROUPS: tuple[FeatureGroup, ...] = (composition, clinical_ratios, spatial_interaction, spatial_entropy)


# ------------------------------------------------------------------------------------------------
# entry point 1: nuclei table


def analyze_tme_from_nuclei(
    table: NucleiTable,
    thresholds: TMEThresholds = DEFAULT_THRESHOLDS,
    *,
    extra_groups: Sequence[FeatureGroup] = (),
    inst_mask: np.ndarray | None = None,
    cls_mask: np.ndarray | None = None,
) -> dict:
    """TME features of all nuclei in ``table`` (coordinates/areas in its px; µm via ``table.mpp``).

    Returns a flat dict ``{feature: int | float | None, ..., "mpp": float | None,
    "undefined": {feature: reason}}`` with native Python types only (JSON-safe, no NaN).
    Runs the core groups, then registered groups applicable to the table's taxonomy, then
    ``extra_groups``.
    """
    ctx = TMEContext(table, thresholds, inst_mask=inst_mask, cls_mask=cls_mask)
    out = FeatureSet()
    groups: list[FeatureGroup] = list(CORE_GROUPS)
    groups += [_REGISTRY[name].fn for name in registered_feature_groups(ctx.taxonomy)]
    groups += list(extra_groups)
    for g in groups:
        g(ctx, out)
    return out.to_dict(ctx.mpp)


# ------------------------------------------------------------------------------------------------
# entry point 2: maps (the paper's analyze_tme_from_maps)


def _check_mpp(mpp: float | None) -> float | None:
    if mpp is None:
        return None
    try:
        m = float(mpp)
    except (TypeError, ValueError):
        raise InputError(f"mpp must be a number (µm per pixel) or None, got {mpp!r}") from None
    if not (math.isfinite(m) and 0 < m < 1000):
        raise InputError(f"mpp must be a positive, finite number of µm per pixel, got {mpp!r}")
    return m


def _as_label_map(a: Any, what: str) -> np.ndarray:
    arr = np.asarray(a)
    if arr.ndim == 3 and arr.shape[-1] in (3, 4):
        raise InputError(
            f"{what} has shape {arr.shape}: a {arr.shape[-1]}-channel (RGB/RGBA) image was passed where a 2D "
            f"integer map is expected. Pass the label map itself (H x W, one integer per pixel), not a "
            f"colour rendering of it (e.g. load the PNG without converting to RGB)."
        )
    if arr.ndim == 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if arr.ndim != 2:
        raise InputError(f"{what} must be a 2D integer map (H x W), got shape {arr.shape}")
    if arr.dtype == bool:
        arr = arr.astype(np.int64)
    if np.issubdtype(arr.dtype, np.floating):
        if not np.all(np.isfinite(arr)) or not np.all(arr == np.round(arr)):
            raise InputError(f"{what} must contain integers, got non-integer {arr.dtype} values")
        arr = arr.astype(np.int64)
    if not np.issubdtype(arr.dtype, np.integer):
        raise InputError(f"{what} must be an integer array, got dtype {arr.dtype}")
    if arr.size and int(arr.min()) < 0:
        raise InputError(f"{what} has negative values (min {int(arr.min())}); ids/classes must be >= 0")
    return arr


def validate_maps(
    inst_mask: Any, cls_mask: Any, taxonomy: Taxonomy | str = "pannuke6"
) -> tuple[np.ndarray, np.ndarray, Taxonomy]:
    """Validate the paper's inputs: ``inst_mask`` 2D integer ids (0 = background), ``cls_mask`` 2D
    integer class ids in ``0 .. num_classes - 1`` of ``taxonomy`` (0-5 for PanNuke), same shape.
    Raises InputError with a clear message (a 3-channel instance mask is the paper's fatal case)."""
    try:
        tax = get_taxonomy(taxonomy)
    except KeyError as e:
        raise InputError(str(e.args[0])) from None
    inst = _as_label_map(inst_mask, "inst_mask (instance map)")
    cls = _as_label_map(cls_mask, "cls_mask (class map)")
    if inst.shape != cls.shape:
        raise InputError(f"inst_mask shape {inst.shape} and cls_mask shape {cls.shape} differ; both must be H x W of the same image")
    if cls.size and int(cls.max()) >= tax.num_classes:
        bad = np.unique(cls[cls >= tax.num_classes])
        raise InputError(
            f"cls_mask has class values {bad[:10].tolist()} outside 0-{tax.num_classes - 1} of taxonomy "
            f"{tax.name!r} ({', '.join(f'{c.id}={c.name}' for c in tax.classes)})"
        )
    return inst, cls, tax


def majority_class(inst: np.ndarray, cls: np.ndarray, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """Per instance (sorted label order, i.e. ids 1..N after sequential relabelling): the most
    frequent **non-zero** class among its pixels, and that class's share of its pixels.
    A nucleus whose pixels are all 0 in ``cls`` gets class 0 (background role: not counted, it
    shows up in ``N_uncounted``) rather than a guessed class."""
    labels = np.unique(inst[inst > 0])
    n = len(labels)
    lut = np.zeros(int(inst.max()) + 1 if inst.size else 1, dtype=np.int64)
    lut[labels] = np.arange(n)
    fg = (inst > 0) & (cls > 0)
    pair = lut[inst[fg]] * num_classes + cls[fg].astype(np.int64)
    votes = np.bincount(pair, minlength=n * num_classes).reshape(n, num_classes)
    class_id = np.where(votes.sum(axis=1) > 0, votes.argmax(axis=1), 0).astype(np.int32)
    total = np.bincount(lut[inst[inst > 0]], minlength=n).astype(np.float64)
    share = np.divide(votes.max(axis=1), total, out=np.zeros(n), where=total > 0)
    return class_id, share


def _table_from_maps(inst: np.ndarray, cls: np.ndarray, tax: Taxonomy, mpp: float | None) -> NucleiTable:
    """Nuclei table of validated maps via the shared ``inference.nuclei.build_nuclei_table``
    (centroids, areas, outlines in px of the maps) with the class of each nucleus from
    :func:`majority_class`."""
    from ..inference.nuclei import build_nuclei_table

    class_id, share = majority_class(inst, cls, tax.num_classes)
    table = build_nuclei_table(inst, tax, class_id=class_id, class_prob=share, mpp=mpp)
    table.meta["source"] = "maps"
    return table


def nuclei_table_from_maps(
    inst_mask: Any, cls_mask: Any, mpp: float | None = None, taxonomy: Taxonomy | str = "pannuke6"
) -> NucleiTable:
    """Validate the maps (see :func:`validate_maps`) and build their nuclei table (px of the maps)."""
    inst, cls, tax = validate_maps(inst_mask, cls_mask, taxonomy)
    return _table_from_maps(inst, cls, tax, _check_mpp(mpp))


def analyze_tme_from_maps(
    inst_mask: Any,
    cls_mask: Any,
    mpp: float | None = None,
    taxonomy: Taxonomy | str = "pannuke6",
    thresholds: TMEThresholds = DEFAULT_THRESHOLDS,
    *,
    extra_groups: Sequence[FeatureGroup] = (),
) -> dict:
    """The paper's ``analyze_tme_from_maps``: validate ``inst_mask`` (2D ids) and ``cls_mask``
    (2D class ids of ``taxonomy``, PanNuke 0-5 by default), build the nuclei table (shared
    builder: centroids, px areas; class = majority non-zero class of the nucleus's pixels) and return :func:`analyze_tme_from_nuclei` of it.
    ``mpp``: µm per pixel of the maps (None: unknown; µm features omitted, thresholds assume the
    reference resolution)."""
    inst, cls, tax = validate_maps(inst_mask, cls_mask, taxonomy)
    table = _table_from_maps(inst, cls, tax, _check_mpp(mpp))
    return analyze_tme_from_nuclei(table, thresholds, extra_groups=extra_groups, inst_mask=inst, cls_mask=cls)
