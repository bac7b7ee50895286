"""Atomic file writing: every file the product writes goes through here.

A leaf (standard library only), so every layer can use it — model configs (``models.config``)
as well as exports; ``segtme.export.atomic`` re-exports it.

``atomic_write(path)`` yields a temporary path in the **same directory** as ``path`` (so the final
``os.replace`` is an atomic rename on the same file system). On success the temporary file is
flushed to disk (fsync) and renamed over ``path``; on any exception it is removed and ``path`` is
left untouched (absent if it did not exist before). Readers therefore never see a partial file.

Two ways to use it::

    with atomic_write(out / "nuclei.geojson") as tmp:      # a Path: hand it to any writer
        some_library.save(tmp)

    with atomic_write(out / "nuclei.csv", mode="w") as f:   # an open file object
        f.write("id,class\\n")

``mode=None`` (default) yields the temporary *path*; ``mode="wb"`` / ``"w"`` yields an open file
object on it (text mode uses UTF-8 and ``newline=""`` unless given).
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import IO, Any, Iterator

__all__ = ["atomic_write", "atomic_write_bytes", "atomic_write_text"]


def _fsync_path(path: Path) -> None:
    """fsync a file by path (it may have been written by another library)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(directory: Path) -> None:
    """fsync a directory so the rename itself is durable (best effort; not on all platforms)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_write(
    path: str | os.PathLike[str],
    mode: str | None = None,
    *,
    encoding: str | None = None,
    newline: str | None = None,
) -> Iterator[Any]:
    """Write ``path`` atomically.

    path: final destination; its parent directory must exist.
    mode: None -> yield the temporary ``Path`` (the caller or a library writes it);
          "wb" / "w" (also "xb"/"x" are treated as "wb"/"w") -> yield an open file object.
    encoding / newline: text mode only (defaults: UTF-8, ``newline=""``: written verbatim).

    The temporary file is named ``.<stem>.<random>.tmp<suffixes>`` in the destination directory
    (e.g. ``.overlay.k3j2.tmp.png``): hidden, and ending in the destination's suffix chain so
    libraries that pick a format from the suffix still do. It is created with mode 0o644 (umask applied), like a normal new file.
    """
    path = Path(path)
    directory = path.parent if str(path.parent) else Path(".")
    if not directory.is_dir():
        raise FileNotFoundError(f"cannot write {path}: directory {directory} does not exist")
    if mode is not None and mode.replace("x", "w") not in ("w", "wb"):
        raise ValueError(f"atomic_write: mode must be None, 'w' or 'wb', got {mode!r}")
    suffixes = "".join(path.suffixes)
    base = path.name[: len(path.name) - len(suffixes)] if suffixes else path.name
    fd, tmp_name = tempfile.mkstemp(prefix=f".{base}.", suffix=f".tmp{suffixes}", dir=directory)
    tmp = Path(tmp_name)
    # mkstemp creates 0o600; give the file normal permissions (respecting umask)
    umask = os.umask(0)
    os.umask(umask)
    try:
        os.chmod(tmp, 0o666 & ~umask)
    except OSError:
        pass
    try:
        if mode is None:
            os.close(fd)
            fd = -1
            yield tmp
        else:
            binary = "b" in mode
            f: IO[Any]
            if binary:
                f = os.fdopen(fd, "wb")
            else:
                f = os.fdopen(fd, "w", encoding=encoding or "utf-8", newline="" if newline is None else newline)
            fd = -1
            with f:
                yield f
                f.flush()
                os.fsync(f.fileno())
        if mode is None:
            if not tmp.exists():
                raise FileNotFoundError(f"atomic_write: nothing was written to the temporary file for {path}")
            _fsync_path(tmp)
        os.replace(tmp, path)
        _fsync_dir(directory)
    except BaseException:
        if fd >= 0:
            with contextlib.suppress(OSError):
                os.close(fd)
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically; returns the path."""
    with atomic_write(path, "wb") as f:
        f.write(data)
    return Path(path)


def atomic_write_text(path: str | os.PathLike[str], text: str, encoding: str = "utf-8") -> Path:
    """Write ``text`` to ``path`` atomically (no newline translation); returns the path."""
    with atomic_write(path, "w", encoding=encoding) as f:
        f.write(text)
    return Path(path)
