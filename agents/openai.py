"""A policy that calls an OpenAI-compatible ``/v1/completions`` server with token-id prompts.

For evaluating a served checkpoint (``vllm serve``, or any server speaking the same dialect). Each
prompt is one request (sent concurrently), so one failing prompt does not fail the others. The
request carries the prompt as token ids and asks for ``logprobs=1`` and
``return_tokens_as_token_ids`` (vLLM's extension: ``logprobs.tokens`` become ``"token_id:<id>"``), so
the generated ids are read back exactly, never re-encoded from text. Stop strings are kept
(``include_stop_str_in_output``). Only the standard library is used (``urllib``).
"""

from __future__ import annotations

import json
import logging
import urllib.error
import urllib.request
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from stepgym.agents.policy import Completion, SamplingParams

__all__ = ["OpenAIPolicy", "parse_token_id"]

logger = logging.getLogger(__name__)


def parse_token_id(token: str) -> int:
    """``"token_id:123"`` -> 123 (vLLM's ``return_tokens_as_token_ids`` format)."""
    if not token.startswith("token_id:"):
        raise ValueError(
            f"logprobs token {token!r} is not 'token_id:<id>'; the server must support "
            "return_tokens_as_token_ids (vLLM does) so generated ids can be read exactly"
        )
    return int(token.split(":", 1)[1])


class OpenAIPolicy:
    """Generate through an OpenAI-compatible completions endpoint.

    Args:
        base_url: Server root, e.g. ``"http://127.0.0.1:8000/v1"``.
        model: The served model name.
        api_key: Sent as a bearer token when given.
        timeout_s: Per-request timeout.
        max_concurrency: Requests in flight at once.
    """

    def __init__(
        self,
        base_url: str,
        model: str,
        *,
        api_key: str | None = None,
        timeout_s: float = 120.0,
        max_concurrency: int = 16,
    ):
        self.url = base_url.rstrip("/") + "/completions"
        self.model = model
        self.api_key = api_key
        self.timeout_s = timeout_s
        self.max_concurrency = max_concurrency

    def _body(self, prompt: Sequence[int], sampling: SamplingParams, index: int) -> dict[str, Any]:
        body: dict[str, Any] = {
            "model": self.model,
            "prompt": list(prompt),
            "max_tokens": sampling.max_new_tokens,
            "temperature": sampling.temperature,
            "top_p": sampling.top_p,
            "logprobs": 1,
            "return_tokens_as_token_ids": True,
            "include_stop_str_in_output": True,
            "skip_special_tokens": False,
        }
        if sampling.stop:
            body["stop"] = list(sampling.stop)
        if sampling.seed is not None:
            body["seed"] = sampling.seed + index  # distinct draws for identical prompts in one batch
        return body

    def _one(self, prompt: Sequence[int], sampling: SamplingParams, index: int) -> Completion:
        data = json.dumps(self._body(prompt, sampling, index)).encode()
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        req = urllib.request.Request(self.url, data=data, headers=headers, method="POST")
        try:
            with urllib.request.urlopen(req, timeout=self.timeout_s) as resp:
                payload = json.loads(resp.read())
            choice = payload["choices"][0]
            lp = choice["logprobs"]
            ids = [parse_token_id(t) for t in lp["tokens"]]
            logprobs = [float(x) if x is not None else 0.0 for x in lp["token_logprobs"]]
            reason = choice.get("finish_reason") or "length"
            finish = "length" if reason == "length" else "stop"
            return Completion(ids, logprobs, choice.get("text", ""), finish)  # type: ignore[arg-type]
        except urllib.error.HTTPError as e:
            detail = e.read().decode(errors="replace")[:500]
            return Completion([], [], "", "error", f"HTTP {e.code} from {self.url}: {detail}")
        except Exception as e:  # noqa: BLE001 - contained: reported per prompt
            return Completion([], [], "", "error", f"{type(e).__name__} calling {self.url}: {e}")

    def generate(self, prompts: Sequence[Sequence[int]], sampling: SamplingParams) -> list[Completion]:
        """One request per prompt, concurrently; failures give ``finish_reason="error"``."""
        if not prompts:
            return []
        with ThreadPoolExecutor(max_workers=min(self.max_concurrency, len(prompts))) as pool:
            return list(pool.map(lambda a: self._one(a[1], sampling, a[0]), enumerate(prompts)))
