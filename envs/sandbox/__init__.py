"""Credit sandbox: procedurally generated ALFWorld-like text envs whose decisive steps are known.

See :mod:`stepgym.envs.sandbox.env` for the definition of a decisive step and the variants, and
:mod:`stepgym.envs.sandbox.world` for the world generator, the expert plan and the vocabulary.
"""

from stepgym.envs.sandbox.env import SandboxDelayedEnv, SandboxEnv, SandboxNullEnv, SandboxOneEnv, SandboxTwoEnv
from stepgym.envs.sandbox.world import SUBSETS, all_commands, expert_plan, generate_world, split_words, vocabulary

__all__ = [
    "SUBSETS",
    "SandboxDelayedEnv",
    "SandboxEnv",
    "SandboxNullEnv",
    "SandboxOneEnv",
    "SandboxTwoEnv",
    "all_commands",
    "expert_plan",
    "generate_world",
    "split_words",
    "vocabulary",
]
