"""Distillation from a frozen teacher (``[teacher]``; issue #17.3): the KD loss (0 for equal
outputs, positive otherwise, gradients only to the student), a 3-step run on real crops
(labelled MoNuSeg + unlabelled mitoses-amibr, KD-only) with a tiny random teacher of the same
contract lowers the KD loss and leaves the teacher untouched; resume refuses another teacher;
a teacher at another MPP is a one-line error; the shipped plan config parses."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from segtme.data.specs import split_refs
from segtme.errors import InputError
from segtme.models.registry import create_model
from segtme.train.checkpoints import save_safetensors
from segtme.train.config import load_train_config, train_config_from_dict
from segtme.train.distill_loss import KDOptions, distill_terms, kd_hv, kd_semantic
from segtme.train.modelinit import build_model_config
from segtme.train.state import load_run_state, plan_of
from segtme.train.trainer import Trainer
from segtme.train.validation import collate

REPO = Path(__file__).resolve().parents[1]
TILE = 64


def _model_section(name: str, **over) -> dict:
    m = {"preset": "uperhover_resnet18", "name": name, "backbone": "resnet10t", "out_indices": [0, 1, 2, 3],
         "head_hidden": 8, "taxonomy": "consep4", "mpp": 0.5, "tile_size": TILE, "tile_overlap": 8, "pad_multiple": 16}
    m.update(over)
    return m


def _save_teacher(directory: Path, seed: int, **over) -> Path:
    """A tiny random teacher of the student's contract, written as a model .json + .safetensors."""
    directory.mkdir(parents=True, exist_ok=True)
    cfg = build_model_config(_model_section("teacher", head_hidden=16, **over))
    torch.manual_seed(seed)
    module = create_model(cfg.replace(weights=None))
    save_safetensors(module.state_dict(), directory / "teacher.safetensors")
    js = directory / "teacher.json"
    cfg.replace(weights="teacher.safetensors").to_json(js)
    return js


def _cfg(shared_data: Path, out: Path, teacher: Path, **teacher_over) -> dict:
    mon = sorted(p.stem for p in (shared_data / "monuseg-train" / "images").glob("*.png"))
    mit = sorted(p.stem for p in (shared_data / "mitoses-amibr" / "patches").glob("*.png"))
    assert len(mon) >= 1 and len(mit) >= 2
    t = {"model": str(teacher), "weight_sem": 1.0, "weight_hv": 1.0, "temperature": 2.0}
    t.update(teacher_over)
    off = {k: 0.0 for k in ("p_colour_jitter", "p_hls", "p_hflip", "p_vflip")}
    return {
        "run": {"out_dir": str(out), "state_file": str(out / "state.safetensors"), "max_steps": 3, "batch_size": 3,
                "eval_every": 1000, "save_every": 1, "log_every": 1, "num_workers": 0, "threads": 1,
                "progress": False, "seed": 3, "validate": False},
        "model": _model_section("student"),
        "optim": {"lr": 3e-3, "schedule": "constant", "weight_decay": 0.0},
        "augment": off,
        "teacher": t,
        "data": [
            {"name": "monuseg", "kind": "folder", "path": str(shared_data / "monuseg-train"), "default_mpp": 0.25,
             "classes": False, "exclude": mon[1:], "repeat": 1},
            # 128 px at 0.25 µm/px = one 64 px working tile: no labels, KD only
            {"name": "mitoses", "kind": "images", "path": str(shared_data / "mitoses-amibr" / "patches"), "mpp": 0.25,
             "exclude": mit[2:], "repeat": 1},
        ],
    }


# --------------------------------------------------------------------------- the loss (pure)
def test_kd_loss_is_zero_for_equal_outputs_and_positive_otherwise():
    g = torch.Generator().manual_seed(0)
    s = {"sem": torch.randn(2, 5, 16, 16, generator=g), "hv": torch.randn(2, 2, 16, 16, generator=g).tanh()}
    t = {"sem": s["sem"] * 3.0 + torch.randn(2, 5, 16, 16, generator=g), "hv": torch.randn(2, 2, 16, 16, generator=g).tanh()}
    for opts in (KDOptions(), KDOptions(temperature=4.0, hv_mask="all")):
        same = distill_terms(s, {k: v.clone() for k, v in s.items()}, opts)
        assert float(same["kd_sem"]) == pytest.approx(0.0, abs=1e-7)
        assert float(same["kd_hv"]) == 0.0 and float(same["kd"]) == pytest.approx(0.0, abs=1e-7)
        diff = distill_terms(s, t, opts)
        assert float(diff["kd_sem"]) > 1e-3 and float(diff["kd"]) > float(diff["kd_sem"]) * opts.weight_sem
    # T² scaling: for large T the soft loss tends to T²·KL ≈ ||Δlogits − mean||²/(2C) (finite, not → 0)
    assert float(kd_semantic(s["sem"], t["sem"], 8.0)) > 0.5 * float(kd_semantic(s["sem"], t["sem"], 4.0))
    # crop weights: a crop with weight 0 contributes nothing
    w = torch.tensor([1.0, 0.0])
    mixed = {"sem": torch.cat([s["sem"][:1], t["sem"][1:]]), "hv": torch.cat([s["hv"][:1], t["hv"][1:]])}
    assert float(distill_terms(s, mixed, KDOptions(hv_mask="all"), torch.tensor([0.0, 1.0]))["kd"]) > 0
    assert float(distill_terms(s, mixed, KDOptions(hv_mask="all"), w)["kd"]) == pytest.approx(0.0, abs=1e-7)
    assert float(kd_hv(s["hv"], t["hv"], torch.zeros(2, 16, 16))) == 0.0  # empty mask: 0, not NaN
    with pytest.raises(ValueError, match="differ"):
        kd_semantic(s["sem"], t["sem"][:, :4])


def test_kd_gradients_reach_only_the_student():
    g = torch.Generator().manual_seed(1)
    s_sem = torch.randn(2, 5, 8, 8, generator=g, requires_grad=True)
    s_hv = torch.randn(2, 2, 8, 8, generator=g, requires_grad=True)
    t_sem = torch.randn(2, 5, 8, 8, generator=g, requires_grad=True)  # even a teacher tensor that tracks grads
    t_hv = torch.randn(2, 2, 8, 8, generator=g, requires_grad=True)
    out = distill_terms({"sem": s_sem, "hv": s_hv}, {"sem": t_sem, "hv": t_hv}, KDOptions(fg_threshold=0.0))
    out["kd"].backward()
    assert s_sem.grad is not None and s_sem.grad.abs().sum() > 0
    assert s_hv.grad is not None and s_hv.grad.abs().sum() > 0
    assert t_sem.grad is None and t_hv.grad is None


# --------------------------------------------------------------------------- a real run
@pytest.fixture(scope="module")
def distilled(shared_data, tmp_path_factory):
    """One 3-step distillation run; KD loss on a fixed batch of its crops before and after."""
    tmp = tmp_path_factory.mktemp("distill")
    teacher = _save_teacher(tmp / "teacherA", seed=11)
    tr = Trainer(train_config_from_dict(_cfg(shared_data, tmp / "run", teacher)), resume=False)
    assert tr.teacher is not None and len(tr.train_ds) == 3
    fixed = collate([tr.train_ds[(i, 0)] for i in range(len(tr.train_ds))])

    def kd_now() -> float:
        tr.model.train()  # the training-mode forward that the steps optimise
        with torch.no_grad():
            return float(distill_terms(tr.model(fixed["image"]), tr.teacher(fixed["image"]), tr.kd_opts)["kd"])

    t_before = {k: v.clone() for k, v in tr.teacher.module.state_dict().items()}
    s_before = {k: v.clone() for k, v in tr.model.state_dict().items()}
    kd0 = kd_now()
    summary = tr.fit()
    kd3 = kd_now()
    return {"tmp": tmp, "trainer": tr, "teacher": teacher, "fixed": fixed, "kd0": kd0, "kd3": kd3,
            "summary": summary, "t_before": t_before, "s_before": s_before, "shared": shared_data}


def test_three_step_distillation_lowers_the_kd_loss(distilled):
    tr, fixed = distilled["trainer"], distilled["fixed"]
    assert distilled["summary"]["step"] == 3
    # the crops: one labelled MoNuSeg crop, two unlabelled (all-ignore labels, KD only) mitoses crops
    assert fixed["labelled"].tolist().count(True) == 1 and fixed["labelled"].tolist().count(False) == 2
    unl = ~fixed["labelled"]
    assert bool((fixed["sem"][unl] == 255).all()) and not bool(fixed["has_cls"][unl].any())
    assert distilled["kd3"] < distilled["kd0"], (distilled["kd0"], distilled["kd3"])
    print("KD loss on the fixed batch before / after 3 steps:", distilled["kd0"], distilled["kd3"])
    rows = tr.rows
    assert [int(r["step"]) for r in rows] == [1, 2, 3]
    for r in rows:  # the KD terms are logged beside the ground-truth terms and are part of the total
        assert r["loss_kd"] > 0 and r["loss_kd_sem"] > 0 and r["loss_sem"] > 0
        assert r["loss"] == pytest.approx(r["loss_sem"] + r["loss_hv"] + r["loss_kd"], rel=1e-5)


def test_on_labelled_false_distils_unlabelled_crops_only(distilled):
    tr, fixed = distilled["trainer"], distilled["fixed"]
    tr.model.train()
    with torch.no_grad():
        out, t_out = tr.model(fixed["image"]), tr.teacher(fixed["image"])
        gt = tr.loss_fn(out, fixed)
        unl = (~fixed["labelled"]).float()
        want_unl = distill_terms(out, t_out, tr.kd_opts, unl)["kd"]
        want_all = distill_terms(out, t_out, tr.kd_opts)["kd"]
        on = tr._add_distillation(out, fixed, gt)
        tr.cfg.teacher.on_labelled = False
        try:
            off = tr._add_distillation(out, fixed, gt)
        finally:
            tr.cfg.teacher.on_labelled = True
    torch.testing.assert_close(on["kd"], want_all)
    torch.testing.assert_close(off["kd"], want_unl)
    assert float(off["kd"]) != pytest.approx(float(on["kd"]))
    torch.testing.assert_close(off["total"], gt["total"] + want_unl)


def test_teacher_is_frozen_and_only_the_student_trains(distilled):
    tr = distilled["trainer"]
    for k, v in tr.teacher.module.state_dict().items():
        torch.testing.assert_close(v, distilled["t_before"][k], rtol=0, atol=0)  # BN stats too: eval mode
    assert all(not p.requires_grad and p.grad is None for p in tr.teacher.module.parameters())
    assert not tr.teacher.module.training
    moved = [k for k, v in tr.model.state_dict().items() if v.is_floating_point()
             and not torch.equal(v, distilled["s_before"][k])]
    assert len(moved) > 10
    teacher_ids = {id(p) for p in tr.teacher.module.parameters()}
    assert not any(id(p) in teacher_ids for g in tr.optimizer.param_groups for p in g["params"])


def test_state_records_the_teacher_and_resume_refuses_another(distilled):
    tr, tmp = distilled["trainer"], distilled["tmp"]
    st = load_run_state(tr.state_path)
    assert st.meta["teacher"]["sha256"] == tr.teacher.sha256 and len(tr.teacher.sha256) == 64
    assert not any(k.startswith("model.") and "teacher" in k for k in st.model)  # the teacher is not in the state
    # the same weights at another path (e.g. a shipped copy): resumes
    moved = tmp / "teacher_moved"
    shutil.copytree(distilled["teacher"].parent, moved)
    again = Trainer(train_config_from_dict(_cfg(distilled["shared"], tmp / "run", moved / "teacher.json")), resume=True)
    assert again.step == 3 and again.teacher.sha256 == tr.teacher.sha256
    # other weights: refused, one line, naming both hashes
    other = _save_teacher(tmp / "teacherB", seed=12)
    with pytest.raises(InputError) as e:
        Trainer(train_config_from_dict(_cfg(distilled["shared"], tmp / "run", other)), resume=True)
    msg = str(e.value)
    assert "\n" not in msg and tr.teacher.sha256 in msg and "same teacher" in msg
    # other KD parameters are a plan change
    with pytest.raises(InputError, match="teacher.temperature"):
        Trainer(train_config_from_dict(_cfg(distilled["shared"], tmp / "run", distilled["teacher"], temperature=1.0)),
                resume=True)


def test_interrupted_and_resumed_distillation_equals_the_uninterrupted_run(distilled):
    tmp, shared = distilled["tmp"], distilled["shared"]
    cfg = _cfg(shared, tmp / "resumed", distilled["teacher"])
    a = Trainer(train_config_from_dict(cfg), resume=False)
    a.fit(stop_at_step=1)
    b = Trainer(train_config_from_dict(cfg), resume=True)
    assert b.step == 1
    b.fit()
    ref = dict(distilled["trainer"].model.named_parameters())
    for k, v in b.model.named_parameters():
        torch.testing.assert_close(v, ref[k], rtol=1e-4, atol=1e-6)
    want = {int(r["step"]): r["loss_kd"] for r in distilled["trainer"].rows}
    assert {int(r["step"]): pytest.approx(r["loss_kd"], rel=1e-5) for r in b.rows} == want


def test_teacher_at_another_mpp_is_a_one_line_error(shared_data, tmp_path):
    teacher = _save_teacher(tmp_path / "t025", seed=1, mpp=0.25)
    with pytest.raises(InputError) as e:
        Trainer(train_config_from_dict(_cfg(shared_data, tmp_path / "run", teacher)), resume=False)
    msg = str(e.value)
    assert "\n" not in msg and "0.25" in msg and "0.5" in msg and "MPP" in msg
    other_tax = _save_teacher(tmp_path / "tpan", seed=1, taxonomy="pannuke6")
    with pytest.raises(InputError, match="taxonom") as e:
        Trainer(train_config_from_dict(_cfg(shared_data, tmp_path / "run", other_tax)), resume=False)
    assert "\n" not in str(e.value)
    with pytest.raises(InputError, match="not found"):
        Trainer(train_config_from_dict(_cfg(shared_data, tmp_path / "run", tmp_path / "missing.json")), resume=False)


def test_unlabelled_data_without_a_teacher_is_refused(shared_data, tmp_path):
    d = _cfg(shared_data, tmp_path / "run", tmp_path / "unused.json")
    d.pop("teacher")
    with pytest.raises(InputError, match="no labels"):
        Trainer(train_config_from_dict(d), resume=False)


# --------------------------------------------------------------------------- configs
def test_plans_without_a_teacher_are_unchanged_and_the_distill_plan_parses(shared_data):
    acc = load_train_config(REPO / "configs" / "accurate_model.toml")
    assert acc.teacher is None and "teacher" not in acc.to_dict() and "teacher" not in plan_of(acc.to_dict())
    cfg = load_train_config(REPO / "configs" / "default_from_accurate.toml")
    assert cfg.teacher is not None and cfg.teacher.model.endswith(".json")
    assert "model" not in plan_of(cfg.to_dict())["teacher"]  # identified by its SHA-256, not its path
    assert cfg.run.validate is False and cfg.run.state_file == "training/state/default_from_accurate.safetensors"
    kinds = {ds.name: ds.kind for ds in cfg.data}
    assert kinds.get("mitoses_amibr") == "images"
    assert build_model_config(cfg.model).mpp == build_model_config(acc.model).mpp
    # the unlabelled KD-only corpus reaches the trainer with its MPP, for training only
    for ds in cfg.data:  # the config's ../shared/data through the tests' one data path
        assert ds.path.startswith("../shared/data/"), ds.path
        ds.path = str(shared_data / ds.path[len("../shared/data/"):])
    train, _, val = split_refs(cfg.data, cfg.run.seed)
    n_files = len(list((shared_data / "mitoses-amibr" / "patches").glob("*.png")))
    mit = [r for r in train if r.dataset == "mitoses_amibr"]
    assert n_files > 0 and len(mit) == n_files
    assert all(r.mpp == 0.25 and not (r.has_instances or r.has_classes) for r in mit)
    assert not any(r.dataset == "mitoses_amibr" for r in val)
    with pytest.raises(InputError, match="teacher"):
        train_config_from_dict({"model": {"preset": "uperhover_resnet18"}, "teacher": {"weight_sem": 1.0}})
