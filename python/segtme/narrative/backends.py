"""Narrative backends behind one interface.

* ``template`` (default): deterministic, see :mod:`segtme.narrative.template`.
* ``transformers``: any local causal-LM directory (``AutoModelForCausalLM`` + ``AutoTokenizer``,
  e.g. a biomedical GPT fine-tuned with ``segtme train-narrator``), prompted with the paper's
  template (:func:`build_prompt`). Never downloads: ``local_files_only=True``.
* ``openai``: any OpenAI-compatible ``/chat/completions`` endpoint (NIM, vLLM, llama.cpp server,
  OpenAI). URL / model / key from arguments or ``SEGTME_OPENAI_BASE_URL`` /
  ``SEGTME_OPENAI_MODEL`` / ``SEGTME_OPENAI_API_KEY``; plain ``urllib`` with a timeout.

Every backend's text goes through the grounding verifier in ``tme/report.py``.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import urllib.error
import urllib.request
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, Mapping, Sequence

from ..errors import SegTMEError
from .template import render_template

__all__ = [
    "NarrativeBackend",
    "NarrativeBackendError",
    "TemplateBackend",
    "TransformersBackend",
    "OpenAIBackend",
    "build_prompt",
    "get_backend",
    "BACKENDS",
    "PROMPT_DECIMALS",
]

log = logging.getLogger(__name__)

#: floats in the prompt are rounded to this many decimals (keeps prompts short; the verifier's
#: rounding tolerance covers any value the model copies from the prompt at that precision).
PROMPT_DECIMALS = 4


class NarrativeBackendError(SegTMEError):
    """A narrative backend could not produce text (unreachable server, bad model dir, ...)."""


def _round_floats(obj: Any, nd: int) -> Any:
    if isinstance(obj, float):
        return round(obj, nd)
    if isinstance(obj, Mapping):
        return {k: _round_floats(v, nd) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_round_floats(v, nd) for v in obj]
    return obj


def build_prompt(bio: Mapping[str, Any]) -> str:
    """The paper's SFT/inference prompt (section 8.2)::

        TME features: {raw_data}
        Phenotype labels: {interpretation}
        Biological tokens: {generated_tokens}
        Narrative:

    Each field is compact JSON (floats rounded to PROMPT_DECIMALS, non-ASCII kept).
    """

    def js(x: Any) -> str:
        return json.dumps(_round_floats(x, PROMPT_DECIMALS), ensure_ascii=False, separators=(", ", ": "))

    return (
        f"TME features: {js(bio['raw_data'])}\n"
        f"Phenotype labels: {js(bio['interpretation'])}\n"
        f"Biological tokens: {js(bio['generated_tokens'])}\n"
        "Narrative:"
    )


class NarrativeBackend(ABC):
    """One method: the narrative of a ``translate_tme_to_bio_tokens`` result."""

    name: str = "?"
    is_llm: bool = True

    @abstractmethod
    def generate(self, bio: Mapping[str, Any], substitutions: Sequence[str] = ()) -> str: ...


class TemplateBackend(NarrativeBackend):
    name = "template"
    is_llm = False

    def generate(self, bio: Mapping[str, Any], substitutions: Sequence[str] = ()) -> str:
        return render_template(bio, substitutions)


def _clean_completion(text: str) -> str:
    """Cut a completion at a new prompt the model may start, and strip it."""
    for stop in ("\nTME features:", "\nNarrative:"):
        i = text.find(stop)
        if i >= 0:
            text = text[:i]
    return text.strip()


class TransformersBackend(NarrativeBackend):
    """Local causal LM. ``model_dir``: a directory with config + weights + tokenizer.

    device: "cuda" / "cpu" / None (CUDA if available). On CUDA the model runs in bfloat16.
    Greedy decoding by default (deterministic); ``do_sample=True`` + ``temperature`` to sample.
    Prompts longer than the model's context minus ``max_new_tokens`` are left-truncated (logged).
    """

    name = "transformers"

    def __init__(self, model_dir: str | os.PathLike | None = None, *, max_new_tokens: int = 256,
                 device: str | None = None, do_sample: bool = False, temperature: float = 0.7, seed: int = 0) -> None:
        if model_dir is None:
            model_dir = os.environ.get("SEGTME_NARRATOR_MODEL")
        if not model_dir:
            raise NarrativeBackendError("transformers backend needs model_dir (a local causal-LM directory) or SEGTME_NARRATOR_MODEL")
        self.model_dir = Path(model_dir)
        if not (self.model_dir / "config.json").is_file():
            raise NarrativeBackendError(f"transformers backend: {self.model_dir} is not a model directory (no config.json)")
        self.max_new_tokens = int(max_new_tokens)
        self.device_name = device
        self.do_sample = bool(do_sample)
        self.temperature = float(temperature)
        self.seed = int(seed)
        self._model = None
        self._tok = None

    def _load(self):
        if self._model is None:
            import torch
            from transformers import AutoModelForCausalLM, AutoTokenizer

            dev = self.device_name or ("cuda" if torch.cuda.is_available() else "cpu")
            try:
                tok = AutoTokenizer.from_pretrained(self.model_dir, local_files_only=True)
                dtype = torch.bfloat16 if dev.startswith("cuda") else torch.float32
                model = AutoModelForCausalLM.from_pretrained(self.model_dir, local_files_only=True, dtype=dtype)
            except (OSError, ValueError) as e:
                raise NarrativeBackendError(f"transformers backend: cannot load {self.model_dir}: {e}") from e
            model.to(dev).eval()
            self._model, self._tok, self._device = model, tok, dev
        return self._model, self._tok

    def generate(self, bio: Mapping[str, Any], substitutions: Sequence[str] = ()) -> str:
        import torch

        model, tok = self._load()
        prompt = build_prompt(bio)
        ids = tok(prompt, return_tensors="pt", add_special_tokens=False)["input_ids"]
        ctx = int(getattr(model.config, "n_positions", None) or getattr(model.config, "max_position_embeddings", 0) or 0)
        if ctx and ids.shape[1] + self.max_new_tokens > ctx:
            keep = max(1, ctx - self.max_new_tokens)
            log.warning("narrative prompt has %d tokens; keeping the last %d (model context %d)", ids.shape[1], keep, ctx)
            ids = ids[:, -keep:]
        ids = ids.to(self._device)
        pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
        kw: dict[str, Any] = dict(max_new_tokens=self.max_new_tokens, do_sample=self.do_sample, pad_token_id=pad,
                                  eos_token_id=tok.eos_token_id, attention_mask=torch.ones_like(ids))
        if self.do_sample:
            torch.manual_seed(self.seed)
            kw["temperature"] = self.temperature
        with torch.inference_mode():
            out = model.generate(ids, **kw)
        text = tok.decode(out[0, ids.shape[1]:], skip_special_tokens=True)
        return _clean_completion(text)


#: system message for chat endpoints (the user message is the paper's prompt).
OPENAI_SYSTEM_PROMPT = (
    "You are a pathology assistant. Write a short narrative describing the tumour microenvironment of "
    "an H&E region. Use only the numbers, phenotype labels and biological tokens given; do not invent "
    "values or phenotypes. Cite values with their units."
)


class OpenAIBackend(NarrativeBackend):
    """OpenAI-compatible chat-completions endpoint via urllib.

    base_url: e.g. ``http://localhost:8000/v1`` (the request goes to ``{base_url}/chat/completions``).
    model: model name on the server. api_key: sent as ``Authorization: Bearer`` if given.
    timeout: seconds for connect + read. Errors raise NarrativeBackendError with the cause.
    """

    name = "openai"

    def __init__(self, base_url: str | None = None, model: str | None = None, api_key: str | None = None, *,
                 timeout: float = 60.0, max_tokens: int = 400, temperature: float = 0.0,
                 system_prompt: str = OPENAI_SYSTEM_PROMPT) -> None:
        self.base_url = (base_url or os.environ.get("SEGTME_OPENAI_BASE_URL") or "").rstrip("/")
        self.model = model or os.environ.get("SEGTME_OPENAI_MODEL") or ""
        self.api_key = api_key if api_key is not None else os.environ.get("SEGTME_OPENAI_API_KEY")
        if not self.base_url:
            raise NarrativeBackendError("openai backend needs a base URL: pass base_url=... or set SEGTME_OPENAI_BASE_URL (e.g. http://localhost:8000/v1)")
        if not self.base_url.startswith(("http://", "https://")):
            raise NarrativeBackendError(f"openai backend: base URL must start with http:// or https://, got {self.base_url!r}")
        if not self.model:
            raise NarrativeBackendError("openai backend needs a model name: pass model=... or set SEGTME_OPENAI_MODEL")
        if not (timeout and timeout > 0):
            raise NarrativeBackendError(f"openai backend: timeout must be > 0 s, got {timeout!r}")
        self.timeout = float(timeout)
        self.max_tokens = int(max_tokens)
        self.temperature = float(temperature)
        self.system_prompt = system_prompt

    @property
    def url(self) -> str:
        return f"{self.base_url}/chat/completions"

    def generate(self, bio: Mapping[str, Any], substitutions: Sequence[str] = ()) -> str:
        body = {
            "model": self.model,
            "messages": [{"role": "system", "content": self.system_prompt}, {"role": "user", "content": build_prompt(bio)}],
            "max_tokens": self.max_tokens,
            "temperature": self.temperature,
        }
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        req = urllib.request.Request(self.url, data=json.dumps(body).encode("utf-8"), headers=headers, method="POST")
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                payload = resp.read()
        except urllib.error.HTTPError as e:
            detail = e.read()[:500].decode("utf-8", "replace") if e.fp else ""
            raise NarrativeBackendError(f"openai backend: HTTP {e.code} from {self.url}: {detail or e.reason}") from e
        except (socket.timeout, TimeoutError) as e:
            raise NarrativeBackendError(f"openai backend: no answer from {self.url} within {self.timeout:g} s") from e
        except urllib.error.URLError as e:
            if isinstance(e.reason, (socket.timeout, TimeoutError)):
                raise NarrativeBackendError(f"openai backend: no answer from {self.url} within {self.timeout:g} s") from e
            raise NarrativeBackendError(f"openai backend: cannot reach {self.url}: {e.reason}") from e
        try:
            data = json.loads(payload)
            content = data["choices"][0]["message"]["content"]
        except (ValueError, KeyError, IndexError, TypeError) as e:
            raise NarrativeBackendError(f"openai backend: unexpected response from {self.url}: {payload[:300]!r}") from e
        if not isinstance(content, str):
            raise NarrativeBackendError(f"openai backend: response content is not text: {content!r}")
        return _clean_completion(content)


BACKENDS: dict[str, type[NarrativeBackend]] = {
    "template": TemplateBackend,
    "transformers": TransformersBackend,
    "openai": OpenAIBackend,
}


def get_backend(name: str | NarrativeBackend = "template", **opts: Any) -> NarrativeBackend:
    """A backend by name with its options (see each class), or pass an instance through."""
    if isinstance(name, NarrativeBackend):
        return name
    try:
        cls = BACKENDS[name]
    except KeyError:
        raise NarrativeBackendError(f"unknown narrative backend {name!r}; choose from {sorted(BACKENDS)}") from None
    try:
        return cls(**opts)
    except TypeError as e:
        raise NarrativeBackendError(f"narrative backend {name!r}: bad options {sorted(opts)}: {e}") from e
