"""Resumable training across sessions: ONE state file per run; SIGTERM saves it; `segtme train
CONFIG --resume` continues exactly (interrupted + resumed == uninterrupted); a changed plan, a
missing state under --resume, or an existing state without --resume are clear errors."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from segtme.train.config import train_config_from_dict
from segtme.train.state import load_run_state, peek_run_state
from segtme.train.trainer import Trainer


def _cfg(shared_data: Path, out: Path, state: Path, **run) -> dict:
    names = sorted(p.stem for p in (shared_data / "monuseg-train" / "images").glob("*.png"))
    r = {"out_dir": str(out), "state_file": str(state), "max_steps": 14, "batch_size": 2, "eval_every": 1000,
         "save_every": 1, "log_every": 1, "num_workers": 1, "threads": 1, "progress": False, "seed": 5,
         "validate": False}
    r.update(run)
    return {
        "run": r,
        "model": {"preset": "uperhover_vit_tiny", "name": "tiny", "taxonomy": "consep4", "tile_size": 56, "tile_overlap": 8, "mpp": 0.5},
        "optim": {"lr": 2e-3, "schedule": "poly", "warmup_steps": 2, "poly_power": 0.9},
        "augment": {"p_scale": 0.5, "p_hed": 0.5, "p_pale": 0.5, "p_jpeg": 0.3, "p_blur": 0.3, "p_elastic": 0.3},
        "data": [
            {"name": "monuseg", "kind": "folder", "path": str(shared_data / "monuseg-train"), "default_mpp": 0.25,
             "exclude": names[2:], "val": [names[1]], "repeat": 3},
        ],
    }


def _to_toml(d: dict, path: Path) -> Path:
    """Minimal TOML writer for these configs (no extra dependency)."""

    def val(v):
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, (int, float)):
            return repr(v)
        if isinstance(v, str):
            return json.dumps(v)
        if isinstance(v, list):
            return "[" + ", ".join(val(x) for x in v) + "]"
        raise TypeError(v)

    lines = []
    for sec in ("run", "model", "optim", "augment"):
        lines.append(f"[{sec}]")
        lines += [f"{k} = {val(v)}" for k, v in d[sec].items()]
    for ds in d["data"]:
        lines.append("[[data]]")
        lines += [f"{k} = {val(v)}" for k, v in ds.items()]
    path.write_text("\n".join(lines) + "\n")
    return path


def _cli(*args: str, cwd: Path) -> subprocess.Popen:
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    return subprocess.Popen([sys.executable, "-m", "segtme.cli", "train", *args], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_sigterm_then_resume_equals_uninterrupted(shared_data, tmp_path):
    # uninterrupted reference, in process
    ref = _cfg(shared_data, tmp_path / "ref", tmp_path / "state" / "ref.safetensors")
    tr = Trainer(train_config_from_dict(ref), resume=False)
    tr.fit()
    w_ref = {k: v.clone() for k, v in tr.model.state_dict().items()}
    loss_ref = {int(r["step"]): float(r["loss"]) for r in tr.rows}

    state = tmp_path / "state" / "run.safetensors"
    cfg = _to_toml(_cfg(shared_data, tmp_path / "run", state), tmp_path / "run.toml")
    p = _cli(str(cfg), cwd=tmp_path)
    deadline = time.time() + 300
    while time.time() < deadline:
        try:
            st = peek_run_state(state)
        except Exception:
            st = None  # never half-written (atomic), but be tolerant of a racing rename
        if st and st["step"] >= 3:
            break
        if p.poll() is not None:
            pytest.fail(f"run ended before it could be interrupted: {p.communicate()}")
        time.sleep(0.05)
    p.send_signal(signal.SIGTERM)
    out, err = p.communicate(timeout=300)
    assert p.returncode == 143, (out, err)
    assert "--resume" in out
    stopped = peek_run_state(state)["step"]
    assert 3 <= stopped < 14
    # one file per run: nothing else accumulates beside it
    assert sorted(x.name for x in state.parent.iterdir()) == ["ref.safetensors", "run.safetensors"]

    # without --resume an existing state is refused (clear error, exit 2, no traceback)
    p2 = _cli(str(cfg), cwd=tmp_path)
    o2, e2 = p2.communicate(timeout=300)
    assert p2.returncode == 2 and e2.startswith("error: ") and "--resume" in e2 and "Traceback" not in e2
    assert peek_run_state(state)["step"] == stopped

    p3 = _cli(str(cfg), "--resume", cwd=tmp_path)
    o3, e3 = p3.communicate(timeout=600)
    assert p3.returncode == 0, (o3, e3)
    st = load_run_state(state)
    assert st.meta["step"] == 14
    for k, v in w_ref.items():
        torch.testing.assert_close(st.model[k], v, rtol=1e-4, atol=1e-6)
    rows = {int(r["step"]): float(r["loss"]) for r in st.meta["rows"]}
    for s in range(stopped + 1, 15):
        assert rows[s] == pytest.approx(loss_ref[s], rel=1e-5, abs=1e-6)


def test_resume_errors_and_plan_is_fixed(shared_data, tmp_path):
    state = tmp_path / "s.safetensors"
    d = _cfg(shared_data, tmp_path / "r", state, max_steps=3, num_workers=0)
    from segtme.errors import InputError

    with pytest.raises(InputError, match="no training state"):
        Trainer(train_config_from_dict(d), resume=True)
    tr = Trainer(train_config_from_dict(d), resume=False)
    tr.fit(stop_at_step=2)
    assert tr.val_ds is None  # validate = false: the held-out image is never scored
    changed = json.loads(json.dumps(d))
    changed["optim"]["lr"] = 1e-3
    with pytest.raises(InputError, match="optim.lr"):
        Trainer(train_config_from_dict(changed), resume=True)
    longer = json.loads(json.dumps(d))
    longer["run"]["max_steps"] = 30
    with pytest.raises(InputError, match="max_steps"):
        Trainer(train_config_from_dict(longer), resume=True)
    # machine knobs may change between sessions; init_weights is not read on resume
    other = json.loads(json.dumps(d))
    other["run"]["threads"] = 2
    other["model"]["init_weights"] = str(tmp_path / "gone.safetensors")
    t2 = Trainer(train_config_from_dict(other), resume=True)
    assert t2.step == 2
    t2.fit()
    assert peek_run_state(state)["step"] == 3
    # a finished run on a fresh machine (only the state file kept): --resume re-exports its model
    import shutil

    final = {k: v.clone() for k, v in t2.model.state_dict().items()}
    shutil.rmtree(tmp_path / "r")
    t3 = Trainer(train_config_from_dict(other), resume=True)
    res = t3.fit()
    assert res["step"] == 3 and res["best"][0]["json"] == "ckpt-step0000003.json"
    from segtme.models import load_model

    m = load_model(tmp_path / "r" / "checkpoints" / "ckpt-step0000003.json", device="cpu")
    for k, v in m.module.state_dict().items():
        assert torch.equal(v, final[k]), k
    # not a state file -> clear error
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not safetensors")
    d2 = json.loads(json.dumps(d))
    d2["run"]["state_file"] = str(bad)
    with pytest.raises(InputError, match="not a readable training state"):
        Trainer(train_config_from_dict(d2), resume=True)
