"""Outgoing messages: nuclei / tissue Features as ``NucleiBatch`` chunks and the ``TMEReport``."""

from __future__ import annotations

import json
import math
from typing import Any, Iterator

import numpy as np

from ..inference.nuclei import NucleiTable
from ._proto.segtme.v1 import segtme_pb2 as pb

#: largest JSON payload of one NucleiBatch message (bytes); batches are split above this
NUCLEI_BATCH_BYTES = 1_000_000


def features_messages(table: NucleiTable, output_type: str, tile_index: int) -> Iterator[pb.NucleiBatch]:
    """NucleiBatch messages (GeoJSON FeatureCollections, each at most ~NUCLEI_BATCH_BYTES)."""
    from ..export.geojson import nuclei_to_features

    if len(table) == 0:
        return
    yield from feature_batches(nuclei_to_features(table, output_type), tile_index)


def feature_batches(features, tile_index: int) -> Iterator[pb.NucleiBatch]:
    """Any GeoJSON Features (nuclei, or PAGET tissue annotations) as NucleiBatch messages of at
    most ~NUCLEI_BATCH_BYTES each (a single larger feature gets a message of its own)."""
    chunk: list[str] = []
    size = 0
    for f in features:
        s = json.dumps(f, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
        if chunk and size + len(s) > NUCLEI_BATCH_BYTES:
            yield _batch(chunk, tile_index)
            chunk, size = [], 0
        chunk.append(s)
        size += len(s) + 1
    if chunk:
        yield _batch(chunk, tile_index)


def _batch(chunk: list[str], tile_index: int) -> pb.NucleiBatch:
    text = '{"type":"FeatureCollection","features":[' + ",".join(chunk) + "]}"
    return pb.NucleiBatch(tile_index=tile_index, features_geojson=text, count=len(chunk))


def report_message(report: dict | None, table: NucleiTable, annotation_id: str, seconds: float) -> pb.TMEReport:
    msg = pb.TMEReport(nuclei_total=len(table), annotation_id=annotation_id, seconds=seconds)
    if report is None:
        return msg
    from ..tme.report import report_measurements

    msg.report_json = json.dumps(report, ensure_ascii=False, allow_nan=False, default=json_default)
    narrative = report.get("narrative")
    msg.narrative = narrative if isinstance(narrative, str) else ""
    msg.tokens.extend(str(t) for t in (report.get("generated_tokens") or []))
    for k, v in report_measurements(report).items():
        try:
            fv = float(v)
        except (TypeError, ValueError):
            continue
        if math.isfinite(fv):
            msg.measurements[k] = fv
    return msg


def json_default(o: Any) -> Any:
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, float) and not math.isfinite(o):
        return None
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")

