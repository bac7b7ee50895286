"""Instances of a whole (small) image from any nucleus model, on the image's own pixel grid —
the one dispatch on the model contract for evaluation, pseudo-labels and PAGET-H's instance
source.

``predict_instances(model, rgb, mpp)``: a ``"hook"`` model (rule-based) is called with the image
as it is; a ``"maps"`` model runs tiled at its working MPP (``engine.predict_maps`` over
``resample.to_working``), goes through the one maps -> nuclei step (``maps.instances_from_maps``)
and its labels come back to the input grid by nearest neighbour (``resample.resample_labels``:
input pixel i takes the working label under ``(i + 0.5) * s``). Nuclei that vanish on the way
(smaller than an input pixel) are dropped and labels renumbered 1..N with their classes.
"""

from __future__ import annotations

import numpy as np

from ..errors import InputError
from ..models.registry import LoadedModel
from .maps import Instances, instances_from_maps
from .options import InferenceOptions


def _sequential(inst: np.ndarray, cls: np.ndarray, prob: np.ndarray) -> Instances:
    from skimage.segmentation import relabel_sequential

    inst = np.asarray(inst)
    ids = np.unique(inst[inst > 0])
    lab = relabel_sequential(inst.astype(np.int32, copy=False))[0].astype(np.int32, copy=False)
    keep = ids - 1
    return Instances(lab, np.asarray(cls, np.int32)[keep], np.asarray(prob, np.float32)[keep])


def predict_instances(model: LoadedModel, rgb: np.ndarray, mpp: float, options: InferenceOptions | None = None
                      ) -> Instances:
    """Instances (labels on ``rgb``'s grid, (H, W) int32 1..N) and classes of an (H, W, 3) uint8
    image at ``mpp`` µm/px. Memory: the whole image's maps at working resolution (use
    ``pipeline.segment_image`` for large images)."""
    from .engine import predict_maps, to_working
    from ..resample import resample_labels

    c = model.contract
    opt = options or InferenceOptions()
    if c.instances == "hook":
        inst, cls, prob = model.module.predict_instances(rgb, mpp)
        inst = np.asarray(inst)
        if inst.shape != rgb.shape[:2]:
            raise ValueError(f"{model.config.name}: predict_instances gave labels {inst.shape}, image is {rgb.shape[:2]}")
        return _sequential(inst, cls, prob)
    if c.instances != "maps":
        raise InputError(f"model {model.config.name!r} gives no nuclei of its own (contract: {c.instances!r})")
    work, s = to_working(rgb, mpp, model.config)
    maps = predict_maps(model, work, opt.tile, opt.overlap, opt.batch_size or 8, progress=opt.progress, tta=opt.tta)
    ins = instances_from_maps(maps, model.config.post)
    if s == 1.0:
        return ins
    lab = resample_labels(ins.inst, 1.0 / s, rgb.shape[:2])
    return _sequential(lab, ins.class_id, ins.class_prob)
