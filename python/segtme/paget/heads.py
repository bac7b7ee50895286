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


#: ``extra["nucleus_class_vote"]`` of a PAGET-H config: "free" (default: every nucleus takes the
#: majority nucleus-level class of its pixels in the 14-class map, paper section 3.5) or "guided"
#: (the instance source's own class decides the major category — CoNSeP epithelial / inflammatory /
#: spindle-shaped -> epithelial cell / leukocyte subtypes / connective cells — and the 14-class map
#: only the subtype within it; ``paget.taxonomy.guided_leaves``)
VOTES = ("free", "guided")


def guided_vote(cfg: ModelConfig) -> bool:
    """``cfg`` asks PAGET-H for the guided vote (``VOTES``); an unknown value is a config error."""
    v = str((cfg.extra or {}).get("nucleus_class_vote", "free"))
    if v not in VOTES:
        raise ValueError(f"model {cfg.name!r}: extra.nucleus_class_vote must be one of {VOTES}, got {v!r}")
    return v == "guided"
