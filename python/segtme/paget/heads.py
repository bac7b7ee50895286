"""What a PAGET model's outputs mean for the runners (no torch here: the server and the CLI ask
before any model code is imported).

A PAGET model outputs the 14-class map "sem". A ``paget_uperhover`` model (``paget.model``)
also outputs its nucleus class head ``NUC_HEAD`` and "hv" — the nucleus model's own heads — so
PAGET-H takes its nuclei from the same forward pass instead of from a separate instance source.
"""

from __future__ import annotations

from ..models.config import ModelConfig

#: the nucleus class head of a PAGET model that makes its own nuclei
NUC_HEAD = "nuc"

#: ``io.sem_stride`` of ``paget_h_shared``: its TME head's finest level (backbone levels 1-3) has
#: stride 4, so its 14-class map is used on that grid (blended, soft-maxed, arg-maxed per 2 µm
#: block at 0.5 µm/px) instead of being upsampled to every working px first
SHARED_SEM_STRIDE = 4


def own_instances(cfg: ModelConfig) -> bool:
    """``cfg`` is a PAGET model that makes its own nuclei (its contract: product "paget",
    instances "maps", a ``NUC_HEAD`` output), so PAGET-H needs no separate instance source."""
    from ..models.registry import contract

    c = contract(cfg)
    return c.product == "paget" and c.instances == "maps" and NUC_HEAD in c.outputs
