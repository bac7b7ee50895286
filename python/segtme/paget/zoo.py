"""The PAGET model families and presets, torch-free (as ``models.zoo`` for UperHoVer): the
``paget_segformer`` student (SegFormer with a MiT encoder, 14 outputs; ``paget_s`` / ``paget_h``
and their CPU-sized variants) and ``paget_uperhover`` (PAGET-H on the nucleus model's backbone,
``paget_h_shared``). The modules live in ``paget.model`` and are imported when a model is
built, so listing presets, looking a contract up (``is_paget``, ``paget_mode``,
``heads.own_instances``) and running a shipped model in ONNX Runtime import no torch.

Paper (section 3.5): SegFormer with MiT-B5, inputs 384x384 at 20x (~0.5 µm/px), pixel-wise
prediction of 13 TME components + background. PAGET-S = the semantic map; PAGET-H = the same
weights + a nucleus instance source, each nucleus taking the majority class of its pixels
(``segtme.paget.outputs``; run by ``segtme.paget.runner``).
"""

from __future__ import annotations

from typing import Any

from ..models.config import ModelConfig
from ..models.registry import ModelContract, register_family, register_preset
from .heads import NUC_HEAD, SHARED_SEM_STRIDE

#: the paper's input tile edge at 20x (working px) and working resolution
PAGET_TILE = 384
PAGET_MPP = 0.5


@register_family("paget_segformer", contract=ModelContract(outputs=("sem",), instances="none", product="paget",
                                                           taxonomy="paget13"))
def _build_paget_segformer(cfg: ModelConfig):
    from .model import PagetSegFormer

    return PagetSegFormer(cfg)


def _preset(name: str, variant: str, mode: str, doc: str) -> ModelConfig:
    extra: dict[str, Any] = {"variant": variant, "mode": mode, "description": doc}
    if mode == "panoptic":
        # instance source for PAGET-H: a SegTME model spec; "default" = the shipped UperHoVer
        extra["instance_source"] = "default"
    return register_preset(
        ModelConfig(
            name=name,
            arch="paget_segformer",
            backbone=f"mit_{variant}",
            heads={"sem": -1},
            taxonomy="paget13",
            mpp=PAGET_MPP,
            tile_size=PAGET_TILE,
            tile_overlap=64,
            pad_multiple=32,
            extra=extra,
        )
    )


#: PAGET-S (semantic): the paper's SegFormer MiT-B5 student, 384 px tiles at 0.5 µm/px.
PAGET_S = _preset("paget_s", "b5", "semantic", "PAGET-S: SegFormer MiT-B5, 14-class semantic map")
#: PAGET-H (panoptic): the same student + per-nucleus majority vote over instances.
PAGET_H = _preset("paget_h", "b5", "panoptic", "PAGET-H: PAGET-S + per-nucleus majority vote over instances")
#: CPU-sized variants (same code, MiT-B0 / MiT-B1 encoders)
PAGET_S_B0 = _preset("paget_s_b0", "b0", "semantic", "PAGET-S with a MiT-B0 encoder (CPU-sized)")
PAGET_S_B1 = _preset("paget_s_b1", "b1", "semantic", "PAGET-S with a MiT-B1 encoder (CPU-sized)")
PAGET_H_B0 = _preset("paget_h_b0", "b0", "panoptic", "PAGET-H with a MiT-B0 encoder (CPU-sized)")


@register_family("paget_uperhover", contract=ModelContract(outputs=("sem", "hv", NUC_HEAD), instances="maps",
                                                           product="paget", taxonomy="paget13", coarse_sem=True))
def _build_paget_uperhover(cfg: ModelConfig):
    from .model import PagetUperHoVer

    return PagetUperHoVer(cfg)


#: PAGET-H on the default model's backbone (resnet10t levels 0-3, heads 32, 0.5 µm/px, the
#: default's tiling and post-processing): TME head of width 32 on levels 1-3 (strides 4-16),
#: its 14-class map served at its own stride 4 (``sem_stride``: blended, soft-maxed and
#: arg-maxed on 2 µm blocks, not upsampled to every working px; training sees every px).
PAGET_H_SHARED = register_preset(
    ModelConfig(
        name="paget_h_shared",
        arch="paget_uperhover",
        backbone="resnet10t",
        out_indices=[0, 1, 2, 3],
        head_hidden=32,
        heads={"sem": -1, "hv": 2, NUC_HEAD: 5},
        taxonomy="paget13",
        mpp=PAGET_MPP,
        tile_size=512,
        tile_overlap=32,
        pad_multiple=16,
        sem_stride=SHARED_SEM_STRIDE,
        postprocess={"edge_threshold": 0.15},
        extra={"mode": "panoptic", "nucleus_taxonomy": "consep4", "tme_levels": [1, 2, 3],
               "tme_hidden": 32, "freeze_shared": True, "mitosis": "mitosis",
               "description": "PAGET-H on the default model's backbone: frozen nucleus model + one 14-class TME head"},
    )
)


def is_paget(cfg: ModelConfig) -> bool:
    """The family's contract says it makes the PAGET product."""
    from ..models.registry import contract

    return contract(cfg).product == "paget"


def paget_mode(cfg: ModelConfig) -> str:
    """"semantic" (PAGET-S) or "panoptic" (PAGET-H)."""
    return str(cfg.extra.get("mode", "semantic"))

