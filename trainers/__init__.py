"""Config, credit registry, losses, the GRPO loop, checkpoints, metrics and distribution."""
