"""Narrative backends (template, OpenAI-compatible via a local HTTP server), the report with its
fallback rule, QuPath measurements and the `segtme tme` command."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest

from segtme.narrative import NarrativeBackendError, build_prompt, get_backend, render_template
from segtme.narrative.backends import OpenAIBackend
from segtme.report import build_tme_report
from segtme.tme import nuclei_table_from_maps, report_measurements, translate_tme_to_bio_tokens
from segtme.tme import analyze_tme_from_maps


def maps():
    inst = np.zeros((160, 160), np.int32)
    cls = np.zeros((160, 160), np.uint8)
    cells = [(20, 20, 1), (20, 50, 1), (50, 20, 1), (50, 50, 1), (35, 80, 2), (80, 35, 2), (120, 120, 3), (140, 60, 3)]
    for i, (r, c, k) in enumerate(cells, 1):
        inst[r - 3 : r + 4, c - 3 : c + 4] = i
        cls[r - 3 : r + 4, c - 3 : c + 4] = k
    return inst, cls


def bio(mpp=0.5):
    return translate_tme_to_bio_tokens(analyze_tme_from_maps(*maps(), mpp=mpp))


def test_template_is_deterministic_and_cites_units():
    b = bio()
    t1, t2 = render_template(b), render_template(b)
    assert t1 == t2
    assert "8 nuclei" in t1 and "µm (" in t1 and "px)" in t1 and "µm² (49 px²)" in t1 and "bits" in t1
    for axis, label in b["interpretation"].items():
        assert f"{axis}: {label}" in t1
    t_px = render_template(bio(mpp=None))
    assert "µm" not in t_px and "px" in t_px and "pixel size is unknown" in t_px
    assert "Note: X stands in for Y." in render_template(b, ["X stands in for Y."])


def test_prompt_is_the_papers_template():
    p = build_prompt(bio())
    lines = p.split("\n")
    assert [ln.split(":")[0] for ln in lines] == ["TME features", "Phenotype labels", "Biological tokens", "Narrative"]
    assert p.endswith("Narrative:")
    assert json.loads(lines[0][len("TME features: "):])["N_total"] == 8


class _Handler(BaseHTTPRequestHandler):
    reply: str = ""
    status: int = 200
    delay: float = 0.0
    seen: list = []

    def do_POST(self):  # noqa: N802
        n = int(self.headers["Content-Length"])
        body = json.loads(self.rfile.read(n))
        type(self).seen.append((self.path, self.headers.get("Authorization"), body))
        time.sleep(type(self).delay)
        if type(self).status != 200:
            self.send_response(type(self).status)
            self.end_headers()
            self.wfile.write(b'{"error": "model overloaded"}')
            return
        out = json.dumps({"choices": [{"message": {"role": "assistant", "content": type(self).reply}}]}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(out)))
        self.end_headers()
        self.wfile.write(out)

    def log_message(self, *a):
        pass


@pytest.fixture()
def server():
    _Handler.reply, _Handler.status, _Handler.delay, _Handler.seen = "", 200, 0.0, []
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    th = threading.Thread(target=srv.serve_forever, daemon=True)
    th.start()
    yield f"http://127.0.0.1:{srv.server_address[1]}/v1"
    srv.shutdown()
    srv.server_close()


def test_openai_backend_roundtrip_and_env(server, monkeypatch):
    b = bio()
    _Handler.reply = "  Immune status is Moderate.\nTME features: junk"
    be = OpenAIBackend(base_url=server, model="tiny", api_key="k123")
    assert be.generate(b) == "Immune status is Moderate."
    path, auth, body = _Handler.seen[-1]
    assert path == "/v1/chat/completions" and auth == "Bearer k123" and body["model"] == "tiny"
    assert body["messages"][-1]["content"] == build_prompt(b)
    monkeypatch.setenv("SEGTME_OPENAI_BASE_URL", server)
    monkeypatch.setenv("SEGTME_OPENAI_MODEL", "envmodel")
    monkeypatch.delenv("SEGTME_OPENAI_API_KEY", raising=False)
    get_backend("openai").generate(b)
    assert _Handler.seen[-1][2]["model"] == "envmodel" and _Handler.seen[-1][1] is None


def test_openai_backend_errors(server, monkeypatch):
    b = bio()
    _Handler.status = 503
    with pytest.raises(NarrativeBackendError, match="HTTP 503.*overloaded"):
        OpenAIBackend(base_url=server, model="m").generate(b)
    _Handler.status, _Handler.delay = 200, 1.0
    with pytest.raises(NarrativeBackendError, match="within 0.2 s"):
        OpenAIBackend(base_url=server, model="m", timeout=0.2).generate(b)
    with pytest.raises(NarrativeBackendError, match="cannot reach"):
        OpenAIBackend(base_url="http://127.0.0.1:9/v1", model="m", timeout=2).generate(b)
    monkeypatch.delenv("SEGTME_OPENAI_BASE_URL", raising=False)
    with pytest.raises(NarrativeBackendError, match="SEGTME_OPENAI_BASE_URL"):
        OpenAIBackend(model="m")
    with pytest.raises(NarrativeBackendError, match="unknown narrative backend"):
        get_backend("gpt")


def test_report_falls_back_to_template_on_unsupported_claims(server):
    table = nuclei_table_from_maps(*maps(), mpp=0.5)
    _Handler.reply = "The region is immune cold with 97 lymphocytes."
    r = build_tme_report(table, "openai", base_url=server, model="m")
    assert r["narrative_backend"] == "openai" and r["narrative_backend_used"] == "template"
    fb = r["narrative_fallback"]
    assert fb["rejected_narrative"] == _Handler.reply and fb["verifier"]["n_unsupported"] == 2
    assert r["narrative"] == render_template({k: r[k] for k in ("raw_data", "interpretation", "generated_tokens")})
    assert r["verifier"]["unsupported"] == []
    # a grounded LLM narrative is kept
    _Handler.reply = f"There are {r['raw_data']['N_total']} nuclei; the immune status is {r['interpretation']['Immune status']}."
    r2 = build_tme_report(table, "openai", base_url=server, model="m")
    assert r2["narrative_backend_used"] == "openai" and r2["narrative"] == _Handler.reply and r2["narrative_fallback"] is None
    # fallback can be disabled: the unsupported text is kept and reported
    _Handler.reply = "Immune cold."
    r3 = build_tme_report(table, "openai", base_url=server, model="m", fallback_to_template=False)
    assert r3["narrative"] == "Immune cold." and r3["verifier"]["hallucination_rate"] == 1.0
    json.dumps(r, allow_nan=False)


def test_report_fields_and_measurements():
    table = nuclei_table_from_maps(*maps(), mpp=0.5, taxonomy="consep4")
    r = build_tme_report(table)
    for k in ("raw_data", "interpretation", "generated_tokens", "narrative", "narrative_backend_used", "verifier",
              "substitutions", "thresholds"):
        assert k in r
    assert r["substitutions"] and "Note: " + r["substitutions"][0] in r["narrative"]
    assert r["thresholds"]["effective"]["engagement_radius_um"] == pytest.approx(15.7)
    m = report_measurements(r)
    # consep4: class 1 "Other" (4 cells here), 2 Inflammatory (2), 3 "Epithelial (incl. tumour)" -> Neoplastic (2)
    assert (m["SegTME: Other count"], m["SegTME: Inflammatory count"], m["SegTME: Neoplastic count"]) == (4.0, 2.0, 2.0)
    assert "SegTME: Dead count" not in m  # undefined (no Dead class) -> omitted
    assert m["SegTME: Mean dist Inflammatory→Neoplastic µm"] == pytest.approx(r["raw_data"]["mean_dist_Inflammatory_to_Neoplastic_um"])
    assert "SegTME: Tumour-stroma fraction" in m and "SegTME: Mean spatial entropy bits" in m
    assert all(isinstance(v, float) for v in m.values())


def test_tme_command(tmp_path, capsys):
    from PIL import Image

    from segtme.cli import main

    inst, cls = maps()
    Image.fromarray(inst.astype(np.uint16)).save(tmp_path / "inst.png")
    Image.fromarray(cls).save(tmp_path / "cls.png")
    out = tmp_path / "tme.json"
    assert main(["tme", "--inst", str(tmp_path / "inst.png"), "--cls", str(tmp_path / "cls.png"), "--mpp", "0.5",
                 "--out", str(out)]) == 0
    r = json.loads(out.read_text())
    assert r["raw_data"]["N_total"] == 8 and r["verifier"]["n_unsupported"] == 0
    # an RGB rendering passed as the instance map: fatal, clearly worded, exit 2
    Image.fromarray(np.stack([cls * 40] * 3, -1)).save(tmp_path / "rgb.png")
    assert main(["tme", "--inst", str(tmp_path / "rgb.png"), "--cls", str(tmp_path / "cls.png")]) == 2
    assert "3-channel" in capsys.readouterr().err
