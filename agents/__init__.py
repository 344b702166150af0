"""Policies, prompt renderers and rollout collection (token-exact trajectories)."""

from stepgym.agents.policy import Completion, Policy, SamplingParams
from stepgym.agents.scripted import TextAgent, run_episode

__all__ = ["Completion", "Policy", "SamplingParams", "TextAgent", "run_episode"]
