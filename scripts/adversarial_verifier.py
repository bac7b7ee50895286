#!/usr/bin/env python
"""Adversarial evaluation of the grounding verifier on real images (issue #20).

Template narratives of real regions (../shared/data, or $SEGTME_DATA_DIR: CoNSeP human class maps,
MoNuSeg and GBM/TCGA human instance maps) are perturbed automatically (swapped classes, min vs
mean, rounding shifts, px<->µm, phenotypes moved to another axis or negated, invented classes;
see segtme.narrative.adversarial) and verified. Prints the detection rate per perturbation kind
as a markdown table (the one in docs/tme.md) and the false alarms on the unperturbed narratives.

    .venv/bin/python scripts/adversarial_verifier.py [--size full|small] [--seed 0] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from segtme.narrative.adversarial import evaluate, format_table
from segtme.narrative.sources import real_corpus, to_bio


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", default=os.environ.get("SEGTME_DATA_DIR", str(Path(__file__).resolve().parents[1].parent / "shared" / "data")))
    ap.add_argument("--size", default="full", choices=["full", "small"])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", default=None, help="also write the result (with every missed perturbation) here")
    a = ap.parse_args(argv)
    t0 = time.perf_counter()
    items = [to_bio(x) for x in real_corpus(a.data, a.size)]
    t1 = time.perf_counter()
    res = evaluate(items, seed=a.seed)
    t2 = time.perf_counter()
    print(format_table(res))
    print(f"\n{res.n_narratives} narratives ({res.n_claims} claims) of real regions from {a.data} (corpus {a.size!r}, "
          f"seed {a.seed}); features {t1 - t0:.1f} s, verification {t2 - t1:.1f} s")
    for name, failed in res.false_alarms:
        print(f"FALSE ALARM {name}: {failed}")
    for name, kind, desc in res.missed:
        print(f"MISSED {kind} {name}: {desc}")
    if a.json:
        from segtme.export.atomic import atomic_write_text

        atomic_write_text(a.json, json.dumps(res.to_dict(), indent=2, ensure_ascii=False) + "\n")
    return 0 if not res.false_alarms else 1


if __name__ == "__main__":
    sys.exit(main())
