"""`segtme narrate-eval`: unsupported-claim rate and fallback rate of a narrative backend over real
reports - the template (0 %), an OpenAI-compatible endpoint (local fake server), the tiny local
transformers narrator built as in tests/test_narrator_sft.py - plus its input errors."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest

from segtme.cli import main


def _maps(seed):
    rng = np.random.default_rng(seed)
    inst = np.zeros((200, 200), np.uint16)
    cls = np.zeros((200, 200), np.uint8)
    k = 0
    for r in range(10, 190, 18):
        for c in range(10, 190, 18):
            k += 1
            inst[r - 4:r + 4, c - 4:c + 4] = k
            cls[r - 4:r + 4, c - 4:c + 4] = rng.integers(1, 4)
    return inst, cls


@pytest.fixture(scope="module")
def reports(tmp_path_factory):
    """A directory of three tme.json reports written by `segtme tme` (one without MPP)."""
    from PIL import Image

    d = tmp_path_factory.mktemp("reports")
    for i, mpp in enumerate((0.5, 0.25, None)):
        inst, cls = _maps(i)
        Image.fromarray(inst).save(d / f"inst{i}.png")
        Image.fromarray(cls).save(d / f"cls{i}.png")
        args = ["tme", "--inst", str(d / f"inst{i}.png"), "--cls", str(d / f"cls{i}.png"), "--out", str(d / f"r{i}.json")]
        assert main(args + (["--mpp", str(mpp)] if mpp else [])) == 0
        (d / f"inst{i}.png").unlink()
        (d / f"cls{i}.png").unlink()
    return d


def test_template_backend_is_fully_grounded(reports, tmp_path, capsys):
    out = tmp_path / "eval.json"
    assert main(["narrate-eval", "--backend", "template", "--data", str(reports), "--json", str(out)]) == 0
    text = capsys.readouterr().out
    assert "3 regions" in text and "unsupported-claim rate 0.00%" in text and "fallback rate 0.0% (0 of 3" in text
    d = json.loads(out.read_text())
    assert d["n_regions"] == 3 and d["n_claims"] > 60 and d["n_unsupported"] == 0 and d["fallback_rate"] == 0.0
    assert all(r["narrative"].startswith("The analysed region contains") for r in d["regions"])


class _Echo(BaseHTTPRequestHandler):
    """Answers with one right and one wrong count taken from the prompt's TME features."""

    def do_POST(self):  # noqa: N802
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        prompt = body["messages"][-1]["content"]
        raw = json.loads(prompt.split("\n")[0][len("TME features: "):])
        n = raw["N_total"]
        reply = f"The region contains {n} nuclei; {n + 1} of them are neoplastic."
        out = json.dumps({"choices": [{"message": {"content": reply}}]}).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(out)))
        self.end_headers()
        self.wfile.write(out)

    def log_message(self, *a):
        pass


def test_openai_backend_rates(reports, capsys, tmp_path):
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _Echo)
    th = threading.Thread(target=srv.serve_forever, daemon=True)
    th.start()
    try:
        url = f"http://127.0.0.1:{srv.server_address[1]}/v1"
        out = tmp_path / "e.json"
        assert main(["narrate-eval", "--backend", "openai", "--data", str(reports), "--openai-base-url", url,
                     "--openai-model", "m", "--json", str(out)]) == 0
    finally:
        srv.shutdown()
        srv.server_close()
    text = capsys.readouterr().out
    assert "unsupported-claim rate 50.00% (3 of 6; 0 unbound)" in text and "fallback rate 100.0% (3 of 3" in text
    d = json.loads(out.read_text())
    assert d["top_failures"] == [["unsupported: N_Neoplastic", 3]]
    # an unreachable server: every region falls back, errors are counted and shown
    assert main(["narrate-eval", "--backend", "openai", "--data", str(reports), "--openai-base-url",
                 "http://127.0.0.1:9/v1", "--openai-model", "m", "--timeout", "2", "--limit", "2"]) == 0
    text = capsys.readouterr().out
    assert "fallback rate 100.0% (2 of 2 regions; 2 backend errors)" in text and "cannot reach" in text


@pytest.fixture(scope="module")
def tiny_narrator(tmp_path_factory, reports):
    from segtme.narrative.sft import build_tiny_base_model, make_sft_record, train_narrator
    from segtme.narrative.sources import load_inputs, to_bio
    from segtme.narrative.template import render_template

    d = tmp_path_factory.mktemp("tiny")
    bios = [to_bio(x) for x in load_inputs(reports)]
    recs = [make_sft_record(b, render_template(b, s)) for _, b, s in bios]
    data = d / "pairs.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in recs))
    base = build_tiny_base_model(d / "base", [r["prompt"] + " " + r["narrative"] for r in recs],
                                 n_embd=32, n_layer=2, n_head=2, n_positions=1024)
    train_narrator(data, base, d / "narrator", max_steps=4, batch_size=2, lr=1e-2, max_length=512, device="cpu")
    return d / "narrator"


def test_tiny_transformers_narrator(reports, tiny_narrator, tmp_path, capsys):
    out = tmp_path / "t.json"
    assert main(["narrate-eval", "--backend", "transformers", "--model-dir", str(tiny_narrator), "--device", "cpu",
                 "--max-new-tokens", "40", "--data", str(reports), "--json", str(out)]) == 0
    d = json.loads(out.read_text())
    assert d["backend"] == "transformers" and d["n_regions"] == 3 and d["n_errors"] == 0
    regs = d["regions"]
    assert d["n_claims"] == sum(r["n_claims"] for r in regs)
    assert d["n_fallback"] == sum(bool(r["failed"]) for r in regs)
    assert d["unsupported_claim_rate"] == (d["n_unsupported"] / d["n_claims"] if d["n_claims"] else 0.0)
    assert all(isinstance(r["narrative"], str) and "TME features:" not in r["narrative"] for r in regs)
    assert f"fallback rate {100 * d['fallback_rate']:.1f}%" in capsys.readouterr().out


def test_input_errors_are_one_line(reports, tmp_path, capsys):
    cases = [
        (["--backend", "transformers", "--data", str(reports)], "needs model_dir"),
        (["--backend", "template", "--data", str(tmp_path / "nope")], "not found"),
        (["--backend", "template", "--data", str(tmp_path)], "no TME reports or label-map datasets"),
        (["--backend", "template", "--data", str(reports), "--limit", "0"], "limit must be >= 1"),
        (["--backend", "template", "--data", str(reports), "--json", str(tmp_path / "no" / "x.json")], "does not exist"),
        (["--backend", "openai", "--data", str(reports), "--openai-model", "m", "--openai-base-url", "ftp://x"],
         "must start with http"),
    ]
    for args, msg in cases:
        assert main(["narrate-eval", *args]) == 2, args
        err = capsys.readouterr().err
        assert err.startswith("error:") and msg in err and "Traceback" not in err, err
    (tmp_path / "bad.json").write_text("{}")
    assert main(["narrate-eval", "--backend", "template", "--data", str(tmp_path / "bad.json")]) == 2
    assert "not a TME report" in capsys.readouterr().err


@pytest.mark.data
def test_template_on_real_consep(shared_data, capsys):
    assert main(["narrate-eval", "--backend", "template", "--data", str(shared_data / "consep-train"),
                 "--images-per-dataset", "2", "--tiles", "2"]) == 0
    text = capsys.readouterr().out
    assert "10 regions" in text and "unsupported-claim rate 0.00% (0 of" in text and "fallback rate 0.0%" in text
