"""Whole slides and cohorts, locally: the slide path gives the pipeline's nuclei, tissue
detection keeps background from the model, ROI / QuPath annotations, atomic per-slide folders,
resume, failure isolation, SIGTERM / SIGKILL mid-slide, the cohort table and the CLI — on
pyramidal JPEG slides built at test time from real H&E."""

from __future__ import annotations

import csv
import gzip
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import REPO, load_monuseg
from inference_helpers import centroid_match, threshold_model
from segtme.batch.runner import (Job, collect_jobs, cohort_rows, prepare_out_root, process_job, run_local,
                                 write_cohort)
from segtme.batch.slide import SlideOptions, analyze_slide
from segtme.errors import InputError
from segtme.io.source import ArraySource
from segtme.io.synthetic import write_slide
from segtme.pipeline import segment_image

MODEL = threshold_model(tile=128, overlap=16)


@pytest.fixture(scope="module")
def he():
    return [rgb for rgb, _, _ in load_monuseg(3)]


@pytest.fixture(scope="module")
def slides(tmp_path_factory, he):
    d = tmp_path_factory.mktemp("slides")
    a = write_slide(d / "a.svs", (6000, 5000), [(1000, 800, he[0]), (4000, 3200, he[1][:700, :900])], 0.25,
                    min_level_px=800)
    b = write_slide(d / "b.ome.tif", (4000, 3000), [(1500, 1000, he[2])], 0.25, flavour="ome", min_level_px=800)
    c = d / "c.svs"
    c.write_bytes(a.read_bytes()[:20000])  # truncated: a corrupt slide
    return a, b, c


def test_slide_path_gives_the_pipelines_nuclei(tmp_path, he):
    """An in-memory image through the slide driver (no tissue detection) = segment_image."""
    rgb = he[0][:600, :700]
    ref = segment_image(rgb, 0.25, MODEL)
    res = analyze_slide(ArraySource(rgb, 0.25), MODEL, tmp_path, SlideOptions(detect_tissue=False))
    assert res.units[0].n_nuclei == len(ref) > 20
    with open(tmp_path / "nuclei.csv", encoding="utf-8") as f:
        rows = list(csv.DictReader(line for line in f if not line.startswith("#")))
    cen = np.array([[float(r["Centroid X px"]), float(r["Centroid Y px"])] for r in rows])
    a, b = centroid_match(ref.centroid, cen, tol=0.01)
    assert a == b == len(ref)


def test_one_inference_options_object_from_slide_to_engine(tmp_path, he, monkeypatch):
    """SlideOptions carries the image path's InferenceOptions as they are: the engine gets the
    same object (progress aside), so a slide run with non-default tiles / chunks = segment_image
    with those options."""
    import segtme.pipeline as pl
    import segtme.runtime as rt
    from segtme.inference.options import InferenceOptions

    rgb = he[1][:500, :600]
    opt = InferenceOptions(tile=96, overlap=8, chunk_size=256, halo=48, batch_size=3, threads=1)
    ref = segment_image(rgb, 0.25, MODEL, opt)
    seen, threads = [], []
    orig = pl.segment_source
    monkeypatch.setattr(pl, "segment_source", lambda src, m, o, **k: seen.append(o) or orig(src, m, o, **k))
    monkeypatch.setattr(rt, "set_torch_threads", threads.append)
    res = analyze_slide(ArraySource(rgb, 0.25), MODEL, tmp_path, SlideOptions(detect_tissue=False, inference=opt))
    assert seen and all(o == opt and o.progress is not None for o in seen) and threads == [1]
    assert res.units[0].n_nuclei == len(ref) > 10
    assert res.tiles_total == pl.count_tiles(rgb.shape, 0.25, MODEL.config, InferenceOptions(tile=96, overlap=8)) != \
        pl.count_tiles(rgb.shape, 0.25, MODEL.config)


def test_slide_options_pickle_compare_and_validate():
    import pickle

    from segtme.batch.runner import slide_options
    from segtme.inference.options import InferenceOptions

    o = SlideOptions(roi=(1, 2, 3, 4), inference=InferenceOptions(tile=96, batch_size=2, precision="fp32"))
    assert pickle.loads(pickle.dumps(o)) == o  # what Ray ships to its workers
    assert InferenceOptions(progress=print) == InferenceOptions() and "progress" not in repr(InferenceOptions())
    with pytest.raises(InputError, match="progress"):
        SlideOptions(inference=InferenceOptions(progress=print))
    with pytest.raises(InputError, match="InferenceOptions"):
        SlideOptions(inference={"tile": 96})
    # keyword style (segtme.analyze_slide(..., tile=96)): InferenceOptions fields fold into .inference
    k = slide_options(gzip=False, tile=96, overlap=8, device="cpu", inference=InferenceOptions(batch_size=2))
    assert k == SlideOptions(gzip=False, inference=InferenceOptions(tile=96, overlap=8, device="cpu", batch_size=2))
    with pytest.raises(TypeError, match="unknown slide option"):
        slide_options(tiles=96)
    with pytest.raises(InputError, match="tile") as e:
        slide_options(tile=0)
    assert "\n" not in str(e.value)


def test_tissue_detection_keeps_background_from_the_model(tmp_path, slides, he):
    a = slides[0]
    (tmp_path / "t").mkdir()
    (tmp_path / "f").mkdir()
    with_t = analyze_slide(a, MODEL, tmp_path / "t", SlideOptions())
    full = analyze_slide(a, MODEL, tmp_path / "f", SlideOptions(detect_tissue=False))
    # the two patches are 1000² + 700x900 px at 0.25 µm/px = 0.1019 mm²
    assert with_t.tissue_mm2 == pytest.approx(0.1019, rel=0.15)
    assert full.tissue_fraction == 1.0 and with_t.tissue_fraction == pytest.approx(1.63e6 / 30e6, rel=0.15)
    assert with_t.tiles_run < 0.2 * full.tiles_run
    # same nuclei inside the tissue (background has none)
    assert abs(with_t.units[0].n_nuclei - full.units[0].n_nuclei) <= 0.02 * full.units[0].n_nuclei
    fc = json.loads((tmp_path / "t" / "tissue.geojson").read_text())
    assert len(fc["features"]) == 2 and all(f["properties"]["objectType"] == "annotation" for f in fc["features"])
    from PIL import Image

    png = np.asarray(Image.open(tmp_path / "t" / "tissue.png"))
    assert png.dtype == np.uint8 and set(np.unique(png)) <= {0, 255}
    rep = json.loads((tmp_path / "t" / "report-slide.json").read_text())
    assert rep["tissue_area_mm2"] == pytest.approx(with_t.tissue_mm2) and rep["report"]["tissue_area_mm2"] > 0


def test_roi_and_annotations(tmp_path, slides):
    a = slides[0]
    ann = tmp_path / "ann.geojson"
    polys = {"top-left": [[900, 700], [2100, 700], [2100, 1900], [900, 1900], [900, 700]],
             "lower": [[3900, 3100], [5000, 3100], [5000, 4000], [3900, 4000], [3900, 3100]]}
    ann.write_text(json.dumps({"type": "FeatureCollection", "features": [
        {"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [ring]},
         "properties": {"objectType": "annotation", "name": name}} for name, ring in polys.items()]}))
    (tmp_path / "o").mkdir()
    res = analyze_slide(a, MODEL, tmp_path / "o", SlideOptions(annotations=str(ann)))
    assert [u.name for u in res.units] == ["top-left", "lower"] and all(u.n_nuclei > 10 for u in res.units)
    for u in ("top-left", "lower"):
        assert (tmp_path / "o" / f"report-{u}.json").is_file()
    with gzip.open(tmp_path / "o" / "nuclei.geojson.gz", "rt") as f:
        fc = json.load(f)
    det = [f for f in fc["features"] if f["properties"]["objectType"] == "detection"]
    units = [f for f in fc["features"] if f["properties"]["objectType"] == "annotation"]
    assert len(det) == sum(u.n_nuclei for u in res.units) and len(units) == 2
    xs = np.array([np.mean([p[0] for p in f["geometry"]["coordinates"][0]]) for f in det])
    assert ((xs > 880) & (xs < 2120) | (xs > 3880) & (xs < 5020)).all()  # slide coordinates, inside
    # ROI: only that box
    (tmp_path / "r").mkdir()
    roi = analyze_slide(a, MODEL, tmp_path / "r", SlideOptions(roi=(1000, 800, 500, 400)))
    assert roi.units[0].kind == "roi" and 0 < roi.units[0].n_nuclei < res.units[0].n_nuclei
    assert roi.units[0].tissue_mm2 == pytest.approx(500 * 400 * 0.25**2 / 1e6, rel=0.1)
    with pytest.raises(InputError, match="outside"):
        analyze_slide(a, MODEL, tmp_path / "r", SlideOptions(roi=(7000, 0, 10, 10)))


def test_batch_isolates_failures_resumes_and_builds_the_cohort(tmp_path, slides):
    a, b, c = slides
    out = prepare_out_root(tmp_path / "out")
    jobs = collect_jobs([str(a), str(c), str(b), str(tmp_path / "missing.svs")])
    assert [j.name for j in jobs] == ["a", "c", "b", "missing"]
    r1 = run_local(jobs, out, MODEL, SlideOptions())
    assert [r.status for r in r1] == ["done", "failed", "done", "failed"]
    assert "c.svs" in r1[1].reason and "not found" in r1[3].reason
    assert not (out / "c").exists() and not [p for p in out.iterdir() if p.name.startswith(".segtme-")]
    for n in ("a", "b"):
        assert {p.name for p in (out / n).iterdir()} >= {"nuclei.geojson.gz", "nuclei.csv", "tissue.geojson",
                                                          "tissue.png", "report-slide.json", "summary.json"}
    rows = cohort_rows(out, [r.name for r in r1])
    assert [r["slide"] for r in rows] == ["a", "b"] and all(r["n_nuclei"] > 10 and r["tissue_mm2"] > 0 for r in rows)
    assert rows[1]["mpp_source"] == "ome" and "segtme_version" in rows[0] and rows[0]["model"] == "threshold_test"
    csv_p, pq_p, note = write_cohort(out, rows)
    import pyarrow.parquet as pq

    t = pq.read_table(pq_p)
    assert t.num_rows == 2 and t.column("n_nuclei").to_pylist() == [r["n_nuclei"] for r in rows]
    # resume: complete slides are skipped; a removed one is redone alone
    mtime = (out / "a" / "summary.json").stat().st_mtime
    import shutil

    shutil.rmtree(out / "b")
    r2 = run_local(jobs, out, MODEL, SlideOptions())
    assert [r.status for r in r2] == ["skipped", "failed", "done", "failed"]
    assert (out / "a" / "summary.json").stat().st_mtime == mtime
    assert cohort_rows(out, ["a", "b"])[1]["n_nuclei"] == rows[1]["n_nuclei"]


def test_manifest_with_mpp_and_annotations(tmp_path, slides, he):
    import tifffile

    plain = tmp_path / "plain.tif"  # no resolution metadata at all
    tifffile.imwrite(plain, he[0][:512, :512], photometric="rgb", tile=(256, 256), compression="jpeg")
    (tmp_path / "m.csv").write_text("path,mpp,annotations\nplain.tif,0.25,\n" + f"{slides[0]},,\n")
    jobs = collect_jobs([str(tmp_path / "m.csv")])
    assert jobs[0].mpp == 0.25 and jobs[0].path == str(tmp_path / "plain.tif") and jobs[1].mpp is None
    out = prepare_out_root(tmp_path / "o")
    r = process_job(jobs[0], out, MODEL, SlideOptions())
    assert r.status == "done" and json.loads((out / "plain" / "summary.json").read_text())["mpp_source"] == "user"
    r = process_job(Job(str(plain), "nompp"), out, MODEL, SlideOptions())
    assert r.status == "failed" and "no resolution information" in r.reason
    (tmp_path / "bad.csv").write_text("path,mpp\nplain.tif,abc\n")
    with pytest.raises(InputError, match="mpp"):
        collect_jobs([str(tmp_path / "bad.csv")])


_CHILD = r"""
import sys, time
sys.path[:0] = [{tests!r}]
from inference_helpers import threshold_model
import segtme.batch.slide as sl
from segtme.batch.runner import collect_jobs, run_local, prepare_out_root
from segtme.batch.slide import SlideOptions
from segtme.export.outdir import signals_cleanup
orig = sl.segment_region
def slow(*a, **k):
    print("SEGMENTING", flush=True)
    time.sleep(60)
    return orig(*a, **k)
sl.segment_region = slow
out = prepare_out_root({out!r})
with signals_cleanup(None):
    run_local(collect_jobs([{slide!r}]), out, threshold_model(tile=128, overlap=16), SlideOptions())
"""


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL])
def test_killed_mid_slide_leaves_no_partial_output_and_is_redone(tmp_path, slides, sig):
    out = tmp_path / "out"
    code = _CHILD.format(tests=str(REPO / "tests"), out=str(out), slide=str(slides[1]))
    p = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert p.stdout.readline().strip() == "SEGMENTING"
        stages = [q for q in out.iterdir() if q.name.startswith(".segtme-")]
        assert len(stages) == 1 and (stages[0] / "tissue.png").exists()  # mid-slide: partial files staged
        p.send_signal(sig)
        p.wait(60)
    finally:
        p.kill()
    assert not (out / "b").exists()
    left = [q for q in out.iterdir() if q.name.startswith(".segtme-")]
    assert (left == []) if sig == signal.SIGTERM else (len(left) == 1)  # SIGKILL cannot clean up ...
    out2 = prepare_out_root(out)  # ... the next run removes the dead run's staging folder
    assert [q for q in out2.iterdir() if q.name.startswith(".segtme-")] == []
    r = run_local(collect_jobs([str(slides[1])]), out2, MODEL, SlideOptions())
    assert r[0].status == "done" and (out / "b" / "summary.json").is_file()


def test_cli_batch(tmp_path, slides, monkeypatch, capsys):
    import segtme.models.registry as reg
    from segtme.cli import main

    monkeypatch.setattr(reg, "load_model", lambda *a, **k: MODEL)
    out = tmp_path / "out"
    rc = main(["batch", str(slides[1]), str(slides[2]), "--out", str(out), "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 1 and "failed: " in err and "c.svs" in err
    with open(out / "batch_report.csv", encoding="utf-8") as f:
        rep = {r["slide"]: r for r in csv.DictReader(f)}
    assert rep["b"]["status"] == "done" and rep["c"]["status"] == "failed" and rep["c"]["reason"]
    assert (out / "cohort.csv").is_file() and (out / "cohort.parquet").is_file()
    rc = main(["batch", str(slides[1]), "--out", str(out), "--no-progress"])
    assert rc == 0 and "1 already complete" in capsys.readouterr().out
    for bad, msg in ((["--roi", "1,2,x,4"], "--roi"), (["--mpp", "abc"], "--mpp"), (["--roi", "0,0,0,5"], "--roi")):
        rc = main(["batch", str(slides[1]), "--out", str(out)] + bad)
        e = capsys.readouterr().err
        assert rc == 2 and e.startswith("error: ") and msg in e and e.count("\n") == 1
    (tmp_path / "f").write_text("x")
    assert main(["batch", str(slides[1]), "--out", str(tmp_path / "f")]) == 2
    capsys.readouterr()


def test_cli_batch_builds_one_inference_options(tmp_path, slides, monkeypatch, capsys):
    """`segtme batch` parses --tile/--overlap/--batch/--device/--precision as `segtme analyze`
    does (same checks, same messages, before the model loads) into SlideOptions.inference."""
    import segtme.batch.runner as runner
    import segtme.models.registry as reg
    from segtme.cli import main
    from segtme.inference.options import InferenceOptions

    loaded, got = [], []
    monkeypatch.setattr(reg, "load_model", lambda *a, **k: loaded.append((a, k)) or MODEL)
    monkeypatch.setattr(runner, "run_local", lambda jobs, out, model, opts, **k: got.append(opts) or [])
    rc = main(["batch", str(slides[1]), "--out", str(tmp_path / "o"), "--no-progress", "--tile", "96",
               "--overlap", "8", "--batch", "2", "--device", "cpu", "--precision", "fp32"])
    assert rc == 0 and got[0].inference == InferenceOptions(device="cpu", precision="fp32", tile=96, overlap=8,
                                                            batch_size=2)
    assert loaded[0][0][1] == "cpu" and loaded[0][1]["precision"] == "fp32"
    loaded.clear()
    for bad, msg in ((["--tile", "8"], "--tile must be at least 16"), (["--tile", "x"], "--tile must be a whole number"),
                     (["--batch", "0"], "--batch must be at least 1"),
                     (["--tile", "64", "--overlap", "32"], "--overlap 32 must be less than half of --tile 64")):
        rc = main(["batch", str(slides[1]), "--out", str(tmp_path / "o")] + bad)
        e = capsys.readouterr().err
        assert rc == 2 and e.startswith(f"error: {msg}") and e.count("\n") == 1
    assert not loaded


def test_cli_analyze_takes_slides_rois_and_annotations(tmp_path, slides, monkeypatch, capsys):
    import segtme.models.registry as reg
    from segtme.cli import main

    monkeypatch.setattr(reg, "load_model", lambda *a, **k: MODEL)
    out = tmp_path / "new" / "folder"  # does not exist yet
    assert main(["analyze", str(slides[0]), "--out", str(out), "--no-progress"]) == 0  # a pyramid: slide path
    assert {p.name for p in out.iterdir()} == {"nuclei.geojson.gz", "nuclei.csv", "tissue.geojson", "tissue.png",
                                              "report-slide.json", "summary.json"}
    assert "nuclei in" in capsys.readouterr().out
    out2 = tmp_path / "roi"
    assert main(["analyze", str(slides[0]), "--out", str(out2), "--roi", "1000,800,400,400", "--no-progress"]) == 0
    assert json.loads((out2 / "summary.json").read_text())["units"][0]["kind"] == "roi"
    capsys.readouterr()
    for bad, msg in ((["--roi", "1,2"], "--roi"), (["--annotations", str(tmp_path / "none.geojson")], "not found"),
                     (["--cells"], "--cells")):
        assert main(["analyze", str(slides[0]), "--out", str(tmp_path / "x")] + bad) == 2
        e = capsys.readouterr().err
        assert e.startswith("error: ") and msg in e
    assert not [p for p in (tmp_path / "x").iterdir()] if (tmp_path / "x").exists() else True


def test_python_api_writes_a_new_folder_atomically(tmp_path, slides):
    from segtme.batch.runner import analyze_slide_to

    out = tmp_path / "does" / "not" / "exist"
    res = analyze_slide_to(slides[1], out, MODEL)  # OME-TIFF: MPP from PhysicalSizeX
    assert res.mpp == 0.25 and res.mpp_source == "ome" and (out / "summary.json").is_file()
    assert res.units[0].n_nuclei > 10 and res.tissue_mm2 > 0
    bad = tmp_path / "bad"
    with pytest.raises(InputError, match="outside"):
        analyze_slide_to(slides[1], bad, MODEL, roi=(90_000, 0, 10, 10))
    assert not bad.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".segtme-")]
