"""Grounding verifier: invented numbers/phenotypes are flagged; template narratives pass on real maps."""

from __future__ import annotations

import json

import numpy as np
import pytest

from segtme.narrative.template import render_template
from segtme.narrative.verify import verify_narrative
from segtme.tme import translate_tme_to_bio_tokens


def bio(**kw):
    f = {
        "N_total": 140, "N_Neoplastic": 60, "N_Inflammatory": 50, "N_Connective": 30,
        "r_Neoplastic": 60 / 140, "r_Inflammatory": 50 / 140, "r_Connective": 30 / 140,
        "mean_area_Neoplastic": 312.4, "mean_area_Neoplastic_um2": 19.5250,
        "f_TS": 0.6667, "f_II": 50 / 110,
        "min_dist_Inflammatory_to_Neoplastic": 12.0, "min_dist_Inflammatory_to_Neoplastic_um": 3.0,
        "mean_dist_Inflammatory_to_Neoplastic": 45.36, "mean_dist_Inflammatory_to_Neoplastic_um": 11.34,
        "count_engaged_immune": 41, "fraction_engaged_immune": 0.82, "engagement_radius": 62.8,
        "engagement_radius_um": 15.7, "mean_spatial_entropy": 0.853, "mpp": 0.25, "undefined": {},
    }
    f.update(kw)
    return translate_tme_to_bio_tokens(f)


def unsupported_texts(text, b):
    return [c.text for c in verify_narrative(text, b).unsupported]


def test_invented_number_is_flagged():
    b = bio()
    assert unsupported_texts("There are 140 nuclei, 60 of them neoplastic.", b) == []
    assert unsupported_texts("There are 141 nuclei.", b) == ["141"]
    assert unsupported_texts("Inflammatory nuclei lie on average 11.3 µm from neoplastic nuclei.", b) == []
    assert unsupported_texts("Inflammatory nuclei lie on average 13.9 µm from neoplastic nuclei.", b) == ["13.9 µm"]
    # a number whose subject cannot be determined is unbound, never supported (11.3 µm is a real value)
    res = verify_narrative("Mean distance 11.3 µm.", b)
    assert [(c.text, c.status) for c in res.claims] == [("11.3 µm", "unbound")] and not res.ok


def test_rounding_and_units():
    b = bio()
    # 60/140 = 42.857%: 42.9%, 43%, 42.86% are stated roundings; 44% is not
    assert unsupported_texts("Purity 42.9%, 43%, 42.86%.", b) == []
    assert unsupported_texts("Purity 44%.", b) == ["44%"]
    # a px value cited as µm is unsupported (unit-aware); the same number in px is fine
    closest = "The closest inflammatory nucleus lies {} from a neoplastic nucleus."
    assert unsupported_texts(closest.format("12.0 px"), b) == []
    assert unsupported_texts(closest.format("12.0 µm"), b) == ["12.0 µm"]
    assert unsupported_texts("The mean neoplastic nuclear area is 19.5 µm² (312 px²).", b) == []
    assert unsupported_texts("The mean neoplastic nuclear area is 312 µm².", b) == ["312 µm²"]
    assert verify_narrative("Area 19.5 µm².", b).claims[0].status == "unbound"  # whose area?
    # numbers glued to identifiers are not claims
    res = verify_narrative("f_TS and log2 entropy, CD8 cells.", b)
    assert res.n_claims == 0 and res.hallucination_rate == 0.0


def test_invented_phenotype_is_flagged():
    b = bio()  # r_inf 0.357 -> Immune Hot; r_neo 0.43 -> Intermediate purity; dist 45.36 px @0.25 -> Proximal
    assert b["interpretation"]["Immune status"] == "Immune Hot"
    assert unsupported_texts("An immune hot region with a heavy infiltrate.", b) == []
    assert unsupported_texts("The tumour is immune cold.", b) == ["immune cold"]
    assert unsupported_texts("Immune cells are excluded from the tumour.", b) == ["excluded"]
    assert unsupported_texts("Marked desmoplasia is seen.", b) == ["desmoplasia"]
    # token vs label: "Non-desmoplastic" is one phrase, not a desmoplastic claim
    res = verify_narrative("Non-desmoplastic.", b)
    assert [c.text for c in res.claims] == ["Non-desmoplastic"] and not res.ok
    # negations invert the claim: the spatial axis is Proximal, so "no exclusion" is true
    assert unsupported_texts("There is no immune exclusion.", b) == []
    assert unsupported_texts("There is no heavy infiltrate.", b) == ["heavy infiltrate"]


def test_hallucination_rate_and_result_dict():
    b = bio()
    res = verify_narrative("140 nuclei; 999 lymphocytes; immune cold; peritumoral.", b)
    d = res.to_dict()
    assert d["n_claims"] == 4 and d["n_unsupported"] == 2 and d["hallucination_rate"] == 0.5
    assert {u["text"] for u in d["unsupported"]} == {"999", "immune cold"}
    json.dumps(d, allow_nan=False)


def test_indeterminate_claims():
    b = bio(mean_spatial_entropy=None, undefined={"mean_spatial_entropy": "fewer than 6 nuclei (N_total = 5)"})
    assert b["interpretation"]["Architecture"] == "Indeterminate"
    text = render_template(b)
    assert "fewer than 6 nuclei" in text
    assert verify_narrative(text, b).ok  # numbers inside the stated reason are grounded in raw_data
    assert unsupported_texts("Immune engagement: Indeterminate.", bio()) == ["Immune engagement: Indeterminate"]


def _consep(shared_data, n):
    from PIL import Image

    root = shared_data / "consep-train"
    items = json.loads((root / "index.json").read_text())["items"][:n]
    for it in items:
        yield (np.asarray(Image.open(root / it["inst"])), np.asarray(Image.open(root / it["type_map"])), float(it["mpp"]))


@pytest.mark.data
def test_template_narrative_fully_grounded_on_real_segmentations(shared_data):
    from segtme.report import build_tme_report
    from segtme.tme import nuclei_table_from_maps

    n_claims = 0
    for inst, cls, mpp in _consep(shared_data, 6):
        for m in (mpp, None):  # with and without a known pixel size
            report = build_tme_report(nuclei_table_from_maps(inst, cls, mpp=m, taxonomy="consep4"))
            v = report["verifier"]
            assert v["unsupported"] == [], v["unsupported"]
            assert v["hallucination_rate"] == 0.0 and report["narrative_backend_used"] == "template"
            n_claims += v["n_claims"]
            # and an edited narrative with one invented value is caught on the same data
            b = {k: report[k] for k in ("raw_data", "interpretation", "generated_tokens")}
            bad = report["narrative"] + " The mean neoplastic nuclear area is 987.6 µm²."
            assert [c.text for c in verify_narrative(bad, b).unsupported] == ["987.6 µm²"]
    assert n_claims > 200
