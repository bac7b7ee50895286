"""The mitosis classifier's family and preset, torch-free: ``mitosis_cnn`` (module:
``mitosis.model.MitosisNet``, imported when a model is built) and the shipped teacher's preset
``mitosis``. Listing presets, looking the contract up (``is_mitosis``) and running the shipped
teacher in ONNX Runtime import no torch.

Input: ``(B, 3, S, S)`` RGB in [0, 1] (the module standardises each crop's optical density
itself; ``S`` = ``cfg.tile_size`` working px at ``cfg.mpp`` µm/px: 32 px at 0.5 µm/px = a 16 µm
field). Output contract: ``{"mitosis": (B,) logit (mitotic figure vs not), "atypical": (B,)
logit (atypical vs normal mitosis; meaningful only for mitotic figures)}``.
"""

from __future__ import annotations

from ..models.config import ModelConfig
from ..models.registry import ModelContract, register_family, register_preset
from .heads import OUTPUTS


@register_family("mitosis_cnn", contract=ModelContract(outputs=OUTPUTS, instances="none", dense=False))
def _build_mitosis(cfg: ModelConfig):
    from .model import MitosisNet

    return MitosisNet(cfg)


#: the mitosis teacher: 32 px crops at 0.5 µm/px (16 µm field) centred on a nucleus
MITOSIS = register_preset(
    ModelConfig(
        name="mitosis",
        arch="mitosis_cnn",
        backbone="none",
        heads={"mitosis": 1, "atypical": 1},
        taxonomy="nucleus1",
        mpp=0.5,
        tile_size=32,
        tile_overlap=0,
        pad_multiple=1,
        extra={"widths": [16, 32, 48, 48], "dropout": 0.2, "threshold": 0.5,
               "description": "Mitosis teacher: mitotic figure vs non-mitotic nucleus (+ atypical vs normal)"},
    )
)


def is_mitosis(cfg: ModelConfig) -> bool:
    """The family's contract is the mitosis classifier's (per-crop "mitosis" / "atypical" logits)."""
    from ..models.registry import contract

    c = contract(cfg)
    return not c.dense and tuple(c.outputs) == OUTPUTS
