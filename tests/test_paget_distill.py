"""`segtme distill` on real H&E: aggregated labels from the project's own rule teachers + ground-truth
instances (CoNSeP, HoverNet's role), then a few steps of the shared trainer; the loss falls."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from PIL import Image

from segtme.paget import taxonomy as pt
from segtme.paget.distill import distill, parse_distill_section, training_config
from segtme.errors import InputError


def config(data_root, tmp_path, **run):
    return {
        "distill": {
            "labels_dir": str(tmp_path / "labels"),
            "method": "hierarchical",
            "crop": 192,
            "images": {"path": str(data_root / "consep-train" / "images"), "glob": "train_1*.png", "mpp": 0.25, "limit": 2},
            "instances": {"kind": "stored", "root": str(data_root / "consep-train" / "labels"),
                          "inst_pattern": "{key}_inst.png", "classes_pattern": "{key}_class.json",
                          "classes_taxonomy": "consep4"},
            "teachers": [{"kind": "rule", "rule": "tissue_density"},
                         {"kind": "rule", "rule": "leukocyte_round_dark"},
                         {"kind": "rule", "rule": "rbc_colour"}],
            "aggregation": {"background_min_gray": 0.85},
        },
        "model": {"preset": "paget_s_b0", "tile_size": 96, "tile_overlap": 16},
        "run": {"out_dir": str(tmp_path / "run"), "device": "cpu", "batch_size": 2, "max_steps": 10, "eval_every": 1000,
                "log_every": 1, "num_workers": 0, "progress": False, **run},
        # a smoke run: constant, larger LR than the paper's 6e-5 so that 10 steps show learning
        "optim": {"lr": 1e-3, "schedule": "constant", "warmup_steps": 0},
        "augment": {"p_colour_jitter": 0.0, "p_hls": 0.0},
    }


def test_paper_defaults_and_config_errors(tmp_path):
    d = training_config({"distill": {}, "model": {"preset": "paget_s_b0"}}, tmp_path)
    assert d["optim"]["lr"] == 6e-5 and d["optim"]["warmup_steps"] == 1500 and d["optim"]["schedule"] == "poly"
    assert d["loss"]["name"] == "ce" and d["run"]["batch_size"] == 4
    assert d["data"] == [{"kind": "pseudo", "path": str(tmp_path), "name": "paget"}]
    with pytest.raises(InputError, match="unknown key"):
        parse_distill_section({"labels_dir": "x", "images": {}, "instances": {}, "teachrs": []})
    with pytest.raises(InputError, match="method"):
        parse_distill_section({"labels_dir": "x", "images": {}, "instances": {}, "method": "vote"})


def test_distill_builds_labels_and_the_loss_falls(shared_data, tmp_path):
    cfg = config(shared_data, tmp_path)
    res = distill(cfg)
    labels = tmp_path / "labels"
    man = json.loads((labels / "manifest.json").read_text())
    assert [a["key"] for a in man["accepted"]] == ["train_1", "train_10"]
    vals: set[int] = set()
    for key in ("train_1", "train_10"):
        lab = np.asarray(Image.open(labels / f"{key}_sem_map.png"))
        assert lab.shape == (192, 192)
        vals |= set(np.unique(lab).tolist())
    assert vals <= set(range(14)) | {pt.IGNORE_INDEX}
    # tissue, epithelial cells (CoNSeP epithelial baseline / rule 4a), fibroblasts (rule 4b) and
    # leukocyte subtypes from the rule teachers are all present in the real labels
    assert {pt.STROMA, pt.EPITHELIAL_CELL, pt.FIBROBLAST, pt.LYMPHOCYTE} <= vals
    st = man["stats"]["train_1"]
    assert st["n_nuclei"] > 100 and st["nuclei_per_class"]["Fibroblast"] > 0

    with open(tmp_path / "run" / "metrics.csv") as f:
        losses = [float(r["loss"]) for r in csv.DictReader(f) if r.get("loss")]
    assert len(losses) == 10 and res["train"]["step"] == 10
    assert np.mean(losses[-3:]) < np.mean(losses[:3]) - 0.1
    ckpt = json.loads((tmp_path / "run" / "checkpoints" / "best.json").read_text())["best"]
    from segtme.models import load_model

    lm = load_model(str(tmp_path / "run" / "checkpoints" / ckpt), "cpu")  # the trained student loads by path
    assert lm.config.arch == "paget_segformer" and lm.config.tax.name == "paget13"

    # labels are reused on a second run (overwrite = false) and the CLI runs the labels-only path
    before = (labels / "train_1_sem_map.png").stat().st_mtime_ns
    from segtme.cli import main

    p = tmp_path / "cfg.json"
    p.write_text(json.dumps(cfg))
    assert main(["distill", str(p), "--labels-only"]) == 0
    assert (labels / "train_1_sem_map.png").stat().st_mtime_ns == before


def test_class_weights_from_counts_inverse_sqrt_normalised_and_capped():
    from segtme.paget.distill import ClassWeightOptions, class_weights_from_counts

    counts = np.array([50.0, 0.0, 40.0, 9.9, 0.1])
    w = class_weights_from_counts(counts, ClassWeightOptions(power=0.5, cap=1e9))
    f = counts / counts.sum()
    assert w[1] == 1.0  # a class without pixels: weight 1 (never a target)
    assert (f * w).sum() == pytest.approx(1.0)  # mean weight per pixel is 1
    assert w[0] / w[2] == pytest.approx(np.sqrt(40 / 50)) and w[3] / w[4] == pytest.approx(np.sqrt(0.1 / 9.9))
    capped = class_weights_from_counts(counts, ClassWeightOptions(power=0.5, cap=3.0))
    assert capped.max() == 3.0 and capped[0] == pytest.approx(w[0])
    with pytest.raises(InputError):
        class_weights_from_counts(np.zeros(3))


def test_auto_class_weights_from_the_training_labels_only(tmp_path):
    """``[loss] class_weights = "auto"``: counted on the training images' label maps only (the
    held-out image's classes do not count), in working px (MPP²), 255 not counted; the weighted CE
    accepts the list and gives the unweighted loss for weights of 1."""
    import torch

    from segtme.paget.distill import training_config
    from segtme.train.losses import build_loss

    lab = tmp_path / "labels"
    lab.mkdir()
    a = np.full((4, 4), 2, np.uint8)
    a[0, :2] = 5  # 2 fibroblast px, 14 stroma px
    a[3, 3] = 255
    b = np.full((4, 4), 1, np.uint8)  # held out: epithelium only
    Image.fromarray(a).save(lab / "a_sem_map.png")
    Image.fromarray(b).save(lab / "b_sem_map.png")
    img = tmp_path / "imgs"
    img.mkdir()
    for k in ("a", "b"):
        Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(img / f"{k}.png")
    (lab / "manifest.json").write_text(json.dumps({"accepted": [
        {"key": "a", "image": str(img / "a.png"), "sem_map": "a_sem_map.png", "mpp": 0.25},
        {"key": "b", "image": str(img / "b.png"), "sem_map": "b_sem_map.png", "mpp": 0.25}]}))
    cfg = {"distill": {"images": {"path": str(img), "mpp": 0.25, "val": ["b"]}},
           "model": {"preset": "paget_s_b0"},
           "loss": {"name": "ce", "class_weights": "auto", "class_weight_power": 0.5, "class_weight_cap": 10.0}}
    d = training_config(cfg, lab)
    w = d["loss"]["class_weights"]
    assert len(w) == 14 and set(d["loss"]) == {"name", "class_weights"}
    assert w[1] == 1.0  # epithelium only in the held-out image: not counted
    f_str, f_fib = 13 / 15, 2 / 15  # 255 not counted
    norm = np.sqrt(f_str) + np.sqrt(f_fib)
    assert w[2] == pytest.approx(1 / np.sqrt(f_str) / norm, abs=1e-4)
    assert w[5] == pytest.approx(1 / np.sqrt(f_fib) / norm, abs=1e-4)
    saved = json.loads((lab / "class_weights.json").read_text())
    assert saved["weights"] == w and saved["n_train_images"] == 1

    loss = build_loss(**d["loss"])
    logits = torch.randn(1, 14, 4, 4)
    tgt = torch.from_numpy(a.astype(np.int64))[None]
    plain = build_loss("ce")({"sem": logits}, {"sem": tgt})["total"]
    ones = build_loss("ce", class_weights=[1.0] * 14)({"sem": logits}, {"sem": tgt})["total"]
    assert float(ones) == pytest.approx(float(plain))
    assert float(loss({"sem": logits}, {"sem": tgt})["total"]) != pytest.approx(float(plain))
    with pytest.raises(ValueError, match="class_weights"):
        build_loss("ce", class_weights="auto")
