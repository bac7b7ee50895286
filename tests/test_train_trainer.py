"""The trainer on real images from ../shared/data with a tiny model (CPU)."""

from __future__ import annotations

import csv
import json
import os
import socket

import numpy as np
import pytest
import torch

from segtme.models import load_model
from segtme.train.config import load_train_config, train_config_from_dict
from segtme.train.trainer import Trainer, lr_factor


def _cfg(shared_data, out, **run):
    r = {"out_dir": str(out), "max_steps": 6, "batch_size": 4, "eval_every": 100, "log_every": 1, "num_workers": 0,
         "threads": 1, "max_val_items": 4, "val_crops_per_image": 2, "progress": False, "seed": 3}
    r.update(run)
    return {
        "run": r,
        "model": {"preset": "uperhover_vit_tiny", "name": "tiny", "taxonomy": "consep4", "tile_size": 84, "mpp": 0.5},
        "optim": {"lr": 3e-3},
        "data": [
            {"name": "consep", "kind": "folder", "path": str(shared_data / "consep-train"), "split": "train",
             "exclude": [f"train_{i}" for i in range(4, 28)], "val": ["train_3"], "repeat": 4},
            {"name": "monuseg", "kind": "folder", "path": str(shared_data / "monuseg-train"), "default_mpp": 0.25,
             "exclude": [], "val_fraction": 0.0, "repeat": 2, "use": "train"},
        ],
    }


def _restrict_monuseg(d, shared_data, n=2):
    names = sorted(p.stem for p in (shared_data / "monuseg-train" / "images").glob("*.png"))
    d["data"][1]["exclude"] = names[n:]
    return d


def test_lr_schedules():
    assert lr_factor(0, 10, "linear") == 1.0 and lr_factor(5, 10, "linear") == 0.5
    assert lr_factor(9, 10, "linear") == pytest.approx(0.1)
    # PAGET-style: warm-up then polynomial decay
    assert lr_factor(0, 100, "poly", warmup=10, power=1.0) == pytest.approx(0.1)
    assert lr_factor(9, 100, "poly", warmup=10) == 1.0
    assert lr_factor(55, 100, "poly", warmup=10, power=2.0) == pytest.approx(0.25)


def test_tiny_model_loss_falls_and_checkpoints_load(shared_data, tmp_path):
    d = _restrict_monuseg(_cfg(shared_data, tmp_path / "run", max_steps=25, eval_every=25), shared_data)
    d["augment"] = {"p_colour_jitter": 0.0, "p_hls": 0.0}
    tr = Trainer(train_config_from_dict(d))
    before = tr.evaluate()
    res = tr.fit()
    after = tr.evaluate()
    assert res["step"] == 25
    assert after["val_loss"] < 0.9 * before["val_loss"], (before, after)
    rows = list(csv.DictReader(open(tmp_path / "run" / "metrics.csv")))
    losses = [float(r["loss"]) for r in rows]
    assert len(losses) == 25 and np.mean(losses[-5:]) < np.mean(losses[:5])
    assert {"miou", "fg_iou", "pq", "aji", "val_loss"} <= set(rows[-1])
    best = json.loads((tmp_path / "run" / "checkpoints" / "best.json").read_text())
    m = load_model(tmp_path / "run" / "checkpoints" / best["best"], device="cpu")
    assert m.config.taxonomy == "consep4" and m.config.tile_size == 84
    sd = tr.model.state_dict()
    assert all(torch.equal(v, sd[k]) for k, v in m.module.state_dict().items())


def test_keep_best_two_and_resume_reproduces_next_step(shared_data, tmp_path):
    base = _restrict_monuseg(_cfg(shared_data, tmp_path / "a", max_steps=5, eval_every=2, grad_accum=2), shared_data)
    tr = Trainer(train_config_from_dict(base))
    tr.fit()
    full = {int(r["step"]): r for r in tr.rows}
    ck = sorted(p.name for p in (tmp_path / "a" / "checkpoints").glob("*.safetensors"))
    assert len(ck) == 2  # evaluated at steps 2, 4, 5: two best kept
    wa = {k: v.clone() for k, v in tr.model.state_dict().items()}

    b = dict(base, run=dict(base["run"], out_dir=str(tmp_path / "b")))
    t1 = Trainer(train_config_from_dict(b))
    t1.fit(stop_at_step=3)  # "interrupted" after step 3
    t2 = Trainer(train_config_from_dict(b))  # a new process would do exactly this
    assert t2.step == 3 and t2.micro == 6
    t2.fit()
    resumed = {int(r["step"]): r for r in t2.rows}
    for s in (4, 5):
        assert float(resumed[s]["loss"]) == pytest.approx(float(full[s]["loss"]), rel=1e-5, abs=1e-6)
    wb = t2.model.state_dict()
    for k in wa:
        torch.testing.assert_close(wb[k], wa[k], rtol=1e-4, atol=1e-6)


def test_config_files_toml_and_yaml(shared_data, tmp_path):
    import yaml

    d = _cfg(shared_data, tmp_path / "y")
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(d))
    c = load_train_config(tmp_path / "c.yaml", {"run.max_steps": 2})
    assert c.run.max_steps == 2 and c.optim.weight_decay == 1e-2 and c.optim.schedule == "linear"
    from segtme.errors import InputError

    (tmp_path / "bad.toml").write_text('[run]\nmax_stepz = 3\n[model]\npreset = "uperhover_vit_tiny"\n')
    with pytest.raises(InputError, match="max_stepz"):
        load_train_config(tmp_path / "bad.toml")


# ----------------------------------------------------------------------------- DDP (gloo, 2 processes)
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _fixed_batches(tr, n=4):
    from segtme.train.trainer import collate

    items = [tr.train_ds[(i, 0)] for i in range(n)]
    return collate(items[: n // 2]), collate(items[n // 2:])


def _ddp_worker(rank, world, port, cfg_dict, out_path):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    tr = Trainer(train_config_from_dict(cfg_dict))
    halves = _fixed_batches(tr)
    tr.train_step([halves[rank]])
    if rank == 0:
        from safetensors.torch import save_file

        save_file({n: p.grad.detach().clone() for n, p in tr.model.named_parameters() if p.grad is not None}, out_path)
    tr.close()


def test_ddp_two_gloo_processes_match_single_process_gradient(shared_data, tmp_path):
    import torch.multiprocessing as mp
    from safetensors.torch import load_file

    d = _restrict_monuseg(_cfg(shared_data, tmp_path / "ddp", max_steps=1, batch_size=2), shared_data, n=1)
    out = str(tmp_path / "ddp_grads.safetensors")
    mp.spawn(_ddp_worker, args=(2, _free_port(), d, out), nprocs=2, join=True)
    ddp = load_file(out)

    d1 = dict(d, run=dict(d["run"], out_dir=str(tmp_path / "single")))
    tr = Trainer(train_config_from_dict(d1))
    halves = _fixed_batches(tr)
    # one process, same batch: the two halves as accumulated micro-batches = mean of the rank losses
    tr.train_step(list(halves))
    single = {n: p.grad for n, p in tr.model.named_parameters() if p.grad is not None}
    assert set(single) == set(ddp) and len(single) > 10
    for k in single:
        torch.testing.assert_close(ddp[k], single[k], rtol=1e-4, atol=1e-6)
    assert any(float(v.abs().max()) > 0 for v in single.values())


def test_semantic_only_head_with_ce_loss_and_poly_schedule(shared_data, tmp_path):
    """The PAGET-student setting: no HV head, CE only, AdamW 6e-5 with warm-up + poly decay."""
    d = _restrict_monuseg(_cfg(shared_data, tmp_path / "ce", max_steps=3, eval_every=3), shared_data, n=1)
    d["model"]["heads"] = {"sem": -1}
    d["loss"] = {"name": "ce"}
    d["optim"] = {"lr": 6e-5, "schedule": "poly", "warmup_steps": 2, "poly_power": 1.0}
    tr = Trainer(train_config_from_dict(d))
    assert "hv" not in tr.train_ds[(0, 0)]
    res = tr.fit()
    rows = {int(r["step"]): r for r in tr.rows}
    assert rows[1]["lr"] == pytest.approx(3e-5) and rows[2]["lr"] == pytest.approx(6e-5)
    assert "loss_hv" not in rows[3] and "pq" not in rows[3] and "miou" in rows[3]
    assert res["best"] and "hv" not in load_model(tmp_path / "ce" / "checkpoints" / res["best"][0]["json"]).config.heads


@pytest.mark.parametrize("name", ["example_monuseg.toml", "example_mixed_consep4.toml", "uni2_stage1_pannuke.toml"])
def test_example_configs_parse(name):
    from pathlib import Path

    from segtme.train.trainer import build_model_config

    path = Path(__file__).resolve().parents[1] / "configs" / name
    c = load_train_config(path)
    mc = build_model_config(c.model)
    assert c.data and mc.tile_size > 0 and c.optim.lr > 0


def test_curriculum_example_config_builds_three_stages():
    from pathlib import Path

    from segtme.train.config import read_config_file
    from segtme.train.curriculum import stage_train_dict

    path = Path(__file__).resolve().parents[1] / "configs" / "curriculum_example.toml"
    cfg = read_config_file(path)
    s1 = train_config_from_dict(stage_train_dict(cfg, "stage1", Path("/x/stage1"), None))
    s3 = train_config_from_dict(stage_train_dict(cfg, "stage3", Path("/x/stage3"), Path("/x/pseudo3")))
    assert s1.run.grad_accum == 1 and s3.run.grad_accum == 8 and s3.run.epochs == 100
    assert s3.data[0].kind == "pseudo" and s1.model["preset"] == "uni2_uperhover"
