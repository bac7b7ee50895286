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

__all__ = ["Maps", "Instances", "PostprocessParams", "class_map", "instances_from_maps", "nuclei_from_maps"]


@dataclass
class Maps:
    """Stitched model outputs at working resolution.

    prob: (C, H, W) float32 softmax over the model's classes (channel 0 = background).
    hv: (2, H, W) float32 horizontal/vertical maps (≈[-1, 1]), or None for models without HV.
    aux: the softmax of every further class head of the model, by output name, each (C_k, H, W)
    float32 (e.g. the nucleus head "nuc" of a PAGET model with its own instances,
    ``segtme.paget.model``); empty for the usual models.
    sem_stride: the grid of ``prob`` (the model's ``io.sem_stride``): k > 1 means ``prob`` is
    (C, ceil(H/k), ceil(W/k)), one value per k x k block of working px (hv and aux stay (., H, W)).
    """

    prob: np.ndarray
    hv: np.ndarray | None
    aux: dict[str, np.ndarray] = field(default_factory=dict)
    sem_stride: int = 1

    @property
    def shape(self) -> tuple[int, int]:
        """(H, W) working px."""
        if self.sem_stride == 1:
            return int(self.prob.shape[1]), int(self.prob.shape[2])
        full = self.hv if self.hv is not None else next(iter(self.aux.values()), None)
        if full is None:
            raise ValueError("a coarse class map alone does not define the working grid")
        return int(full.shape[1]), int(full.shape[2])


def class_map(prob: np.ndarray, shape: Sequence[int], stride: int = 1) -> np.ndarray:
    """The (h, w) uint8 arg-max class of every working px from a class map ``prob`` (C, ceil(h/
    stride), ceil(w/stride)) softmax (``Maps.sem_stride``).

    stride 1: the arg-max. stride k > 1: the arg-max of the bilinear upsampling (half-pixel
    centres) of ``log(prob)`` — which equals the arg-max of the upsampled logits (``log softmax``
    differs from the logits by one value per px, the same for every class), i.e. what the model
    gives when it upsamples its logits itself, so a head run at its native stride yields the
    same classes without the 14-channel work at every px. Exact and cheap: where the 2 x 2 coarse
    px a working px interpolates from share their arg-max c, c dominates every class at each of
    them and so at any convex combination: that px takes c; only the other px (class borders)
    are interpolated."""
    h, w = int(shape[0]), int(shape[1])
    st = int(stride)
    want = (-(-h // st), -(-w // st))
    if prob.ndim != 3 or tuple(prob.shape[1:]) != want:
        raise ValueError(f"class map has shape {tuple(prob.shape)}, expected (C, {want[0]}, {want[1]}) for a "
                         f"{h}x{w} px image at sem_stride {st}")
    if st == 1:
        return prob.argmax(axis=0).astype(np.uint8)
    # interpolation cells: cell (a, b) of the edge-padded coarse map (padding = clamping) spans the
    # padded coarse px centres a..a+1, b..b+1 and holds a k x k block of working px: working px y
    # sits at coarse coordinate (y + 0.5)/k - 0.5, so cell row a holds y = k*(a - 1) + off + r,
    # r = 0..k-1, at fractions f[r] = (off + r + 0.5)/k - 0.5 (0.125 .. 0.875 for k = 4)
    lp = np.log(np.maximum(prob, np.float32(1e-30)), dtype=np.float32)
    lp = np.pad(lp, ((0, 0), (1, 1), (1, 1)), mode="edge")
    a = lp.argmax(axis=0).astype(np.uint8)
    c00, c01, c10, c11 = a[:-1, :-1], a[:-1, 1:], a[1:, :-1], a[1:, 1:]
    ny, nx = c00.shape
    off = -(-(st - 1) // 2)  # ceil((k - 1) / 2)
    f = ((off + np.arange(st) + 0.5) / st - 0.5).astype(np.float32)  # in [0, 1)
    out = np.repeat(np.repeat(c00, st, axis=0), st, axis=1)
    ca, cb = np.nonzero((c00 != c01) | (c00 != c10) | (c00 != c11))
    if ca.size:
        # the k x k px of each such cell from its 4 corners' log p in one matrix product: (k², 4)
        # bilinear weights @ (4, n x C) corners (on a PAGET map about half the cells; 1152² px
        # chunk of paget_h_shared: 0.04 s against 0.14-0.17 s for the broadcast (C, n, k, k) sums)
        lpt = np.ascontiguousarray(lp.transpose(1, 2, 0))  # (ny + 1, nx + 1, C)
        corners = np.stack([lpt[ca, cb], lpt[ca, cb + 1], lpt[ca + 1, cb], lpt[ca + 1, cb + 1]])  # (4, n, C)
        fy, fx = np.repeat(f, st), np.tile(f, st)  # px (r, c) of the cell, row-major
        wts = np.stack([(1 - fy) * (1 - fx), (1 - fy) * fx, fy * (1 - fx), fy * fx], 1).astype(np.float32)
        v = (wts @ corners.reshape(4, -1)).reshape(st * st, ca.size, -1)  # (k², n, C)
        out.reshape(ny, st, nx, st)[ca, :, cb, :] = v.argmax(axis=2).astype(np.uint8).T.reshape(-1, st, st)
    o = st - off  # row / column of working px 0 in ``out``
    return np.ascontiguousarray(out[o:o + h, o:o + w])


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
    if maps.sem_stride != 1:
        raise ValueError("instances need a class map at every working px (sem_stride 1)")
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
