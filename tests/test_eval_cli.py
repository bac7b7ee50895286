"""`segtme eval` and the evaluation harness: real labelled images, classical baseline and a
(tiny, random) learned model through the same predict-instances interface."""

from __future__ import annotations

import csv
import json
import math

import numpy as np

from segtme.cli import main
from segtme.eval.evaluate import (
    EvalItem,
    evaluate,
    labels_to_input,
    markdown_table,
    predict_instances,
)
from segtme.models import ModelConfig, load_model


def test_labels_to_input_pixel_centres():
    work = np.array([[1, 2], [3, 4]], np.int32)
    # s = 0.5: input pixel i takes working pixel floor((i + 0.5) * 0.5)
    up = labels_to_input(work, 0.5, (4, 4))
    np.testing.assert_array_equal(up, [[1, 1, 2, 2], [1, 1, 2, 2], [3, 3, 4, 4], [3, 3, 4, 4]])
    assert labels_to_input(work, 1.0, (2, 2)) is work


def test_cli_folder_with_overlays(shared_data, tmp_path, capsys):
    out = tmp_path / "ev"
    rc = main(["eval", "--model", "classical", "--data", str(shared_data / "consep-train"),
               "--names", "train_1", "--out", str(out), "--overlays"])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "| classical |" in printed and "### consep-train" in printed
    rows = list(csv.DictReader((out / "per_image.csv").open()))
    assert len(rows) == 1 and rows[0]["image"] == "consep-train/train_1"
    assert 0 < float(rows[0]["pq"]) < 1 and 0 < float(rows[0]["aji"]) < 1
    summary = json.loads((out / "summary.json").read_text())["summary"]
    assert summary["classical"]["consep-train"]["n_images"] == 1
    assert (out / "summary.md").read_text().startswith("# segtme eval")
    pngs = list((out / "overlays").glob("*.png"))
    assert len(pngs) == 1


def test_cli_config_split_is_the_held_out_list(shared_data, tmp_path, capsys):
    from pathlib import Path

    cfg = Path(__file__).resolve().parents[1] / "configs" / "default_model.toml"
    rc = main(["eval", "--model", "classical", "--data", str(cfg), "--split", "val", "--limit", "1",
               "--out", str(tmp_path / "o")])
    assert rc == 0
    rows = list(csv.DictReader((tmp_path / "o" / "per_image.csv").open()))
    # the first held-out image of the config (MoNuSeg, listed first)
    assert rows[0]["image"] == "monuseg/TCGA-21-5786-01Z-00-DX1"


def test_cli_errors(tmp_path, capsys):
    assert main(["eval", "--model", "classical", "--data", str(tmp_path / "missing")]) == 2
    assert "error:" in capsys.readouterr().err
    assert main(["eval", "--model", "classical", "--data", str(tmp_path), "--overlays"]) == 2


class _Ref:
    """Minimal SampleRef stand-in around an in-memory CoNSeP crop."""

    def __init__(self, rgb, inst, sem):
        self.name, self.dataset, self.mpp, self.has_classes = "consep/crop", "consep", 0.25, True
        self._d = (rgb, inst, sem)

    def load(self):
        return self._d


def test_learned_model_and_baseline_share_the_interface(shared_data):
    """A tiny random UperHoVer (consep4) and the classical baseline on the same real crop with
    classes: both go through predict_instances, class metrics appear for the classed model only."""
    from segtme.data.readers import read_folder

    ref = [r for r in read_folder(shared_data / "consep-train") if r.name.endswith("/train_2")][0]
    rgb, inst, sem = ref.load()
    rgb, inst, sem = rgb[:192, :192], inst[:192, :192], sem[:192, :192]
    cfg = ModelConfig(name="tiny", backbone="resnet10t", out_indices=[0, 1], head_hidden=8, taxonomy="consep4",
                      mpp=0.5, tile_size=64, tile_overlap=16, pad_multiple=4)
    tiny = load_model(cfg, "cpu", allow_random=True)
    classical = load_model("classical", "cpu")
    pred = predict_instances(tiny, rgb, 0.25)
    assert pred.inst.shape == inst.shape
    assert set(pred.classes.values()) <= {1, 2, 3, 4}
    item = EvalItem("consep/crop", "consep", 0.25, _Ref(rgb, inst, sem), "consep4")
    res = evaluate({"tiny": tiny, "classical": classical}, [item])
    s_tiny = res.summary["tiny"]["consep"]
    s_cl = res.summary["classical"]["consep"]
    for k in ("F_d", "F_Epithelial (incl. tumour)", "MCC_Inflammatory", "bPQ", "mPQ", "mIoU"):
        assert k in s_tiny
        assert math.isnan(s_tiny[k]) or -1.0 <= s_tiny[k] <= 1.0
    assert "F_Inflammatory" not in s_cl and 0 <= s_cl["pq"] <= 1
    table = markdown_table(res)
    assert "| tiny |" in table and "| classical |" in table


def test_perturbations_change_pixels_not_labels_and_are_fixed(shared_data):
    from segtme.data.readers import read_folder
    from segtme.eval.evaluate import items_from_refs
    from segtme.eval.perturb import parse_perturbations, perturbed_items, resample_through

    refs = read_folder(shared_data / "monuseg-train", default_mpp=0.25)[:1]
    clean = items_from_refs(refs)
    pert = perturbed_items(clean, parse_perturbations("all"))
    assert [p.perturb for p in pert] == ["resample20x", "jpeg70", "stain"]
    rgb0, gt0, _ = clean[0].load()
    for p in pert:
        rgb, gt, _ = p.load()
        assert rgb.shape == rgb0.shape and rgb.dtype == np.uint8 and np.array_equal(gt, gt0)
        assert 0 < np.abs(rgb.astype(int) - rgb0).mean() < 25, p.perturb
        assert np.array_equal(rgb, p.load()[0])  # the same pixels every time (stain: seeded by name)
        assert p.group == f"{clean[0].dataset}@{p.perturb}"
    # already at 20x: nothing to lose
    assert resample_through(rgb0, 0.5) is rgb0
    import pytest

    from segtme.errors import InputError

    with pytest.raises(InputError, match="blur9"):
        parse_perturbations("jpeg70,blur9")


def test_cli_perturb_reports_drop_next_to_clean(shared_data, tmp_path, capsys):
    out = tmp_path / "evp"
    rc = main(["eval", "--model", "classical", "--data", str(shared_data / "consep-train"), "--names", "train_1",
               "--perturb", "jpeg70,stain", "--out", str(out), "--no-baseline"])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "### robustness" in printed and "consep-train@jpeg70" in printed
    s = json.loads((out / "summary.json").read_text())
    rob = s["robustness"]["classical"]
    clean_pq = s["summary"]["classical"]["consep-train"]["pq"]
    assert s["summary"]["classical"]["ALL"]["n_images"] == 1  # ALL = clean images only
    for g in ("consep-train@jpeg70", "consep-train@stain", "ALL@jpeg70"):
        assert rob[g]["clean"] == clean_pq
        assert math.isclose(rob[g]["drop"], rob[g]["clean"] - rob[g]["perturbed"], abs_tol=1e-12)
    pert_pq = s["summary"]["classical"]["consep-train@stain"]["pq"]
    assert rob["consep-train@stain"]["perturbed"] == pert_pq
    rows = list(csv.DictReader((out / "per_image.csv").open()))
    assert sorted(r["perturb"] for r in rows) == ["jpeg70", "none", "stain"]
    assert main(["eval", "--model", "classical", "--data", str(shared_data / "consep-train"), "--perturb", "nope"]) == 2
