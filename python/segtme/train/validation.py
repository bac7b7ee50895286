"""Validation of a model on fixed, labelled crops during training (rank 0): loss, mIoU, and the
instance metrics of ``eval/metrics.py`` (PQ, AJI, Dice, ...) on instances from the product's
one maps -> nuclei step (``inference.maps.instances_from_maps``), as ``segtme eval`` uses.

Metrics: ``miou`` = mean IoU over all classes incl. background (as HF ``evaluate``'s mean_iou)
on class-labelled crops; if no crop has classes, the binary background/nucleus mIoU.
``fg_iou`` = nucleus-vs-background IoU on all crops (pixels of unknown class count as nucleus;
prediction = foreground mass > 0.5, the post-processing's rule). ``pq``/``aji``/``dice`` = mean
over crops with instance labels (padding excluded).
"""

from __future__ import annotations

from contextlib import nullcontext
from typing import Any, Callable

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from ..data.sample import FG_UNKNOWN, IGNORE

#: what ``validate_crops`` can report (``[run] metric`` must be one of these)
EVAL_METRICS = {"val_loss", "miou", "miou_nuclei", "fg_iou", "pq", "dq", "sq", "aji", "dice"}


def collate(batch: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    return {k: torch.stack([b[k] for b in batch]) for k in batch[0]}


@torch.no_grad()
def validate_crops(model: torch.nn.Module, dataset: Dataset, loss_fn: Callable, *, num_classes: int, batch_size: int,
                   postprocess: dict[str, Any], device: torch.device, autocast: Callable = nullcontext,
                   eval_instances: bool = True) -> dict[str, float]:
    """Metrics over every crop of ``dataset`` (a ``CropDataset`` with ``train=False``)."""
    from ..eval.metrics import instance_metrics, miou, nanmean, semantic_confusion
    from ..inference.maps import Maps, instances_from_maps
    from ..models.config import PostprocessParams

    params = PostprocessParams.from_mapping(postprocess)

    C = int(num_classes)
    was_training = model.training
    model.eval()
    conf = np.zeros((C, C), np.int64)
    conf_bin = np.zeros((2, 2), np.int64)
    n_cls = 0
    inst_rows: list[dict[str, float]] = []
    losses: list[float] = []
    dl = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=0, collate_fn=collate)
    try:
        for batch in dl:
            b = {k: v.to(device) for k, v in batch.items()}
            with autocast():
                out = model(b["image"])
            losses.append(float(loss_fn(out, b)["total"]))
            prob = torch.softmax(out["sem"].float(), 1).cpu().numpy()
            hv = out["hv"].float().cpu().numpy() if "hv" in out else None
            sem_t = batch["sem"].numpy()
            for i in range(prob.shape[0]):
                t = sem_t[i]
                valid = t != IGNORE
                pred = prob[i].argmax(0)
                tb = ((t > 0) & valid).astype(np.int64)
                # nucleus vs background by the same rule as post-processing (fg mass > 0.5),
                # not by arg-max (6-way arg-max can pick background while fg mass is > 0.5)
                pb = (prob[i][0] < 0.5).astype(np.int64)
                conf_bin += semantic_confusion(tb[valid][None], pb[valid][None], 2)
                if bool(batch["has_cls"][i]):
                    known = valid & (t != FG_UNKNOWN)
                    conf += semantic_confusion(t[known][None], pred[known][None], C)
                    n_cls += 1
                if hv is not None and eval_instances and bool(batch["has_inst"][i]):
                    pinst = instances_from_maps(Maps(prob[i], hv[i]), params).inst.copy()
                    pinst[~valid] = 0
                    inst_rows.append(instance_metrics(batch["inst"][i].numpy(), pinst).to_dict())
    finally:
        model.train(was_training)
    res: dict[str, float] = {"val_loss": float(np.mean(losses))}
    mb = miou(conf_bin, include_background=True)
    res["fg_iou"] = float(mb["IoU_1"])
    res["miou"] = float(miou(conf, include_background=True)["mIoU"]) if n_cls else float(mb["mIoU"])
    if n_cls:
        res["miou_nuclei"] = float(miou(conf)["mIoU"])
    if inst_rows:
        for k in ("pq", "dq", "sq", "aji", "dice"):
            res[k] = nanmean(r[k] for r in inst_rows)
    return res
