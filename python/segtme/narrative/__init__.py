"""TME narratives: template (default), local transformers LM, OpenAI-compatible endpoint; the
grounding verifier; supervised fine-tuning of a narrator (paper section 8)."""

from .backends import BACKENDS, NarrativeBackend, NarrativeBackendError, build_prompt, get_backend
from .template import render_template
from .verify import VerificationResult, verify_narrative

__all__ = [
    "BACKENDS",
    "NarrativeBackend",
    "NarrativeBackendError",
    "VerificationResult",
    "build_prompt",
    "get_backend",
    "render_template",
    "verify_narrative",
]
