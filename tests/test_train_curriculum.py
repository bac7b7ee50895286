"""The curriculum at machine scale (train/curriculum.py): a given M1 (trained_model), pseudo-labels
on real H&E crops, stage 2 fine-tuned from M1 (init = "previous") with its ONE state file under
state_dir, and stopping after stage 2 (stages = 2); plus the repository's curriculum config."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from segtme.errors import InputError
from segtme.train.config import read_config_file, train_config_from_dict
from segtme.train.curriculum import run_curriculum, stage_train_dict
from segtme.train.state import load_run_state

REPO = Path(__file__).resolve().parents[1]


def _tiny_m1(tmp_path: Path) -> Path:
    from segtme.models.registry import create_model, presets
    from segtme.train.checkpoints import save_safetensors

    torch.manual_seed(0)
    cfg = presets()["uperhover_vit_tiny"].replace(name="tiny", taxonomy="consep4", tile_size=56, tile_overlap=8,
                                                  weights="m1.safetensors")
    save_safetensors(create_model(cfg).state_dict(), tmp_path / "m1.safetensors")
    cfg.to_json(tmp_path / "m1.json")
    return tmp_path / "m1.json"


def test_two_stage_curriculum_from_a_trained_m1(shared_data, tmp_path):
    crops = tmp_path / "unlabelled"
    crops.mkdir()
    for p in sorted((shared_data / "mitoses-amibr" / "patches").glob("*.png"))[:6]:
        Image.open(p).save(crops / p.name)
    m1 = _tiny_m1(tmp_path)
    names = sorted(p.stem for p in (shared_data / "monuseg-train" / "images").glob("*.png"))
    cfg = {
        "curriculum": {"out_dir": str(tmp_path / "cur"), "stages": 2, "state_dir": str(tmp_path / "state"),
                       "name": "cur", "tau_percentile": 70, "pseudo_batch_size": 3},
        "base": {"run": {"max_steps": 3, "batch_size": 2, "eval_every": 3, "num_workers": 0, "threads": 1,
                         "progress": False, "validate": False, "keep_best": 1},
                 "model": {"preset": "uperhover_vit_tiny", "name": "tiny", "taxonomy": "consep4", "tile_size": 56,
                           "tile_overlap": 8},
                 "optim": {"lr": 1e-3}},
        "stage1": {"trained_model": str(m1)},
        "stage2": {"init": "previous", "unlabelled": {"kind": "images", "path": str(crops), "mpp": 0.25},
                   "val_fraction": 0.0,
                   "data": [{"name": "monuseg", "kind": "folder", "path": str(shared_data / "monuseg-train"),
                             "default_mpp": 0.25, "exclude": names[1:], "repeat": 2}]},
    }
    out = run_curriculum(cfg)
    assert out["M1"] == str(m1) and "M3" not in out
    man = json.loads((tmp_path / "cur" / "pseudo2" / "manifest.json").read_text())
    assert 0 < len(man["accepted"]) < 6  # the entropy filter rejected some crops
    st = load_run_state(tmp_path / "state" / "cur_stage2.safetensors")
    assert st.meta["step"] == 3 and st.meta["init_source"] == f"init:{tmp_path / 'm1.safetensors'}"
    assert [d["kind"] for d in st.meta["config"]["data"]] == ["pseudo", "folder"]
    m2 = Path(out["M2"])
    assert m2.is_file() and (tmp_path / "cur" / "stage2" / "DONE.json").is_file()
    # rerun: everything is done, nothing retrained
    assert run_curriculum(cfg)["M2"] == out["M2"]


def test_curriculum_option_errors(tmp_path):
    with pytest.raises(InputError, match="stages"):
        run_curriculum({"curriculum": {"out_dir": str(tmp_path), "stages": 4}})
    with pytest.raises(InputError, match="unknown key"):
        run_curriculum({"curriculum": {"out_dir": str(tmp_path), "stage": 2}})
    with pytest.raises(InputError, match="no such file"):
        run_curriculum({"curriculum": {"out_dir": str(tmp_path)}, "stage1": {"trained_model": str(tmp_path / "x.json")}})


def test_repository_curriculum_config_is_ft3s_plus_pseudo_labels():
    """configs/curriculum_default.toml's stage 2 must be exactly the ft3s run plus pseudo-labels
    (the controlled comparison documented in docs/training.md)."""
    cfg = read_config_file(REPO / "configs" / "curriculum_default.toml")
    s2 = stage_train_dict(cfg, "stage2", Path("runs/curriculum_default/stage2"), Path("runs/curriculum_default/pseudo2"))
    ft = read_config_file(REPO / "configs" / "default_model_ft3s.toml")
    for sec in ("optim", "loss", "augment"):
        assert s2[sec] == ft[sec], sec
    skip = {"out_dir", "state_file"}
    assert {k: v for k, v in s2["run"].items() if k not in skip} == {k: v for k, v in ft["run"].items() if k not in skip}
    assert {k: v for k, v in s2["model"].items() if k != "init_weights"} == \
        {k: v for k, v in ft["model"].items() if k != "init_weights"}
    assert s2["data"][0]["kind"] == "pseudo" and s2["data"][1:] == ft["data"]
    assert s2["run"]["state_file"] == "training/state/curriculum_default_stage2.safetensors"
    train_config_from_dict(s2)  # valid
