"""Provenance of a run: what made these outputs, recorded in every file written.

``Provenance`` is written as the ``properties.segtme`` member of the GeoJSON FeatureCollection
(QuPath ignores foreign members), as a ``# segtme: {...}`` comment line at the top of the CSV,
and as ``provenance`` in ``tme.json``. Each object carries only the short ``run`` id
(``properties.segtmeRun``), never a per-object copy.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import secrets
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..hashing import file_sha256

def sha256_file(path: str | os.PathLike[str]) -> str:
    """Hex SHA-256 of a file (``segtme.hashing.file_sha256``: cached per path, size and mtime)."""
    return file_sha256(path)


@dataclass
class Provenance:
    """segtme_version; model (name), model_source (weights path or how it was built),
    weights_sha256 (None when the model has no weights file); image (path, or a description of
    an in-memory array); mpp (µm/px used) and mpp_source (where it came from: "user" for --mpp,
    else the file's metadata kind); parameters (the run's options); run (short id, also on every
    object); created (UTC, ISO 8601)."""

    segtme_version: str
    model: str
    model_source: str
    weights_sha256: str | None
    image: str | None
    mpp: float | None
    mpp_source: str
    parameters: dict[str, Any] = field(default_factory=dict)
    run: str = field(default_factory=lambda: secrets.token_hex(4))
    created: str = field(default_factory=lambda: _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"))

    @classmethod
    def for_run(cls, model: Any, image: str | None, mpp: float | None, mpp_source: str,
                parameters: dict[str, Any] | None = None) -> "Provenance":
        """From a ``LoadedModel`` (its config name and ``source``; the weights are hashed when the
        source is a file)."""
        from ..version import __version__

        source = str(getattr(model, "source", "") or "")
        sha = None
        if source and os.path.isfile(source):
            sha = sha256_file(source)
        cfg = getattr(model, "config", None)
        name = str(getattr(cfg, "name", None) or model)
        return cls(__version__, name, source, sha, image, None if mpp is None else float(mpp), mpp_source,
                   dict(parameters or {}))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def csv_comment(self) -> str:
        """One comment line (no newline) for the top of a CSV: ``# segtme: {json}``."""
        return "# segtme: " + json.dumps(self.to_dict(), ensure_ascii=False, separators=(",", ":"), default=str)
