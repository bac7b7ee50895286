"""Supervised fine-tuning of a narrator LM (paper section 8.2, "BioNeMo GPT SFT", with transformers).

Data: JSONL, one object per line ``{"prompt": <paper prompt>, "narrative": <target text>}``
(``"completion"`` is accepted for ``"narrative"``). :func:`make_sft_record` builds a record from a
``translate_tme_to_bio_tokens`` result with the paper's prompt template.

Objective (paper Eq. 10): cross-entropy over the narrative tokens only - prompt and padding
positions get label -100. Each example is ``prompt + " " + narrative + EOS``; prompts that do not
fit ``max_length`` are left-truncated so the narrative is always kept whole.

The result is a standard transformers model directory (config, safetensors weights, tokenizer,
``segtme_narrator.json`` with the training log) that ``TransformersBackend(model_dir)`` loads.
The directory appears atomically (written to a temporary sibling and renamed).

Runs on CPU or CUDA (bfloat16 autocast on CUDA). Nothing is downloaded: the base model must be a
local directory; :func:`build_tiny_base_model` makes a small randomly initialised GPT-2 with a
byte-level BPE tokenizer trained on the given texts (for tests and CPU smoke runs).
"""

from __future__ import annotations

import json
import logging
import math
import os
import random
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from ..errors import InputError
from .backends import build_prompt

__all__ = ["SFTExample", "SFTResult", "load_sft_jsonl", "make_sft_record", "train_narrator", "build_tiny_base_model"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SFTExample:
    prompt: str
    narrative: str


@dataclass
class SFTResult:
    out_dir: str
    steps: int
    losses: list[float] = field(default_factory=list)
    n_examples: int = 0
    device: str = "cpu"
    seconds: float = 0.0

    @property
    def first_loss(self) -> float:
        return self.losses[0]

    @property
    def last_loss(self) -> float:
        return self.losses[-1]

    def to_dict(self) -> dict:
        return asdict(self)


def make_sft_record(bio: Mapping[str, Any], narrative: str) -> dict:
    """One JSONL record: the paper's prompt for ``bio`` and the target narrative."""
    return {"prompt": build_prompt(bio), "narrative": narrative}


def load_sft_jsonl(path: str | os.PathLike) -> list[SFTExample]:
    """Read prompt/narrative pairs; clear errors with line numbers."""
    p = Path(path)
    if not p.is_file():
        raise InputError(f"SFT data file not found: {p}")
    out: list[SFTExample] = []
    with p.open(encoding="utf-8") as f:
        for i, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                d = json.loads(line)
            except json.JSONDecodeError as e:
                raise InputError(f"{p}:{i}: not valid JSON ({e.msg})") from None
            if not isinstance(d, dict):
                raise InputError(f"{p}:{i}: expected an object with 'prompt' and 'narrative'")
            prompt, narr = d.get("prompt"), d.get("narrative", d.get("completion"))
            if not isinstance(prompt, str) or not isinstance(narr, str) or not narr.strip():
                raise InputError(f"{p}:{i}: needs string fields 'prompt' and 'narrative' (non-empty)")
            out.append(SFTExample(prompt, narr.strip()))
    if not out:
        raise InputError(f"{p}: no training pairs")
    return out


def build_tiny_base_model(
    out_dir: str | os.PathLike,
    texts: Iterable[str],
    *,
    vocab_size: int = 600,
    n_layer: int = 2,
    n_head: int = 2,
    n_embd: int = 64,
    n_positions: int = 2048,
    seed: int = 0,
) -> Path:
    """A small randomly initialised GPT-2 + byte-level BPE tokenizer trained locally on ``texts``
    (no download). For tests and CPU smoke runs; real narrators start from a pre-trained LM."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    torch.manual_seed(seed)
    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<|endoftext|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tk.train_from_iterator(list(texts), trainer=trainer)
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, eos_token="<|endoftext|>", bos_token="<|endoftext|>",
                                  unk_token="<|endoftext|>", pad_token="<|endoftext|>")
    cfg = GPT2Config(vocab_size=len(tok), n_positions=n_positions, n_embd=n_embd, n_layer=n_layer, n_head=n_head,
                     bos_token_id=tok.eos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    model = GPT2LMHeadModel(cfg)
    out = Path(out_dir)
    with _atomic_dir(out, overwrite=True) as tmp:
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
    return out


class _atomic_dir:
    """Context manager: yields a temporary sibling directory, renamed to ``path`` on success."""

    def __init__(self, path: Path, overwrite: bool) -> None:
        self.path, self.overwrite = Path(path), overwrite

    def __enter__(self) -> Path:
        parent = self.path.parent
        parent.mkdir(parents=True, exist_ok=True)
        if self.path.exists() and not self.overwrite:
            raise InputError(f"output directory {self.path} exists (use --overwrite)")
        self.tmp = Path(tempfile.mkdtemp(prefix=f".{self.path.name}.", suffix=".tmp", dir=parent))
        return self.tmp

    def __exit__(self, et, ev, tb) -> None:
        if et is not None:
            shutil.rmtree(self.tmp, ignore_errors=True)
            return
        old = None
        if self.path.exists():
            old = self.path.with_name(f".{self.path.name}.old.{os.getpid()}")
            os.replace(self.path, old)
        os.replace(self.tmp, self.path)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)


def _encode(examples: Sequence[SFTExample], tok, max_length: int) -> list[tuple[list[int], list[int]]]:
    """(input_ids, labels) per example; labels -100 on prompt tokens."""
    eos = tok.eos_token_id
    if eos is None:
        raise InputError("the base model's tokenizer has no EOS token")
    out = []
    for ex in examples:
        p = tok(ex.prompt, add_special_tokens=False)["input_ids"]
        t = tok(" " + ex.narrative, add_special_tokens=False)["input_ids"] + [eos]
        if len(t) >= max_length:
            raise InputError(f"a narrative has {len(t)} tokens, more than max_length={max_length}")
        p = p[-(max_length - len(t)):] if len(p) + len(t) > max_length else p
        out.append((p + t, [-100] * len(p) + t))
    return out


def train_narrator(
    data: str | os.PathLike | Sequence[SFTExample],
    base_model: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    epochs: int = 1,
    max_steps: int | None = None,
    batch_size: int = 4,
    lr: float = 5e-5,
    weight_decay: float = 0.0,
    max_length: int | None = None,
    device: str | None = None,
    seed: int = 0,
    overwrite: bool = False,
    log_every: int = 10,
) -> SFTResult:
    """Fine-tune the local causal LM ``base_model`` on prompt -> narrative pairs (loss on narrative
    tokens only) and save it to ``out_dir``. ``max_steps`` caps optimiser steps (None: ``epochs``
    passes). Returns the per-step losses."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    examples = load_sft_jsonl(data) if isinstance(data, (str, os.PathLike)) else list(data)
    if not examples:
        raise InputError("no SFT examples")
    base = Path(base_model)
    if not (base / "config.json").is_file():
        raise InputError(f"base model {base} is not a local model directory (no config.json); nothing is downloaded")
    out = Path(out_dir)
    if out.exists() and not overwrite:
        raise InputError(f"output directory {out} exists (use --overwrite)")
    random.seed(seed)
    torch.manual_seed(seed)
    dev = device or ("cuda" if torch.cuda.is_available() else "cpu")
    tok = AutoTokenizer.from_pretrained(base, local_files_only=True)
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    model = AutoModelForCausalLM.from_pretrained(base, local_files_only=True).to(dev)
    ctx = int(getattr(model.config, "n_positions", None) or getattr(model.config, "max_position_embeddings", 1024))
    max_len = min(max_length or ctx, ctx)
    enc = _encode(examples, tok, max_len)
    steps_per_epoch = math.ceil(len(enc) / batch_size)
    total = max_steps if max_steps is not None else epochs * steps_per_epoch
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    use_bf16 = dev.startswith("cuda") and torch.cuda.is_bf16_supported()
    model.train()
    losses: list[float] = []
    t0 = time.monotonic()
    step = 0
    order: list[int] = []
    while step < total:
        if not order:
            order = list(range(len(enc)))
            random.shuffle(order)
        batch = [enc[order.pop()] for _ in range(min(batch_size, len(order)))]
        L = max(len(ids) for ids, _ in batch)
        ids = torch.full((len(batch), L), tok.pad_token_id, dtype=torch.long)
        labels = torch.full((len(batch), L), -100, dtype=torch.long)
        att = torch.zeros((len(batch), L), dtype=torch.long)
        for i, (x, y) in enumerate(batch):
            ids[i, : len(x)] = torch.tensor(x)
            labels[i, : len(y)] = torch.tensor(y)
            att[i, : len(x)] = 1
        ids, labels, att = ids.to(dev), labels.to(dev), att.to(dev)
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=use_bf16):
            loss = model(input_ids=ids, attention_mask=att, labels=labels).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        losses.append(float(loss.detach()))
        step += 1
        if log_every and (step % log_every == 0 or step == 1 or step == total):
            log.info("train-narrator step %d/%d loss %.4f", step, total, losses[-1])
    model.eval()
    res = SFTResult(str(out), step, losses, len(examples), dev, time.monotonic() - t0)
    with _atomic_dir(out, overwrite=overwrite) as tmp:
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        meta = {"base_model": str(base), "steps": step, "batch_size": batch_size, "lr": lr, "max_length": max_len,
                "n_examples": len(examples), "losses": losses, "objective": "cross-entropy on narrative tokens only",
                "prompt_template": "TME features: … / Phenotype labels: … / Biological tokens: … / Narrative:"}
        (tmp / "segtme_narrator.json").write_text(json.dumps(meta, indent=1))
    return res

