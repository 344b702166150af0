"""Tiny models and hand-built rollouts for the trainer tests (built locally, never downloaded)."""

import torch
from stepgym.envs.records import StepRecord, TokenSequence, Trajectory
from transformers import Qwen3Config, Qwen3ForCausalLM

VOCAB = 64


def tiny_config() -> Qwen3Config:
    return Qwen3Config(
        vocab_size=VOCAB,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        max_position_embeddings=128,
        tie_word_embeddings=False,
    )


def tiny_model(seed: int = 0) -> Qwen3ForCausalLM:
    """A random ~60k-parameter Qwen3 (2 layers, hidden 64, vocab 64)."""
    torch.manual_seed(seed)
    model = Qwen3ForCausalLM(tiny_config())
    model.config.use_cache = False
    return model


def step(k: int, *, valid: bool = True, reward: float = 0.0, obs: str | None = None) -> StepRecord:
    return StepRecord(
        index=k,
        observation=obs if obs is not None else f"obs {k}",
        action_text=f"<action>a{k}</action>",
        action=f"a{k}" if valid else None,
        valid=valid,
        reward=reward,
        terminated=False,
        truncated=False,
    )


def concat_sequence(prompt: list[int], turns: list[tuple[list[int], list[int]]], seed: int = 0) -> TokenSequence:
    """prompt, then per step: generated ids (trainable, step k), observation ids (masked)."""
    g = torch.Generator().manual_seed(seed)
    ids, mask, logp, sidx, amask = list(prompt), [0] * len(prompt), [0.0] * len(prompt), [-1] * len(prompt), []
    amask = [0] * len(prompt)
    for k, (gen, obs) in enumerate(turns):
        ids += gen
        mask += [1] * len(gen)
        logp += (-torch.rand(len(gen), generator=g) * 3).tolist()
        sidx += [k] * len(gen)
        amask += [0] * (len(gen) - 1) + [1]  # last generated token is the action
        ids += obs
        mask += [0] * len(obs)
        logp += [0.0] * len(obs)
        sidx += [-1] * len(obs)
        amask += [0] * len(obs)
    return TokenSequence(ids=ids, loss_mask=mask, logprobs=logp, step_index=sidx, action_mask=amask)


def random_trajectories(num_groups: int, group_size: int, *, seed: int = 0, max_len: int = 24) -> list[Trajectory]:
    """Concat-layout trajectories with random ids, random lengths, 0/1 outcomes."""
    g = torch.Generator().manual_seed(seed)
    trajs = []
    for grp in range(num_groups):
        for i in range(group_size):
            n_steps = int(torch.randint(1, 3, (1,), generator=g))
            prompt = torch.randint(1, VOCAB, (int(torch.randint(2, 6, (1,), generator=g)),), generator=g).tolist()
            turns = []
            for _ in range(n_steps):
                gen = torch.randint(1, VOCAB, (int(torch.randint(2, 6, (1,), generator=g)),), generator=g).tolist()
                obs = torch.randint(1, VOCAB, (int(torch.randint(1, 4, (1,), generator=g)),), generator=g).tolist()
                turns.append((gen, obs))
            seq = concat_sequence(prompt, turns, seed=seed * 1000 + grp * 10 + i)
            won = bool(torch.rand(1, generator=g) < 0.5)
            trajs.append(
                Trajectory(
                    env_id="test/Fake-v0",
                    task_id=f"t{grp}",
                    subset="s",
                    group_id=f"g{grp}",
                    steps=[step(k) for k in range(n_steps)],
                    outcome=float(won),
                    success=won,
                    truncated=False,
                    sequences=[seq],
                )
            )
    return trajs
