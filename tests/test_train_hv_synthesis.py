"""HV target synthesis (train/targets.py) on hand-made masks, as the training data uses it."""

from __future__ import annotations

import numpy as np

from segtme.train.targets import hv_targets_dynamic, hv_targets_from_instances


def test_dynamic_targets_hand_values_and_clipping():
    sem = np.zeros((5, 30), np.uint8)
    sem[2, 2:27] = 3  # a 25-px bar: centroid x = 14, y = 2
    hv = hv_targets_dynamic(sem)
    row = hv[0, 2, 2:27]
    # x - 14 over 10, clipped: x=2 -> -1.2 -> -1; x=9 -> -0.5; x=14 -> 0; x=20 -> 0.6; x=26 -> 1.2 -> 1
    assert row[0] == -1.0 and row[-1] == 1.0
    assert np.isclose(hv[0, 2, 9], -0.5) and hv[0, 2, 14] == 0.0 and np.isclose(hv[0, 2, 20], 0.6)
    assert np.all(hv[1, 2, 2:27] == 0.0)  # one row: y = centroid
    assert np.all(hv[:, sem == 0] == 0.0)


def test_dynamic_targets_merge_touching_nuclei_but_instances_do_not():
    inst = np.zeros((7, 12), np.int32)
    inst[2:5, 1:6] = 1
    inst[2:5, 6:11] = 2  # touching: one connected component for the dynamic synthesis
    dyn = hv_targets_dynamic((inst > 0).astype(np.uint8))
    ins = hv_targets_from_instances(inst)
    # dynamic: one centroid at x = 5.5 -> pixel x=5 gets -0.05, x=6 gets +0.05
    assert np.isclose(dyn[0, 3, 5], -0.05) and np.isclose(dyn[0, 3, 6], 0.05)
    # HoVer-Net: each 5-px-wide instance spans exactly -1 .. 1 along x
    np.testing.assert_allclose(ins[0, 3, 1:6], [-1, -0.5, 0, 0.5, 1])
    np.testing.assert_allclose(ins[0, 3, 6:11], [-1, -0.5, 0, 0.5, 1])
    np.testing.assert_allclose(ins[1, 2:5, 3], [-1, 0, 1])
