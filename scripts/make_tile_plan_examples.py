#!/usr/bin/env python
"""Generate tests/data/tile_plan_examples.json from the Python streaming tile plan.

The Java client (``client/TilePlanner.java``) and the Python tests both check their planner
against this file. Run from the repo root:

    .venv/bin/python scripts/make_tile_plan_examples.py [--out tests/data/tile_plan_examples.json]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from segtme.export.atomic import atomic_write_text
from segtme.inference.tiling import owner_index, plan_stream_tiles

REPO = Path(__file__).resolve().parents[1]

#: (name, bounds (bx,by,bw,bh), image_size (W,H), image_mpp, model_mpp, tile, overlap)
CASES = [
    ("integer_d2_interior", (1000, 2000, 1500, 900), (20000, 15000), 0.25, 0.5, 256, 64),
    ("d1_same_resolution", (0, 0, 700, 500), (700, 500), 0.5, 0.5, 224, 56),
    ("noninteger_d_monuseg", (123, 45, 1001, 777), (4000, 3000), 0.2456, 0.5, 256, 32),
    ("d_below_1_upsampling", (10, 20, 300, 250), (512, 512), 0.5, 0.314, 224, 56),
    ("bounds_at_image_edges", (0, 0, 1024, 768), (1024, 768), 0.2527, 0.314, 224, 56),
    ("bounds_touching_right_bottom", (3500, 2600, 596, 472), (4096, 3072), 0.25, 0.5, 256, 64),
    ("tiny_bounds_single_tile", (50, 60, 7, 5), (100, 100), 0.25, 0.5, 256, 64),
    ("no_overlap", (17, 33, 999, 601), (2000, 2000), 0.3, 0.45, 100, 0),
    ("odd_overlap", (17, 33, 999, 601), (2000, 2000), 0.3, 0.45, 101, 33),
    ("bounds_past_image_edges", (-40, -25, 700, 650), (600, 500), 0.25, 0.5, 256, 64),
]


def ownership_probes(bounds, tiles):
    """Points (full-res px) around core edges and the bounds, with the expected owner index."""
    bx, by, bw, bh = bounds
    pts = {(bx, by), (bx + bw - 0.5, by + bh - 0.5), (bx + bw, by), (bx - 0.5, by), (bx + bw / 2, by + bh / 2)}
    for t in tiles[:6]:
        x0, y0, x1, y1 = t.core
        pts |= {(x0, y0), (x1, y0), (x1 - 1e-6, y1 - 1e-6), (x1 + 0.25, (y0 + y1) / 2), ((x0 + x1) / 2, y1)}
    return [{"x": float(x), "y": float(y), "owner": owner_index(tiles, x, y)} for x, y in sorted(pts)]


def build() -> dict:
    cases = []
    for name, bounds, size, impp, mmpp, T, O in CASES:
        tiles = plan_stream_tiles(bounds, size, impp, mmpp, T, O)
        d = mmpp / impp
        cases.append(
            {
                "name": name,
                "input": {"bounds": list(bounds), "image_size": list(size), "image_mpp": impp,
                          "model_mpp": mmpp, "tile": T, "overlap": O},
                "derived": {"d": d, "core_step": (T - O) * d, "nx": max(t.i for t in tiles) + 1,
                            "ny": max(t.j for t in tiles) + 1},
                "tiles": [{"i": t.i, "j": t.j, "core": list(t.core), "region": list(t.region)} for t in tiles],
                "ownership": ownership_probes(bounds, tiles),
            }
        )
    return {
        "rule": "docs/INTERFACES.md, 'The streaming tile plan'. core = [x0, y0, x1, y1] half-open; "
        "region = [x, y, w, h] clipped to the image; tiles row-major (j outer, i inner); "
        "owner = index into tiles of the tile whose core holds (x, y), null if outside the bounds.",
        "generated_by": "scripts/make_tile_plan_examples.py (python/segtme/inference/tiling.py)",
        "cases": cases,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(REPO / "tests" / "data" / "tile_plan_examples.json"))
    args = ap.parse_args()
    atomic_write_text(args.out, json.dumps(build(), indent=1) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
