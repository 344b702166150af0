"""The policy protocol every generation backend implements.

A policy turns token-id prompts into completions: ``generate(prompts, sampling)``. Token ids are
never re-derived from text: ``Completion.ids`` are exactly the ids the engine produced, and
``Completion.logprobs`` are ``log_softmax(logits / temperature)`` of those ids (the quantity the
trainer recomputes).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal, Protocol, runtime_checkable

__all__ = ["Completion", "FinishReason", "Policy", "SamplingParams"]

FinishReason = Literal["stop", "length", "error"]


@dataclass(frozen=True)
class SamplingParams:
    """How to decode one batch."""

    max_new_tokens: int = 256
    """Most tokens generated for one completion."""
    temperature: float = 1.0
    """Softmax temperature; 0 means greedy."""
    top_p: float = 1.0
    """Nucleus sampling mass (1.0 = off)."""
    stop: tuple[str, ...] = ()
    """Stop strings; the completion ends after the first one and keeps it."""
    seed: int | None = None
    """Seed for this batch's sampling; ``None`` draws from the backend's generator."""

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")


@dataclass(frozen=True)
class Completion:
    """One generated completion."""

    ids: list[int]
    """Generated token ids (stop string included, EOS included when emitted)."""
    logprobs: list[float]
    """Log-prob of each generated id under the sampling distribution."""
    text: str
    """The decoded text of ``ids``."""
    finish_reason: FinishReason
    """``stop`` (stop string or EOS), ``length`` (max tokens) or ``error``."""
    error: str | None = field(default=None)
    """What went wrong when ``finish_reason == "error"``."""

    def __post_init__(self) -> None:
        if len(self.ids) != len(self.logprobs):
            raise ValueError(f"logprobs has {len(self.logprobs)} entries but ids has {len(self.ids)}")


@runtime_checkable
class Policy(Protocol):
    """Anything that can generate completions for token-id prompts."""

    def generate(self, prompts: Sequence[Sequence[int]], sampling: SamplingParams) -> list[Completion]:
        """One completion per prompt, in order."""
        ...
