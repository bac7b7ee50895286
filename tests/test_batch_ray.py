"""`segtme batch --ray` on a local 2-worker Ray cluster over 3 pyramidal slides built at test time
from real H&E (one corrupt): same outputs as the local run, the corrupt slide reported, and a
killed worker's slide redone (only that one) by the next run. Small on purpose (2 cores)."""

from __future__ import annotations

import csv
import threading
import time

import pytest

from conftest import load_monuseg
from segtme.batch.runner import cohort_rows, collect_jobs, prepare_out_root, run_local
from segtme.batch.slide import SlideOptions
from segtme.io.synthetic import write_slide

ray = pytest.importorskip("ray")


@pytest.fixture(scope="module")
def model():
    from ray import cloudpickle

    import inference_helpers

    cloudpickle.register_pickle_by_value(inference_helpers)  # the test model class travels by value
    return inference_helpers.threshold_model(tile=128, overlap=16)


@pytest.fixture(scope="module")
def slides(tmp_path_factory):
    he = [rgb for rgb, _, _ in load_monuseg(3)]
    d = tmp_path_factory.mktemp("rayslides")
    a = write_slide(d / "a.svs", (5000, 4000), [(800, 700, he[0]), (3200, 2500, he[1][:800, :800])], 0.25, min_level_px=800)
    b = write_slide(d / "b.ome.tif", (4000, 3000), [(1500, 1000, he[2])], 0.25, flavour="ome", min_level_px=800)
    c = d / "c.svs"
    c.write_bytes(a.read_bytes()[:30000])
    return [str(a), str(c), str(b)]


@pytest.fixture(scope="module")
def cluster():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, object_store_memory=256 * 2**20)
    yield
    ray.shutdown()


def _nuclei(path):
    with open(path, encoding="utf-8") as f:
        rows = list(csv.DictReader(line for line in f if not line.startswith("#")))
    return [{k: v for k, v in r.items() if k != "Object ID"} for r in rows]  # ids are random UUIDs


def _strip(rows):
    return [{k: v for k, v in r.items() if k not in ("seconds",)} for r in rows]


def test_ray_equals_local_reports_corrupt_and_resumes_after_a_killed_worker(tmp_path, slides, model, cluster):
    from segtme.batch.ray_exec import RayOptions, run_ray

    from segtme.inference.options import InferenceOptions

    jobs = collect_jobs(slides)
    opts = SlideOptions(inference=InferenceOptions(batch_size=3, chunk_size=512))  # shipped to the actors as it is
    local = prepare_out_root(tmp_path / "local")
    rl = run_local(jobs, local, model, opts)
    rr_out = prepare_out_root(tmp_path / "ray")
    rr = run_ray(jobs, rr_out, model, opts, RayOptions(workers=2))
    assert [r.status for r in rl] == [r.status for r in rr] == ["done", "failed", "done"]
    assert rr[1].reason == rl[1].reason and "c.svs" in rr[1].reason
    for n in ("a", "b"):
        assert _nuclei(rr_out / n / "nuclei.csv") == _nuclei(local / n / "nuclei.csv")
    assert _strip(cohort_rows(rr_out, ["a", "b"])) == _strip(cohort_rows(local, ["a", "b"]))

    # kill one worker while both slides are being analysed
    out = prepare_out_root(tmp_path / "kill")
    two = [j for j in jobs if j.name in ("a", "b")]
    killed = []

    def killer(actors):
        def go():
            t0 = time.monotonic()
            while time.monotonic() - t0 < 120:
                if len([p for p in out.iterdir() if p.name.startswith(".segtme-")]) >= 2:
                    ray.kill(actors[0], no_restart=True)
                    killed.append(True)
                    return
                time.sleep(0.05)
        threading.Thread(target=go, daemon=True).start()

    rk = run_ray(two, out, model, opts, RayOptions(workers=2), on_started=killer)
    assert killed
    died = [r for r in rk if r.status == "failed"]
    assert len(died) == 1 and "worker died" in died[0].reason
    assert not (out / died[0].name).exists()
    ok = next(r for r in rk if r.status == "done")
    again = run_ray(two, prepare_out_root(out), model, opts, RayOptions(workers=2))
    assert {r.name: r.status for r in again} == {died[0].name: "done", ok.name: "skipped"}
    assert [p for p in out.iterdir() if p.name.startswith(".segtme-")] == []
    assert _nuclei(out / died[0].name / "nuclei.csv") == _nuclei(local / died[0].name / "nuclei.csv")
