"""PAGET (Komura et al., MIDL 2026): 13-class TME segmentation by hierarchical multi-teacher
distillation into a SegFormer student.

Modules: ``taxonomy`` (hierarchy, evaluation mappings), ``aggregate`` (the five aggregation steps
and the flat ablation), ``teachers`` (plug-in interface), ``rule_teachers`` (simple rule-based
teachers for tests / demos), ``model`` (``paget_segformer`` family, ``paget_s`` / ``paget_h``
presets), ``distill`` (labels + training), ``product`` (PAGET-S / PAGET-H outputs for QuPath),
``features`` (13-class TME features and tokens). Heavy dependencies load lazily.
"""
