"""Scripted Search-QA agents: an oracle (upper bound) and a "first passage title" baseline.

Both search the question once, then answer. They are text agents (:class:`~stepgym.agents.scripted.TextAgent`)
for ``stepgym/SearchQA-v0`` (its reset ``info`` carries ``question`` and ``golden_answers``).
"""

from __future__ import annotations

import re
from typing import Any

__all__ = ["FirstTitleAgent", "OracleSearchQAAgent"]

_DOC1_TITLE_RE = re.compile(r'Doc 1\(Title: (?:"(.*?)"|(.*?))\) ', re.DOTALL)


class OracleSearchQAAgent:
    """Searches the question, then answers ``golden_answers[0]`` (exact match 1.0 on every question)."""

    def reset(self, observation: str, info: dict[str, Any]) -> None:
        """Remember the question and its first golden answer."""
        self.question = str(info["question"])
        self.answer = str(info["golden_answers"][0])
        self.searched = False

    def act(self, observation: str, info: dict[str, Any]) -> str:
        """``<search>question</search>`` on the first step, then ``<answer>gold</answer>``."""
        if not self.searched:
            self.searched = True
            return f"Let me look this up. <search>{self.question}</search>"
        return f"The passages settle it. <answer>{self.answer}</answer>"


class FirstTitleAgent:
    """Baseline: searches the question, then answers the title of the first passage returned."""

    def reset(self, observation: str, info: dict[str, Any]) -> None:
        """Remember the question."""
        self.question = str(info["question"])
        self.searched = False

    def act(self, observation: str, info: dict[str, Any]) -> str:
        """Search first; then answer Doc 1's title without its quotes (``unknown`` when nothing matched)."""
        if not self.searched:
            self.searched = True
            return f"<search>{self.question}</search>"
        m = _DOC1_TITLE_RE.search(observation)
        title = (m.group(1) if m.group(1) is not None else m.group(2)).strip() if m else ""
        return f"<answer>{title or 'unknown'}</answer>"
