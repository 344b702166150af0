"""The README's "Bring your own environment" snippet, run exactly as written."""

import json
import re
from pathlib import Path

import gymnasium as gym
import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")

README = Path(__file__).resolve().parents[1] / "README.md"


def _snippet() -> str:
    text = README.read_text()
    section = text[text.index("## Bring your own environment") :]
    return re.search(r"```python\n(.*?)```", section, flags=re.DOTALL).group(1)


def test_readme_plain_env_snippet_trains_with_grpo_gigpo_stepopsd(tmp_path, monkeypatch):
    code = _snippet()
    env_class = code[code.index("class GuessEnv") : code.index("gym.register(")]
    assert "stepgym" not in env_class  # the env is plain Gymnasium
    monkeypatch.chdir(tmp_path)  # the snippet writes runs/ relative to the working directory
    gym.registry.pop("GuessDigit-v0", None)
    try:
        exec(compile(code, str(README), "exec"), {"__name__": "readme_snippet"})
    finally:
        gym.registry.pop("GuessDigit-v0", None)
    for credit in ("grpo", "gigpo", "stepopsd"):
        run = tmp_path / "runs" / f"guess-{credit}"
        lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
        assert [x["step"] for x in lines] == [1, 2]
        assert all(x["rollout/trajectories"] == 8.0 and x["rollout/env_errors"] == 0.0 for x in lines)
        saved = json.loads((run / "config.json").read_text())
        assert saved["credit"] == credit and saved["instructions"].startswith("Guess the digit.")
        assert (run / "checkpoints").is_dir()
