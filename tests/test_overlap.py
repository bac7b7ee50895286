"""The chunk loop that overlaps the model with the post-processing (``inference.overlap``), shared
by ``pipeline.segment_image`` and PAGET's chunked run: every chunk is consumed once, in order,
with at most ``workers`` chunks in post-processing; errors reach the caller; and the shipped
PAGET-H (its own nuclei, the shipped mitosis teacher) gives the same result pipelined and serial
on a real image in many chunks."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from segtme.inference.overlap import run_overlapped


@pytest.mark.parametrize("workers", [0, 1, 2])
def test_every_item_consumed_once_in_order_with_bounded_work_in_flight(workers):
    lock = threading.Lock()
    produced, consumed, in_flight, peak = [], [], [0], [0]
    main = threading.get_ident()
    post_threads = set()

    def produce(i):
        assert threading.get_ident() == main
        produced.append(i)
        with lock:
            in_flight[0] += 1
            peak[0] = max(peak[0], in_flight[0])
        return i * 10

    def post(i, made):
        post_threads.add(threading.get_ident())
        time.sleep(0.002 * (i % 3))  # later items can finish before earlier ones
        return made + 1

    def consume(i, done):
        assert threading.get_ident() == main
        with lock:
            in_flight[0] -= 1
        consumed.append((i, done))

    run_overlapped(range(12), produce, post, consume, workers)
    assert produced == list(range(12))
    assert consumed == [(i, i * 10 + 1) for i in range(12)]
    # produced but not consumed: the chunk being produced + those waiting for / in post
    assert peak[0] <= max(1, workers) + 1
    assert (main in post_threads) == (workers == 0)


def test_an_error_in_post_reaches_the_caller_and_stops_the_loop():
    consumed = []

    def post(i, made):
        if i == 3:
            raise ValueError("bad chunk 3")
        return made

    with pytest.raises(ValueError, match="bad chunk 3"):
        run_overlapped(range(10), lambda i: i, post, lambda i, d: consumed.append(i), 1)
    assert consumed == [0, 1, 2]


def _same_paget(a, b) -> None:
    ta, tb = a.nuclei, b.nuclei
    assert len(ta) == len(tb) > 20
    np.testing.assert_array_equal(ta.centroid, tb.centroid)
    assert list(ta.class_names) == list(tb.class_names)
    np.testing.assert_array_equal(a.nucleus_tissue, b.nucleus_tissue)
    np.testing.assert_array_equal(a.sem, b.sem)
    assert [f["properties"]["classification"]["name"] for f in a.tissue_features] == \
        [f["properties"]["classification"]["name"] for f in b.tissue_features]
    assert [f["geometry"] for f in a.tissue_features] == [f["geometry"] for f in b.tissue_features]
    for col in ("mitosis_prob",):
        if col in ta.extra:
            np.testing.assert_array_equal(ta.extra[col], tb.extra[col])
    assert a.meta == b.meta


@pytest.mark.data
def test_shipped_paget_h_is_the_same_pipelined_and_serial():
    """paget_h_shared with the shipped mitosis teacher, a real 0.2527 µm/px MoNuSeg image
    (1000² px, ~505² working px) in 128-px chunks."""
    from conftest import load_monuseg
    from segtme.models.registry import load_model
    from segtme.paget.runner import analyze_paget

    rgb, _inst, mpp = load_monuseg(1)[0]
    lm = load_model("paget_h_shared", "cpu")
    kw = dict(compute_features=True, chunk_work=128)
    a = analyze_paget(rgb, mpp, lm, pipelined=True, **kw)
    b = analyze_paget(rgb, mpp, lm, pipelined=False, **kw)
    assert a.nuclei.meta["chunks"] >= 9
    assert "mitosis" in a.meta
    _same_paget(a, b)
    assert a.features == b.features
