"""Hostile CLI inputs (issue #13 items 1, 6, 9): each is ONE line ``error: ...`` (exit 2) *before*
any analysis — the model is never loaded — and nothing is left behind; SIGINT/SIGTERM clean the
staging folder; staging folders of runs killed with SIGKILL are removed by the next run."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image as PILImage

from segtme.cli import main

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture()
def png(tmp_path):
    rng = np.random.default_rng(0)
    p = tmp_path / "he.png"
    PILImage.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(p)
    return p


@pytest.fixture()
def no_model(monkeypatch):
    """Fail loudly if any case reaches the model load (validation must come first)."""
    import segtme.models.registry as reg

    def boom(*a, **k):
        raise AssertionError("the model was loaded before the bad input was reported")

    monkeypatch.setattr(reg, "load_model", boom)


def _one_line_error(capsys, args, *needles):
    rc = main(args)
    err = capsys.readouterr().err
    assert rc == 2, err
    assert "Traceback" not in err and " object at 0x" not in err, err
    lines = [ln for ln in err.strip().splitlines() if not ln.startswith("[")]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    for n in needles:
        assert n in lines[0], err
    return lines[0]


def _no_staging_left(d: Path) -> None:
    if d.is_dir():
        assert not [p for p in d.iterdir() if p.name.startswith(".segtme-")]


def test_out_is_a_file(tmp_path, png, capsys, no_model):
    f = tmp_path / "f"
    f.write_text("x")
    _one_line_error(capsys, ["analyze", str(png), "--mpp", "0.5", "--out", str(f)], str(f), "is a file")
    assert f.read_text() == "x"


def test_out_under_a_file(tmp_path, png, capsys, no_model):
    f = tmp_path / "f"
    f.write_text("x")
    _one_line_error(capsys, ["analyze", str(png), "--mpp", "0.5", "--out", str(f / "sub" / "dir")], "under", str(f))


def test_out_in_proc(png, capsys, no_model):
    _one_line_error(capsys, ["analyze", str(png), "--mpp", "0.5", "--out", "/proc/segtme-out"], "/proc/segtme-out")
    assert not Path("/proc/segtme-out").exists()


def test_out_name_too_long(tmp_path, png, capsys, no_model):
    long = tmp_path / ("x" * 300)
    _one_line_error(capsys, ["analyze", str(png), "--mpp", "0.5", "--out", str(long)], "name too long")


def _cli(*args: str, preexec=None, wrap: list[str] | None = None, timeout=120) -> subprocess.CompletedProcess:
    cmd = (wrap or []) + [sys.executable, "-m", "segtme.cli", *args]
    env = dict(os.environ, PYTHONPATH=str(REPO / "python"))
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, preexec_fn=preexec, env=env)


def test_out_not_writable(tmp_path, png):
    """A folder without write permission. Root ignores permission bits (CAP_DAC_OVERRIDE), so as
    root the CLI runs under ``setpriv`` with DAC_OVERRIDE and DAC_READ_SEARCH removed from its
    capability bounding set: still uid 0, so it reads the clone and its venv wherever they live
    (also under a 0700 folder), but the folder's mode 0555 now binds it."""
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    cmd = [sys.executable, "-m", "segtme.cli", "analyze", str(png), "--mpp", "0.5", "--out",
           str(locked / "out"), "--no-progress"]
    if os.geteuid() == 0:
        setpriv = shutil.which("setpriv")
        assert setpriv, "running as root needs setpriv (util-linux) to drop CAP_DAC_OVERRIDE"
        cmd = [setpriv, "--bounding-set", "-dac_override,-dac_read_search", *cmd]
    env = dict(os.environ, PYTHONPATH=str(REPO / "python"))
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=env)
    finally:
        locked.chmod(0o755)
    err = r.stderr
    assert r.returncode == 2, err
    assert len(err.strip().splitlines()) == 1 and err.startswith("error: ") and "permission denied" in err, err
    assert str(locked / "out") in err
    assert not (locked / "out").exists()


@pytest.mark.skipif(shutil.which("unshare") is None, reason="needs unshare (util-linux) for a read-only mount")
def test_out_on_read_only_file_system(tmp_path, png):
    mnt = tmp_path / "ro"
    mnt.mkdir()
    probe = subprocess.run(["unshare", "-rm", "sh", "-c", f"mount -t tmpfs -o ro tmpfs {mnt}"], capture_output=True)
    if probe.returncode != 0:
        pytest.skip(f"cannot mount a read-only tmpfs here: {probe.stderr.decode().strip()}")
    script = (f"mount -t tmpfs -o ro tmpfs {mnt} && exec {sys.executable} -m segtme.cli analyze {png} --mpp 0.5 "
              f"--out {mnt}/out --no-progress")
    env = dict(os.environ, PYTHONPATH=str(REPO / "python"))
    r = subprocess.run(["unshare", "-rm", "sh", "-c", script], capture_output=True, text=True, timeout=120, env=env)
    assert r.returncode == 2, r.stderr
    assert "read-only file system" in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr


@pytest.mark.parametrize("flag,value,needle", [
    ("--tile", "0", "--tile must be at least 16"),
    ("--tile", "-5", "--tile must be at least 16"),
    ("--tile", "abc", "--tile must be a whole number"),
    ("--batch", "0", "--batch must be at least 1"),
    ("--overlap", "-1", "--overlap must be at least 0"),
    ("--mpp", "abc", "--mpp must be a number"),
    ("--mpp", "1e-", "--mpp must be a number"),
    ("--overlay-size", "10", "--overlay-size"),
])
def test_bad_numbers_are_one_line_errors(tmp_path, png, capsys, no_model, flag, value, needle):
    out = tmp_path / "o"
    _one_line_error(capsys, ["analyze", str(png), "--mpp", "0.5", flag, value, "--out", str(out)], needle)
    assert not out.exists()  # validation comes before the output folder is even created


def test_overlap_vs_tile_and_cell_expansion(tmp_path, png, capsys, no_model):
    _one_line_error(capsys, ["analyze", str(png), "--mpp", "0.5", "--tile", "64", "--overlap", "32", "--out",
                             str(tmp_path / "o")], "less than half")
    _one_line_error(capsys, ["analyze", str(png), "--mpp", "0.5", "--cell-expansion", "3", "--out",
                             str(tmp_path / "o")], "--cells")
    _one_line_error(capsys, ["analyze", str(png), "--mpp", "0.5", "--cells", "--cell-expansion", "nan", "--out",
                             str(tmp_path / "o")], "--cell-expansion")


def test_argparse_errors_are_one_line(capsys):
    for args in (["analyze"], ["analyze", "x.png", "--no-such-flag"], ["analyze", "x.png", "--precision", "fp8"]):
        with pytest.raises(SystemExit) as e:
            main(args)
        err = capsys.readouterr().err
        assert e.value.code == 2 and err.startswith("error: ") and len(err.strip().splitlines()) == 1, err
        assert "usage:" not in err


def test_failed_run_leaves_no_folder_it_created(tmp_path, png, capsys):
    """An error after the output folder was made (here: the PNG has no MPP) removes the staging
    folder and the (empty) output folder it created."""
    out = tmp_path / "new" / "out"
    _one_line_error(capsys, ["analyze", str(png), "--out", str(out), "--no-progress"], "--mpp")
    assert not out.exists()


def _wait_for_stage(out: Path, proc: subprocess.Popen, timeout: float = 60.0) -> Path:
    t0 = time.time()
    while time.time() - t0 < timeout:
        if out.is_dir():
            st = [p for p in out.iterdir() if p.name.startswith(".segtme-")]
            if st:
                return st[0]
        if proc.poll() is not None:
            raise AssertionError(f"run ended before staging: {proc.stderr.read() if proc.stderr else ''}")
        time.sleep(0.02)
    raise AssertionError("no staging folder appeared")


def _start(png: Path, out: Path) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(REPO / "python"))
    return subprocess.Popen([sys.executable, "-m", "segtme.cli", "analyze", str(png), "--mpp", "0.5", "--model",
                             "classical", "--out", str(out), "--no-progress"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


@pytest.mark.parametrize("sig,code", [(signal.SIGTERM, 130), (signal.SIGINT, 130)])
def test_signal_cleans_the_staging_folder(tmp_path, png, sig, code):
    out = tmp_path / "out"
    out.mkdir()
    (out / "nuclei.csv").write_text("previous run")
    proc = _start(png, out)
    stage = _wait_for_stage(out, proc)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    if proc.returncode == 0:  # finished before the signal landed: nothing to clean, outputs complete
        assert (out / "overlay.png").exists()
    else:
        assert proc.returncode == code, err
        assert "Traceback" not in err and err.strip().splitlines()[-1] == "interrupted", err
        assert (out / "nuclei.csv").read_text() == "previous run"
    assert not stage.exists()
    _no_staging_left(out)


def test_stale_staging_of_a_killed_run_is_removed_by_the_next_run(tmp_path, png, capsys):
    out = tmp_path / "out"
    out.mkdir()
    proc = _start(png, out)
    stage = _wait_for_stage(out, proc)
    proc.kill()  # SIGKILL: no handler runs
    proc.communicate(timeout=60)
    assert stage.exists()
    # a concurrent live run's folder is kept: one owned by this (alive) process
    live = out / ".segtme-live"
    live.mkdir()
    (live / "owner").write_text(f"{os.getpid()} {os.uname().nodename}\n")
    _one_line_error(capsys, ["analyze", str(png), "--out", str(out), "--no-progress"], "--mpp")  # any next run
    assert not stage.exists() and live.exists()



@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
@pytest.mark.parametrize("when", ["after prepare", "inside prepare"])
def test_a_signal_while_the_output_folder_is_prepared_leaves_no_staging_folder(tmp_path, monkeypatch, sig, when):
    """A signal right after the staging folder was created — before the run body starts (the
    window in which ``test_signal_cleans_the_staging_folder`` once left a ``.segtme-*`` folder), or
    while ``prepare`` still writes its owner file — interrupts the run and removes the staging
    folder; the output folder's earlier content stays."""
    from segtme.export import outdir

    out = tmp_path / "out"
    out.mkdir()
    (out / "nuclei.csv").write_text("previous run")
    if when == "after prepare":
        real = outdir.OutputFolder.prepare.__func__

        def prepare_then_signal(cls, path, what="--out"):
            folder = real(cls, path, what)
            os.kill(os.getpid(), sig)
            return folder

        monkeypatch.setattr(outdir.OutputFolder, "prepare", classmethod(prepare_then_signal))
    else:
        real_write = Path.write_text

        def write_then_signal(self, *a, **k):
            n = real_write(self, *a, **k)
            if self.name == "owner":
                os.kill(os.getpid(), sig)
            return n

        monkeypatch.setattr(Path, "write_text", write_then_signal)
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(KeyboardInterrupt):
        with outdir.prepared_folder(out):
            time.sleep(2.0)  # not reached in time: the signal is raised before or during this
    assert sorted(p.name for p in out.iterdir()) == ["nuclei.csv"]
    assert (out / "nuclei.csv").read_text() == "previous run"
    assert signal.getsignal(signal.SIGTERM) == before  # the run's SIGTERM handler is gone again
