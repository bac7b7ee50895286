"""Model registry: families (builders + their contract) and named presets (configs), timm's way.

A leaf: it imports only ``models.config``, ``runtime`` and ``models.onnx_runtime`` (torch-free),
never torch at import: torch is imported by the functions that build, read or run torch modules,
so a config / contract lookup and a shipped model loaded into ONNX Runtime run without it.
Family files register into it —
``register_family("uperhover", contract=...)`` registers a builder ``(ModelConfig) -> nn.Module``
with the ``ModelContract`` its modules keep; ``register_preset(cfg)`` a named config. The
family files are listed in ``FAMILY_MODULES`` and imported on first use of the registry (a
family living in another package, like PAGET's SegFormer, is imported by name, as timm loads
plugins); ``BUILTIN_ARCHS`` names the file of each built-in family, so looking one family up
imports only its file (``zoo`` for UperHoVer: no torch).

* ``load_model(spec)`` takes a preset name, a shipped model name (``default``), or a path to a
  ``.json`` config / ``.safetensors`` weights file, builds the module and loads the weights.
* ``contract(cfg)`` / ``LoadedModel.contract``: the one place callers learn what a model gives
  (outputs, how nuclei are made, which pipeline runs it) — no ``hasattr`` or arch-string tests.

Weights are only ever read from safetensors, or from a torch checkpoint with
``torch.load(weights_only=True)`` (the UNI2-h Hugging Face layout ships ``pytorch_model.bin``);
nothing is unpickled with arbitrary code execution.
"""

from __future__ import annotations

import importlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Union

from .. import runtime  # noqa: F401,I001  (first: OpenMP waiting policy before torch loads)

from ..errors import SegTMEError
from . import onnx_runtime
from .config import ModelConfig, ModelConfigError

if TYPE_CHECKING:  # annotations only: torch is imported where a torch module is built or run
    import torch
    from torch import nn

WEIGHTS_DIR = Path(__file__).with_name("weights")

#: modules that register families and presets, imported on first use (order = listing order)
FAMILY_MODULES = ("segtme.models.zoo", "segtme.models.classical", "segtme.paget.zoo", "segtme.mitosis.zoo")
#: the file of each built-in family (``contract`` / ``create_model`` of one arch import only it)
BUILTIN_ARCHS = {"uperhover": "segtme.models.zoo", "classical": "segtme.models.classical",
                 "paget_segformer": "segtme.paget.zoo", "paget_uperhover": "segtme.paget.zoo",
                 "mitosis_cnn": "segtme.mitosis.zoo"}

#: how a family's nuclei are made (``ModelContract.instances``)
INSTANCE_KINDS = ("maps", "hook", "none")
#: which product path analyses with a family (``ModelContract.product``)
PRODUCTS = ("nuclei", "paget")


@dataclass(frozen=True)
class ModelContract:
    """What a family's modules promise; declared at ``register_family``, checked for every
    preset by tests/test_presets.py, and the only thing callers dispatch on.

    outputs: keys of ``forward(x)`` for x (B, 3, H, W) normalised RGB, each (B, n, H, W) at the
        input size with n = ``cfg.head_channels()[key]``: "sem" (the taxonomy's classes,
        logits), "hv" (2), or a family's own heads. Empty: no tensor forward.
    instances: "maps" — nuclei come from the outputs (``inference.maps``); "hook" —
        ``module.predict_instances(rgb, mpp) -> (inst, class_id, class_prob)`` on the input
        grid (a rule-based model); "none" — the model gives no nuclei of its own.
    product: "nuclei" (``pipeline.segment_source``) or "paget" (tissue map + nuclei from an
        instance source, ``paget``).
    taxonomy: the taxonomy name the family always predicts in, or None (the config's).
    dense: outputs are per-pixel maps (B, n, H, W); False: one value per input, (B,) logits
        (a crop classifier such as the mitosis teacher).
    coarse_sem: the family honours ``io.sem_stride`` k > 1: in eval mode its "sem" output is
        (B, n, H/k, W/k) (``inference.engine`` blends it on that grid); a config asking another
        family for k > 1 is refused when the model is built.
    """

    outputs: tuple[str, ...] = ("sem", "hv")
    instances: str = "maps"
    product: str = "nuclei"
    taxonomy: str | None = None
    dense: bool = True
    coarse_sem: bool = False

    def __post_init__(self) -> None:
        if self.instances not in INSTANCE_KINDS:
            raise ValueError(f"contract.instances must be one of {INSTANCE_KINDS}, got {self.instances!r}")
        if self.product not in PRODUCTS:
            raise ValueError(f"contract.product must be one of {PRODUCTS}, got {self.product!r}")
        if self.instances == "maps" and "sem" not in self.outputs:
            raise ValueError("a 'maps' contract needs a 'sem' output")

    @property
    def has_hv(self) -> bool:
        return "hv" in self.outputs


ContractSpec = Union[ModelContract, Callable[[ModelConfig], ModelContract], None]

_FAMILIES: dict[str, Callable[[ModelConfig], nn.Module]] = {}
_CONTRACTS: dict[str, ContractSpec] = {}
_PRESETS: dict[str, ModelConfig] = {}


class WeightsError(SegTMEError, RuntimeError):
    """Weights are missing, unreadable or do not fit the model."""


def register_family(arch: str, contract: ContractSpec = None) -> Callable:
    """Decorator registering a builder for ``arch``. ``contract``: a ``ModelContract``, a
    function of the config returning one, or None (then: ``outputs`` = the config's heads,
    nuclei from the maps, the nucleus product)."""

    def deco(fn: Callable[[ModelConfig], nn.Module]) -> Callable[[ModelConfig], nn.Module]:
        _FAMILIES[arch] = fn
        _CONTRACTS[arch] = contract
        return fn

    return deco


def register_preset(cfg: ModelConfig) -> ModelConfig:
    _PRESETS[cfg.name] = cfg
    return cfg


def contract(cfg: ModelConfig) -> ModelContract:
    """The contract of ``cfg``'s family (ModelConfigError for an unknown arch)."""
    _ensure_family(cfg.arch)
    if cfg.arch not in _FAMILIES:
        raise ModelConfigError(f"model {cfg.name}: unknown arch {cfg.arch!r}; known: {sorted(_FAMILIES)}")
    spec = _CONTRACTS.get(cfg.arch)
    if spec is None:
        return ModelContract(outputs=tuple(cfg.heads), instances="maps" if "sem" in cfg.heads else "none")
    return spec if isinstance(spec, ModelContract) else spec(cfg)


def families() -> list[str]:
    _ensure_builtin()
    return sorted(_FAMILIES)


def presets() -> dict[str, ModelConfig]:
    _ensure_builtin()
    return dict(_PRESETS)


def shipped_models() -> dict[str, Path]:
    """Models whose config ships inside the package (``weights/<name>.json``)."""
    return {p.stem: p for p in sorted(WEIGHTS_DIR.glob("*.json"))}


def create_model(cfg: ModelConfig) -> nn.Module:
    """Build the module for ``cfg`` with random weights (no file access)."""
    _ensure_family(cfg.arch)
    try:
        builder = _FAMILIES[cfg.arch]
    except KeyError:
        raise ModelConfigError(f"model {cfg.name}: unknown arch {cfg.arch!r}; known: {sorted(_FAMILIES)}") from None
    if int(cfg.io.sem_stride) != 1 and not contract(cfg).coarse_sem:
        raise ModelConfigError(f"model {cfg.name}: arch {cfg.arch!r} gives its class map at every working px; "
                               f"'sem_stride' must be 1, got {cfg.io.sem_stride}")
    return builder(cfg)


# --------------------------------------------------------------------------- weights
def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a state dict from safetensors, or a torch file with the safe (weights-only) loader."""
    import torch

    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"weights file not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except Exception as e:  # safetensors raises its own error types
            raise WeightsError(f"cannot read safetensors file {path}: {e}") from None
    try:
        sd = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as e:
        raise WeightsError(f"refusing or unable to read {path} with the weights-only loader: {e}") from None
    if isinstance(sd, dict) and "state_dict" in sd and isinstance(sd["state_dict"], dict):
        sd = sd["state_dict"]
    if not isinstance(sd, dict):
        raise WeightsError(f"{path} does not hold a state dict")
    return sd


def load_state_dict_strict(module: nn.Module, sd: dict[str, torch.Tensor], source: str) -> None:
    """Load with one clear error naming the file and the missing / unexpected / mis-shaped keys."""
    own = module.state_dict()
    missing = sorted(set(own) - set(sd))
    unexpected = sorted(set(sd) - set(own))
    shape = sorted(k for k in set(own) & set(sd) if tuple(own[k].shape) != tuple(sd[k].shape))
    if missing or unexpected or shape:
        def few(keys: list[str]) -> str:
            return ", ".join(keys[:6]) + (f" … (+{len(keys) - 6})" if len(keys) > 6 else "")

        parts = []
        if missing:
            parts.append(f"missing {len(missing)} key(s): {few(missing)}")
        if unexpected:
            parts.append(f"unexpected {len(unexpected)} key(s): {few(unexpected)}")
        if shape:
            parts.append(
                "shape mismatch: "
                + few([f"{k} {tuple(sd[k].shape)} vs expected {tuple(own[k].shape)}" for k in shape])
            )
        raise WeightsError(f"weights {source} do not fit model: " + "; ".join(parts))
    module.load_state_dict(sd, strict=True)


def find_uni2h_checkpoint(explicit: str | Path | None = None) -> Path:
    """Locate UNI2-h backbone weights: an explicit file/directory, ``$SEGTME_UNI2H``, or an
    existing Hugging Face cache (``$HF_HOME``/hub/models--MahmoodLab--UNI2-h/snapshots/*/).
    Never downloads."""
    candidates: list[Path] = []
    for src in (explicit, os.environ.get("SEGTME_UNI2H")):
        if src:
            p = Path(src).expanduser()
            candidates += [p] if p.is_file() else [p / "model.safetensors", p / "pytorch_model.bin"]
    hf_home = Path(os.environ.get("HF_HOME", Path.home() / ".cache" / "huggingface"))
    for hub in {Path(os.environ.get("HF_HUB_CACHE", hf_home / "hub")), hf_home / "hub"}:
        for snap in sorted((hub / "models--MahmoodLab--UNI2-h" / "snapshots").glob("*")):
            candidates += [snap / "model.safetensors", snap / "pytorch_model.bin"]
    for c in candidates:
        if c.is_file():
            return c
    raise WeightsError(
        "UNI2-h backbone weights not found. Expected a timm state dict (keys like 'patch_embed.proj.weight', "
        "'reg_token', 'blocks.0.attn.qkv.weight', …, 'blocks.23.mlp.fc2.weight') in one of: "
        + (", ".join(str(c) for c in candidates) or "(no candidate paths)")
        + ". Download MahmoodLab/UNI2-h yourself (gated; accept its licence) and pass --backbone-weights PATH "
        "or set SEGTME_UNI2H."
    )


@dataclass
class LoadedModel:
    """A model ready for inference: config + module (eval mode) + device.

    module: a torch ``nn.Module``, or the ONNX Runtime module of a shipped model
    (``onnx_runtime.OrtModule``, numpy in / numpy out, no torch); ``inference.engine`` runs
    either as its backend. device: a ``torch.device``, or ``runtime.DeviceName("cpu")`` for the
    ONNX Runtime module (a ``str`` with ``.type``; torch accepts it as a device).

    precision: ``"auto"`` (bf16 autocast on CUDA, and on CPUs with native bf16 arithmetic —
    AVX512-BF16 or AMX — where it halves the forward time; fp32 elsewhere), ``"fp32"`` or
    ``"bf16"`` (forced). Weights stay fp32; only the forward pass's arithmetic changes, outputs
    are returned as fp32 (``inference.engine.forward_tiles``).
    """

    config: ModelConfig
    module: nn.Module
    device: torch.device
    source: str
    precision: str = "auto"

    @property
    def taxonomy(self):
        return self.config.tax

    @property
    def contract(self) -> ModelContract:
        """What this model gives (``registry.contract``)."""
        return contract(self.config)


# the precision choice is a runtime knob (``segtme.runtime``); re-exported for callers here
PRECISIONS, cpu_has_native_bf16, resolve_precision = runtime.PRECISIONS, runtime.cpu_has_native_bf16, runtime.resolve_precision


def select_device(device: str | torch.device = "auto") -> torch.device:
    """'auto' -> cuda if available, else mps, else cpu (imports torch)."""
    import torch

    runtime.sync_torch_threads()
    if isinstance(device, torch.device):
        return device
    if device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        dev = torch.device(device)
    except RuntimeError as e:
        raise ValueError(f"invalid device {device!r}: {e}") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} requested but CUDA is not available on this machine")
    return dev


def device_type(device: str | torch.device = "auto") -> str:
    """The type ("cpu", "cuda", "mps") ``select_device(device)`` gives, without importing torch
    when the answer is the CPU and known without it (``_host_device``)."""
    return "cpu" if _host_device(device) is not None else select_device(device).type


def resolve_config(spec: str | Path | ModelConfig) -> tuple[ModelConfig, Path | None]:
    """Resolve a model spec to (config, weights path or None).

    spec: a ModelConfig; a preset name (``uni2_uperhover``); a shipped model name (``default``);
    a path to a config ``.json`` (weights: its ``weights`` field, relative to the json, or
    ``<stem>.safetensors``); or a path to a ``.safetensors`` file (config: ``<stem>.json`` beside it).
    Family files are imported only for a preset name (``presets``).
    """
    if isinstance(spec, ModelConfig):
        return spec, (Path(spec.weights) if spec.weights else None)
    s = str(spec)
    p = Path(s).expanduser()
    if s.endswith(".json") or s.endswith(".safetensors") or os.sep in s:
        if p.suffix == ".safetensors":
            cfg_path, w = p.with_suffix(".json"), p
        else:
            cfg_path, w = p, None
        if not cfg_path.is_file():
            raise ModelConfigError(f"model config not found: {cfg_path}")
        cfg = ModelConfig.from_json(cfg_path)
        if w is None:
            w = cfg_path.parent / (cfg.weights or (cfg_path.stem + ".safetensors"))
        return cfg, w
    shipped = shipped_models()
    if s in shipped:
        cfg = ModelConfig.from_json(shipped[s])
        return cfg, shipped[s].parent / (cfg.weights or (s + ".safetensors"))
    _ensure_builtin()
    if s in _PRESETS:
        cfg = _PRESETS[s]
        return cfg, (Path(cfg.weights) if cfg.weights else None)
    known = sorted(set(shipped) | set(_PRESETS))
    raise ModelConfigError(f"unknown model {s!r}; known models: {', '.join(known)} (or pass a .json/.safetensors path)")


def load_model(
    spec: str | Path | ModelConfig = "default",
    device: str | torch.device = "auto",
    *,
    weights: str | Path | None = None,
    allow_random: bool = False,
    backbone_weights: str | Path | None = None,
    precision: str = "auto",
) -> LoadedModel:
    """Build a model and load its weights; ``allow_random`` permits random init (tests, training).
    precision: forward-pass arithmetic (``LoadedModel.precision``: auto | fp32 | bf16).

    A shipped model on the CPU loads without building the torch module: its prebuilt ONNX graph in
    ONNX Runtime when ``SEGTME_RUNTIME`` selects it (``onnx`` fp32, ``onnx-int8``; ``auto`` =
    ``onnx_runtime.auto_runtime()``, ONNX Runtime on a CPU without native bf16; precision auto/fp32, ``onnxruntime`` importable;
    ``models/onnx_runtime.py``) — then torch is not imported at all (``device`` "cpu", or "auto"
    on a machine without any accelerator, ``runtime.accelerator_possible``; the returned
    ``LoadedModel.device`` is a ``runtime.DeviceName``) — else its cached TorchScript module
    (``models/compiled.py``), else eagerly (which writes that cache). ``SEGTME_COMPILED=0``:
    always eager.

    Raises ModelConfigError (unknown model / bad config) or WeightsError (missing / mismatched
    weights), each naming the file.
    """
    cfg, wpath = resolve_config(spec)
    fast_dev = None  # shipped model on the CPU: its ONNX graph (models/onnx_runtime.py), else the compiled module
    if weights is None and backbone_weights is None and onnx_runtime.runtime_choice() != "torch":
        host = _host_device(device)  # "cpu" known without torch, else None (then the torch path decides)
        variant = onnx_runtime.eligible(cfg, wpath, host, precision) if host is not None else None
        if variant is not None:
            runtime.check_precision(precision)
            w0 = wpath  # the torch module for inputs the graph does not take, built on first need
            ort_module = onnx_runtime.load(cfg, wpath, contract(cfg).outputs,
                                           lambda: _torch_inference_module(cfg, w0, select_device("cpu")), variant)
            if ort_module is not None:
                return LoadedModel(cfg, ort_module, host, str(wpath), precision)
    import torch

    from . import compiled

    runtime.sync_torch_threads()
    if weights is None and backbone_weights is None and compiled.enabled():
        fast_dev = select_device(device)
        if compiled.eligible(cfg, wpath, fast_dev):
            resolve_precision(precision, fast_dev)
            fast = compiled.load(cfg, wpath, fast_dev)
            if fast is not None:
                return LoadedModel(cfg, fast, fast_dev, str(wpath), precision)
        else:
            fast_dev = None
    if weights is not None:
        wpath = Path(weights)
    module = create_model(cfg)
    source = "random-init"
    if wpath is not None and (wpath.is_file() or not allow_random):
        load_state_dict_strict(module, read_state_dict(wpath), str(wpath))
        source = str(wpath)
    elif wpath is None and not allow_random:
        if contract(cfg).instances == "hook" and not contract(cfg).outputs:
            source = "rule-based (no weights)"
        elif backbone_weights is not None or cfg.backbone_weights:
            bpath = find_uni2h_checkpoint(backbone_weights or cfg.backbone_weights)
            load_backbone_weights(module, bpath)
            source = f"backbone:{bpath} (heads random-init)"
        else:
            raise WeightsError(
                f"model {cfg.name!r} has no weights file. Pass --weights PATH (a .safetensors trained with "
                f"`segtme train`), or use a shipped model: {', '.join(shipped_models()) or '(none)'}"
            )
    dev = select_device(device)
    resolve_precision(precision, dev)  # validates: ValueError naming the choices
    module.to(dev).eval()
    if fast_dev is not None:  # first load of a shipped model: write its compiled module for the next start
        folded, _ = fold_batchnorm(module.to(memory_format=torch.channels_last))
        compiled.export(folded.to(memory_format=torch.channels_last), cfg, wpath)
    return LoadedModel(cfg, module, dev, source, precision)


def _host_device(device: Any) -> "runtime.DeviceName | None":
    """``runtime.DeviceName("cpu")`` when ``device`` is the CPU — ``"cpu"``, a CPU
    ``torch.device``, or ``"auto"`` on a machine without any accelerator
    (``runtime.accelerator_possible``) — decided without importing torch; else None."""
    if getattr(device, "type", None) == "cpu" and not isinstance(device, str):
        return runtime.DeviceName("cpu")
    if device == "cpu" or (device == "auto" and not runtime.accelerator_possible()):
        return runtime.DeviceName("cpu")
    return None


def _torch_inference_module(cfg: ModelConfig, wpath: Path, dev: torch.device) -> nn.Module:
    """The folded, channels_last torch inference module of a shipped model (the ONNX Runtime
    module's path for inputs its graph does not take): the compiled TorchScript module when cached,
    else built eagerly (and the cache written, as ``load_model`` does)."""
    import torch

    from . import compiled

    if compiled.eligible(cfg, wpath, dev):
        fast = compiled.load(cfg, wpath, dev)
        if fast is not None:
            return fast
    module = create_model(cfg)
    load_state_dict_strict(module, read_state_dict(wpath), str(wpath))
    module.to(dev).eval()
    folded, _ = fold_batchnorm(module.to(memory_format=torch.channels_last))
    folded = folded.to(memory_format=torch.channels_last).eval()
    if compiled.eligible(cfg, wpath, dev):
        compiled.export(folded, cfg, wpath)
    return folded


def load_backbone_weights(module: nn.Module, path: str | Path) -> None:
    """Load a plain timm ViT state dict (e.g. UNI2-h) into ``module.backbone.vit``."""
    vit = getattr(getattr(module, "backbone", None), "vit", None)
    if vit is None:
        raise WeightsError("backbone weights given, but this model has no ViT backbone")
    load_state_dict_strict(vit, read_state_dict(path), str(path))


# --------------------------------------------------------------------------- built-ins
_BUILTIN_DONE = False


def _ensure_family(arch: str) -> None:
    """Register ``arch``'s family: import its built-in file (``BUILTIN_ARCHS``), else every
    family file (``_ensure_builtin``)."""
    if arch in _FAMILIES:
        return
    if arch in BUILTIN_ARCHS:
        importlib.import_module(BUILTIN_ARCHS[arch])
        if arch in _FAMILIES:
            return
    _ensure_builtin()


def _ensure_builtin() -> None:
    global _BUILTIN_DONE
    if _BUILTIN_DONE:
        return
    _BUILTIN_DONE = True
    for name in FAMILY_MODULES:
        importlib.import_module(name)


# --------------------------------------------------------------------------- inference-time folding
#: (conv attribute, batch-norm attribute) pairs where the module's forward applies the BN directly
#: to the conv's output: timm ResNet blocks / stems (``conv1``/``bn1`` …), transformers'
#: ``UperNetConvModule`` (``conv``/``batch_norm``). Any fold is verified numerically afterwards.
_CONV_BN_ATTRS = (("conv", "batch_norm"), ("conv", "bn"), ("conv1", "bn1"), ("conv2", "bn2"), ("conv3", "bn3"))


def _last_conv(m: nn.Module) -> tuple[nn.Module, str] | None:
    """(parent, name) of ``m``'s last Conv2d when ``m`` is a Sequential ending in one."""
    from torch import nn
    if isinstance(m, nn.Sequential) and len(m) and isinstance(m[-1], nn.Conv2d):
        return m, str(len(m) - 1)
    return None


def _fold_pairs(root: nn.Module) -> int:
    from torch import nn
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    n = 0
    for mod in list(root.modules()):
        pairs: list[tuple[nn.Module, str, nn.Module, str]] = []
        if isinstance(mod, nn.Sequential):
            names = list(mod._modules)
            for a, b in zip(names, names[1:]):
                if isinstance(mod._modules[a], nn.Conv2d) and isinstance(mod._modules[b], nn.BatchNorm2d):
                    pairs.append((mod, a, mod, b))
        for ca, ba in _CONV_BN_ATTRS:
            c, b = mod._modules.get(ca), mod._modules.get(ba)
            if not isinstance(b, nn.BatchNorm2d):
                continue
            if isinstance(c, nn.Conv2d):
                pairs.append((mod, ca, mod, ba))
            elif c is not None and (lc := _last_conv(c)) is not None:
                pairs.append((lc[0], lc[1], mod, ba))
        for cp, cn, bp, bn in pairs:
            conv, bnm = cp._modules[cn], bp._modules[bn]
            if not isinstance(bnm, nn.BatchNorm2d) or not bnm.track_running_stats or bnm.running_mean is None:
                continue
            cp._modules[cn] = fuse_conv_bn_eval(conv, bnm)
            bp._modules[bn] = nn.Identity()
            n += 1
    return n


def fold_batchnorm(module: nn.Module, check_size: int = 64, tol: float = 1e-4) -> tuple[nn.Module, int]:
    """An inference copy of ``module`` with every BatchNorm2d that directly follows a Conv2d folded
    into that convolution (eval-mode maths: ``w' = w * g / sqrt(var + eps)``,
    ``b' = (b - mean) * g / sqrt(var + eps) + beta``), and the number of folds.

    ``module`` itself is not changed (its state-dict layout stays the training one). The fold is
    exact up to float rounding; it is checked on a random (1, 3, check_size, check_size) input
    and, if any output differs by more than ``tol`` x (1 + max |output|), the unfolded eval copy
    is returned with 0 folds (so an unknown layer order can never change results).
    """
    import torch

    ref = _shell_copy(module).eval()
    folded = _shell_copy(module).eval()
    with torch.no_grad():
        n = _fold_pairs(folded)
        if n == 0:
            return folded, 0
        dev = next((p.device for p in ref.parameters()), torch.device("cpu"))
        g = torch.Generator().manual_seed(0)
        x = torch.rand(1, 3, check_size, check_size, generator=g).to(dev)
        try:
            a, b = ref(x), folded(x)
        except Exception:  # a module that cannot run on the probe input: keep it unfolded
            return ref, 0
        a = a if isinstance(a, dict) else {"out": a}
        b = b if isinstance(b, dict) else {"out": b}
        for k in a:
            if not torch.is_tensor(a[k]):
                continue
            scale = 1.0 + float(a[k].abs().max())
            if float((a[k] - b[k]).abs().max()) > tol * scale:
                return ref, 0
    return folded, n


def _shell_copy(module: nn.Module) -> nn.Module:
    """A deep copy of the module tree that *shares* every parameter and buffer tensor with
    ``module`` (no weight memory is duplicated; folding replaces modules, never edits tensors)."""
    import copy

    memo: dict[int, object] = {}
    for t in list(module.parameters()) + list(module.buffers()):
        memo[id(t)] = t
    return copy.deepcopy(module, memo)
