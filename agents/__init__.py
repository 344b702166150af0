"""Policies, prompt renderers and rollout collection (token-exact trajectories)."""

from stepgym.agents.models import build_tiny_model, load_model, load_tokenizer
from stepgym.agents.policy import Completion, Policy, SamplingParams
from stepgym.agents.render import ChatRenderer
from stepgym.agents.rollout import GroupPurityError, collect, env_faults, rollout_metrics
from stepgym.agents.scripted import (
    ExpertPlanAgent,
    RandomAdmissibleAgent,
    TextAgent,
    TextAgentPolicy,
    run_episode,
)

__all__ = [
    "ChatRenderer",
    "Completion",
    "ExpertPlanAgent",
    "GroupPurityError",
    "Policy",
    "RandomAdmissibleAgent",
    "SamplingParams",
    "TextAgent",
    "TextAgentPolicy",
    "build_tiny_model",
    "collect",
    "env_faults",
    "load_model",
    "load_tokenizer",
    "rollout_metrics",
    "run_episode",
]
