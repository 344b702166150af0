"""Checkpoint step folders are Hugging Face model folders; export folds LoRA in (issue 18 item 1)."""

import json

import pytest
import torch
from safetensors import safe_open
from stepgym.trainers.export import export_pretrained
from stepgym.trainers.runner import load_checkpoint_model, run_training
from trainer_helpers import small_run_config
from transformers import AutoModelForCausalLM, AutoTokenizer

PROMPT = [{"role": "user", "content": "Guess the secret digit. Answer with <action>guess N</action>."}]


def _train_one_step(tmp_path, name, **overrides):
    """A 1-step run of the tiny model; returns the result and the trainer's own (trained) module."""
    seen = {}

    def wrap(fn):
        def rollout(model, task_ids, seed):
            seen["model"] = model  # the module the loop trains (peft-wrapped under LoRA), updated in place
            return fn(model, task_ids, seed)

        return rollout

    cfg = small_run_config(
        tmp_path / name,
        env_id="thirdparty_env:thirdparty/GuessDigit-v0",
        env_kwargs={"max_turns": 2},
        total_steps=1,
        **overrides,
    )
    result = run_training(cfg, wrap_rollout=wrap)
    return result, seen["model"].eval()


def _greedy(model, tokenizer):
    ids = tokenizer.apply_chat_template(PROMPT, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    with torch.no_grad():
        out = model.generate(**ids, max_new_tokens=16, do_sample=False, pad_token_id=tokenizer.pad_token_id)
        logits = model(**ids).logits
    return out[0].tolist(), logits


def test_step_folder_loads_with_plain_from_pretrained_and_generates_like_the_trainer(tmp_path):
    result, trained = _train_one_step(tmp_path, "full", credit="steppo")  # StepPO: a value head to leave out
    step = result.checkpoint
    assert step.name == "step-00000001" and result.train_seconds > 0
    top = {p.name for p in step.iterdir()}
    assert {"config.json", "generation_config.json", "model.safetensors", "tokenizer.json", "training_state"} <= top
    assert json.loads((step / "config.json").read_text())["model_type"] == "qwen3"
    with safe_open(str(step / "model.safetensors"), framework="pt") as f:
        keys = set(f.keys())
    assert "model.embed_tokens.weight" in keys and "lm_head.weight" not in keys  # tied: stored once, like HF
    hf = AutoModelForCausalLM.from_pretrained(step).eval()
    tok = AutoTokenizer.from_pretrained(step)
    assert not any(n.startswith("value_head") for n, _ in hf.named_parameters())
    ids, logits = _greedy(hf, tok)
    ref_ids, ref_logits = _greedy(trained, tok)
    assert ids == ref_ids and len(ids) > len(tok.apply_chat_template(PROMPT, add_generation_prompt=True))
    assert torch.allclose(logits, ref_logits, atol=1e-5)
    # the stepgym route still gives the trained module itself, value head included
    model, _, cfg = load_checkpoint_model(result.output_dir)
    assert cfg.credit == "steppo" and model.value_head is not None
    ref = trained.state_dict()
    for k, v in model.state_dict().items():
        assert torch.equal(v, ref[k]), k


def test_export_of_a_lora_run_loads_with_from_pretrained_and_generates_like_the_trainer(tmp_path):
    # StepPO: its critic loss moves the adapters even when every reward of a group is equal (tiny random model)
    lora = {"enabled": True, "rank": 4, "alpha": 8.0}
    result, trained = _train_one_step(tmp_path, "lora", credit="steppo", lora=lora)
    assert any("lora_B" in n and float(p.detach().abs().max()) > 0 for n, p in trained.named_parameters())
    out = export_pretrained(result.output_dir, tmp_path / "export")
    assert "training_state" not in {p.name for p in out.iterdir()}
    hf = AutoModelForCausalLM.from_pretrained(out).eval()
    assert not any("lora" in n or "value_head" in n for n, _ in hf.named_parameters())
    tok = AutoTokenizer.from_pretrained(out)
    ids, logits = _greedy(hf, tok)
    ref_ids, ref_logits = _greedy(trained, tok)
    assert ids == ref_ids
    assert torch.allclose(logits, ref_logits, atol=1e-5)  # merged W + s*B@A vs the adapter forward: rounding only
    with pytest.raises(FileExistsError, match="is not empty"):
        export_pretrained(result.checkpoint, out)
