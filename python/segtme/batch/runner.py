"""Many slides -> one folder per slide, a failure report and a cohort table; resumable.

* ``collect_jobs(inputs)``: slides, folders (their image files, sorted), globs and manifest CSVs
  (columns ``path`` [+ ``mpp``, ``annotations``], paths relative to the manifest) -> ``Job``s
  with unique output names.
* ``process_job(job, out_root, model, opts)``: one slide through ``slide.analyze_slide`` into a
  staging folder ``OUT/.segtme-XXXXXXXX/`` (with an ``owner`` file), renamed to ``OUT/<name>/``
  only when complete (one atomic directory rename). A crash, SIGTERM or SIGKILL mid-slide
  leaves only the staging folder, which the next run removes (``export.outdir``). A folder with
  ``summary.json`` is complete; a re-run skips it.
* ``run_local``: the jobs one after another in this process; ``ray_exec.run_ray`` runs the same
  ``process_job`` on a Ray cluster.
* ``write_reports``: ``batch_report.csv`` (every job of this run: done / skipped / failed and
  why) and the cohort table ``cohort.csv`` + ``cohort.parquet`` (one row per slide and unit,
  built from the complete folders on disk, so it is identical however the slides were run).
"""

from __future__ import annotations

import csv
import glob
import io
import json
import logging
import os
import shutil
import socket
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

from ..errors import InputError, SegTMEError
from .slide import SUMMARY, SlideOptions, analyze_slide

log = logging.getLogger(__name__)

STAGE_PREFIX = ".segtme-"
REPORT = "batch_report.csv"
COHORT_CSV = "cohort.csv"
COHORT_PARQUET = "cohort.parquet"
#: files in a folder that are not slides (sidecars, tables, annotations)
_NOT_SLIDES = {".csv", ".json", ".geojson", ".txt", ".md", ".xml", ".py", ".log", ".gz", ".parquet", ".dat", ".ini"}


@dataclass(frozen=True)
class Job:
    """One slide to analyse. name: its output folder; mpp / annotations: per-slide overrides."""

    path: str
    name: str
    mpp: float | None = None
    annotations: str | None = None


@dataclass
class JobResult:
    """Outcome of one job: status "done" | "skipped" | "failed"; reason for failures."""

    name: str
    path: str
    status: str
    reason: str = ""
    seconds: float = 0.0
    n_nuclei: int = 0
    tissue_mm2: float = 0.0


def _read_manifest(p: Path) -> list[tuple[str, float | None, str | None]]:
    try:
        text = p.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as e:
        raise InputError(f"manifest {p}: cannot read ({e})") from None
    rows = list(csv.DictReader(io.StringIO(text)))
    if not rows or "path" not in (rows[0].keys() if rows else []):
        raise InputError(f"manifest {p}: needs a header with a 'path' column (optional: mpp, annotations)")
    out = []
    for i, r in enumerate(rows, start=2):
        path = (r.get("path") or "").strip()
        if not path:
            raise InputError(f"manifest {p} line {i}: empty path")
        mpp_s = (r.get("mpp") or "").strip()
        mpp = None
        if mpp_s:
            from ..io.image import validate_mpp

            mpp = validate_mpp(mpp_s, f"manifest {p} line {i}: mpp")
        ann = (r.get("annotations") or "").strip() or None
        base = p.parent
        out.append((str(base / path) if not os.path.isabs(path) else path, mpp,
                    (str(base / ann) if ann and not os.path.isabs(ann) else ann)))
    return out


def _is_manifest(p: Path) -> bool:
    if p.suffix.lower() != ".csv" or not p.is_file():
        return False
    with p.open("rb") as f:
        head = f.read(256).decode("utf-8-sig", "replace").splitlines()
    return bool(head) and "path" in [c.strip() for c in head[0].split(",")]


def _folder_slides(d: Path) -> list[Path]:
    out = []
    for p in sorted(d.iterdir()):
        if p.name.startswith(".") or not p.is_file() or p.suffix.lower() in _NOT_SLIDES:
            continue
        out.append(p)
    return out


def collect_jobs(inputs: Sequence[str], mpp: float | None = None, annotations: str | None = None) -> list[Job]:
    """Expand ``inputs`` (see the module docstring). A path that does not exist is kept as a job
    (it fails with its reason in the report); an input that expands to nothing is an error."""
    found: list[tuple[str, float | None, str | None]] = []
    for raw in inputs:
        p = Path(raw)
        if any(c in raw for c in "*?[") and not p.exists():
            hits = sorted(glob.glob(raw, recursive=True))
            if not hits:
                raise InputError(f"{raw}: the pattern matches no files")
            found += [(h, mpp, annotations) for h in hits if Path(h).is_file()]
        elif p.is_dir() and p.suffix.lower() != ".mrxs":
            slides = _folder_slides(p)
            if not slides:
                raise InputError(f"{p}: folder has no slide or image files")
            found += [(str(s), mpp, annotations) for s in slides]
        elif _is_manifest(p):
            found += [(a, m if m is not None else mpp, an or annotations) for a, m, an in _read_manifest(p)]
        else:
            found.append((raw, mpp, annotations))
    if not found:
        raise InputError("no input slides")
    jobs: list[Job] = []
    used: dict[str, int] = {}
    seen: set[str] = set()
    for path, m, an in found:
        key = os.path.abspath(path)
        if key in seen:
            continue
        seen.add(key)
        stem = Path(path).name
        for suf in (".ome.tiff", ".ome.tif"):
            if stem.lower().endswith(suf):
                stem = stem[: -len(suf)]
                break
        else:
            stem = Path(stem).stem or stem
        name = "".join(c if c.isalnum() or c in "._-" else "_" for c in stem)[:100] or "slide"
        if name in used:
            used[name] += 1
            name = f"{name}-{used[name]}"
        else:
            used[name] = 1
        jobs.append(Job(path, name, m, an))
    return jobs


def is_complete(out_root: Path, name: str) -> bool:
    return (out_root / name / SUMMARY).is_file()


def _stage(out_root: Path) -> Path:
    stage = Path(tempfile.mkdtemp(prefix=STAGE_PREFIX, dir=out_root))
    (stage / "owner").write_text(f"{os.getpid()} {socket.gethostname()}\n", encoding="utf-8")
    return stage


def _reason(e: BaseException) -> str:
    if isinstance(e, SegTMEError):
        return str(e)
    if isinstance(e, MemoryError):
        return "out of memory"
    return f"{type(e).__name__}: {e}"


def process_job(job: Job, out_root: str | Path, model, opts: SlideOptions, *, force: bool = False,
                progress: Callable[[int, int], None] | None = None) -> JobResult:
    """Analyse one slide into ``out_root/<job.name>/`` atomically (see the module docstring).
    Never raises for a bad slide: failures come back as ``JobResult(status="failed")``.
    KeyboardInterrupt / SIGTERM (``export.outdir.Terminated``) remove the staging folder and
    propagate."""
    out_root = Path(out_root)
    final = out_root / job.name
    if not force and is_complete(out_root, job.name):
        return JobResult(job.name, job.path, "skipped", "complete")
    t0 = time.perf_counter()
    stage = _stage(out_root)
    try:
        o = replace(opts, mpp=job.mpp if job.mpp is not None else opts.mpp,
                    annotations=job.annotations if job.annotations is not None else opts.annotations)
        res = analyze_slide(job.path, model, stage, o, progress=progress)
        (stage / "owner").unlink(missing_ok=True)
        if final.exists():  # an incomplete or --force'd previous folder (never half-written by us)
            shutil.rmtree(final)
        os.rename(stage, final)
        n = sum(u.n_nuclei for u in res.units)
        return JobResult(job.name, job.path, "done", "", time.perf_counter() - t0, n, res.tissue_mm2)
    except (KeyboardInterrupt, SystemExit):
        raise
    except Exception as e:  # noqa: BLE001 - a bad slide must not stop the cohort
        log.debug("slide %s failed", job.path, exc_info=True)
        return JobResult(job.name, job.path, "failed", _reason(e), time.perf_counter() - t0)
    finally:
        shutil.rmtree(stage, ignore_errors=True)


class Progress:
    """Progress over slides and over tiles within the current slide (stderr, one line per
    update, at most every ``every`` seconds)."""

    def __init__(self, total: int, enabled: bool = True, every: float = 2.0, stream=None) -> None:
        self.total, self.enabled, self.every = total, enabled, every
        self.stream = stream or sys.stderr
        self.i = 0
        self.name = ""
        self._last = 0.0

    def start(self, name: str) -> None:
        self.i += 1
        self.name = name
        self._emit(f"[{self.i}/{self.total}] {name}: started", force=True)

    def tiles(self, done: int, total: int) -> None:
        self._emit(f"[{self.i}/{self.total}] {self.name}: {done}/{max(done, total)} tiles")

    def finish(self, r: JobResult) -> None:
        msg = {"done": f"done in {r.seconds:.1f} s, {r.n_nuclei} nuclei, {r.tissue_mm2:.3f} mm² tissue",
               "skipped": "already complete, skipped", "failed": f"FAILED: {r.reason}"}[r.status]
        self._emit(f"[{self.i}/{self.total}] {r.name}: {msg}", force=True)

    def _emit(self, msg: str, force: bool = False) -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        if force or now - self._last >= self.every:
            self._last = now
            print(msg, file=self.stream, flush=True)


def run_local(jobs: Sequence[Job], out_root: str | Path, model, opts: SlideOptions, *, force: bool = False,
              progress: Progress | None = None, on_result: Callable[[JobResult], None] | None = None) -> list[JobResult]:
    """The jobs one by one in this process (the model loaded once by the caller)."""
    results = []
    for job in jobs:
        if progress is not None:
            progress.start(job.name)
        r = process_job(job, out_root, model, opts, force=force, progress=progress.tiles if progress else None)
        results.append(r)
        if progress is not None:
            progress.finish(r)
        if on_result is not None:
            on_result(r)
    return results


# --------------------------------------------------------------------------- reports


def write_batch_report(out_root: Path, results: Iterable[JobResult]) -> Path:
    from ..export.atomic import atomic_write_text

    buf = io.StringIO()
    fields = ["slide", "path", "status", "reason", "seconds", "n_nuclei", "tissue_mm2"]
    w = csv.DictWriter(buf, fieldnames=fields, lineterminator="\n")
    w.writeheader()
    for r in results:
        d = asdict(r)
        w.writerow({"slide": d["name"], "path": d["path"], "status": d["status"], "reason": d["reason"],
                    "seconds": f"{d['seconds']:.2f}", "n_nuclei": d["n_nuclei"], "tissue_mm2": f"{d['tissue_mm2']:.6g}"})
    return atomic_write_text(out_root / REPORT, buf.getvalue())


def _version() -> str:
    try:
        from importlib.metadata import version

        return version("segtme")
    except Exception:
        return "unknown"


def cohort_rows(out_root: Path, names: Sequence[str]) -> list[dict[str, Any]]:
    """One row per (slide, unit) of the complete slide folders ``names`` (in that order)."""
    from ..tme.report import report_measurements

    ver = _version()
    rows: list[dict[str, Any]] = []
    for name in names:
        d = out_root / name
        if not (d / SUMMARY).is_file():
            continue
        s = json.loads((d / SUMMARY).read_text(encoding="utf-8"))
        for u in s["units"]:
            rep_path = d / f"report-{_safe(u['name'])}.json"
            rep = json.loads(rep_path.read_text(encoding="utf-8")).get("report") if rep_path.is_file() else None
            row: dict[str, Any] = {
                "slide": name, "unit": u["name"], "unit_kind": u["kind"], "path": s["path"],
                "mpp": s["mpp"], "mpp_source": s["mpp_source"], "width_px": s["size"][0], "height_px": s["size"][1],
                "tissue_mm2": u["tissue_mm2"], "slide_tissue_mm2": s["tissue_mm2"], "n_nuclei": u["n_nuclei"],
            }
            for cls, c in u["class_counts"].items():
                if cls.lower() != "background":
                    row[f"n_{cls}"] = c
            if rep is not None:
                for k, v in report_measurements(rep).items():
                    row[k] = v
            row.update(model=s["model"], segtme_version=ver, seconds=round(s["seconds"], 3), tiles_run=s["tiles_run"])
            rows.append(row)
    return rows


def _safe(name: str) -> str:
    from .slide import _safe as f

    return f(name)


def write_cohort(out_root: Path, rows: list[dict[str, Any]]) -> tuple[Path, Path | None, str]:
    """cohort.csv always; cohort.parquet when pyarrow is installed. Returns (csv, parquet or
    None, note)."""
    from ..export.atomic import atomic_write_bytes, atomic_write_text
    from ..export.tables import rows_to_csv

    keys = list(dict.fromkeys(k for r in rows for k in r))  # columns in order of first appearance
    csv_path = atomic_write_text(out_root / COHORT_CSV, rows_to_csv(rows))
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        return csv_path, None, "cohort.parquet not written: pyarrow is not installed (pip install 'segtme[parquet]')"
    cols: dict[str, list] = {k: [r.get(k) for r in rows] for k in keys}
    table = pa.table({k: pa.array(v, type=pa.float64() if all(isinstance(x, (int, float)) or x is None for x in v)
                                   and any(isinstance(x, float) for x in v) else None) for k, v in cols.items()})
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    pq_path = atomic_write_bytes(out_root / COHORT_PARQUET, sink.getvalue().to_pybytes())
    return csv_path, pq_path, ""


def prepare_out_root(out: str | Path) -> Path:
    """Validate / create the batch output folder up front and remove staging folders of killed
    runs (``export.outdir``). One-line InputError when unusable."""
    from ..export.outdir import prepared_folder

    with prepared_folder(out) as folder:  # only the validation and the stale clean-up are needed here
        return folder.path


def analyze_slide_to(source: Any, out_dir: str | Path, model: Any = "default", *, mpp: float | None = None,
                     roi: Sequence[int] | None = None, annotations: str | None = None, detect_tissue: bool = True,
                     device: str = "auto", weights: str | None = None,
                     progress: Callable[[int, int], None] | None = None, **options: Any):
    """Python API for one whole slide: analyse ``source`` (a path or ``ImageSource``) into the
    folder ``out_dir`` (created, with its parents, if it does not exist; replaced atomically if it
    does) and return the ``slide.SlideResult``.

    mpp: level-0 µm/px, only needed when the file has no (valid) resolution metadata.
    roi: level-0 (x, y, w, h) px. annotations: QuPath GeoJSON of polygons (level-0 px; one TME
    report each). detect_tissue: skip background (tissue mask on an 8 µm/px thumbnail).
    model: name / config path / ``LoadedModel`` (a name is loaded on ``device`` with the
    inference options' precision). options: further ``SlideOptions`` fields (gzip, write_csv,
    narrative_backend, reader, tissue, inference) and ``InferenceOptions`` fields (tile,
    overlap, chunk_size, halo, batch_size, precision, ...), which go into ``inference``.
    Nothing is left in ``out_dir`` if it fails (a staging folder next to it is removed)."""
    from ..io.regions import parse_roi

    out = Path(out_dir)
    parent = prepare_out_root(out.parent if str(out.parent) else Path("."))
    opts = slide_options(mpp=mpp, roi=parse_roi(roi) if roi is not None else None, annotations=annotations,
                         detect_tissue=detect_tissue, device=device, **options)
    if isinstance(model, str):
        from ..models.registry import load_model

        model = load_model(model, opts.inference.device, weights=weights, precision=opts.inference.precision)
    stage = _stage(parent)
    try:
        res = analyze_slide(source, model, stage, opts, progress=progress)
        (stage / "owner").unlink(missing_ok=True)
        if out.exists():
            shutil.rmtree(out)
        os.rename(stage, out)
        return res
    finally:
        shutil.rmtree(stage, ignore_errors=True)


def slide_options(**kw: Any) -> SlideOptions:
    """``SlideOptions`` from keyword settings: ``SlideOptions`` fields as they are, and
    ``InferenceOptions`` fields (tile, overlap, chunk_size, halo, batch_size, device, precision,
    ...) folded into its ``inference`` (over an ``inference=`` given too). Unknown keys raise
    TypeError; invalid values a one-line InputError."""
    from dataclasses import fields

    from ..inference.options import InferenceOptions

    slide_keys = {f.name for f in fields(SlideOptions)}
    inf_keys = {f.name for f in fields(InferenceOptions)} - {"progress"}
    bad = sorted(set(kw) - slide_keys - inf_keys)
    if bad:
        raise TypeError(f"unknown slide option(s) {bad}; known: {sorted(slide_keys | inf_keys)}")
    inf = {k: kw.pop(k) for k in list(kw) if k in inf_keys}
    base = kw.pop("inference", None) or InferenceOptions()
    return SlideOptions(inference=base.replace(**inf) if inf else base, **kw)
