"""Model maps -> nuclei: the one post-processing step of every path (CLI / pipeline, server tiles,
PAGET, evaluation, the trainer's validation).

* ``Maps``: a model's stitched outputs at working resolution (what ``engine`` returns).
* ``instances_from_maps(maps, params)``: instance labels + class per instance, working px:
  HV watershed when the model has an HV head, else the connected components of the foreground
  (both drop objects below ``params.min_object_px``); majority class per instance.
* ``nuclei_from_maps(maps, params, taxonomy, ...)``: the same, measured (outlines, areas,
  haematoxylin OD, ...) and placed in input px: ``x_in = x_work / scale + offset``.

No torch here: a server worker, an evaluation script or a PAGET job post-processes maps without
loading a model.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from ..models.config import PostprocessParams
from ..taxonomy import Taxonomy
from .nuclei import NucleiTable, build_nuclei_table

__all__ = ["Maps", "Instances", "PostprocessParams", "instances_from_maps", "nuclei_from_maps"]


@dataclass
class Maps:
    """Stitched model outputs at working resolution.

    prob: (C, H, W) float32 softmax over the model's classes (channel 0 = background).
    hv: (2, H, W) float32 horizontal/vertical maps (≈[-1, 1]), or None for models without HV.
    aux: the softmax of every further class head of the model, by output name, each (C_k, H, W)
    float32 (e.g. the nucleus head "nuc" of a PAGET model with its own instances,
    ``segtme.paget.model``); empty for the usual models.
    """

    prob: np.ndarray
    hv: np.ndarray | None
    aux: dict[str, np.ndarray] = field(default_factory=dict)

    @property
    def shape(self) -> tuple[int, int]:
        return int(self.prob.shape[1]), int(self.prob.shape[2])


@dataclass
class Instances:
    """Instances at working resolution: ``inst`` (H, W) int32 labels 0 = background, 1..N;
    ``class_id`` (N,) int32 in 1..C-1; ``class_prob`` (N,) float32 (mean softmax of that class)."""

    inst: np.ndarray
    class_id: np.ndarray
    class_prob: np.ndarray

    def __len__(self) -> int:
        return int(self.class_id.shape[0])


def instances_from_maps(maps: Maps, params: PostprocessParams) -> Instances:
    """Instances and classes from ``maps`` (working px) with ``params``; see the module doc."""
    from .postprocess import classify_instances, foreground_components, hv_watershed, relabel_sequential

    if not isinstance(params, PostprocessParams):
        raise TypeError(f"params must be PostprocessParams, got {type(params).__name__} (use cfg.post)")
    prob = maps.prob
    if prob.ndim != 3 or prob.shape[0] < 2:
        raise ValueError(f"maps.prob must be (C >= 2, H, W), got {prob.shape}")
    fg_prob = 1.0 - prob[0]
    if maps.hv is not None:
        inst = hv_watershed(fg_prob, maps.hv, params)
    else:
        inst = relabel_sequential(foreground_components(fg_prob, params))
    cls, cprob = classify_instances(inst, prob)
    return Instances(inst, cls, cprob)


def nuclei_from_maps(
    maps: Maps,
    params: PostprocessParams,
    taxonomy: Taxonomy,
    *,
    work_mpp: float,
    rgb: np.ndarray | None = None,
    scale: float = 1.0,
    offset_xy: Sequence[float] = (0.0, 0.0),
    input_mpp: float | None = None,
) -> NucleiTable:
    """Measured nuclei of one working-resolution tile / chunk / image, in input px.

    maps: at ``work_mpp`` µm/px; rgb: (h, w, 3) uint8 at the same resolution (haematoxylin OD;
    None: zeros). scale: s = working px per input px; offset_xy: input-px position of the maps'
    pixel corner (0, 0). input_mpp: µm/px of the input coordinates (None: µm columns omitted).
    Areas scale by 1/s², lengths by 1/s; ``table.mpp = input_mpp``.
    """
    ins = instances_from_maps(maps, params)
    table = build_nuclei_table(ins.inst, taxonomy, class_id=ins.class_id, class_prob=ins.class_prob, rgb=rgb,
                               mpp=work_mpp)
    out = table.translated(float(offset_xy[0]), float(offset_xy[1]), scale=1.0 / float(scale), mpp=input_mpp)
    out.mpp = input_mpp
    return out
