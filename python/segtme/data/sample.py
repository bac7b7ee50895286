"""One training sample: lazily read image + labels, with its microns-per-pixel (MPP).

Label encoding used everywhere in training (``sem`` maps, uint8):

* ``0``            background
* ``1 .. C-1``     a class of the model's taxonomy
* ``FG_UNKNOWN``   (254) foreground (nucleus) whose class is not annotated (e.g. MoNuSeg, GBM):
                   the semantic loss uses the *marginal* foreground likelihood there
                   (``log sum_{c>0} p_c``), so it never invents a class (see ``train/losses.py``)
* ``IGNORE``       (255) no label (padding, voids); excluded from every loss and metric.

Instance maps (``inst``) are int32, 0 = background, 1..N one id per nucleus.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image

IGNORE = 255
FG_UNKNOWN = 254

Image.MAX_IMAGE_PIXELS = 20000 * 20000


@dataclass
class SampleRef:
    """A lazily loaded sample.

    name: unique name (dataset-relative, used for holdout lists and logs).
    mpp: microns per pixel of the stored image (input px).
    size: (width, height) in input px (read from the file header when not known).
    load: callable returning ``(rgb uint8 HxWx3, inst int32 HxW or None, sem uint8 HxW or None)``.
        ``sem`` follows the module's encoding; when ``inst`` is given but ``sem`` is None the
        foreground is FG_UNKNOWN (class-agnostic instances).
    has_instances / has_classes: what the labels carry (instances enable HoVer-Net HV targets and
        PQ; classes enable full CE and multi-class mIoU).
    dataset: name of the dataset this sample belongs to.
    """

    name: str
    mpp: float
    load: Callable[[], tuple[np.ndarray, np.ndarray | None, np.ndarray | None]]
    size: tuple[int, int] | None = None
    has_instances: bool = True
    has_classes: bool = False
    dataset: str = ""
    meta: dict = field(default_factory=dict)


def read_rgb(path: str | Path) -> np.ndarray:
    """RGB uint8 (H, W, 3) from any PIL-readable file."""
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


def read_label(path: str | Path) -> np.ndarray:
    """Integer label image (uint8/uint16 PNG, TIFF) as int32 (H, W)."""
    with Image.open(path) as im:
        a = np.asarray(im)
    if a.ndim == 3:  # RGB-encoded label: take the first channel
        a = a[..., 0]
    return a.astype(np.int32)


def image_size(path: str | Path) -> tuple[int, int]:
    """(width, height) from the file header (no decode)."""
    with Image.open(path) as im:
        return im.size


def sem_from_instances(inst: np.ndarray, inst_class: dict[int, int] | None, class_map: dict[int, int] | None = None) -> np.ndarray:
    """Semantic map (uint8, module encoding) from instances and a per-instance class dict.

    inst_class: {instance id: dataset class id} (None: all foreground FG_UNKNOWN).
    class_map: dataset class id -> model class id (None: identity). Instances whose class is
        missing or unmapped become FG_UNKNOWN.
    """
    n = int(inst.max()) if inst.size else 0
    lut = np.full(n + 1, FG_UNKNOWN, np.uint8)
    lut[0] = 0
    if inst_class:
        for i, c in inst_class.items():
            i = int(i)
            if 0 < i <= n:
                c = int(c)
                if class_map is not None:
                    c = class_map.get(c, FG_UNKNOWN)
                lut[i] = c if 0 < c < FG_UNKNOWN else FG_UNKNOWN
    return lut[inst]


def load_class_json(path: str | Path) -> dict[int, int]:
    """``{"<instance id>": class}`` (CoNSeP ``*_class.json``) as ints."""
    d = json.loads(Path(path).read_text())
    return {int(k): int(v) for k, v in d.items()}
