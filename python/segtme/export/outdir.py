"""The output folder of a run: checked and staged *before* any analysis, cleaned on every exit.

``OutputFolder.prepare(path)`` validates the destination up front — it must be (or become) a
directory we can write in — by actually creating it and a hidden staging folder
``.segtme-XXXXXXXX/`` inside it, so a bad ``--out`` (a file, a path under a file, not writable,
read-only, in ``/proc``, a name too long) is a one-line ``InputError`` before the model is even
loaded. Writers put every file into the staging folder; ``publish`` moves them into place with
atomic renames only once all of them were written; ``discard`` (also on SIGINT/SIGTERM through
``signals_cleanup``) removes the staging folder; ``prepared_folder`` prepares the folder with that
clean-up already armed, so no signal can leave a new staging folder behind.

A run killed with SIGKILL cannot clean up: each staging folder holds an ``owner`` file with the
writing process's pid and host, and the next ``prepare`` of the same folder removes staging
folders whose process is gone (or that have no readable owner file and are older than
``STALE_AFTER_S``).
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import signal
import socket
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from ..errors import InputError

STAGE_PREFIX = ".segtme-"
#: a staging folder without a readable owner file is considered stale after this many seconds
STALE_AFTER_S = 600.0

_REASONS = {
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
    errno.EROFS: "read-only file system",
    errno.ENAMETOOLONG: "file name too long",
    errno.ENOTDIR: "a parent is a file, not a folder",
    errno.EEXIST: "exists and is not a folder",
    errno.ENOSPC: "no space left on device",
    errno.EDQUOT: "disk quota exceeded",
    errno.ENOENT: "cannot be created here",
}


def _reason(e: OSError) -> str:
    return _REASONS.get(e.errno or -1, e.strerror or type(e).__name__)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def _is_stale(stage: Path, now: float) -> bool:
    """True when ``stage`` belongs to a process on this host that no longer runs (or has no owner
    file and is older than ``STALE_AFTER_S``)."""
    try:
        pid_s, host = (stage / "owner").read_text(encoding="utf-8").split()[:2]
        pid = int(pid_s)
    except (OSError, ValueError):
        try:
            return now - stage.stat().st_mtime > STALE_AFTER_S
        except OSError:
            return False
    if host != socket.gethostname():
        return False  # another machine's run on a shared file system: not ours to judge
    return pid != os.getpid() and not _pid_alive(pid)


def _owned_here(stage: Path) -> bool:
    """True when ``stage``'s owner file names this process on this host."""
    try:
        pid_s, host = (stage / "owner").read_text(encoding="utf-8").split()[:2]
        return int(pid_s) == os.getpid() and host == socket.gethostname()
    except (OSError, ValueError):
        return False


def remove_own_stages(directory: Path) -> list[Path]:
    """Remove the staging folders this process made in ``directory`` (a run interrupted before it
    held its ``OutputFolder``); returns those removed."""
    removed = []
    with contextlib.suppress(OSError):
        for p in list(directory.iterdir()):
            if p.name.startswith(STAGE_PREFIX) and p.is_dir() and not p.is_symlink() and _owned_here(p):
                shutil.rmtree(p, ignore_errors=True)
                removed.append(p)
    return removed


def remove_stale_stages(directory: Path) -> list[Path]:
    """Remove staging folders of killed runs in ``directory``; returns those removed."""
    removed = []
    now = time.time()
    try:
        entries = list(directory.iterdir())
    except OSError:
        return removed
    for p in entries:
        if p.name.startswith(STAGE_PREFIX) and p.is_dir() and not p.is_symlink() and _is_stale(p, now):
            shutil.rmtree(p, ignore_errors=True)
            if not p.exists():
                removed.append(p)
    return removed


@dataclass
class OutputFolder:
    """A validated output folder with its staging folder (see the module docstring)."""

    path: Path
    stage: Path
    stale_removed: int = 0
    created: bool = False  # the folder did not exist before ``prepare``

    @classmethod
    def prepare(cls, path: str | os.PathLike[str], what: str = "--out") -> "OutputFolder":
        """Create ``path`` (with parents) and a staging folder in it, or raise InputError naming
        ``path`` and the reason. Removes stale staging folders of killed runs first."""
        out = Path(path)
        shown = str(out)
        try:
            return cls._prepare(out, shown, what)
        except OSError as e:  # e.g. a stat() of a name too long
            raise InputError(f"cannot use output folder {what} {shown}: {_reason(e)}") from None

    @classmethod
    def _prepare(cls, out: Path, shown: str, what: str) -> "OutputFolder":
        if out.exists() and not out.is_dir():
            raise InputError(f"{what} {shown} is a file, not a folder")
        for parent in out.parents:
            if parent.exists():
                if not parent.is_dir():
                    raise InputError(f"{what} {shown} is under {parent}, which is a file, not a folder")
                break
        created = not out.exists()
        try:
            out.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise InputError(f"cannot create output folder {what} {shown}: {_reason(e)}") from None
        if not out.is_dir():
            raise InputError(f"{what} {shown} is not a folder")
        removed = remove_stale_stages(out)
        try:
            stage = Path(tempfile.mkdtemp(prefix=STAGE_PREFIX, dir=out))
        except OSError as e:
            raise InputError(f"cannot write in output folder {what} {shown}: {_reason(e)}") from None
        try:
            (stage / "owner").write_text(f"{os.getpid()} {socket.gethostname()}\n", encoding="utf-8")
            return cls(out, stage, len(removed), created)
        except OSError as e:
            shutil.rmtree(stage, ignore_errors=True)
            raise InputError(f"cannot write in output folder {what} {shown}: {_reason(e)}") from None
        except BaseException:  # a signal (KeyboardInterrupt / Terminated) while the folder is made
            shutil.rmtree(stage, ignore_errors=True)
            raise

    def staged(self, name: str) -> Path:
        """Path of ``name`` inside the staging folder."""
        return self.stage / name

    def publish(self, names: list[str]) -> list[Path]:
        """Move the staged files ``names`` into the output folder (atomic renames on one file
        system), then remove the staging folder. Returns the final paths."""
        for n in names:
            os.replace(self.stage / n, self.path / n)
        self.discard()
        return [self.path / n for n in names]

    def discard(self) -> None:
        """Remove the staging folder and everything in it (idempotent)."""
        shutil.rmtree(self.stage, ignore_errors=True)

    def abandon(self) -> None:
        """After a failed run: ``discard``, and remove the output folder too when ``prepare``
        created it and nothing else is in it."""
        self.discard()
        if self.created:
            with contextlib.suppress(OSError):
                self.path.rmdir()  # only succeeds when empty


class Terminated(KeyboardInterrupt):
    """Raised in the main thread on SIGTERM so that ``finally`` blocks (staging clean-up) run;
    the CLI reports it like Ctrl-C."""


@contextlib.contextmanager
def _sigterm_raises() -> Iterator[None]:
    """Within the block SIGTERM raises ``Terminated`` in the main thread (SIGINT raises
    KeyboardInterrupt as usual); the handler is set only in the main thread (signal handlers
    cannot be set elsewhere) and restored on exit."""
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def _term(signum, frame):  # noqa: ARG001
        raise Terminated(f"terminated by signal {signum}")

    old = signal.signal(signal.SIGTERM, _term)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)


def _close(folder: OutputFolder | None, ok: bool) -> None:
    if folder is not None:
        folder.discard() if ok else folder.abandon()


@contextlib.contextmanager
def signals_cleanup(folder: OutputFolder | None) -> Iterator[None]:
    """Within the block, SIGTERM raises ``Terminated`` (SIGINT raises KeyboardInterrupt as usual)
    and any exit — normal, error or signal — discards ``folder``'s staging folder if it is still
    there (``abandon`` on errors and signals)."""
    with _sigterm_raises():
        ok = False
        try:
            yield
            ok = True
        finally:
            _close(folder, ok)


@contextlib.contextmanager
def prepared_folder(path: str | os.PathLike[str], what: str = "--out") -> Iterator[OutputFolder]:
    """``OutputFolder.prepare`` with the clean-up of ``signals_cleanup`` armed *before* the
    staging folder exists: a SIGINT / SIGTERM at any moment — while the folder is being prepared
    (``prepare`` removes its own half-made staging folder), before its result is held (the staging
    folders whose owner file names this process are removed), or after — leaves no staging folder
    behind. (With ``prepare`` and then ``signals_cleanup`` a signal between the two did.)"""
    with _sigterm_raises():
        folder, ok = None, False
        try:
            folder = OutputFolder.prepare(path, what)
            yield folder
            ok = True
        finally:
            if folder is None:  # interrupted before ``prepare``'s result was held: sweep this process's own
                remove_own_stages(Path(path))
            _close(folder, ok)
