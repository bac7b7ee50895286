"""Mitosis teacher: a small classifier on nucleus-centred crops (mitotic vs not; normal vs
atypical as a second output), trained on the AMi-Br mitotic figures against non-mitotic nuclei
of the other data folders.

Modules: ``model`` (the ``mitosis_cnn`` family and the ``mitosis`` preset), ``crops`` (pure
crop extraction at the model's MPP), ``data`` (training crops from ``../shared/data``),
``train`` (``segtme train`` with ``task = "mitosis"``), ``detect`` (runs on the nuclei of any
SegTME result and marks "Mitotic cell"). Heavy dependencies load lazily.
"""
