"""TME narratives: template (default), local transformers LM, OpenAI-compatible endpoint; the
grounding verifier (claims bound to quantities: claims.py, vocabulary.py, verify.py), its adversarial
evaluation (adversarial.py) and backend measurement on real regions (sources.py, evaluate.py);
supervised fine-tuning of a narrator (paper section 8)."""

from .backends import BACKENDS, NarrativeBackend, NarrativeBackendError, build_prompt, get_backend
from .template import render_template, template_narrative
from .verify import VerificationResult, verify_narrative

__all__ = [
    "BACKENDS",
    "NarrativeBackend",
    "NarrativeBackendError",
    "VerificationResult",
    "build_prompt",
    "get_backend",
    "render_template",
    "template_narrative",
    "verify_narrative",
]
