"""Model registry, the UNI2-h configuration, the shared dual-head code and weights loading."""

from __future__ import annotations

import json

import pytest
import torch

from segtme.models import ModelConfig, ModelConfigError, WeightsError, create_model, load_model, presets
from segtme.models.registry import find_uni2h_checkpoint, read_state_dict, resolve_config


def test_uni2_uperhover_is_the_papers_architecture_on_the_meta_device():
    """UNI2-h (ViT-G/14, dim 1536, depth 24, 24 heads, SwiGLU-packed, 8 registers, no class-token
    embedding) built without allocating weights: ~681 M backbone parameters, and the four
    pyramid levels of Table 2 for a 224 px input (256/512/1024/2048 ch at 56/28/14/7)."""
    cfg = presets()["uni2_uperhover"]
    with torch.device("meta"):
        model = create_model(cfg)
    vit = model.backbone.vit
    n_backbone = sum(p.numel() for p in vit.parameters())
    assert 680e6 < n_backbone < 682e6, n_backbone
    assert (vit.embed_dim, len(vit.blocks), vit.blocks[0].attn.num_heads) == (1536, 24, 24)
    assert vit.num_reg_tokens == 8 and vit.patch_embed.patch_size == (14, 14)
    mlp = vit.blocks[0].mlp  # timm's SwiGLUPacked = GluMlp with SiLU gate, packed fc1
    assert type(mlp).__name__ == "GluMlp" and isinstance(mlp.act, torch.nn.SiLU)
    assert mlp.fc1.out_features == 2 * mlp.fc2.in_features == 8192  # 1536 x 5.33, packed gate+value
    assert model.backbone.taps == [5, 11, 17, 23]
    feats = model.backbone(torch.empty(1, 3, 224, 224, device="meta"))
    assert [tuple(f.shape) for f in feats] == [(1, 256, 56, 56), (1, 512, 28, 28), (1, 1024, 14, 14), (1, 2048, 7, 7)]
    # two independent UperNet heads of hidden size 768: 6 semantic classes, 2 HV channels
    assert set(model.heads) == {"sem", "hv"}
    assert model.heads["sem"].classifier.out_channels == 6 and model.heads["hv"].classifier.out_channels == 2
    assert model.heads["sem"].channels == 768
    assert model.heads["sem"] is not model.heads["hv"]
    out = model.eval()(torch.empty(1, 3, 224, 224, device="meta"))
    assert tuple(out["sem"].shape) == (1, 6, 224, 224) and tuple(out["hv"].shape) == (1, 2, 224, 224)


@pytest.mark.parametrize("name", ["uperhover_resnet18", "uperhover_vit_tiny"])
def test_same_dual_head_code_for_cnn_and_vit_backbones(name):
    cfg = presets()[name]
    model = create_model(cfg).eval()
    x = torch.randn(2, 3, cfg.tile_size, cfg.tile_size)
    with torch.inference_mode():
        out = model(x)
    assert type(model).__name__ == "UperHoVer"
    assert out["sem"].shape == (2, cfg.num_classes, cfg.tile_size, cfg.tile_size)
    assert out["hv"].shape == (2, 2, cfg.tile_size, cfg.tile_size)


def test_config_round_trip_and_validation(tmp_path):
    cfg = presets()["uperhover_vit_tiny"].replace(name="mine", taxonomy="consep4", mpp=0.25)
    cfg.to_json(tmp_path / "mine.json")
    back = ModelConfig.from_json(tmp_path / "mine.json")
    assert back == cfg and back.num_classes == 5
    with pytest.raises(ModelConfigError, match="mpp"):
        cfg.replace(mpp=float("nan"))
    with pytest.raises(ModelConfigError, match="unknown field"):
        ModelConfig.from_dict({"name": "x", "bogus": 1})
    with pytest.raises(KeyError, match="unknown taxonomy"):
        cfg.replace(taxonomy="nope")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ModelConfigError, match="not valid JSON"):
        ModelConfig.from_json(tmp_path / "bad.json")


def test_load_from_safetensors_and_clear_weight_errors(tmp_path):
    from safetensors.torch import save_file

    cfg = presets()["uperhover_vit_tiny"].replace(name="tiny")
    model = create_model(cfg)
    cfg.to_json(tmp_path / "tiny.json")
    save_file(model.state_dict(), str(tmp_path / "tiny.safetensors"))
    loaded = load_model(tmp_path / "tiny.json", device="cpu")
    for k, v in model.state_dict().items():
        assert torch.equal(loaded.module.state_dict()[k], v)
    assert load_model(tmp_path / "tiny.safetensors", device="cpu").config.name == "tiny"

    # a mismatched file names the file and the keys
    sd = {k: v for k, v in model.state_dict().items() if not k.startswith("heads.hv")}
    sd["extra.weight"] = torch.zeros(1)
    save_file(sd, str(tmp_path / "bad.safetensors"))
    with pytest.raises(WeightsError, match=r"bad\.safetensors.*missing .*heads\.hv.*unexpected .*extra\.weight"):
        load_model(tmp_path / "tiny.json", weights=tmp_path / "bad.safetensors", device="cpu")
    # missing file, corrupt file, unknown model, preset without weights
    with pytest.raises(WeightsError, match="not found"):
        load_model(tmp_path / "tiny.json", weights=tmp_path / "nope.safetensors", device="cpu")
    (tmp_path / "corrupt.safetensors").write_bytes(b"\x00garbage")
    with pytest.raises(WeightsError, match="cannot read"):
        read_state_dict(tmp_path / "corrupt.safetensors")
    with pytest.raises(ModelConfigError, match="unknown model"):
        resolve_config("no_such_model")
    with pytest.raises(WeightsError, match="has no weights file"):
        load_model("uperhover_resnet18", device="cpu")


def test_pickled_checkpoints_are_only_read_with_the_weights_only_loader(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    torch.save({"x": Evil()}, tmp_path / "evil.bin")
    with pytest.raises(WeightsError, match="weights-only"):
        read_state_dict(tmp_path / "evil.bin")
    torch.save({"a": torch.ones(2)}, tmp_path / "ok.bin")
    assert torch.equal(read_state_dict(tmp_path / "ok.bin")["a"], torch.ones(2))


def test_uni2h_checkpoint_lookup_says_what_is_missing(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.delenv("SEGTME_UNI2H", raising=False)
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    with pytest.raises(WeightsError, match=r"UNI2-h backbone weights not found.*blocks\.0\.attn\.qkv\.weight"):
        find_uni2h_checkpoint()
    snap = tmp_path / "hf" / "hub" / "models--MahmoodLab--UNI2-h" / "snapshots" / "abc"
    snap.mkdir(parents=True)
    (snap / "pytorch_model.bin").write_bytes(b"")
    assert find_uni2h_checkpoint() == snap / "pytorch_model.bin"
    own = tmp_path / "uni2.safetensors"
    own.write_bytes(b"")
    assert find_uni2h_checkpoint(own) == own


def test_models_command_lists_weights(capsys):
    from segtme.cli import main

    assert main(["models"]) == 0
    out = capsys.readouterr().out
    assert "uni2_uperhover" in out and "default" in out
    line = next(ln for ln in out.splitlines() if ln.startswith("default "))
    assert "default.safetensors" in line and "MISSING" not in line
    assert json.loads(json.dumps(presets()["uni2_uperhover"].to_dict()))["vit_taps"] == [5, 11, 17, 23]


def test_config_parts_and_shipped_json_unchanged():
    """ModelConfig = architecture + IO + post-processing parts; every shipped JSON reads into
    them and writes back key for key (the on-disk format is unchanged)."""
    import json

    from segtme.models.config import ArchitectureConfig, IOConfig, PostprocessParams
    from segtme.models.registry import shipped_models

    for name, path in shipped_models().items():
        d = json.loads(path.read_text())
        cfg = ModelConfig.from_json(path)
        assert cfg.to_dict() == d, name
        assert cfg.io.mpp == d["mpp"] and cfg.architecture.arch == d["arch"]
        assert cfg.post == PostprocessParams.from_mapping(d.get("postprocess"))
    cfg = ModelConfig.from_parts("parts", ArchitectureConfig(backbone="resnet10t", taxonomy="consep4"),
                                 IOConfig(mpp=0.25, tile_size=128, tile_overlap=16), PostprocessParams(edge_threshold=0.2))
    assert cfg.mpp == 0.25 and cfg.backbone == "resnet10t" and cfg.postprocess == {"edge_threshold": 0.2}
    assert ModelConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ModelConfigError, match="post-processing"):
        cfg.replace(postprocess={"bogus": 1})
