"""File digests, one implementation for every caller (a leaf: standard library only).

``file_sha256`` is what provenance records for a model's weights, what the shipped ONNX graphs
store to prove they match their weights file, and what a distillation run records for its
teacher. Cached per (resolved path, size, mtime) within the process, so hashing the same weights
file for every image of a batch costs one read.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

_CACHE: dict[tuple[str, int, int], str] = {}


def file_sha256(path: str | os.PathLike[str], chunk: int = 1 << 20) -> str:
    """Hex SHA-256 of a file's bytes (read in ``chunk``-byte blocks; cached while the file's size
    and mtime are unchanged)."""
    p = Path(path)
    st = p.stat()
    key = (str(p.resolve()), st.st_size, st.st_mtime_ns)
    if key not in _CACHE:
        h = hashlib.sha256()
        with p.open("rb") as f:
            for block in iter(lambda: f.read(chunk), b""):
                h.update(block)
        _CACHE[key] = h.hexdigest()
    return _CACHE[key]
