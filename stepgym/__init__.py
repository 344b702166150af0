"""stepgym: reinforcement learning for multi-turn LLM agents with step-level credit.

The parts live in subpackages that import one way: ``envs <- agents <- distill <- trainers``.
"""

__version__ = "0.1.0"
