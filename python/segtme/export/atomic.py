"""Atomic file writing for the exports: ``segtme.atomic`` (moved there so that lower layers, e.g.
``models.config``, can write atomically without importing ``export``). Same names, same objects."""

from ..atomic import _fsync_dir, _fsync_path, atomic_write, atomic_write_bytes, atomic_write_text  # noqa: F401

__all__ = ["atomic_write", "atomic_write_bytes", "atomic_write_text"]
