"""Text-level agents: policies that read observations and write actions as text.

Scripted agents (experts, oracles, random baselines) work on text, not token ids: they drive any
env directly (``env.step(agent.act(obs, info))``) and are wrapped into a token-level
:class:`~stepgym.agents.policy.Policy` by the rollout layer when needed.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

__all__ = ["TextAgent", "run_episode"]


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
