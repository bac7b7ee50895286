"""Claims bound to their quantities (issue #20): the bundled sample's swapped narrative is rejected,
every template number is bound to the key the template cites, free-text paraphrases bind to the
right quantity, phenotypes are checked on their own axis with negations, PAGET/mitosis sentences,
and the report's fallback names the failed claims."""

from __future__ import annotations

import numpy as np
import pytest

from segtme.narrative.adversarial import KINDS, perturbations
from segtme.narrative.backends import NarrativeBackend
from segtme.narrative.template import template_narrative
from segtme.narrative.verify import verify_narrative
from segtme.tme import translate_tme_to_bio_tokens
from segtme.report import report_from_features

# raw_data of the bundled sample's report: `segtme analyze` of segtme.samples.sample_path() at 0.5 µm/px with
# the shipped default model (consep4), see scripts/demo.sh
DEMO_RAW = {'N_total': 309, 'N_uncounted': 0, 'N_Neoplastic': 276, 'N_Inflammatory': 5, 'N_Connective': 27, 'N_Other': 1, 'r_Neoplastic': 0.8932038834951457, 'r_Inflammatory': 0.016181229773462782, 'r_Connective': 0.08737864077669903, 'r_Other': 0.003236245954692557, 'mean_area_Neoplastic': 155.8695652173913, 'mean_area_Neoplastic_um2': 38.96739130434783, 'mean_area_Inflammatory': 75.0, 'mean_area_Inflammatory_um2': 18.75, 'mean_area_Connective': 68.74074074074075, 'mean_area_Connective_um2': 17.185185185185187, 'mean_area_Other': 16.0, 'mean_area_Other_um2': 4.0, 'f_TS': 0.9108910891089109, 'f_II': 0.017793594306049824, 'min_dist_Inflammatory_to_Neoplastic': 11.461040359074271, 'min_dist_Inflammatory_to_Neoplastic_um': 5.730520179537136, 'mean_dist_Inflammatory_to_Neoplastic': 15.09677113917925, 'mean_dist_Inflammatory_to_Neoplastic_um': 7.548385569589625, 'count_engaged_immune': 5, 'fraction_engaged_immune': 1.0, 'engagement_radius': 31.4, 'engagement_radius_um': 15.7, 'mean_spatial_entropy': 0.31405625695630596, 'mpp': 0.5}


def demo_features():
    f = dict(DEMO_RAW)
    und = {}
    for stem in ("Dead", "Epithelial"):
        for k in (f"N_{stem}", f"r_{stem}", f"mean_area_{stem}", f"mean_area_{stem}_um2"):
            f[k] = None
            und[k] = f"taxonomy consep4 has no {stem} class"
    f["undefined"] = und
    return f


def demo_bio():
    r = report_from_features(demo_features(), "consep4")
    return r, {k: r[k] for k in ("raw_data", "interpretation", "generated_tokens")}


SWAPS = (("276 neoplastic (89.3%), 5 inflammatory (1.6%)", "5 neoplastic (1.6%), 276 inflammatory (89.3%)"),
         ("lie on average 7.5 µm", "lie on average 5.7 µm"))


def failed(text, b):
    return [(c.text, c.quantity) for c in verify_narrative(text, b).unsupported]


def test_issue_swapped_demo_narrative_is_rejected():
    r, b = demo_bio()
    text = r["narrative"]
    assert r["verifier"]["n_claims"] == 43 and r["verifier"]["n_unsupported"] == 0
    for old, _ in SWAPS:
        assert old in text
    bad = text
    for old, new in SWAPS:
        bad = bad.replace(old, new)
    assert failed(bad, b) == [("5", "N_Neoplastic"), ("1.6%", "r_Neoplastic"), ("276", "N_Inflammatory"),
                              ("89.3%", "r_Inflammatory"), ("5.7 µm", "mean_dist_Inflammatory_to_Neoplastic_um")]
    # each swap alone is caught too; f_II = 0.02 is bound to f_II, not to r_Inflammatory (1.6%)
    for old, new in SWAPS:
        assert failed(text.replace(old, new), b)
    fii = [c for c in verify_narrative(text, b).claims if c.text == "0.02"]
    assert [c.quantity for c in fii] == ["f_II"]
    assert failed(text.replace("f_II is 0.02", "f_II is 0.89"), b) == [("0.89", "f_II")]


class _Fixed(NarrativeBackend):
    name = "fixed-llm"
    is_llm = True

    def __init__(self, text):
        self.text = text

    def generate(self, bio, substitutions=()):
        return self.text


def test_report_falls_back_and_lists_failed_claims():
    r, b = demo_bio()
    bad = r["narrative"]
    for old, new in SWAPS:
        bad = bad.replace(old, new)
    rep = report_from_features(demo_features(), "consep4", _Fixed(bad))
    assert rep["narrative_backend_used"] == "template" and rep["narrative"] == r["narrative"]
    fb = rep["narrative_fallback"]
    assert fb["rejected_narrative"] == bad and fb["verifier"]["n_unsupported"] == 5
    assert any("N_Neoplastic = 276, not 5" in s for s in fb["verifier"]["failed_claims"])
    # an unbound number alone triggers the fallback too
    rep2 = report_from_features(demo_features(), "consep4", _Fixed(r["narrative"] + " It was scanned on 3 scanners."))
    assert rep2["narrative_backend_used"] == "template"
    assert rep2["narrative_fallback"]["verifier"]["n_unbound"] == 1
    # the grounded narrative is kept
    rep3 = report_from_features(demo_features(), "consep4", _Fixed(r["narrative"]))
    assert rep3["narrative_backend_used"] == "fixed-llm" and rep3["narrative_fallback"] is None


def _table_bio(seed, mpp, n=80, taxonomy="pannuke6"):
    from segtme.inference.nuclei import NucleiTable
    from segtme.taxonomy import get_taxonomy
    from segtme.tme import analyze_tme_from_nuclei

    rng = np.random.default_rng(seed)
    tax = get_taxonomy(taxonomy)
    z = np.ones(n)
    t = NucleiTable(tax, np.arange(1, n + 1), rng.integers(1, tax.num_classes, n).astype(np.int32),
                    rng.uniform(0, 400, (n, 2)), [np.zeros((0, 2))] * n, z, rng.uniform(60, 500, n), z, z, z, z, z, z,
                    mpp=mpp)
    return translate_tme_to_bio_tokens(analyze_tme_from_nuclei(t), taxonomy=tax.name)


@pytest.mark.parametrize("seed,mpp", [(0, 0.25), (1, None), (2, 0.5), (3, 0.25)])
def test_every_template_number_is_bound_to_its_key(seed, mpp):
    b = _table_bio(seed, mpp)
    tn = template_narrative(b)
    res = verify_narrative(tn.text, b)
    assert res.ok, res.failed_summary()
    got = {(c.start, c.quantity) for c in res.claims if c.kind == "number"}
    assert got == {(c.start, c.key) for c in tn.numbers()}
    assert len(tn.numbers()) >= 20


PARAPHRASES = [  # (sentence, expected bound keys in order)
    ("Of the 309 nuclei, 276 are neoplastic and 27 connective.", ["N_total", "N_Neoplastic", "N_Connective"]),
    ("Tumour purity is 89.3%.", ["r_Neoplastic"]),
    ("89.3% of all nuclei are neoplastic.", ["r_Neoplastic"]),
    ("Immune cells sit on average 7.5 µm away from the nearest tumour cell.", ["mean_dist_Inflammatory_to_Neoplastic_um"]),
    ("The minimum distance between inflammatory and neoplastic nuclei is 5.7 µm (11.5 px).",
     ["min_dist_Inflammatory_to_Neoplastic_um", "min_dist_Inflammatory_to_Neoplastic"]),
    ("The closest inflammatory nucleus lies 5.7 µm from a neoplastic nucleus.", ["min_dist_Inflammatory_to_Neoplastic_um"]),
    ("f_TS = 0.91 and the immune infiltration fraction is 0.02.", ["f_TS", "f_II"]),
    ("The tumour-stroma fraction is 91.1%.", ["f_TS"]),
    ("All 5 inflammatory nuclei lie within 15.7 µm of tumour.", ["count_engaged_immune", "engagement_radius_um"]),
    ("Neoplastic nuclei measure 39.0 µm² on average.", ["mean_area_Neoplastic_um2"]),
    ("Spatial entropy is 0.31.", ["mean_spatial_entropy"]),
    ("There were 276 tumour cells out of 309 nuclei.", ["N_Neoplastic", "N_total"]),
    ("The mean distance from inflammatory to neoplastic nuclei is 7.5 µm.", ["mean_dist_Inflammatory_to_Neoplastic_um"]),
    ("5 of 5 immune cells (100%) are within the 15.7 µm engagement radius.",
     ["count_engaged_immune", "N_Inflammatory", "fraction_engaged_immune", "engagement_radius_um"]),
    ("About 89% of nuclei are neoplastic.", ["r_Neoplastic"]),
    ("Inflammatory nuclei: 5 (1.6%).", ["N_Inflammatory", "r_Inflammatory"]),
    ("Mean distance between immune and tumour nuclei: 7.5 µm; minimum: 5.7 µm.",
     ["mean_dist_Inflammatory_to_Neoplastic_um", "min_dist_Inflammatory_to_Neoplastic_um"]),
    ("Connective tissue nuclei account for 8.7% of cells, and 1 other nucleus (0.3%) was seen.",
     ["r_Connective", "N_Other", "r_Other"]),
    ("Neoplastic cells dominate (89.3% of 309 nuclei).", ["r_Neoplastic", "N_total"]),
    ("With a mean nearest-neighbour distance of 7.5 µm, immune cells are proximal to the tumour.",
     ["mean_dist_Inflammatory_to_Neoplastic_um"]),
]


@pytest.mark.parametrize("sentence,keys", PARAPHRASES)
def test_free_text_binds_to_the_stated_quantity(sentence, keys):
    _, b = demo_bio()
    res = verify_narrative(sentence, b)
    nums = [c for c in res.claims if c.kind == "number"]
    assert [c.quantity for c in nums] == keys
    assert res.ok, res.failed_summary()


def test_wrong_subject_wrong_statistic_and_unbound():
    _, b = demo_bio()
    # right number, wrong subject / direction / statistic / unit
    assert failed("Connective nuclei are 1.6% of all nuclei.", b) == [("1.6%", "r_Connective")]
    assert failed("Neoplastic nuclei lie on average 7.5 µm from the nearest inflammatory nucleus.", b) ==         [("7.5 µm", "mean_dist_Neoplastic_to_Inflammatory_um")]
    assert failed("The closest inflammatory nucleus is 7.5 µm from a neoplastic nucleus.", b) ==         [("7.5 µm", "min_dist_Inflammatory_to_Neoplastic_um")]
    assert failed("The mean neoplastic nuclear area is 156 µm².", b) == [("156 µm²", "mean_area_Neoplastic_um2")]
    assert failed("There are 12 dead nuclei.", b) == [("12", "N_Dead")]  # consep4 has no dead class
    assert failed("There are 3 lymphocytes.", b) == [("3", "N_Lymphocyte")]  # not a PAGET report
    # numbers whose subject cannot be determined are unbound, even when some raw value equals them
    for s in ("The slide has 5 regions of interest.", "Scores were 0.91 and 7.5.", "We used 27 reviewers."):
        res = verify_narrative(s, b)
        assert res.claims and all(c.status == "unbound" for c in res.claims if c.kind == "number"), s
        assert not res.ok


def test_phenotypes_on_their_own_axis_and_negation():
    _, b = demo_bio()  # Immune Cold, Intermediate stroma, Proximal, Segregated, Large/Pleomorphic, Tumour-engaged
    ok = ["Immune status: Immune Cold (Immune desert, Pauci-immune).", "The immune status is Immune Cold.",
          "Immune status: not Immune Hot.", "There is no heavy infiltrate.", "Immune cells are not excluded.",
          "Stromal status: Intermediate stroma.", "The region is immune cold, and cells are segregated."]
    for s in ok:
        assert verify_narrative(s, b).ok, (s, verify_narrative(s, b).failed_summary())
    bad = {"Stromal status: Immune Cold.": "Immune status: Immune Cold",
           "Stromal status: Intermediate stroma (Immune desert).": "Immune desert",
           "Stromal status: Moderate.": "Immune status: Moderate",
           "Immune status: not Immune Cold.": "Immune status: Immune Cold",
           "There is no immune desert.": "Immune desert",
           "Cells are not segregated.": "Architecture: Segregated",
           "Architecture: Intermediate mixing.": "Architecture: Intermediate mixing"}
    for s, q in bad.items():
        res = verify_narrative(s, b)
        assert [c.quantity for c in res.unsupported] == [q], (s, res.failed_summary())
    # a negated phenotype of an indeterminate axis cannot be checked
    bi = translate_tme_to_bio_tokens({**demo_features(), "mean_spatial_entropy": None,
                                      "undefined": {"mean_spatial_entropy": "fewer than 6 nuclei"}})
    assert not verify_narrative("The cells are not segregated.", bi).ok
    assert verify_narrative("Architecture: Indeterminate.", bi).ok


def _paget_bio(mitotic_density=None):
    from segtme.paget import features as pf  # registers the PAGET feature group and token axes  # noqa: F401

    f = {"N_total": 200, "N_Neoplastic": 90, "N_Inflammatory": 70, "N_Connective": 40, "N_Dead": None,
         "N_Epithelial": None, "r_Neoplastic": 0.45, "r_Inflammatory": 0.35, "r_Connective": 0.2,
         "r_Dead": None, "r_Epithelial": None, "mean_area_Neoplastic": 250.0, "f_TS": 90 / 130, "f_II": 70 / 160,
         "min_dist_Inflammatory_to_Neoplastic": 8.0, "mean_dist_Inflammatory_to_Neoplastic": 40.0,
         "count_engaged_immune": 30, "fraction_engaged_immune": 30 / 70, "engagement_radius": 31.4,
         "mean_spatial_entropy": 1.1, "mpp": None,
         "N_Lymphocyte": 45, "N_Plasma_cell": 10, "N_Myeloid_cell": 8, "N_Eosinophil": 4, "N_Neutrophil": 3,
         "N_Granulocyte": 7, "N_Leukocyte": 70, "frac_Lymphocyte_of_Leukocyte": 45 / 70,
         "frac_Plasma_cell_of_Leukocyte": 10 / 70, "frac_Myeloid_cell_of_Leukocyte": 8 / 70,
         "frac_Granulocyte_of_Leukocyte": 7 / 70, "N_Fibroblast": 30, "N_Endothelial_cell": 10, "N_Mitotic_cell": 3,
         "r_Mitotic_of_Epithelial": 3 / 90, "tissue_area_px": 160000.0, "area_frac_Epithelium": 0.42,
         "area_frac_Stroma": 0.38, "area_frac_Smooth_muscle": 0.15, "area_frac_Red_blood_cell": 0.05,
         "N_Leukocyte_in_Epithelium": 20, "N_Leukocyte_in_Stroma": 40, "N_Leukocyte_in_Smooth_muscle": 10,
         "frac_Leukocyte_in_Epithelium": 20 / 60, "frac_Lymphocyte_in_Epithelium": 0.25, "undefined": {}}
    if mitotic_density is not None:
        f["mitotic_count_per_mm2"] = mitotic_density
    return translate_tme_to_bio_tokens(f, taxonomy="paget13")


@pytest.mark.parametrize("density", [None, 4.25])
def test_paget_and_mitosis_sentences_are_bound(density):
    b = _paget_bio(density)
    assert b["interpretation"]["Immune composition"] == "Lymphocyte-predominant"
    tn = template_narrative(b)
    assert "Immune composition: Lymphocyte-predominant (Lymphocyte-predominant infiltrate)" in tn.text
    assert "smooth muscle covers 15.0% of the tissue area" in tn.text and "3 mitotic figures (3.3%" in tn.text
    assert ("4.2 per mm²" in tn.text) == (density is not None)
    res = verify_narrative(tn.text, b)
    assert res.ok, res.failed_summary()
    assert {(c.start, c.quantity) for c in res.claims if c.kind == "number"} == {(c.start, c.key) for c in tn.numbers()}
    keys = {c.key for c in tn.numbers()}
    assert {"frac_Plasma_cell_of_Leukocyte", "area_frac_Stroma", "tissue_area_px", "frac_Lymphocyte_in_Epithelium",
            "r_Mitotic_of_Epithelial", "N_Leukocyte"} <= keys
    # PAGET shares swapped between subtypes / tissues are caught
    swapped = tn.text.replace("lymphocytes are 64.3%, plasma cells 14.3%", "lymphocytes are 14.3%, plasma cells 64.3%")
    assert swapped != tn.text and failed(swapped, b) == [("14.3%", "frac_Lymphocyte_of_Leukocyte"),
                                                         ("64.3%", "frac_Plasma_cell_of_Leukocyte")]
    assert failed(tn.text.replace("Smooth muscle: Present", "Smooth muscle: Absent"), b) ==         [("Smooth muscle: Absent", "Smooth muscle: Absent")]
    if density is not None:
        assert failed(tn.text.replace("4.2 per mm²", "5.2 per mm²"), b) == [("5.2 per mm²", "mitotic_count_per_mm2")]


@pytest.mark.parametrize("seed,mpp", [(0, 0.25), (1, None)])
def test_every_perturbation_kind_is_generated_and_detected(seed, mpp):
    b = _table_bio(seed, mpp, n=120, taxonomy="consep4")
    tn = template_narrative(b)
    ps = perturbations(tn, b, seed=seed)
    assert {p.kind for p in ps} == set(KINDS)
    for p in ps:
        assert p.text != tn.text
        assert not verify_narrative(p.text, b).ok, (p.kind, p.description)


LLM_STYLE = ("This region contains 309 nuclei, dominated by neoplastic cells (276, 89.3%), with few inflammatory "
             "cells (5; 1.6%) and 27 connective nuclei (8.7%). The tumour is immune cold (immune desert), with an "
             "immune infiltration fraction f_II of 0.02; the tumour-stroma fraction is 0.91. Inflammatory cells lie on "
             "average 7.5 µm from the nearest tumour nucleus (minimum 5.7 µm). Mixing is low (entropy 0.31 bits), "
             "a segregated architecture. Neoplastic nuclei are enlarged (mean area 39.0 µm²). All 5 inflammatory "
             "nuclei are within 15.7 µm of a tumour nucleus: the infiltrate is tumour-engaged.")


def test_llm_style_paraphrase_is_grounded_and_its_swaps_are_not():
    _, b = demo_bio()
    res = verify_narrative(LLM_STYLE, b)
    assert res.ok, res.failed_summary()
    assert [c.quantity for c in res.claims if c.kind == "number"] == [
        "N_total", "N_Neoplastic", "r_Neoplastic", "N_Inflammatory", "r_Inflammatory", "N_Connective", "r_Connective",
        "f_II", "f_TS", "mean_dist_Inflammatory_to_Neoplastic_um", "min_dist_Inflammatory_to_Neoplastic_um",
        "mean_spatial_entropy", "mean_area_Neoplastic_um2", "count_engaged_immune", "engagement_radius_um"]
    for old, new in (("(276, 89.3%)", "(5, 1.6%)"), ("average 7.5 µm", "average 5.7 µm"), ("immune cold", "immune hot"),
                     ("(minimum 5.7 µm)", "(minimum 7.5 µm)"), ("27 connective", "27 dead"), ("39.0 µm²", "39.0 px²")):
        assert old in LLM_STYLE
        assert not verify_narrative(LLM_STYLE.replace(old, new), b).ok, new
