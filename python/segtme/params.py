"""Building frozen parameter dataclasses from plain mappings (config files, model JSON)."""

from __future__ import annotations

from dataclasses import fields, replace
from typing import Any, Callable, Mapping, TypeVar

P = TypeVar("P")


def params_from_mapping(cls: type[P], d: Mapping[str, Any] | None, what: str, cast: Callable[[Any], Any] | None = None) -> P:
    """``cls()`` with the values of ``d`` (optionally passed through ``cast``); unknown keys raise a
    ValueError naming them and the known ones (``what`` names the parameter set)."""
    if not d:
        return cls()
    known = {f.name for f in fields(cls)}  # type: ignore[arg-type]
    bad = set(d) - known
    if bad:
        raise ValueError(f"unknown {what} parameter(s) {sorted(bad)}; known: {sorted(known)}")
    return replace(cls(), **{k: (cast(v) if cast else v) for k, v in d.items()})  # type: ignore[type-var]
