"""`segtme analyze`: outputs, MPP from TIFF tags, and one clear error (exit 2) per bad input,
with no partial output files left behind."""

from __future__ import annotations

import json

import numpy as np
import pytest
import tifffile
import torch
from PIL import Image as PILImage
from safetensors.torch import save_file

from segtme.cli import main
from segtme.models import create_model, presets

OUTPUTS = {"nuclei.geojson", "nuclei.geojson.gz", "overlay.png", "nuclei.csv", "tme.json"}


@pytest.fixture(scope="module")
def tiny_model_files(tmp_path_factory):
    """A randomly initialised tiny UperHoVer written as .json + .safetensors (until the shipped
    default model exists)."""
    d = tmp_path_factory.mktemp("model")
    cfg = presets()["uperhover_vit_tiny"].replace(name="tiny_test")
    torch.manual_seed(0)
    module = create_model(cfg)
    cfg.to_json(d / "tiny_test.json")
    save_file({k: v.contiguous() for k, v in module.state_dict().items()}, str(d / "tiny_test.safetensors"))
    return d / "tiny_test.json"


@pytest.fixture(scope="module")
def he_png(tmp_path_factory, monuseg_small):
    rgb, _, mpp = monuseg_small[0]
    d = tmp_path_factory.mktemp("img")
    PILImage.fromarray(rgb[:128, :128]).save(d / "he.png")
    tifffile.imwrite(d / "he.tif", rgb[:128, :128], photometric="rgb",
                     resolution=(1e4 / mpp, 1e4 / mpp), resolutionunit="CENTIMETER")
    return d / "he.png", d / "he.tif", mpp


def _outputs(d):
    return {p.name for p in d.iterdir()} & OUTPUTS if d.exists() else set()


def _report_available() -> bool:
    try:
        import segtme.tme.report  # noqa: F401
    except ImportError:
        return False
    return True


def test_analyze_writes_outputs(tmp_path, tiny_model_files, he_png, capsys):
    png, _, mpp = he_png
    out = tmp_path / "out"
    rc = main(["analyze", str(png), "--mpp", str(mpp), "--model", str(tiny_model_files), "--out", str(out), "--no-progress"])
    assert rc == 0, capsys.readouterr().err
    expected = {"nuclei.geojson", "overlay.png", "nuclei.csv"} | ({"tme.json"} if _report_available() else set())
    assert _outputs(out) == expected
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no staging leftovers
    fc = json.loads((out / "nuclei.geojson").read_text(encoding="utf-8"))
    assert fc["type"] == "FeatureCollection"
    assert all(f["properties"]["objectType"] in ("detection", "annotation") for f in fc["features"])
    assert np.asarray(PILImage.open(out / "overlay.png")).shape == (128, 128, 3)
    first, header = (out / "nuclei.csv").read_text(encoding="utf-8").splitlines()[:2]
    assert first.startswith("# segtme: ") and header.startswith("Object ID,Image,Object type,Classification,")
    assert "nuclei" in capsys.readouterr().out


def test_analyze_with_the_classical_baseline(tmp_path, he_png, capsys):
    """``--model classical`` (no tensor forward) runs through its ``predict_instances``."""
    png, _, mpp = he_png
    out = tmp_path / "out"
    rc = main(["analyze", str(png), "--mpp", str(mpp), "--model", "classical", "--out", str(out), "--no-progress"])
    assert rc == 0, capsys.readouterr().err
    fc = json.loads((out / "nuclei.geojson").read_text(encoding="utf-8"))
    nuclei = [f for f in fc["features"] if f["properties"]["objectType"] == "detection"]
    assert nuclei and all(f["properties"]["classification"]["name"] for f in nuclei)
    assert len((out / "nuclei.csv").read_text(encoding="utf-8").splitlines()) == len(nuclei) + 2  # comment + header


def test_tiff_mpp_from_tags_cells_and_gzip(tmp_path, tiny_model_files, he_png):
    _, tif, _ = he_png
    out = tmp_path / "o"
    rc = main(["analyze", str(tif), "--model", str(tiny_model_files), "--out", str(out), "--cells", "--gzip",
               "--tile", "56", "--overlap", "14", "--batch", "2", "--no-progress"])
    assert rc == 0
    assert "nuclei.geojson.gz" in _outputs(out) and "nuclei.geojson" not in _outputs(out)


def _fails(args, capsys, match):
    rc = main(args)
    err = capsys.readouterr().err
    assert rc == 2, err
    assert "Traceback" not in err, err
    lines = [ln for ln in err.strip().splitlines() if not ln.startswith("[")]  # stage lines ("[  0.1 s] ...")
    assert len(lines) == 1, err  # one clear message, no traceback
    assert lines[0].startswith("error: ") and match in lines[0], err


@pytest.mark.parametrize("mpp,match", [("nan", "finite positive"), ("-0.25", "finite positive"), ("0", "finite positive")])
def test_bad_mpp(tmp_path, tiny_model_files, he_png, capsys, mpp, match):
    png, _, _ = he_png
    out = tmp_path / "o"
    _fails(["analyze", str(png), f"--mpp={mpp}", "--model", str(tiny_model_files), "--out", str(out)], capsys, match)
    assert _outputs(out) == set()


def test_png_without_mpp_requires_flag(tmp_path, tiny_model_files, he_png, capsys):
    png, _, _ = he_png
    _fails(["analyze", str(png), "--model", str(tiny_model_files), "--out", str(tmp_path / "o")], capsys, "--mpp")


def test_unknown_model_and_missing_or_wrong_weights(tmp_path, tiny_model_files, he_png, capsys):
    png, _, mpp = he_png
    base = ["analyze", str(png), "--mpp", str(mpp), "--out", str(tmp_path / "o")]
    _fails(base + ["--model", "no_such_model"], capsys, "unknown model")
    lonely = tmp_path / "lonely.json"
    lonely.write_text(tiny_model_files.read_text())
    _fails(base + ["--model", str(lonely)], capsys, "weights file not found")
    wrong = tmp_path / "wrong.safetensors"
    save_file({"foo": torch.zeros(2)}, str(wrong))
    _fails(base + ["--model", str(tiny_model_files), "--weights", str(wrong)], capsys, "do not fit model")
    assert _outputs(tmp_path / "o") == set()


def test_bad_images(tmp_path, tiny_model_files, capsys):
    out = tmp_path / "o"
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\ngarbage")
    _fails(["analyze", str(bad), "--mpp", "0.5", "--model", str(tiny_model_files), "--out", str(out)], capsys, "bad.png")
    empty = tmp_path / "empty.tif"
    empty.write_bytes(b"")
    _fails(["analyze", str(empty), "--mpp", "0.5", "--model", str(tiny_model_files), "--out", str(out)], capsys, "empty")
    _fails(["analyze", str(tmp_path / "none.png"), "--mpp", "0.5", "--out", str(out)], capsys, "not found")
    assert _outputs(out) == set()


def test_no_partial_outputs_when_writing_fails(tmp_path, tiny_model_files, he_png, monkeypatch):
    import segtme.export.overlay as overlay

    png, _, mpp = he_png
    out = tmp_path / "o"
    out.mkdir()
    (out / "nuclei.csv").write_text("previous run")

    def broken(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(overlay, "write_overlay", broken)
    with pytest.raises(OSError, match="disk full"):
        main(["analyze", str(png), "--mpp", str(mpp), "--model", str(tiny_model_files), "--out", str(out), "--no-progress"])
    # GeoJSON was already staged when the overlay failed: nothing new is published, the old
    # file is untouched and the staging directory is gone
    assert sorted(p.name for p in out.iterdir()) == ["nuclei.csv"]
    assert (out / "nuclei.csv").read_text() == "previous run"


# --------------------------------------------------------------------------- PAGET models
@pytest.fixture(scope="module")
def paget_files(tmp_path_factory):
    """Randomly initialised MiT-B0 PAGET-S / PAGET-H students as .json + .safetensors (no trained
    PAGET weights exist); PAGET-H keeps its default instance source, the shipped ``default``."""
    d = tmp_path_factory.mktemp("paget")
    out = {}
    for preset, name in (("paget_s_b0", "paget_s_cli"), ("paget_h_b0", "paget_h_cli")):
        cfg = presets()[preset].replace(name=name, weights=f"{name}.safetensors")
        torch.manual_seed(1)
        module = create_model(cfg)
        save_file({k: v.contiguous() for k, v in module.state_dict().items()}, str(d / f"{name}.safetensors"))
        cfg.to_json(d / f"{name}.json")
        out[name] = d / f"{name}.json"
    return out


@pytest.fixture(scope="module")
def he_paget_png(tmp_path_factory):
    from conftest import load_monuseg

    rgb, _, mpp = load_monuseg(1, crop=400)[0]
    d = tmp_path_factory.mktemp("img_paget")
    PILImage.fromarray(rgb).save(d / "he.png")
    return d / "he.png", rgb, mpp


@pytest.mark.parametrize("name", ["paget_s_cli", "paget_h_cli"])
def test_analyze_paget_writes_tissue_annotations_nuclei_overlay_report(tmp_path, paget_files, he_paget_png, name,
                                                                        capsys):
    from shapely.geometry import Polygon, shape

    from segtme.paget import taxonomy as pt
    from segtme.paget.features import PAGET_AXES

    png, rgb, mpp = he_paget_png
    out = tmp_path / "out"
    rc = main(["analyze", str(png), "--mpp", str(mpp), "--model", str(paget_files[name]), "--out", str(out),
               "--no-progress"])
    printed = capsys.readouterr()
    assert rc == 0, printed.err
    assert _outputs(out) == {"nuclei.geojson", "overlay.png", "nuclei.csv", "tme.json"}
    assert "tissue annotation(s) in nuclei.geojson" in printed.out
    fc = json.loads((out / "nuclei.geojson").read_text(encoding="utf-8"))
    tissue_names = {pt.TAXONOMY.classes[c].name for c in pt.tissue_classes()}
    nucleus_names = {pt.TAXONOMY.classes[c].name for c in pt.nucleus_classes()}
    tissue = [f for f in fc["features"] if f["properties"]["objectType"] == "annotation"
              and "classification" in f["properties"]]
    nuclei = [f for f in fc["features"] if f["properties"]["objectType"] == "detection"]
    report_ann = [f for f in fc["features"] if f["properties"].get("name") == "SegTME TME report"]
    assert len(tissue) + len(nuclei) == len(fc["features"]) and not report_ann  # report annotation is opt-in
    assert fc["properties"]["segtme"]["tme"]  # the report's measurements are on the collection
    assert tissue and nuclei
    assert fc["features"][:len(tissue)] == tissue, "tissue annotations come first"
    assert all(f["id"][14:18] == "85e6" and f["id"][19:22] == "ad2" for f in tissue)  # SegTME kind-2 ids
    names = [f["properties"]["classification"]["name"] for f in tissue]
    assert set(names) <= tissue_names and len(set(names)) == len(names)
    assert {f["properties"]["classification"]["name"] for f in nuclei} <= nucleus_names
    img = Polygon([(0, 0), (400, 0), (400, 400), (0, 400)])
    geoms = [shape(f["geometry"]) for f in tissue]
    assert all(g.is_valid and g.difference(img).area <= 1e-6 * g.area for g in geoms)
    n_csv = len((out / "nuclei.csv").read_text(encoding="utf-8").strip().splitlines()) - 2
    assert n_csv == len(nuclei)

    rep = json.loads((out / "tme.json").read_text(encoding="utf-8"))
    assert rep["taxonomy"] == "paget13" and set(PAGET_AXES) <= set(rep["interpretation"])
    assert rep["tissue_annotations_total"] == len(tissue)
    assert rep["raw_data"]["N_total"] == len(nuclei)
    assert rep["raw_data"]["tissue_area_px"] == pytest.approx(sum(g.area for g in geoms), rel=1e-3)

    # overlay: inside the largest tissue region (away from its edge and from nucleus outlines) each
    # pixel is the image blended 35 % towards the region's class colour
    from PIL import ImageDraw

    from segtme.export.overlay import TISSUE_ALPHA

    ov = np.asarray(PILImage.open(out / "overlay.png")).astype(np.float64)
    k = int(np.argmax([g.area for g in geoms]))
    mask_im = PILImage.new("L", (400, 400), 0)
    g = geoms[k].buffer(-3)
    for part in getattr(g, "geoms", [g]):
        ImageDraw.Draw(mask_im).polygon(list(part.exterior.coords), fill=1)
        for hole in part.interiors:
            ImageDraw.Draw(mask_im).polygon(list(hole.coords), fill=0)
    for f in nuclei:
        ring = [tuple(p) for p in f["geometry"]["coordinates"][0]]
        ImageDraw.Draw(mask_im).polygon(ring, fill=0)
        ImageDraw.Draw(mask_im).line(ring, fill=0, width=10)  # outlines are up to 4 px wide, centred on the ring
    ImageDraw.Draw(mask_im).rectangle([0, 0, 260, 200], fill=0)  # the legend box (top-left corner)
    inside = np.asarray(mask_im, bool)
    assert inside.sum() > 100
    colour = np.array(tissue[k]["properties"]["classification"]["color"], np.float64)
    expected = (1 - TISSUE_ALPHA) * rgb.astype(np.float64) + TISSUE_ALPHA * colour
    assert np.mean(np.abs(ov[inside] - expected[inside]).max(axis=1) <= 2.0) >= 0.98


def test_analyze_instance_source_only_for_paget_h(tmp_path, paget_files, he_paget_png, capsys):
    png, _, mpp = he_paget_png
    _fails(["analyze", str(png), "--mpp", str(mpp), "--model", str(paget_files["paget_s_cli"]), "--instance-source",
            "classical", "--out", str(tmp_path / "o")], capsys, "PAGET-H models only")


# --------------------------------------------------------------------------- provenance, join, cells, overlay, progress
def test_provenance_csv_geojson_join_cells_overlay_and_progress(tmp_path, tiny_model_files, he_png, capsys):
    """Every output says what made it; the CSV's Object ID is the GeoJSON id; --cells writes
    Cell/Cytoplasm measurements with the asked expansion; the overlay has a legend and states its
    scale; off a terminal, progress is plain stage lines on stderr."""
    import csv
    import hashlib

    from segtme.version import __version__

    png, _, mpp = he_png
    out = tmp_path / "out"
    rc = main(["analyze", str(png), "--mpp", str(mpp), "--model", str(tiny_model_files), "--out", str(out), "--cells",
               "--cell-expansion", "3", "--overlay-size", "64", "--overlay-fill"])
    cap = capsys.readouterr()
    assert rc == 0, cap.err
    stages = [ln for ln in cap.err.splitlines() if ln.startswith("[")]
    assert any("segmenting:" in ln for ln in stages) and any("writing nuclei.geojson" in ln for ln in stages)
    assert any("cells:" in ln for ln in stages) and "\r" not in cap.err  # no bar off a terminal
    assert "preview at 50%" in cap.out

    weights = tiny_model_files.with_suffix(".safetensors")
    sha = hashlib.sha256(weights.read_bytes()).hexdigest()
    fc = json.loads((out / "nuclei.geojson").read_text(encoding="utf-8"))
    prov = dict(fc["properties"]["segtme"])
    assert "tme" in prov or not _report_available()  # the TME measurements ride on the collection
    prov.pop("tme", None)
    assert prov["segtme_version"] == __version__ and prov["model"] == "tiny_test" and prov["weights_sha256"] == sha
    assert prov["image"] == str(png.resolve()) and prov["mpp"] == pytest.approx(mpp) and prov["mpp_source"].startswith("user")
    assert prov["parameters"]["cell_expansion_um"] == 3.0 and prov["parameters"]["output_type"] == "cell"
    cells = [f for f in fc["features"] if f["properties"]["objectType"] == "cell"]
    assert cells and all(f["properties"]["segtmeRun"] == prov["run"] for f in cells)
    assert all(set(f["properties"]) == {"objectType", "classification", "isLocked", "measurements", "segtmeRun"}
               for f in cells)  # one short property per object, no per-object metadata map
    keys = set().union(*(f["properties"]["measurements"] for f in cells))  # NaN (e.g. no cytoplasm) is left out
    # (the random tiny model finds a few huge nuclei: no cytoplasm here; test_measurements checks it)
    assert {"Cell: Area µm^2", "Cell: Eosin OD mean", "Nucleus/Cell area ratio", "Nucleus: Max caliper µm"} <= keys

    lines = (out / "nuclei.csv").read_text(encoding="utf-8").splitlines()
    assert json.loads(lines[0][len("# segtme: "):]) == prov
    rows = list(csv.DictReader(lines[1:]))
    assert [r["Object ID"] for r in rows] == [f["id"] for f in cells]  # the join key
    by_id = {f["id"]: f["properties"]["measurements"] for f in cells}
    for r in rows[:5]:
        assert float(r["Cell: Area µm^2"]) == pytest.approx(by_id[r["Object ID"]]["Cell: Area µm^2"], rel=1e-5)
        assert r["Object type"] == "cell" and r["Image"] == str(png)

    rep = json.loads((out / "tme.json").read_text(encoding="utf-8"))
    assert rep["provenance"] == prov
    ov = PILImage.open(out / "overlay.png")
    assert max(ov.size) == 64 and float(ov.text["segtme:scale"]) == pytest.approx(0.5)
    assert ov.text["segtme:source_size"] == "128x128"


def test_no_overlay_and_report_annotation(tmp_path, tiny_model_files, he_png, capsys):
    png, _, mpp = he_png
    out = tmp_path / "o"
    rc = main(["analyze", str(png), "--mpp", str(mpp), "--model", str(tiny_model_files), "--out", str(out),
               "--no-overlay", "--report-annotation", "--no-progress"])
    cap = capsys.readouterr()
    assert rc == 0, cap.err
    assert "overlay.png" not in _outputs(out) and cap.err.strip() == ""  # --no-progress: silent stderr
    if _report_available():
        fc = json.loads((out / "nuclei.geojson").read_text(encoding="utf-8"))
        rep = [f for f in fc["features"] if f["properties"].get("name") == "SegTME TME report"]
        assert len(rep) == 1 and rep[0]["properties"]["objectType"] == "annotation"
        # a SegTME kind-3 id (docs/qupath.md "Object IDs"): the extension never analyses it
        assert rep[0]["id"][14:18] == "85e6" and rep[0]["id"][19:22] == "ad3"
