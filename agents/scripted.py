"""Text-level agents: policies that read observations and write actions as text.

Scripted agents (experts, oracles, random baselines) work on text, not token ids: they drive any
env directly (``env.step(agent.act(obs, info))``) and are wrapped into a token-level
:class:`~stepgym.agents.policy.Policy` by the rollout layer when needed.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

__all__ = ["ExpertPlanAgent", "RandomAdmissibleAgent", "TextAgent", "TextAgentPolicy", "run_episode"]


@runtime_checkable
class TextAgent(Protocol):
    """An agent that maps the current observation and info to raw action text."""

    def reset(self, observation: str, info: dict[str, Any]) -> None:
        """Called once at the start of an episode with the first observation and info."""
        ...

    def act(self, observation: str, info: dict[str, Any]) -> str:
        """The raw action text for the current step (e.g. ``"<action>go to desk 1</action>"``)."""
        ...


def run_episode(
    env: Any,
    agent: TextAgent,
    *,
    seed: int | None = None,
    options: dict[str, Any] | None = None,
    max_steps: int = 1000,
) -> list[tuple[str, str, float, bool, bool, dict[str, Any]]]:
    """Play one episode of ``agent`` in ``env``; returns ``(obs, action, reward, term, trunc, info)`` per step."""
    obs, info = env.reset(seed=seed, options=options)
    agent.reset(obs, info)
    out = []
    for _ in range(max_steps):
        action = agent.act(obs, info)
        next_obs, reward, terminated, truncated, info = env.step(action)
        out.append((obs, action, reward, terminated, truncated, info))
        obs = next_obs
        if terminated or truncated:
            break
    return out


# --------------------------------------------------------------------------- agents as policies
class RandomAdmissibleAgent:
    """Picks a uniformly random entry of ``info["admissible_actions"]`` (a baseline).

    Args:
        seed: Seeds this agent's generator.
        template: How the command is written (``"<action>{}</action>"``).
    """

    def __init__(self, seed: int = 0, template: str = "<action>{}</action>"):
        import random

        self._rng = random.Random(seed)
        self.template = template
        self._choices: list[str] = []

    def reset(self, observation: str, info: dict[str, Any]) -> None:
        """Read the first list of admissible actions."""
        self._choices = list(info.get("admissible_actions") or [])

    def act(self, observation: str, info: dict[str, Any]) -> str:
        """A random admissible command; the last list seen is reused when a step's info has none."""
        if info.get("admissible_actions"):
            self._choices = list(info["admissible_actions"])
        return self.template.format(self._rng.choice(self._choices) if self._choices else "")


class ExpertPlanAgent:
    """Plays ``info["expert_plan"]`` from the reset info in order (the env's expert/oracle).

    Args:
        template: How each command is written.
        plan_key: The reset-info key holding the list of commands.
    """

    def __init__(self, template: str = "<action>{}</action>", plan_key: str = "expert_plan"):
        self.template = template
        self.plan_key = plan_key
        self._plan: list[str] = []

    def reset(self, observation: str, info: dict[str, Any]) -> None:
        """Read the plan from the reset info."""
        if self.plan_key not in info:
            raise KeyError(f"reset info has no {self.plan_key!r}; this env exposes no expert plan")
        self._plan = list(info[self.plan_key])

    def act(self, observation: str, info: dict[str, Any]) -> str:
        """The next planned command (the last one again when the plan runs out)."""
        cmd = self._plan.pop(0) if len(self._plan) > 1 else (self._plan[0] if self._plan else "")
        return self.template.format(cmd)


class TextAgentPolicy:
    """Lets text agents act as a token-level policy inside :func:`stepgym.agents.rollout.collect`.

    One agent per episode is made with ``make_agent``. Before each ``generate`` call, ``collect``
    calls :meth:`observe` with one row per prompt (same order), so each agent sees its raw
    observation and info. The action text is encoded with the tokenizer (canonical ids, no special
    tokens), cut after the first stop string and at ``max_new_tokens``; log-probs are 0.0 (the
    agent is not a distribution over tokens).

    Args:
        make_agent: Builds a fresh agent; called with the episode key.
        tokenizer: The tokenizer whose ids the rollout uses.
    """

    def __init__(self, make_agent: Any, tokenizer: Any):
        self.make_agent = make_agent
        self.tokenizer = tokenizer
        self._agents: dict[Any, TextAgent] = {}
        self._rows: list[tuple[Any, str, dict[str, Any], bool]] = []

    def observe(self, rows: list[tuple[Any, str, dict[str, Any], bool]]) -> None:
        """``(episode_key, observation, info, is_first_step)`` for each upcoming prompt, in order."""
        self._rows = list(rows)

    def generate(self, prompts: Any, sampling: Any) -> list[Any]:
        """The agents' actions as completions (``finish_reason="error"`` when an agent raises)."""
        from stepgym.agents.hf import find_stop
        from stepgym.agents.policy import Completion

        if len(self._rows) != len(prompts):
            raise RuntimeError(
                f"TextAgentPolicy got {len(prompts)} prompts but observe() gave {len(self._rows)} rows; "
                "call observe() with one row per prompt before generate()"
            )
        out = []
        for key, obs, info, first in self._rows:
            try:
                if first or key not in self._agents:
                    self._agents[key] = self.make_agent(key)
                    self._agents[key].reset(obs, info)
                text = self._agents[key].act(obs, info)
            except Exception as e:  # noqa: BLE001 - contained: the episode is truncated
                out.append(Completion([], [], "", "error", f"{type(e).__name__}: {e}"))
                continue
            finish = "length"
            end = find_stop(text, sampling.stop) if sampling.stop else -1
            if end >= 0:
                text, finish = text[:end], "stop"
            ids = list(self.tokenizer(text, add_special_tokens=False)["input_ids"])
            if len(ids) > sampling.max_new_tokens:
                ids, finish = ids[: sampling.max_new_tokens], "length"
            elif not sampling.stop:
                finish = "stop"
            out.append(Completion(ids, [0.0] * len(ids), self.tokenizer.decode(ids, skip_special_tokens=False), finish))
        self._rows = []
        return out
