"""Every ``segtme`` command in the README's "Using it" block works as written (issue #19.5).

Quick commands are run for real (in a scratch folder, README file names bound to real small
files made from ../shared/data, ``../shared/data`` bound to ``$SEGTME_DATA_DIR``); long-running
ones (server, training, distillation) are parsed by the real CLI parser and the files they name
must exist; lines with a placeholder (``…``) are only checked for a known subcommand. A README
line with a subcommand this test does not know fails, so new documented commands get classified.
"""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image as PILImage

from conftest import REPO, data_dir, load_monuseg
from segtme.cli import build_parser, main
from segtme.io.synthetic import write_slide

RUN = {"models", "analyze", "tme", "eval"}
PARSE_ONLY = {"serve": "a server runs until stopped (tests/test_server_cli.py starts one)",
              "train": "training takes minutes to hours", "distill": "training", "train-narrator": "training",
              "pseudo-label": "long", "curriculum": "long",
              "batch": "a cohort job (tests/test_batch.py runs it on built slides)",
              "narrate-eval": "scores every region of a dataset (tests/test_narrative_eval.py runs it)"}


def readme_commands() -> list[str]:
    text = (REPO / "README.md").read_text(encoding="utf-8")
    m = re.search(r"## Using it.*?```bash\n(.*?)```", text, re.S)
    assert m, "README has no ```bash block under '## Using it'"
    out = []
    for line in m.group(1).splitlines():
        cmd = line.split("#", 1)[0].strip()
        if cmd.startswith("segtme "):
            out += [c.strip() for c in cmd.split(" / ")]  # "segtme a … / segtme b …"
    return out


def expand(cmd: str) -> list[str]:
    """README shorthand -> argv: optional ``[--flag]`` parts included, ``a|b`` alternatives -> a."""
    cmd = re.sub(r"\[([^\]]+)\]", r"\1", cmd)
    return [tok.split("|")[0] for tok in shlex.split(cmd)][1:]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """README file names -> real files (a 256² MoNuSeg crop as PNG and as TIFF with resolution
    tags; its instance map and a class map)."""
    rgb, inst, mpp = load_monuseg(1, crop=256)[0]
    d = tmp_path_factory.mktemp("readme")
    PILImage.fromarray(rgb).save(d / "region.png")
    tifffile.imwrite(d / "slide_region.tif", rgb, photometric="rgb", resolution=(1e4 / mpp, 1e4 / mpp),
                     resolutionunit="CENTIMETER")
    PILImage.fromarray(inst.astype(np.uint16)).save(d / "inst.png")
    PILImage.fromarray(((inst > 0) * 1).astype(np.uint8)).save(d / "cls.png")
    # a small pyramidal, JPEG-tiled Aperio-style slide with the crop at (20000, 15000), the README's ROI
    full, _, full_mpp = load_monuseg(1)[0]  # 1000² px = 0.06 mm² of tissue (above the 0.01 mm² minimum)
    write_slide(d / "slide.svs", (24576, 19456), [(20000, 15000, full)], mpp=full_mpp)
    ann = {"type": "FeatureCollection", "features": [{"type": "Feature", "properties": {"objectType": "annotation"},
           "geometry": {"type": "Polygon", "coordinates": [[[20000, 15000], [20600, 15000], [20600, 15600],
                                                           [20000, 15600], [20000, 15000]]]}}]}
    (d / "annotations.geojson").write_text(json.dumps(ann), encoding="utf-8")
    return d


COMMANDS = readme_commands()


def test_readme_lists_commands():
    assert len(COMMANDS) >= 5
    for c in COMMANDS:
        sub = c.split()[1]
        assert sub in RUN or sub in PARSE_ONLY, f"README command {c!r}: classify it in this test"


@pytest.mark.parametrize("cmd", COMMANDS)
def test_readme_command(cmd, files, monkeypatch, capsys, shared_data):
    argv = expand(cmd)
    sub = argv[0]
    if "…" in cmd:
        assert sub in PARSE_ONLY or sub in RUN
        pytest.skip(f"placeholder in README line {cmd!r}")
    argv = [str(data_dir()) + a[len("../shared/data"):] if a.startswith("../shared/data") else a for a in argv]
    argv = [str(REPO / a) if a.startswith("configs/") else a for a in argv]
    if sub in PARSE_ONLY:
        build_parser().parse_args(argv)  # valid flags and arguments
        for a in argv:
            if a.endswith((".toml", ".yaml", ".json")) and "/" in a:
                assert Path(a).is_file(), f"{cmd!r} names {a}, which does not exist"
        return
    monkeypatch.chdir(files)
    if sub == "eval":
        argv += ["--limit", "2", "--no-baseline"]  # the README's line on 2 images, to stay quick
    rc = main(argv)
    cap = capsys.readouterr()
    assert rc == 0, f"{cmd!r} failed: {cap.err}"
    if sub == "analyze":
        out = Path(argv[argv.index("--out") + 1]) if "--out" in argv else files / (Path(argv[1]).stem + "_segtme")
        names = {p.name for p in out.iterdir()}
        assert "nuclei.csv" in names and names & {"nuclei.geojson", "nuclei.geojson.gz"}
        if "summary.json" in names:  # the slide path (--roi / --annotations / pyramids): one report per unit
            summary = json.loads((out / "summary.json").read_text(encoding="utf-8"))
            assert summary["units"] and all(u["n_nuclei"] > 0 for u in summary["units"])
            assert all(f"report-{u['name']}.json" in names for u in summary["units"])
        else:
            assert "tme.json" in names
    if sub == "tme" and "--out" in argv:
        rep = json.loads((files / argv[argv.index("--out") + 1]).read_text(encoding="utf-8"))
        assert rep["raw_data"]["N_total"] > 0
