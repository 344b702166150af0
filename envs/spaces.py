"""A bounded-length text space.

``gymnasium.spaces.Text`` only admits a fixed character set, which rejects ordinary model output
(unicode, punctuation, newlines). This space admits any ``str`` up to ``max_length`` characters.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from gymnasium.spaces import Space

__all__ = ["TextSpace"]

_SAMPLE_CHARS = np.array(list("abcdefghijklmnopqrstuvwxyz <>/ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"))


class TextSpace(Space[str]):
    """Any string of at most ``max_length`` characters."""

    def __init__(self, max_length: int = 65_536, seed: int | np.random.Generator | None = None):
        if max_length <= 0:
            raise ValueError(f"max_length must be positive, got {max_length}")
        self.max_length = int(max_length)
        super().__init__(shape=None, dtype=None, seed=seed)

    @property
    def is_np_flattenable(self) -> bool:
        """Text cannot be flattened to a numpy array."""
        return False

    def sample(self, mask: Any = None, probability: Any = None) -> str:
        """A random short string of letters, digits, spaces and tag characters."""
        n = int(self.np_random.integers(0, min(self.max_length, 64) + 1))
        return "".join(self.np_random.choice(_SAMPLE_CHARS, size=n).tolist())

    def contains(self, x: Any) -> bool:
        """True for a ``str`` of at most ``max_length`` characters."""
        return isinstance(x, str) and len(x) <= self.max_length

    def __repr__(self) -> str:
        return f"TextSpace(max_length={self.max_length})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, TextSpace) and other.max_length == self.max_length

    def __hash__(self) -> int:
        return hash(("TextSpace", self.max_length))
