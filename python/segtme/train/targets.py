"""Moved to ``segtme.data.targets`` (the data pipeline computes HV targets; the trainer and
the loss only consume them). Re-exported here for existing imports."""

from ..data.targets import hv_targets_dynamic, hv_targets_from_instances  # noqa: F401
