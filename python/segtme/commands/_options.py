"""The model and run-time flags `segtme analyze` and `segtme batch` share, parsed once into one
``InferenceOptions`` — the object the pipeline takes for an image and a whole slide alike.

``add_model_arguments`` / ``add_inference_arguments`` declare the flags; ``inference_options``
checks them before any work (one-line InputError naming the flag and the value) and builds the
options; ``load_model_for`` loads the named model with their device and precision. Lengths are
working px (pixels at the model's ``cfg.mpp``).
"""

from __future__ import annotations

import argparse

#: smallest --tile (working px): the model's receptive field needs more than a few px
MIN_TILE = 16


def add_model_arguments(p: argparse.ArgumentParser) -> None:
    """--model, --weights, --device, --precision."""
    p.add_argument("--model", default="default", help="model name (see `segtme models`) or path to a .json/.safetensors")
    p.add_argument("--weights", default=None, help="weights .safetensors for the model (overrides the config's)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N | mps")
    p.add_argument("--precision", choices=("auto", "fp32", "bf16"), default="auto",
                   help="forward-pass arithmetic: auto = bf16 on CUDA and on CPUs with native bf16 (AVX512-BF16/AMX), else fp32")


def add_inference_arguments(p: argparse.ArgumentParser) -> None:
    """--tile, --overlap, --batch (working px / tiles per forward pass)."""
    p.add_argument("--tile", default=None, metavar="PX", help="tile size in working px (default: the model's)")
    p.add_argument("--overlap", default=None, metavar="PX", help="tile overlap in working px (default: the model's)")
    p.add_argument("--batch", default=None, metavar="N", help="tiles per forward pass (default: 8 x 256² working px per batch)")


def int_flag(value: str | int | None, flag: str, minimum: int) -> int | None:
    """``value`` as an int >= ``minimum`` (None stays None), else InputError."""
    from ..errors import InputError

    if value is None:
        return None
    try:
        v = int(str(value).strip())
    except ValueError:
        raise InputError(f"{flag} must be a whole number, got {value!r}") from None
    if v < minimum:
        raise InputError(f"{flag} must be at least {minimum}, got {v}")
    return v


def inference_options(args: argparse.Namespace):
    """The ``InferenceOptions`` of the parsed flags (no progress callback: the caller adds its
    own with ``.replace(progress=...)``). InputError on the first bad flag."""
    from ..errors import InputError
    from ..inference.options import InferenceOptions

    tile = int_flag(args.tile, "--tile", MIN_TILE)
    overlap = int_flag(args.overlap, "--overlap", 0)
    batch = int_flag(args.batch, "--batch", 1)
    if tile is not None and overlap is not None and 2 * overlap >= tile:
        raise InputError(f"--overlap {overlap} must be less than half of --tile {tile}")
    return InferenceOptions(device=args.device, precision=args.precision, tile=tile, overlap=overlap, batch_size=batch)


def load_model_for(args: argparse.Namespace, opt):
    """The model named by --model / --weights on ``opt``'s device and precision; a bad name,
    file or device is one InputError line (``load_model`` raises ValueError for those)."""
    from ..errors import InputError, SegTMEError
    from ..models.registry import load_model

    try:
        return load_model(args.model, opt.device, weights=args.weights, precision=opt.precision)
    except ValueError as e:
        if isinstance(e, SegTMEError):
            raise
        raise InputError(str(e)) from None
