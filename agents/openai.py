"""A policy that calls an OpenAI-compatible ``/v1/completions`` server through the official ``openai`` client.

For evaluating a served model (``vllm serve``, or any OpenAI-compatible server). Each prompt is one
request (sent concurrently, at most ``max_concurrency`` at once), so one failing prompt does not fail
the others; the client retries connection errors, timeouts, 408/409/429 and 5xx answers with
exponential backoff (``max_retries``; openai-python's own policy) and gives up after ``timeout_s``
per attempt.

Two modes:

* **token ids** (default; vLLM): the prompt goes out as token ids with ``logprobs=1`` and vLLM's
  ``return_tokens_as_token_ids`` (``logprobs.tokens`` become ``"token_id:<id>"``), so the generated ids
  are read back exactly, never re-encoded from text; stop strings are kept
  (``include_stop_str_in_output``).
* **text only** (``tokenizer=`` given; servers without those extensions): the prompt ids are decoded to
  text and the reply text is encoded back with the tokenizer, so ids may differ from what the server
  sampled. Log-probs are NaN (not available, never invented). A server strips the stop string it
  stopped at; it is restored when the text opens the matching tag (``<answer>`` for ``</answer>``),
  because the env parses the closing tag.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from stepgym.agents.policy import Completion, SamplingParams

__all__ = ["OpenAIPolicy", "parse_token_id", "restore_stop"]

logger = logging.getLogger(__name__)


def parse_token_id(token: str) -> int:
    """``"token_id:123"`` -> 123 (vLLM's ``return_tokens_as_token_ids`` format)."""
    if not token.startswith("token_id:"):
        raise ValueError(
            f"logprobs token {token!r} is not 'token_id:<id>'; the server must support "
            "return_tokens_as_token_ids (vLLM does) so generated ids can be read exactly, "
            "or use text-only mode (OpenAIPolicy(tokenizer=...), --text-only)"
        )
    return int(token.split(":", 1)[1])


def restore_stop(text: str, stop: Sequence[str]) -> str:
    """Append the closing tag a server stopped at and stripped: the one whose opening tag is still open."""
    for s in stop:
        if s.startswith("</") and s.endswith(">"):
            opening = "<" + s[2:]
            if text.rfind(opening) > text.rfind(s):
                return text + s
    return text


class OpenAIPolicy:
    """Generate through an OpenAI-compatible completions endpoint.

    Args:
        base_url: Server root, e.g. ``"http://127.0.0.1:8000/v1"``.
        model: The served model name.
        api_key: Sent as a bearer token (servers without auth accept any; ``"EMPTY"`` when ``None``).
        timeout_s: Seconds per request attempt.
        max_retries: Retries per request, with exponential backoff (0.5 s doubling, at most 8 s).
        max_concurrency: Requests in flight at once.
        tokenizer: Text-only mode: the tokenizer that decodes prompts and re-encodes replies.
    """

    def __init__(
        self,
        base_url: str,
        model: str,
        *,
        api_key: str | None = None,
        timeout_s: float = 120.0,
        max_retries: int = 3,
        max_concurrency: int = 16,
        tokenizer: Any = None,
    ):
        try:
            from openai import OpenAI
        except ImportError as e:
            raise ImportError("OpenAIPolicy needs the openai client: pip install 'stepgym[cli]'") from e
        self.url = base_url.rstrip("/") + "/completions"
        self.model = model
        self.max_concurrency = max_concurrency
        self.tokenizer = tokenizer
        self.client = OpenAI(base_url=base_url, api_key=api_key or "EMPTY", timeout=timeout_s, max_retries=max_retries)

    @property
    def text_only(self) -> bool:
        """Whether ids are re-encoded from text (token-exactness not available)."""
        return self.tokenizer is not None

    def _request(self, prompt: Sequence[int], sampling: SamplingParams, index: int) -> dict[str, Any]:
        req: dict[str, Any] = {
            "model": self.model,
            "max_tokens": sampling.max_new_tokens,
            "temperature": sampling.temperature,
            "top_p": sampling.top_p,
        }
        if sampling.stop:
            req["stop"] = list(sampling.stop)
        if sampling.seed is not None:
            req["seed"] = sampling.seed + index  # distinct draws for identical prompts in one batch
        if self.text_only:
            req["prompt"] = self.tokenizer.decode(list(prompt), skip_special_tokens=False)
        else:
            req["prompt"] = list(prompt)
            req["logprobs"] = 1
            req["extra_body"] = {
                "return_tokens_as_token_ids": True,
                "include_stop_str_in_output": True,
                "skip_special_tokens": False,
            }
        return req

    def _one(self, prompt: Sequence[int], sampling: SamplingParams, index: int) -> Completion:
        import openai

        try:
            resp = self.client.completions.create(**self._request(prompt, sampling, index))
            choice = resp.choices[0]
            finish = "length" if (choice.finish_reason or "length") == "length" else "stop"
            if self.text_only:
                text = restore_stop(choice.text or "", sampling.stop) if finish == "stop" else choice.text or ""
                ids = list(self.tokenizer.encode(text, add_special_tokens=False))
                return Completion(ids, [math.nan] * len(ids), text, finish)  # type: ignore[arg-type]
            lp = choice.logprobs
            if lp is None or lp.tokens is None:
                raise ValueError("the server returned no logprobs; use text-only mode (--text-only)")
            ids = [parse_token_id(t) for t in lp.tokens]
            logprobs = [float(x) if x is not None else 0.0 for x in (lp.token_logprobs or [])]
            return Completion(ids, logprobs, choice.text or "", finish)  # type: ignore[arg-type]
        except openai.APIStatusError as e:
            detail = e.response.text[:500] if e.response is not None else str(e)
            return Completion([], [], "", "error", f"HTTP {e.status_code} from {self.url}: {detail}")
        except Exception as e:  # noqa: BLE001 - contained: reported per prompt
            return Completion([], [], "", "error", f"{type(e).__name__} calling {self.url}: {e}")

    def generate(self, prompts: Sequence[Sequence[int]], sampling: SamplingParams) -> list[Completion]:
        """One request per prompt, concurrently; failures (after retries) give ``finish_reason="error"``."""
        if not prompts:
            return []
        with ThreadPoolExecutor(max_workers=min(self.max_concurrency, len(prompts))) as pool:
            return list(pool.map(lambda a: self._one(a[1], sampling, a[0]), enumerate(prompts)))
