"""Shared test fixtures.

Real data is read through ONE configurable path: ``$SEGTME_DATA_DIR`` (default:
``<repo>/../shared/data``). Without it, data tests skip on a user's machine, but FAIL when
``CI=true`` (CI must never silently skip them).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]


def data_dir() -> Path:
    return Path(os.environ.get("SEGTME_DATA_DIR", REPO.parent / "shared" / "data")).resolve()


def _require(path: Path) -> Path:
    if not path.exists():
        msg = f"shared data not found at {path} (set SEGTME_DATA_DIR)"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(msg + " — CI must not skip data tests")
        pytest.skip(msg)
    return path


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """Root of ../shared/data (fails under CI=true when missing)."""
    return _require(data_dir())


def load_monuseg(n: int = 2, crop: int | None = None):
    """First ``n`` MoNuSeg training images as (rgb uint8, inst uint16/int32, mpp), optionally cropped."""
    import json

    from PIL import Image

    root = _require(data_dir() / "monuseg-train")
    index = json.loads((root / "index.json").read_text())
    items = index["items"] if isinstance(index, dict) and "items" in index else index
    out = []
    for it in items[:n]:
        rgb = np.asarray(Image.open(root / it["image"]).convert("RGB"))
        inst = np.asarray(Image.open(root / it["label"] if "label" in it else root / it["inst"])).astype(np.int32)
        mpp = float(it.get("mpp", 0.25))
        if crop:
            rgb, inst = rgb[:crop, :crop], inst[:crop, :crop]
        out.append((rgb, inst, mpp))
    return out


@pytest.fixture(scope="session")
def monuseg_small():
    """Two real MoNuSeg images cropped to 256x256 (rgb, inst, mpp)."""
    return load_monuseg(2, crop=256)
