"""Whole slides and cohorts: ``slide`` (one slide -> streamed outputs), ``runner`` (many slides:
resumable, atomic per-slide folders, failure report, cohort table), ``ray_exec`` (the same jobs
on a Ray cluster). Batch is an executor, not a second pipeline: every slide goes through
``slide.analyze_slide``."""
