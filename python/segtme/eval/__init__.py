"""Evaluation: metrics (``metrics.py``) and the dataset evaluation harness (``evaluate.py``)."""
