"""PAGET-S and PAGET-H products: the public entry points the CLI, the gRPC server and QuPath use.

The implementation has three parts, one job each:

* ``segtme.paget.outputs``  — pure outputs from the student's softmax (nuclei by connected
  components / majority vote over instances, ``PagetResult``, ``paget_result_from_prob``);
* ``segtme.paget.runner``   — running the student and the instance source (``analyze_paget``,
  ``predict_semantic``, ``instances_from_maps``, ``source_instances``);
* ``segtme.paget.geometry`` — label resampling, tissue polygons / annotations and their merging.

This module re-exports them under their historical names (server, pipeline, tests).
Units: see the three modules (working px at ``cfg.mpp``; outputs in input px + ``offset_xy``).
"""

from __future__ import annotations

from .geometry import (
    fill_tissue_under_nuclei,
    mask_to_geometry,
    merge_tissue_features,
    nucleus_tissue_at,
    resize_labels,
    tissue_annotations,
    tissue_area_by_class,
)
from .outputs import (
    PagetResult,
    attach_tissue_context,
    majority_nucleus_class,
    nucleus_components,
    paget_result_from_prob,
)
from .runner import (
    _resolve_instance_source,
    analyze_paget,
    instance_map_from_model,
    instances_from_maps,
    instances_to_grid,
    predict_semantic,
    source_instances,
)

__all__ = [
    "PagetResult", "analyze_paget", "attach_tissue_context", "fill_tissue_under_nuclei", "instance_map_from_model",
    "instances_from_maps", "instances_to_grid", "majority_nucleus_class", "mask_to_geometry", "merge_tissue_features",
    "nucleus_components", "nucleus_tissue_at", "paget_result_from_prob", "predict_semantic", "resize_labels",
    "source_instances", "tissue_annotations", "tissue_area_by_class", "_resolve_instance_source",
]
