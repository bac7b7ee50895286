"""Adversarial evaluation of the grounding verifier on real images (issue #20): template narratives of
real regions (CoNSeP human class maps, MoNuSeg / GBM human instance maps via SEGTME_DATA_DIR) are
perturbed automatically and every perturbation must be caught, with no false alarm on the originals.
The full corpus and the table in docs/tme.md: scripts/adversarial_verifier.py."""

from __future__ import annotations

import pytest

from segtme.narrative.adversarial import KINDS, evaluate, format_table
from segtme.narrative.sources import real_corpus, to_bio


@pytest.fixture(scope="module")
def corpus(shared_data):
    return [to_bio(x) for x in real_corpus(shared_data, "small")]


@pytest.mark.data
def test_adversarial_detection_on_real_narratives(corpus):
    assert len(corpus) >= 50
    assert {name.split("/")[0] for name, _, _ in corpus} == {"consep-train", "monuseg-train", "gbm-tcga-tiles"}
    assert any(b["raw_data"].get("mpp") is None for _, b, _ in corpus) and any(b["raw_data"].get("mpp") for _, b, _ in corpus)
    res = evaluate(corpus, seed=0)
    print(format_table(res))
    assert res.false_alarms == []  # 0 false alarms on the unperturbed narratives
    assert res.n_perturbed >= 500
    for k in KINDS:
        assert res.total[k] >= 20, k
    assert res.rate() >= 0.99, res.missed[:10]
