"""`segtme train-narrator` end to end on CPU with a tiny randomly initialised GPT-2 built locally:
loss on narrative tokens only, loss falls, the saved directory loads in the transformers backend,
generation runs and the verifier scores it. Nothing is downloaded."""

from __future__ import annotations

import json

import numpy as np
import pytest

from segtme.inference.nuclei import NucleiTable
from segtme.narrative.backends import TransformersBackend, build_prompt
from segtme.narrative.sft import SFTExample, _encode, build_tiny_base_model, make_sft_record, train_narrator
from segtme.narrative.template import render_template
from segtme.narrative.verify import verify_narrative
from segtme.taxonomy import PANNUKE6
from segtme.tme import analyze_tme_from_nuclei, translate_tme_to_bio_tokens


def _bios(n, seed=0):
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        k = 30
        z = np.ones(k)
        t = NucleiTable(PANNUKE6, np.arange(1, k + 1), rng.integers(1, 6, k).astype(np.int32), rng.uniform(0, 200, (k, 2)),
                        [np.zeros((0, 2))] * k, z, rng.uniform(80, 400, k), z, z, z, z, z, z, mpp=None)
        out.append(translate_tme_to_bio_tokens(analyze_tme_from_nuclei(t)))
    return out


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    d = tmp_path_factory.mktemp("narrator")
    bios = _bios(4)
    recs = [make_sft_record(b, render_template(b)) for b in bios]
    data = d / "pairs.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in recs))
    base = build_tiny_base_model(d / "base", [r["prompt"] + " " + r["narrative"] for r in recs],
                                 n_embd=32, n_layer=2, n_head=2, n_positions=1024)
    return d, bios, recs, data, base


def test_loss_mask_covers_prompt_only(tiny):
    from transformers import AutoTokenizer

    _, _, recs, _, base = tiny
    tok = AutoTokenizer.from_pretrained(base, local_files_only=True)
    ex = SFTExample(recs[0]["prompt"], recs[0]["narrative"])
    (ids, labels), = _encode([ex], tok, 100000)
    n_prompt = len(tok(ex.prompt, add_special_tokens=False)["input_ids"])
    assert labels[:n_prompt] == [-100] * n_prompt
    assert labels[n_prompt:] == ids[n_prompt:] and labels[-1] == tok.eos_token_id
    assert tok.decode(ids[n_prompt:-1]).strip() == ex.narrative
    # a too-long prompt is left-truncated; the narrative is kept whole
    (ids2, labels2), = _encode([ex], tok, len(ids) - 10)
    assert len(ids2) == len(ids) - 10 and labels2[-len(ids) + n_prompt:] == labels[n_prompt:]


def test_train_generate_verify(tiny):
    d, bios, recs, data, base = tiny
    res = train_narrator(data, base, d / "narrator", max_steps=12, batch_size=2, lr=1e-2, max_length=512, device="cpu")
    assert res.steps == 12 and len(res.losses) == 12
    assert np.mean(res.losses[-3:]) < 0.8 * np.mean(res.losses[:3])  # loss falls
    meta = json.loads((d / "narrator" / "segtme_narrator.json").read_text())
    assert meta["steps"] == 12 and meta["objective"].startswith("cross-entropy on narrative tokens")
    be = TransformersBackend(d / "narrator", max_new_tokens=40, device="cpu")
    text = be.generate(bios[0])
    assert isinstance(text, str) and "TME features:" not in text
    v = verify_narrative(text, bios[0]).to_dict()
    assert 0.0 <= v["hallucination_rate"] <= 1.0 and v["n_claims"] == len(verify_narrative(text, bios[0]).claims)
    # the report path runs the tiny LM through the verifier and falls back if it invents anything
    from segtme.report import report_from_features

    r = report_from_features(bios[0]["raw_data"], "pannuke6", "transformers", model_dir=str(d / "narrator"),
                             max_new_tokens=40, device="cpu")
    assert r["verifier"]["unsupported"] == []
    assert r["narrative_backend_used"] in ("transformers", "template")
    if r["narrative_backend_used"] == "template":
        assert r["narrative_fallback"]["backend"] == "transformers"


def test_train_narrator_command(tiny, capsys):
    from segtme.cli import main

    d, _, _, data, _ = tiny
    out = d / "cli_narrator"
    rc = main(["train-narrator", "--data", str(data), "--tiny-base", "--out", str(out), "--max-steps", "2",
               "--batch-size", "1", "--max-length", "512", "--device", "cpu", "--lr", "1e-3"])
    assert rc == 0 and (out / "config.json").is_file() and (out / "segtme_narrator.json").is_file()
    assert "trained 2 steps" in capsys.readouterr().out
    assert main(["train-narrator", "--data", str(data), "--tiny-base", "--out", str(out), "--max-steps", "1"]) == 2
    bad = d / "bad.jsonl"
    bad.write_text('{"prompt": "x"}\n')
    assert main(["train-narrator", "--data", str(bad), "--tiny-base", "--out", str(d / "x")]) == 2
    assert "bad.jsonl:1" in capsys.readouterr().err
    assert not (d / "x").exists()
    assert build_prompt(_bios(1)[0]).endswith("Narrative:")
