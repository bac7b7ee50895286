"""Measure a narrative backend on real regions: unsupported-claim rate and fallback rate.

:func:`evaluate_backend` runs ``backend.generate`` on each region's tokens, verifies the text
(:func:`segtme.narrative.verify.verify_narrative`) and applies the report's fallback rule (any
unsupported or unbound claim -> the template narrative replaces an LLM's text). A backend error
(unreachable server, ...) counts as a fallback too and is listed.

* unsupported-claim rate = failed claims (unsupported + unbound) / all claims of the backend's texts;
* fallback rate = regions whose text would be replaced / regions.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Sequence

from .backends import NarrativeBackend, NarrativeBackendError
from .sources import ReportInput, to_bio
from .verify import verify_narrative

__all__ = ["RegionResult", "NarrateEvalResult", "evaluate_backend"]


@dataclass
class RegionResult:
    name: str
    n_claims: int
    n_unsupported: int
    n_unbound: int
    fallback: bool
    error: str | None = None
    failed: list[str] = field(default_factory=list)  # failed-claim summaries
    narrative: str = ""


@dataclass
class NarrateEvalResult:
    backend: str
    regions: list[RegionResult] = field(default_factory=list)

    @property
    def n_regions(self) -> int:
        return len(self.regions)

    @property
    def n_claims(self) -> int:
        return sum(r.n_claims for r in self.regions)

    @property
    def n_unsupported(self) -> int:
        return sum(r.n_unsupported for r in self.regions)

    @property
    def n_unbound(self) -> int:
        return sum(r.n_unbound for r in self.regions)

    @property
    def n_fallback(self) -> int:
        return sum(r.fallback for r in self.regions)

    @property
    def n_errors(self) -> int:
        return sum(r.error is not None for r in self.regions)

    @property
    def unsupported_claim_rate(self) -> float:
        return self.n_unsupported / self.n_claims if self.n_claims else 0.0

    @property
    def fallback_rate(self) -> float:
        return self.n_fallback / self.n_regions if self.n_regions else 0.0

    def top_failures(self, k: int = 10) -> list[tuple[str, int]]:
        """The most frequent failed quantities / phenotypes ('unbound' for unbound numbers)."""
        c: Counter[str] = Counter()
        for r in self.regions:
            for f in r.failed:
                c[f.split("[", 1)[1].split("]", 1)[0] if "[" in f else f] += 1
        return c.most_common(k)

    def to_dict(self, include_regions: bool = False) -> dict:
        d = {"backend": self.backend, "n_regions": self.n_regions, "n_claims": self.n_claims,
             "n_unsupported": self.n_unsupported, "n_unbound": self.n_unbound,
             "unsupported_claim_rate": self.unsupported_claim_rate, "n_fallback": self.n_fallback,
             "fallback_rate": self.fallback_rate, "n_errors": self.n_errors, "top_failures": self.top_failures()}
        if include_regions:
            d["regions"] = [asdict(r) for r in self.regions]
        return d

    def summary(self) -> str:
        lines = [
            f"backend {self.backend}: {self.n_regions} regions, {self.n_claims} claims",
            f"unsupported-claim rate {100 * self.unsupported_claim_rate:.2f}% ({self.n_unsupported} of {self.n_claims}; "
            f"{self.n_unbound} unbound)",
            f"fallback rate {100 * self.fallback_rate:.1f}% ({self.n_fallback} of {self.n_regions} regions"
            f"{f'; {self.n_errors} backend errors' if self.n_errors else ''})",
        ]
        if self.top_failures():
            lines.append("most frequent failures: " + ", ".join(f"{k} x{n}" for k, n in self.top_failures(6)))
        return "\n".join(lines)


def evaluate_backend(backend: NarrativeBackend, inputs: Sequence[ReportInput]) -> NarrateEvalResult:
    """Run ``backend`` on every input and verify its narratives (see module docstring)."""
    res = NarrateEvalResult(backend.name)
    for x in inputs:
        name, bio, subs = to_bio(x)
        try:
            text = backend.generate(bio, subs)
        except NarrativeBackendError as e:
            res.regions.append(RegionResult(name, 0, 0, 0, True, error=str(e)))
            continue
        v = verify_narrative(text, bio)
        res.regions.append(RegionResult(name, v.n_claims, len(v.unsupported), len(v.unbound), not v.ok,
                                        failed=v.failed_summary(), narrative=text))
    return res
