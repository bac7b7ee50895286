"""Compatibility shim: image reading moved to ``segtme.io.image`` (whole small images) and
``segtme.io.source`` (slides / lazy region reading). Import from there in new code."""

from __future__ import annotations

from ..io.image import (  # noqa: F401  (re-exported)
    DEFAULT_MAX_PIXELS,
    MPP_RANGE,
    Image,
    as_rgb_uint8,
    image_from_array,
    max_pixels_default,
    read_image,
    validate_mpp,
)
