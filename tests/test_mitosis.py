"""Mitosis teacher: crops, model contract, marking nuclei, config errors, and the shipped model's
held-out figures on real data (AMi-Br held-out slides vs held-out negative images)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from segtme.errors import InputError
from segtme.mitosis.crops import centred_windows, inside, iter_centred_windows


def test_centred_windows_take_the_pixels_around_each_centre():
    img = np.zeros((50, 60, 3), np.uint8)
    img[20, 30] = 255  # pixel (r=20, c=30): centre at (30.5, 20.5) in corner convention
    w = centred_windows(img, np.array([[30.5, 20.5], [5.0, 5.0]]), 9)
    assert w.shape == (2, 9, 9, 3)
    assert w[0, 4, 4, 0] == 255 and w[0].sum() == 3 * 255  # the bright pixel is the centre
    assert inside(img.shape, np.array([[30.5, 20.5], [2.0, 2.0]]), 9).tolist() == [True, False]


def test_windows_in_batches_are_the_per_pixel_gather_of_the_padded_image():
    """``iter_centred_windows`` (block copies out of a sliding-window view) = the per-pixel
    gather it replaced, for windows inside, across and beyond the border, in any batch size and
    both layouts."""
    rng = np.random.default_rng(3)
    img = rng.integers(0, 256, (70, 90, 3), dtype=np.uint8)
    xy = np.concatenate([rng.uniform(-5, 95, (40, 2)), [[0.0, 0.0], [90.0, 70.0], [45.3, 0.7]]])
    size = 32
    p = np.pad(img, ((size, size), (size, size), (0, 0)), mode="reflect")
    x0 = np.clip(np.rint(xy[:, 0] - size / 2).astype(int) + size, 0, p.shape[1] - size)
    y0 = np.clip(np.rint(xy[:, 1] - size / 2).astype(int) + size, 0, p.shape[0] - size)
    ar = np.arange(size)
    ref = p[(y0[:, None] + ar)[:, :, None], (x0[:, None] + ar)[:, None, :]]  # (N, S, S, 3)
    assert np.array_equal(centred_windows(img, xy, size), ref)
    for batch in (1, 7, 64):
        got = np.concatenate(list(iter_centred_windows(img, xy, size, batch)))
        assert got.shape == (len(xy), 3, size, size) and np.array_equal(got, ref.transpose(0, 3, 1, 2))
    assert centred_windows(img, np.zeros((0, 2)), size).shape == (0, size, size, 3)


def _lm(threshold=0.5):
    from segtme.models.registry import load_model, presets

    cfg = presets()["mitosis"]
    cfg = cfg.replace(extra={**cfg.extra, "threshold": threshold})
    return load_model(cfg, "cpu", allow_random=True)


def test_model_outputs_and_stain_invariance():
    lm = _lm()
    x = torch.rand(4, 3, 32, 32) * 0.8 + 0.1
    out = lm.module(x)
    assert set(out) == {"mitosis", "atypical"} and out["mitosis"].shape == (4,)
    # a global stain change (intensity x 0.7 per channel = + constant optical density) changes the
    # per-crop-normalised input only through the +1 in the OD formula: outputs stay close
    y = ((x * 255 + 1) * torch.tensor([0.7, 0.8, 0.9]).view(1, 3, 1, 1) - 1) / 255
    out2 = lm.module(y)
    assert torch.allclose(out["mitosis"], out2["mitosis"], atol=0.05)


def test_mark_mitoses_sets_columns_and_relabels_paget13_only_above_threshold():
    from segtme.inference.nuclei import build_nuclei_table
    from segtme.mitosis.detect import mark_mitoses
    from segtme.taxonomy import get_taxonomy

    rgb = np.full((64, 64, 3), 200, np.uint8)
    inst = np.zeros((64, 64), np.int32)
    inst[10:16, 10:16] = 1
    inst[40:46, 40:46] = 2
    tax = get_taxonomy("paget13")
    epi = tax.names.index("Epithelial cell")
    for thr, expect in ((0.0, 2), (1.01, 0)):
        t = build_nuclei_table(inst, tax, class_id=np.array([epi, epi]), rgb=rgb, mpp=0.5)
        mark_mitoses(t, rgb, 0.5, _lm(thr))
        assert t.extra["mitosis_prob"].shape == (2,) and np.all((0 <= t.extra["mitosis_prob"]) & (t.extra["mitosis_prob"] <= 1))
        assert int((np.array(t.class_names) == "Mitotic cell").sum()) == expect
        assert t.meta["mitosis"]["n_mitotic"] == expect
    # a taxonomy without "Mitotic cell": columns only, classes untouched
    t = build_nuclei_table(inst, get_taxonomy("consep4"), class_id=np.array([3, 3]), rgb=rgb, mpp=0.5)
    mark_mitoses(t, rgb, 0.5, _lm(0.0))
    assert t.class_id.tolist() == [3, 3] and t.meta["mitosis"]["n_mitotic"] == 2


def test_classify_nuclei_runs_the_engines_inference_copy_with_the_eager_modules_results():
    """classify_nuclei forwards through inference.engine.model_backend (the ONNX graph, or the torch copy:
    BatchNorm folded, channels_last, the model's precision): fp32 equals the eager training module on
    the same crops; bf16 (the torch copy) stays close."""
    from segtme.mitosis.crops import centred_windows
    from segtme.mitosis.detect import classify_nuclei
    from segtme.models.registry import load_model

    lm = load_model("mitosis", "cpu")  # the shipped teacher: trained BatchNorm statistics to fold
    rng = np.random.default_rng(0)
    rgb = rng.integers(40, 230, (96, 128, 3), dtype=np.uint8)
    xy = rng.uniform(0, 128, (300, 2)) * [1.0, 0.75]
    with torch.no_grad():
        t = torch.from_numpy(centred_windows(rgb, xy, 32)).permute(0, 3, 1, 2).float() / 255.0
        out = lm.module.eval()(t)
    ref_m, ref_a = torch.sigmoid(out["mitosis"]).numpy(), torch.sigmoid(out["atypical"]).numpy()
    lm.precision = "fp32"
    pm, pa = classify_nuclei(lm, rgb, 0.5, xy, batch=128)
    assert pm.dtype == np.float32 and pm.shape == (300,)
    np.testing.assert_allclose(pm, ref_m, atol=1e-5)
    np.testing.assert_allclose(pa, ref_a, atol=1e-5)
    lm.precision = "bf16"
    pb, _ = classify_nuclei(lm, rgb, 0.5, xy, batch=128)
    assert np.abs(pb - ref_m).max() < 0.1 and np.mean((pb >= 0.5) == (ref_m >= 0.5)) > 0.97


def test_core_marker_classifies_only_the_nuclei_a_stitcher_can_keep():
    """paget.runner.core_marker: nuclei with a centroid within BORDER_TOL_WORK + 1 px of the core get
    the same probabilities as when every nucleus is classified; the others keep probability 0 and
    their class; a caller's own marker without ``candidates`` is left as it is."""
    from segtme.inference.nuclei import NucleiTable
    from segtme.paget.runner import core_marker, mitosis_marker
    from segtme.taxonomy import PAGET13

    rng = np.random.default_rng(5)
    rgb = rng.integers(40, 230, (200, 200, 3), dtype=np.uint8)
    inst = np.zeros((200, 200), np.int32)
    cx = [10, 47, 52, 100, 150, 155, 190]
    for k, c in enumerate(cx, 1):
        inst[96:104, c - 3:c + 3] = k
    from segtme.inference.nuclei import build_nuclei_table

    cid = np.full(len(cx), PAGET13.names.index("Lymphocyte"), np.int32)
    full = build_nuclei_table(inst, PAGET13, class_id=cid, mpp=0.5)
    part = build_nuclei_table(inst, PAGET13, class_id=cid, mpp=0.5)
    mark = mitosis_marker("mitosis", "cpu", threshold=0.0)  # every classified nucleus becomes mitotic
    mark(full, rgb, 0.5)
    core_marker(mark, (50.0, 0.0, 150.0, 200.0))(part, rgb, 0.5)
    x = part.centroid[:, 0]
    inside = (x >= 47.0) & (x < 153.0)  # core +- (2 + 1) px
    assert inside.tolist() == [False, False, True, True, True, False, False]
    np.testing.assert_allclose(part.extra["mitosis_prob"][inside], full.extra["mitosis_prob"][inside])
    assert (part.extra["mitosis_prob"][~inside] == 0).all()
    assert (np.asarray(part.class_names)[inside] == "Mitotic cell").all()
    assert (np.asarray(part.class_names)[~inside] == "Lymphocyte").all()
    assert isinstance(part, NucleiTable) and part.meta["mitosis"]["n_candidates"] == 3

    def own(table, rgb, mpp):
        pass

    assert core_marker(own, (0, 0, 1, 1)) is own


def test_config_errors_are_one_line_input_errors():
    from segtme.mitosis.train import parse_config

    with pytest.raises(InputError, match="task"):
        parse_config({"run": {}})
    with pytest.raises(InputError, match="unknown key"):
        parse_config({"task": "mitosis", "run": {"max_stepz": 3}})
    with pytest.raises(InputError, match="max_steps"):
        parse_config({"task": "mitosis", "run": {"max_steps": 0}})


def test_augment_batch_shapes_and_range():
    from segtme.mitosis.train import MitosisAugment, augment_batch

    x = torch.rand(8, 3, 48, 48)
    y = augment_batch(x, 32, MitosisAugment(), torch.Generator().manual_seed(0))
    assert y.shape == (8, 3, 32, 32) and float(y.min()) >= 0 and float(y.max()) <= 1


def test_metrics_helpers():
    from segtme.mitosis.train import binary_counts, roc_auc

    s = np.array([0.9, 0.8, 0.3, 0.2])
    y = np.array([1, 0, 1, 0])
    assert roc_auc(s, y) == pytest.approx(0.75)
    c = binary_counts(s >= 0.5, y)
    assert (c["tp"], c["fp"], c["fn"], c["tn"]) == (1, 1, 1, 1) and c["recall"] == 0.5


def test_shipped_mitosis_teacher_held_out_figures(shared_data, tmp_path):
    """The shipped teacher on held-out AMi-Br slides vs held-out negative images (never trained on):
    recomputed here, must match the figures stored in its config within rounding and beat chance."""
    from segtme.mitosis.data import build_crop_set
    from segtme.mitosis.train import evaluate
    from segtme.models.registry import load_model, shipped_models

    assert "mitosis" in shipped_models(), "the mitosis teacher is not shipped"
    lm = load_model("mitosis", "cpu")
    cs = build_crop_set(shared_data, 48, float(lm.config.mpp), cache=tmp_path / "crops.npz")
    held = set(lm.config.extra["held_out"]["amibr_slides"])
    assert held == set(cs.group[(cs.mitotic == 1) & cs.held_out])  # same slide split as training
    m = evaluate(lm.module, cs, int(lm.config.tile_size), float(lm.config.extra["threshold"]))
    assert m["n_pos"] > 100 and m["n_neg"] > 1000
    stored = lm.config.extra["metrics"]
    assert m["recall"] == pytest.approx(stored["recall"], abs=0.02)
    assert m["precision"] == pytest.approx(stored["precision"], abs=0.02)
    assert m["auc"] > 0.9


def test_the_mitosis_teacher_runs_at_the_paget_models_precision(monkeypatch):
    """``--precision fp32`` (or bf16) reaches the mitosis teacher PAGET-H runs, in the CLI's and
    the server's one resolution (``paget.runner.resolve_mitosis``): on a CPU with native bf16 it
    used to run at ``auto`` (bf16) beside an fp32 student."""
    import segtme.mitosis.detect as detect
    from segtme.models.registry import load_model
    from segtme.paget.runner import resolve_mitosis

    seen = []
    real = detect.load_mitosis_model

    def spy(spec, device="cpu", precision="auto"):
        seen.append(precision)
        return real(spec, device, precision)

    monkeypatch.setattr(detect, "load_mitosis_model", spy)
    for precision in ("fp32", "bf16"):
        lm = load_model("paget_h_shared", "cpu", precision=precision)
        assert resolve_mitosis(lm.config, "config", "cpu", lm.precision) is not None
    assert seen == ["fp32", "bf16"]
