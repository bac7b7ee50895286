"""Run the mitosis teacher on the nuclei of any SegTME result.

``classify_nuclei(lm, rgb, mpp, centroids_xy)`` -> per nucleus (p_mitosis, p_atypical);
``mark_mitoses(table, rgb, mpp, lm)`` stores them in the table's extra columns
``mitosis_prob`` / ``mitosis_atypical_prob`` and — when the table's taxonomy has a
"Mitotic cell" class (paget13) — re-classifies nuclei with ``p_mitosis >= threshold`` as
"Mitotic cell". ``table.meta["mitosis"]`` records the model, threshold, counts and the
candidate rule. ``MitosisTeacher`` is the PAGET distillation plug-in (``MitosisDetector``).

Units: ``centroids_xy`` (x, y) in the px of ``rgb`` (``mpp`` µm/px); the crops are taken at the
model's MPP (``lm.config.mpp``; 32 px at 0.5 µm/px for the shipped teacher).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import InputError

MITOTIC = "Mitotic cell"


@dataclass(frozen=True)
class MitosisParams:
    """threshold: p_mitosis at or above which a nucleus is a mitotic figure (None: the model's
    ``extra["threshold"]``). min_area_um2: nuclei smaller than this are not candidates (debris,
    fragments; 0 = all). batch: crops per forward pass (CPU s per 8192 crops in ONNX Runtime on
    2 AVX2 cores, 2026-12-07: 0.80 at 128, 0.83 at 512, 0.89 at 1024, 1.07 at 4096 — small
    batches stay in cache; 256 lies between the two best)."""

    threshold: float | None = None
    min_area_um2: float = 0.0
    batch: int = 256


def load_mitosis_model(spec: Any = "mitosis", device: str = "cpu", precision: str = "auto"):
    """A LoadedModel of the mitosis teacher (shipped ``mitosis`` by default); ``precision`` as
    ``registry.load_model`` (the PAGET model's own, so ``--precision fp32`` reaches the teacher)."""
    from ..models.registry import LoadedModel, load_model

    lm = spec if isinstance(spec, LoadedModel) else load_model(spec, device, precision=precision)
    from .zoo import is_mitosis

    if not is_mitosis(lm.config):
        raise InputError(f"model {lm.config.name!r} is not a mitosis model (arch {lm.config.arch!r})")
    return lm


def classify_nuclei(lm: Any, rgb: np.ndarray, mpp: float, centroids_xy: np.ndarray,
                    batch: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """(p_mitosis (N,), p_atypical (N,)) float32 for nuclei centred at ``centroids_xy``.

    Forward through the engine's backend like every SegTME model (``engine.model_backend``): the
    shipped teacher's ONNX graph (``weights/mitosis.onnx``) in ONNX Runtime when the model was
    loaded into it (a CPU without native bf16, ``models/onnx_runtime.py``), else the
    BatchNorm-folded, channels_last torch copy (``TorchBackend``), bf16 autocast when the
    model's precision resolves to bf16 (CUDA, CPUs with native bf16). Measured: 8192 crops of
    32 px, 2 AMD EPYC cores with avx512_bf16 (2026-12-05): 1.14 s as the eager NCHW fp32
    module, 0.55 s folded + channels_last fp32, 0.38 s with bf16; 32 768 crops of a 4000² image
    with their gathering, 2 AVX2 EPYC cores without bf16 (2026-12-07, ``scripts/bench_paget.py
    --mitosis 32768``): 4.9 CPU s folded fp32 torch, 3.2 ONNX Runtime."""
    xy = np.asarray(centroids_xy, np.float64).reshape(-1, 2)
    if len(xy) == 0:
        return np.zeros(0, np.float32), np.zeros(0, np.float32)
    size = int(lm.config.tile_size)
    s = float(mpp) / float(lm.config.mpp)
    if abs(s - 1.0) >= 1e-6:  # resample once, then gather windows chunk by chunk
        from ..resample import resample

        rgb, xy = resample(rgb, s), xy * s
    from scipy.special import expit

    from ..inference.engine import model_backend
    from .crops import iter_centred_windows

    run = model_backend(lm)
    pm, pa = [], []
    for win in iter_centred_windows(rgb, xy, size, batch):
        # (B, 3, S, S) uint8 -> contiguous float32 RGB in [0, 1], in one pass (= astype / 255)
        x = np.empty(win.shape, np.float32)
        np.divide(win, np.float32(255.0), out=x)
        out = run(x)
        pm.append(expit(out["mitosis"]).astype(np.float32))
        pa.append(expit(out["atypical"]).astype(np.float32))
    return np.concatenate(pm), np.concatenate(pa)


def mark_mitoses(table: Any, rgb: np.ndarray, mpp: float, lm: Any, params: MitosisParams = MitosisParams(),
                 offset_xy: tuple[float, float] = (0.0, 0.0), candidates: np.ndarray | None = None) -> Any:
    """Classify every nucleus of ``table`` (a NucleiTable whose coordinates are the px of
    ``rgb`` + ``offset_xy``) in place; returns the table. See the module doc. candidates:
    optional (N,) bool, the only nuclei to classify (the others keep probability 0 and their
    class; e.g. a chunk's halo nuclei that its stitcher drops anyway)."""
    n = len(table)
    thr = float(params.threshold if params.threshold is not None else lm.config.extra.get("threshold", 0.5))
    pm = np.zeros(n, np.float64)
    pa = np.zeros(n, np.float64)
    cand = np.ones(n, bool) if candidates is None else np.asarray(candidates, bool).reshape(n).copy()
    if params.min_area_um2 > 0 and table.mpp:
        cand &= table.area_px * float(table.mpp) ** 2 >= params.min_area_um2
    if cand.any():
        xy = table.centroid[cand] - np.asarray(offset_xy, np.float64)
        a, b = classify_nuclei(lm, rgb, mpp, xy, params.batch)
        pm[cand], pa[cand] = a, b
    table.extra["mitosis_prob"] = pm
    table.extra["mitosis_atypical_prob"] = pa
    hit = cand & (pm >= thr)
    names = table.taxonomy.names
    relabelled = 0
    if MITOTIC in names:
        cid = names.index(MITOTIC)
        relabelled = int((hit & (table.class_id != cid)).sum())
        table.class_id = np.where(hit, cid, table.class_id).astype(np.int32)
    table.meta["mitosis"] = {"model": lm.config.name, "weights": lm.source, "threshold": thr,
                             "n_mitotic": int(hit.sum()), "n_atypical": int((hit & (pa >= 0.5)).sum()),
                             "n_candidates": int(cand.sum()), "relabelled": relabelled,
                             "min_area_um2": params.min_area_um2}
    return table


@dataclass
class MitosisTeacher:
    """PAGET ``MitosisDetector`` plug-in: the mitosis teacher on the instance source's nuclei
    (``TeacherInput.inst``). ``detect`` returns the (x, y) px centroids of the nuclei with
    p_mitosis >= threshold (the aggregation's step 5 then marks the nuclei under them)."""

    model: Any = "mitosis"
    threshold: float | None = None
    device: str = "cpu"
    name: str = "mitosis-teacher"
    _lm: Any = None

    def detect(self, image: Any) -> np.ndarray:
        if image.inst is None:
            raise InputError("the mitosis teacher needs the instance map (TeacherInput.inst)")
        if image.mpp is None:
            raise InputError("the mitosis teacher needs the image MPP")
        if self._lm is None:
            self._lm = load_mitosis_model(self.model, self.device)
        inst = np.asarray(image.inst)
        m = inst > 0
        lab = inst[m].astype(np.int64)
        if lab.size == 0:
            return np.zeros((0, 2))
        yy, xx = np.nonzero(m)
        k = int(lab.max()) + 1
        cnt = np.bincount(lab, minlength=k).astype(np.float64)
        ids = np.flatnonzero(cnt > 0)
        xy = np.stack([np.bincount(lab, weights=xx, minlength=k)[ids] / cnt[ids] + 0.5,
                       np.bincount(lab, weights=yy, minlength=k)[ids] / cnt[ids] + 0.5], 1)
        pm, _ = classify_nuclei(self._lm, image.rgb, image.mpp, xy)
        thr = float(self.threshold if self.threshold is not None else self._lm.config.extra.get("threshold", 0.5))
        # step 5 draws a disc around each point; the point itself lies in the nucleus
        return xy[pm >= thr] - 0.5
