"""Ship a trained PAGET student inside the package: one weights file + one config per name.

``ship_student(checkpoint_json, weights_dir)`` copies the checkpoint's weights to
``<weights_dir>/paget_b0.safetensors`` and writes ``paget_s.json`` / ``paget_h.json`` /
``paget_s_b0.json`` / ``paget_h_b0.json`` (semantic / panoptic mode, same weights), so
``load_model("paget_h")`` works with no ``--weights``. The configs carry the inference tiling,
the PAGET-H instance source (``default``) and mitosis teacher (``mitosis``), and ``extra``
provenance (training config, held-out images, teachers, unlearned classes, licence).
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any, Mapping

from ..models.config import ModelConfig
from .heads import SHARED_SEM_STRIDE

#: the teacher of every class the shipped student learned (configs/paget_distill_b0.toml)
TEACHERS: dict[str, str] = {
    "Background": "aggregation step 1: brighter than Otsu on the smoothed grey image (floor 0.85)",
    "Epithelium": "rule teacher: nuclear density around the default model's nuclei (rule_teachers.TissueDensityTeacher)",
    "Stroma": "aggregation step 2: the default tissue where no tissue teacher fires",
    "Red blood cell": "rule teacher: red colour (rule_teachers.RedCellColourTeacher)",
    "Epithelial cell": "shipped nucleus model `default` (CoNSeP epithelial, baseline) + step 4a (epithelial context)",
    "Fibroblast": "shipped nucleus model `default` (CoNSeP spindle-shaped -> Connective -> Fibroblast, step 4b)",
    "Lymphocyte": "shipped nucleus model `default` (CoNSeP inflammatory -> Leukocyte) refined by the rule teacher "
                  "for small round dark nuclei (rule_teachers.RoundDarkNucleusTeacher); other leukocytes unresolved",
    "Mitotic cell": "mitosis teacher `mitosis` (segtme.mitosis) on the default model's nuclei (step 5)",
}
#: classes with NO teacher here: never in the labels, so the student does not learn them
UNLEARNED: tuple[str, ...] = ("Smooth muscle", "Endothelial cell", "Plasma cell", "Myeloid cell", "Eosinophil",
                              "Neutrophil")

#: (shipped name, mode)
SHIPPED_NAMES = (("paget_s", "semantic"), ("paget_h", "panoptic"), ("paget_s_b0", "semantic"), ("paget_h_b0", "panoptic"))
WEIGHTS_FILE = "paget_b0.safetensors"


def ship_student(checkpoint_json: str | Path, weights_dir: str | Path, *, tile_size: int = 512, tile_overlap: int = 64,
                 extra: Mapping[str, Any] | None = None) -> list[Path]:
    """Write the shipped student (see the module doc); returns the written config paths."""
    ck = Path(checkpoint_json)
    cfg = ModelConfig.from_json(ck)
    src_w = ck.parent / (cfg.weights or (ck.stem + ".safetensors"))
    wd = Path(weights_dir)
    from ..export.atomic import atomic_write

    with atomic_write(wd / WEIGHTS_FILE) as tmp:
        shutil.copyfile(src_w, tmp)
    out = []
    for name, mode in SHIPPED_NAMES:
        ex = {k: v for k, v in cfg.extra.items() if k not in ("mode", "instance_source", "mitosis", "description")}
        ex.update({"teachers": dict(TEACHERS), "unlearned_classes": list(UNLEARNED),
                   "model_card": "PAGET_MODEL_CARD.md"})
        ex.update(dict(extra or {}))
        ex["mode"] = mode
        ex["description"] = ("PAGET-S" if mode == "semantic" else "PAGET-H") + \
            " (shipped): SegFormer MiT-B0 student distilled in SegTME; see PAGET_MODEL_CARD.md"
        if mode == "panoptic":
            ex["instance_source"] = "default"
            ex["mitosis"] = "mitosis"
        c = cfg.replace(name=name, weights=WEIGHTS_FILE, tile_size=int(tile_size), tile_overlap=int(tile_overlap), extra=ex)
        p = wd / f"{name}.json"
        c.to_json(p)
        out.append(p)
    return out


#: PAGET-H on the default model's backbone (configs/paget_h_shared.toml, ``paget.model.PagetUperHoVer``)
SHARED_NAME = "paget_h_shared"
SHARED_WEIGHTS_FILE = "paget_h_shared.safetensors"


def ship_shared(checkpoint_json: str | Path, weights_dir: str | Path, *, as_paget_h: bool,
                extra: Mapping[str, Any] | None = None) -> list[Path]:
    """Ship a trained ``paget_uperhover`` model: its weights as ``paget_h_shared.safetensors`` and
    the config ``paget_h_shared.json`` (PAGET-H, the default model's tiling 512 / 32 working px so
    its nuclei are the default model's, mitosis teacher ``mitosis``, no separate instance
    source); with ``as_paget_h`` also ``paget_h.json`` (the product's PAGET-H) on the same
    weights. ``paget_s`` / ``paget_*_b0`` stay the MiT-B0 student. Returns the written configs."""
    ck = Path(checkpoint_json)
    cfg = ModelConfig.from_json(ck)
    if cfg.arch != "paget_uperhover":
        raise ValueError(f"{ck}: expected a paget_uperhover checkpoint, got arch {cfg.arch!r}")
    src_w = ck.parent / (cfg.weights or (ck.stem + ".safetensors"))
    wd = Path(weights_dir)
    from ..export.atomic import atomic_write

    with atomic_write(wd / SHARED_WEIGHTS_FILE) as tmp:
        shutil.copyfile(src_w, tmp)
    ex = {k: v for k, v in cfg.extra.items() if k not in ("instance_source", "description")}
    ex.update({"teachers": dict(TEACHERS), "unlearned_classes": list(UNLEARNED), "model_card": "PAGET_MODEL_CARD.md",
               "mode": "panoptic", "mitosis": "mitosis",
               "description": "PAGET-H (shipped): the default nucleus model (frozen) + a 14-class TME head on its "
                              "backbone, one forward pass; see PAGET_MODEL_CARD.md"})
    ex.update(dict(extra or {}))
    out = []
    for name in (SHARED_NAME, "paget_h") if as_paget_h else (SHARED_NAME,):
        c = cfg.replace(name=name, weights=SHARED_WEIGHTS_FILE, tile_size=512, tile_overlap=32,
                        sem_stride=SHARED_SEM_STRIDE, extra=dict(ex))
        p = wd / f"{name}.json"
        c.to_json(p)
        out.append(p)
    return out
