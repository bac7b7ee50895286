"""Teacher plug-in interface for PAGET's aggregation.

Users bring their own teachers (the paper's are IHC-restaining-trained SegPath models, granulocyte
models, MIDOG++ and HoverNet). Three kinds of plug-ins, each a ``typing.Protocol`` so any object
with the right attributes works:

* ``Teacher``          ``predict(image) -> {class name: (H, W) logit map}`` (names from
                       ``segtme.paget.taxonomy.AGG_NAMES``: "Epithelium", "Smooth muscle",
                       "Leukocyte", "Lymphocyte", ...). Logit > 0 means "fires".
* ``InstanceSource``   ``instances(image) -> InstanceOutput`` (instance map + optional per-nucleus
                       classes in its own taxonomy, e.g. HoverNet's PanNuke classes).
* ``MitosisDetector``  ``detect(image) -> (K, 2)`` mitosis positions (x, y) in pixels.

Adapters: ``FunctionTeacher`` (any callable, e.g. a torch model wrapped by the user),
``TorchTeacher`` (an ``nn.Module``), ``StoredMapTeacher`` / ``StoredInstanceSource`` /
``StoredMitoses`` (prediction maps on disk, computed elsewhere), ``ArrayInstanceSource``,
``ModelInstanceSource`` (a SegTME model, e.g. the shipped UperHoVer ``default``).
All maps are at the resolution of the image given in ``TeacherInput``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Protocol, Sequence, runtime_checkable

import numpy as np

from ..errors import InputError
from . import taxonomy as pt

#: logit used for binary masks read from disk (mask > 0 -> +MASK_LOGIT, else -MASK_LOGIT)
MASK_LOGIT = 8.0


@dataclass
class TeacherInput:
    """What every plug-in receives.

    rgb: (H, W, 3) uint8 image (the resolution all returned maps must have).
    mpp: micrometres per pixel of ``rgb`` (None if unknown).
    key: image identifier (file stem) — stored-map plug-ins use it to find their files.
    inst: nucleus instance map (H, W) from the instance source, filled in before the teachers run
        (for teachers that classify given nuclei); None before.
    """

    rgb: np.ndarray
    mpp: float | None = None
    key: str | None = None
    inst: np.ndarray | None = None


@dataclass
class InstanceOutput:
    """inst: (H, W) int instance map (0 = background). class_names: optional per-instance class
    names of the source's own taxonomy, keyed by instance id. baseline_mapping: those names ->
    PAGET aggregation labels (default: HoverNet's PanNuke classes, ``BASELINE_FROM_PANNUKE``)."""

    inst: np.ndarray
    class_names: Mapping[int, str] | None = None
    baseline_mapping: Mapping[str, str | None] = field(default_factory=lambda: dict(pt.BASELINE_FROM_PANNUKE))

    def baseline(self, inst_seq: np.ndarray) -> np.ndarray | None:
        """Baseline aggregation ids (N + 1,) aligned with the sequentially relabelled map."""
        if not self.class_names:
            return None
        orig = np.asarray(self.inst)
        n = int(inst_seq.max(initial=0))
        out = np.zeros(n + 1, np.int64)
        if n == 0:
            return out
        m = inst_seq > 0
        # map sequential id -> original id (first pixel of each)
        seq = inst_seq[m]
        org = orig[m]
        first = np.zeros(n + 1, np.int64)
        first[seq] = org
        names = [self.class_names.get(int(first[i])) for i in range(1, n + 1)]
        out[1:] = pt.baseline_ids(names, self.baseline_mapping)
        return out


@runtime_checkable
class Teacher(Protocol):
    name: str
    classes: tuple[str, ...]

    def predict(self, image: TeacherInput) -> dict[str, np.ndarray]: ...


@runtime_checkable
class InstanceSource(Protocol):
    name: str

    def instances(self, image: TeacherInput) -> InstanceOutput: ...


@runtime_checkable
class MitosisDetector(Protocol):
    name: str

    def detect(self, image: TeacherInput) -> np.ndarray: ...


def _validate_classes(name: str, classes: Sequence[str]) -> tuple[str, ...]:
    bad = [c for c in classes if c not in pt.AGG_ID or c == "Background"]
    if bad:
        raise InputError(f"teacher {name!r}: unknown class(es) {bad}; PAGET aggregation labels are {list(pt.AGG_NAMES[1:])}")
    return tuple(classes)


def _to_logit(a: np.ndarray, kind: str) -> np.ndarray:
    a = np.asarray(a, np.float32)
    if kind == "logits":
        return a
    if kind == "prob":
        p = np.clip(a, 1e-6, 1 - 1e-6)
        return np.log(p / (1 - p)).astype(np.float32)
    if kind == "mask":
        return np.where(a > 0, MASK_LOGIT, -MASK_LOGIT).astype(np.float32)
    raise ValueError(f"unknown map kind {kind!r}: use 'logits', 'prob' or 'mask'")


def _split_channels(name: str, arr: np.ndarray, classes: tuple[str, ...], shape: tuple[int, int], kind: str) -> dict[str, np.ndarray]:
    arr = np.asarray(arr)
    if arr.ndim == 2:
        arr = arr[None]
    if arr.ndim != 3 or arr.shape[0] != len(classes):
        raise InputError(f"teacher {name!r}: expected ({len(classes)}, H, W) maps for {list(classes)}, got {arr.shape}")
    if tuple(arr.shape[1:]) != tuple(shape):
        raise InputError(f"teacher {name!r}: maps are {arr.shape[1:]}, image is {shape}")
    return {c: _to_logit(arr[i], kind) for i, c in enumerate(classes)}


@dataclass
class FunctionTeacher:
    """Wraps any callable ``fn(image: TeacherInput) -> (C, H, W)`` array (C = len(classes)).
    kind: "logits" (default), "prob" (sigmoid probabilities) or "mask" (binary)."""

    name: str
    classes: tuple[str, ...]
    fn: Callable[[TeacherInput], np.ndarray]
    kind: str = "logits"

    def __post_init__(self) -> None:
        self.classes = _validate_classes(self.name, self.classes)

    def predict(self, image: TeacherInput) -> dict[str, np.ndarray]:
        return _split_channels(self.name, self.fn(image), self.classes, image.rgb.shape[:2], self.kind)


@dataclass
class TorchTeacher:
    """A torch module as a teacher: input (1, 3, H, W) float normalised with mean/std, output a
    tensor or a dict (``output_key``) of (1, K, H', W'); ``channels`` maps PAGET class names to
    output channel indices. Channels are read as independent sigmoid logits (``activation`` =
    "sigmoid") or, for a softmax model, as log-odds of the softmax probability ("softmax")."""

    name: str
    module: Any
    channels: Mapping[str, int]
    mean: Sequence[float] = (0.485, 0.456, 0.406)
    std: Sequence[float] = (0.229, 0.224, 0.225)
    output_key: str | None = "sem"
    activation: str = "sigmoid"
    pad_multiple: int = 32
    device: str = "auto"

    def __post_init__(self) -> None:
        self.classes = _validate_classes(self.name, tuple(self.channels))

    def predict(self, image: TeacherInput) -> dict[str, np.ndarray]:
        import torch
        import torch.nn.functional as F

        from ..models.registry import select_device

        dev = select_device(self.device)
        rgb = image.rgb
        h, w = rgb.shape[:2]
        x = torch.from_numpy(np.ascontiguousarray(rgb)).permute(2, 0, 1).float().div(255.0)
        x = (x - torch.tensor(self.mean)[:, None, None]) / torch.tensor(self.std)[:, None, None]
        ph, pw = (-h) % self.pad_multiple, (-w) % self.pad_multiple
        x = F.pad(x[None], (0, pw, 0, ph), mode="reflect" if min(h, w) > max(ph, pw) else "constant")
        self.module.to(dev).eval()
        with torch.inference_mode():
            out = self.module(x.to(dev))
            if isinstance(out, Mapping):
                out = out[self.output_key]
            out = F.interpolate(out.float(), size=x.shape[-2:], mode="bilinear", align_corners=False)[..., :h, :w]
            if self.activation == "softmax":
                p = out.softmax(1).clamp(1e-6, 1 - 1e-6)
                out = torch.log(p / (1 - p))
            elif self.activation != "sigmoid":
                raise ValueError(f"activation must be 'sigmoid' or 'softmax', got {self.activation!r}")
        arr = out[0].cpu().numpy()
        return {c: arr[i].astype(np.float32) for c, i in self.channels.items()}


def _read_map(path: Path) -> np.ndarray:
    if path.suffix == ".npy":
        return np.load(path, allow_pickle=False)
    if path.suffix == ".npz":
        with np.load(path, allow_pickle=False) as z:
            key = "logits" if "logits" in z else list(z.keys())[0]
            return z[key]
    from PIL import Image

    return np.asarray(Image.open(path))


@dataclass
class StoredMapTeacher:
    """Prediction maps on disk: ``root / pattern.format(key=..., name=...)``, a (C, H, W) or (H, W)
    ``.npy`` / ``.npz`` (array "logits" or the first one) or a single-class ``.png``.
    kind: "logits", "prob" (values 0-1; a uint8 PNG is divided by 255) or "mask" (> 0 fires)."""

    name: str
    root: str | Path
    classes: tuple[str, ...]
    pattern: str = "{key}.{name}.npy"
    kind: str = "logits"

    def __post_init__(self) -> None:
        self.classes = _validate_classes(self.name, self.classes)

    def path_for(self, key: str) -> Path:
        return Path(self.root) / self.pattern.format(key=key, name=self.name)

    def predict(self, image: TeacherInput) -> dict[str, np.ndarray]:
        if image.key is None:
            raise InputError(f"stored teacher {self.name!r} needs an image key")
        p = self.path_for(image.key)
        if not p.is_file():
            raise InputError(f"stored teacher {self.name!r}: no prediction file {p}")
        arr = _read_map(p)
        if self.kind == "prob" and arr.dtype == np.uint8:
            arr = arr.astype(np.float32) / 255.0
        return _split_channels(self.name, arr, self.classes, image.rgb.shape[:2], self.kind)


@dataclass
class ArrayInstanceSource:
    """In-memory instance maps (tests, notebooks): ``maps[key] -> InstanceOutput``."""

    maps: Mapping[str, InstanceOutput]
    name: str = "arrays"

    def instances(self, image: TeacherInput) -> InstanceOutput:
        try:
            return self.maps[str(image.key)]
        except KeyError:
            raise InputError(f"no instance map for image {image.key!r}") from None


@dataclass
class StoredInstanceSource:
    """Instance maps on disk: ``root / inst_pattern`` (uint16 PNG or .npy, 0 = background) and
    optionally per-instance classes ``root / classes_pattern`` (JSON ``{"<id>": class}``, the class
    as a name or an integer id of ``classes_taxonomy``). ``baseline_mapping`` maps those class
    names to PAGET aggregation labels (HoverNet PanNuke: ``BASELINE_FROM_PANNUKE``; CoNSeP-4:
    ``BASELINE_FROM_CONSEP``)."""

    root: str | Path
    inst_pattern: str = "{key}_inst.png"
    classes_pattern: str | None = None
    classes_taxonomy: str = "pannuke6"
    baseline_mapping: Mapping[str, str | None] | None = None
    name: str = "stored-instances"

    def instances(self, image: TeacherInput) -> InstanceOutput:
        from ..taxonomy import get_taxonomy

        if image.key is None:
            raise InputError("stored instance source needs an image key")
        p = Path(self.root) / self.inst_pattern.format(key=image.key)
        if not p.is_file():
            raise InputError(f"no instance map {p}")
        inst = _read_map(p).astype(np.int32)
        if inst.shape != image.rgb.shape[:2]:
            raise InputError(f"instance map {p} is {inst.shape}, image is {image.rgb.shape[:2]}")
        names = None
        if self.classes_pattern:
            cp = Path(self.root) / self.classes_pattern.format(key=image.key)
            if cp.is_file():
                tax = get_taxonomy(self.classes_taxonomy)
                raw = json.loads(cp.read_text())
                names = {int(k): (tax.names[int(v)] if isinstance(v, int) else str(v)) for k, v in raw.items()}
        mapping = self.baseline_mapping
        if mapping is None:
            mapping = pt.BASELINE_FROM_CONSEP if self.classes_taxonomy == "consep4" else pt.BASELINE_FROM_PANNUKE
        return InstanceOutput(inst, names, dict(mapping))


@dataclass
class ModelInstanceSource:
    """Nucleus instances (and their classes as the baseline) from a SegTME model — the shipped
    UperHoVer ``default`` or any preset / weights file — through ``segtme.pipeline.segment_image``
    when available, else a single whole-image forward pass with HV watershed."""

    model: Any = "default"
    allow_random: bool = False
    device: str = "auto"
    name: str = "segtme-model"
    _loaded: Any = None

    def _model(self):
        if self._loaded is None:
            from ..models.registry import LoadedModel, load_model

            self._loaded = self.model if isinstance(self.model, LoadedModel) else load_model(
                self.model, self.device, allow_random=self.allow_random
            )
        return self._loaded

    def instances(self, image: TeacherInput) -> InstanceOutput:
        lm = self._model()
        from ..inference.instances import predict_instances

        if image.mpp is None:
            raise InputError("the instance source needs the image MPP (µm/px)")
        ins = predict_instances(lm, image.rgb, image.mpp)
        inst, cls = np.asarray(ins.inst, np.int32), np.asarray(ins.class_id, np.int32)
        tax = lm.config.tax
        names = {i + 1: tax.names[int(c)] for i, c in enumerate(cls)}
        mapping = pt.BASELINE_FROM_CONSEP if tax.name == "consep4" else pt.BASELINE_FROM_PANNUKE
        return InstanceOutput(inst, names, dict(mapping))


@dataclass
class StoredMitoses:
    """Mitosis detections on disk: ``root / pattern`` JSON list of [x, y] (pixels of the image)
    or ``{"points": [[x, y], ...]}``. A missing file means no detections."""

    root: str | Path
    pattern: str = "{key}.mitoses.json"
    name: str = "stored-mitoses"

    def detect(self, image: TeacherInput) -> np.ndarray:
        p = Path(self.root) / self.pattern.format(key=image.key)
        if not p.is_file():
            return np.zeros((0, 2))
        d = json.loads(p.read_text())
        pts = d["points"] if isinstance(d, dict) else d
        return np.asarray(pts, np.float64).reshape(-1, 2)


def run_teachers(teachers: Sequence[Teacher], image: TeacherInput) -> dict[str, np.ndarray]:
    """Union of all teachers' logit maps. Two teachers predicting the same class: the maps are
    combined by element-wise maximum (either one firing fires)."""
    out: dict[str, np.ndarray] = {}
    for t in teachers:
        for c, m in t.predict(image).items():
            m = np.asarray(m, np.float32)
            out[c] = np.maximum(out[c], m) if c in out else m
    return out
