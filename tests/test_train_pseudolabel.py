"""Entropy-filtered pseudo-labels and the three-stage curriculum (tiny model, real image patches)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from PIL import Image

from segtme.data.readers import read_pseudo
from segtme.train.pseudolabel import (
    PseudoLabelConfig,
    accept,
    entropy_threshold,
    parse_shard,
    patch_fg_entropy,
    pixel_entropy,
    run_pseudo_label,
)


def test_entropy_values_by_hand():
    p = np.zeros((4, 1, 3))
    p[:, 0, 0] = 0.25  # uniform over 4 classes -> log 4
    p[2, 0, 1] = 1.0  # one-hot -> 0
    p[0, 0, 2], p[1, 0, 2] = 0.5, 0.5  # background / class 1 tie -> log 2 (arg-max = 0: background)
    h = pixel_entropy(p)
    np.testing.assert_allclose(h[0], [math.log(4), 0.0, math.log(2)], atol=1e-9)
    hfg, nfg, hall = patch_fg_entropy(p)
    # foreground = arg-max != 0: pixels 0 (argmax 0 on a tie -> background) ... only pixel 1
    assert nfg == 1 and hfg == pytest.approx(0.0, abs=1e-9)
    assert hall == pytest.approx((math.log(4) + math.log(2)) / 3)
    assert math.isnan(patch_fg_entropy(np.stack([np.ones((2, 2)), np.zeros((2, 2))]))[0])


def test_entropy_filter_keeps_the_percentile_share():
    rng = np.random.default_rng(0)
    vals = list(rng.random(1000))
    tau = entropy_threshold(vals, 70.0)
    assert accept(vals, tau).sum() == 700
    vals10 = [0.9, 0.1, 0.5, 0.3, 0.7, 0.2, 0.8, 0.4, 0.6, 1.0] + [math.nan, math.nan]
    tau = entropy_threshold(vals10, 70.0)  # NaN (no foreground) ignored for τ ...
    kept = accept(vals10, tau)
    assert kept.sum() == 7 and not kept[-2:].any()  # ... and rejected
    assert set(np.asarray(vals10)[kept]) == {0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7}


def test_parse_shard(monkeypatch):
    assert parse_shard("1/4") == (1, 4)
    monkeypatch.setenv("RANK", "2")
    monkeypatch.setenv("WORLD_SIZE", "3")
    assert parse_shard(None) == (2, 3)
    from segtme.errors import InputError

    with pytest.raises(InputError):
        parse_shard("4/4")


# ----------------------------------------------------------------------------- end to end
def _tcga_like(shared_data, root, per_scale=5, scales=(0, 1), size=96):
    """A TCGA-UT-restructured-like folder of real H&E patches (cropped from CoNSeP) in tmp."""
    img = np.asarray(Image.open(shared_data / "consep-train" / "images" / "train_2.png").convert("RGB"))
    k = 0
    for s in scales:
        for i in range(per_scale):
            d = root / f"scale_{s}" / ("COAD" if i % 2 else "READ")
            d.mkdir(parents=True, exist_ok=True)
            y, x = divmod(k, 8)
            Image.fromarray(img[y * 120: y * 120 + size, x * 120: x * 120 + size]).save(d / f"patch{k:03d}.png")
            k += 1
    return root


def _tiny_checkpoint(tmp_path):
    import torch

    from segtme.models.registry import create_model, presets
    from segtme.train.trainer import save_safetensors

    torch.manual_seed(0)
    cfg = presets()["uperhover_vit_tiny"].replace(name="tiny_pl", taxonomy="consep4", weights="tiny_pl.safetensors")
    m = create_model(cfg)
    save_safetensors(m.state_dict(), tmp_path / "tiny_pl.safetensors")
    cfg.to_json(tmp_path / "tiny_pl.json")
    return tmp_path / "tiny_pl.json"


def test_pseudo_label_two_shards_resumable(shared_data, tmp_path):
    data = _tcga_like(shared_data, tmp_path / "tcga")
    model = _tiny_checkpoint(tmp_path)
    out = tmp_path / "pl"
    cfg = PseudoLabelConfig(model=str(model), data=str(data), out=str(out), batch_size=3, device="cpu", chunk=2)
    run_pseudo_label(cfg, shard=(0, 2), which="stats")
    first = {p: p.stat().st_mtime_ns for p in (out / "stats").glob("s0of2-*.json")}
    assert len(first) == 3  # 5 patches in shard 0 (0,2,4,6,8) -> chunks of 2
    run_pseudo_label(cfg, shard=(0, 2), which="stats")  # resume: nothing recomputed
    assert {p: p.stat().st_mtime_ns for p in (out / "stats").glob("s0of2-*.json")} == first
    from segtme.errors import InputError

    with pytest.raises(InputError, match="pass 1"):
        run_pseudo_label(cfg, shard=(0, 2), which="write")  # shard 1 has not run pass 1
    run_pseudo_label(cfg, shard=(1, 2), which="stats")
    part = run_pseudo_label(cfg, shard=(0, 2), which="write")
    assert not part["complete"] and not (out / "manifest.json").exists()
    summary = run_pseudo_label(cfg, shard=(1, 2), which="write")
    assert summary["complete"]
    man = json.loads((out / "manifest.json").read_text())
    rows = [r for f in sorted((out / "stats").glob("s*of2-c*.json")) for r in json.loads(f.read_text())]
    h = [r["mean_fg_entropy"] for r in rows]
    tau = entropy_threshold(h, 70.0)
    want = sorted(r["name"] for r, a in zip(rows, accept(h, tau)) if a)
    assert sorted(r["name"] for r in man["accepted"]) == want and man["stats"]["tau"] == pytest.approx(tau)
    assert 0 < len(want) < len(rows) == 10
    maps = sorted(p.relative_to(out).as_posix() for p in out.rglob("*_sem_map.png"))
    assert maps == sorted(f"{n}_sem_map.png" for n in want)  # rejected candidates are gone
    sm = np.asarray(Image.open(out / maps[0]))
    assert sm.dtype == np.uint8 and sm.shape == (96, 96) and sm.max() < 5
    refs = read_pseudo(out)
    assert len(refs) == len(want) and refs[0].mpp in (0.5, 0.6)
    rgb, inst, sem = refs[0].load()
    assert inst is None and sem.shape == rgb.shape[:2]


def test_miniature_curriculum_end_to_end(shared_data, tmp_path):
    from segtme.models import load_model
    from segtme.train.curriculum import run_curriculum

    data = _tcga_like(shared_data, tmp_path / "tcga", per_scale=5, scales=(0, 1))
    run = {"max_steps": 2, "batch_size": 2, "eval_every": 2, "num_workers": 0, "threads": 1, "progress": False,
           "max_val_items": 2, "val_crops_per_image": 1, "device": "cpu"}
    cfg = {
        "curriculum": {"out_dir": str(tmp_path / "cur"), "tau_percentile": 70, "pseudo_batch_size": 4},
        "base": {"run": run, "model": {"preset": "uperhover_vit_tiny", "name": "cur_tiny", "taxonomy": "consep4",
                                       "tile_size": 84}, "optim": {"lr": 1e-3}},
        "stage1": {"data": [{"name": "consep", "kind": "folder", "path": str(shared_data / "consep-train"),
                             "split": "train", "exclude": [f"train_{i}" for i in range(4, 28)], "val": ["train_3"],
                             "repeat": 2}]},
        "stage2": {"unlabelled": {"kind": "tcga_ut", "path": str(data), "scales": [0]}, "val_fraction": 0.2},
        "stage3": {"unlabelled": {"kind": "tcga_ut", "path": str(data), "scales": [0, 1]}, "val_fraction": 0.2},
    }
    res = run_curriculum(cfg)
    root = tmp_path / "cur"
    for st in ("stage1", "stage2", "stage3"):
        assert (root / st / "DONE.json").is_file()
    for m in ("M1", "M2", "M3"):
        lm = load_model(res[m], device="cpu")
        assert lm.config.taxonomy == "consep4"
    m2 = json.loads((root / "pseudo2" / "manifest.json").read_text())
    m3 = json.loads((root / "pseudo3" / "manifest.json").read_text())
    assert m2["stats"]["n_patches"] == 5 and m3["stats"]["n_patches"] == 10
    assert {r["mpp"] for r in m3["accepted"]} <= {0.5, 0.6} and m3["model"] == res["M2"]
    # stage 2 trained on pseudo-labels only, from a fresh init (different weights from M1)
    cfg2 = json.loads((root / "stage2" / "train_config.json").read_text())
    assert [d["kind"] for d in cfg2["data"]] == ["pseudo"]
    # rerun: every stage is skipped
    stamp = {p: p.stat().st_mtime_ns for p in root.rglob("DONE.json")}
    assert run_curriculum(cfg) == res
    assert {p: p.stat().st_mtime_ns for p in root.rglob("DONE.json")} == stamp


def test_cli_pseudo_label_and_train_errors(shared_data, tmp_path, capsys):
    from segtme.cli import main

    data = _tcga_like(shared_data, tmp_path / "tcga", per_scale=3, scales=(2,))
    model = _tiny_checkpoint(tmp_path)
    rc = main(["pseudo-label", "--model", str(model), "--data", str(data), "--out", str(tmp_path / "o"),
               "--tau-percentile", "50", "--shard", "0/1", "--device", "cpu"])
    assert rc == 0
    out = json.loads(capsys.readouterr().out)
    assert out["complete"] and out["n_patches"] == 3 and out["tau_percentile"] == 50
    assert main(["train", str(tmp_path / "missing.toml")]) == 2
    assert "config file not found" in capsys.readouterr().err
