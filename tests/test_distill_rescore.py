"""Teacher rescoring: the efficient path (shared forward + one packed 4D-masked pass) equals the naive
per-step forward to 1e-5 in fp32, and the naive path equals transformers' own logits."""

import math

import pytest
import torch
from stepgym.distill.rescore import TeacherSnapshot, teacher_logprobs, teacher_logprobs_naive
from stepgym.envs.records import TokenSequence
from stepgym.trainers.update import compute_logprobs

transformers = pytest.importorskip("transformers")

V = 97


def _model(attn: str, seed: int = 0):
    torch.manual_seed(seed)
    cfg = transformers.Qwen3Config(
        vocab_size=V,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        max_position_embeddings=512,
        attn_implementation=attn,
    )
    return transformers.Qwen3ForCausalLM(cfg).eval()


def _row(g: torch.Generator, n_steps: int, prompt: int = 5, obs: int = 3, first_step: int = 0) -> TokenSequence:
    """Concat layout: prompt, then per step k: (4+k) generated tokens (last 2 = action), `obs` observation tokens."""
    ids, lm, si, am = [], [], [], []

    def add(n, loss, step, action):
        ids.extend(torch.randint(0, V, (n,), generator=g).tolist())
        lm.extend([loss] * n)
        si.extend([step] * n)
        am.extend(action)

    add(prompt, 0, -1, [0] * prompt)
    for k in range(first_step, first_step + n_steps):
        n = 4 + k
        add(n, 1, k, [0] * (n - 2) + [1, 1])
        add(obs, 0, -1, [0] * obs)
    return TokenSequence(ids=ids, loss_mask=lm, logprobs=[0.0] * len(ids), step_index=si, action_mask=am)


@pytest.fixture(scope="module")
def rows():
    g = torch.Generator().manual_seed(1)
    # two concat rows (3 and 4 steps), a per-step row (step 2 only, with its own prompt), one unscored row
    return [_row(g, 3), _row(g, 4, prompt=2), _row(g, 1, prompt=9, first_step=2), _row(g, 2)]


HINDSIGHT = [[1, 2, 3], [5, 6], [7, 8, 9, 10], None]


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
@pytest.mark.parametrize("target", ["step", "action"])
@pytest.mark.parametrize("placement", ["inline", "prefix", "prompt"])
def test_efficient_equals_naive(rows, attn, target, placement):
    m = _model(attn)
    fast, fm = teacher_logprobs(m, rows, HINDSIGHT, target=target, placement=placement, temperature=0.7)
    slow, sm = teacher_logprobs_naive(m, rows, HINDSIGHT, target=target, placement=placement, temperature=0.7)
    torch.testing.assert_close(fm, sm, atol=0, rtol=0)
    torch.testing.assert_close(fast, slow, atol=1e-5, rtol=0)
    # the target counts: step target = all generated tokens (4+k per step): rows 0: 4+5+6, 1: 4+5+6+7, 2: 6, 3: 4+5
    # action target = 2 per step: 3, 4, 1, 2 steps
    expected = [15, 22, 6, 9] if target == "step" else [6, 8, 2, 4]
    assert fm.sum(1).tolist() == expected
    assert (fast[fm == 0] == 0).all()
    # micro-batching gives the same numbers
    chunked, _ = teacher_logprobs(m, rows, HINDSIGHT, target=target, placement=placement, temperature=0.7, batch_size=2)
    torch.testing.assert_close(chunked, fast, atol=1e-5, rtol=0)


def test_naive_matches_transformers_logits(rows):
    # teacher context of step 1 of row 0 (inline): x[:s_1] + H + x[s_1:e_1]; its logits straight from the HF model
    m = _model("eager")
    row, h = rows[0], HINDSIGHT[0]
    s1 = row.step_index.index(1)
    e1 = len(row.step_index) - row.step_index[::-1].index(1)
    seq = row.ids[:s1] + h + row.ids[s1:e1]
    with torch.no_grad():
        lp = torch.log_softmax(m(torch.tensor([seq])).logits[0] / 0.7, -1)  # [n, V]
    want = [lp[len(h) + t - 1, row.ids[t]].item() for t in range(s1, e1)]
    got, _ = teacher_logprobs(m, rows, HINDSIGHT, temperature=0.7)
    torch.testing.assert_close(got[0, s1:e1], torch.tensor(want), atol=1e-5, rtol=0)


def test_no_hindsight_means_teacher_equals_student(rows):
    m = _model("sdpa")
    with torch.no_grad():
        L = max(len(r) for r in rows)
        ids = torch.tensor([list(r.ids) + [0] * (L - len(r)) for r in rows])
        attn = torch.tensor([[1] * len(r) + [0] * (L - len(r)) for r in rows])
        student = compute_logprobs(m, ids, attn, micro_batch_size=len(rows))
        full = torch.log_softmax(m(torch.tensor([rows[0].ids])).logits[0], -1)
    teacher, tm = teacher_logprobs(m, rows, [None] * len(rows))
    torch.testing.assert_close(teacher, student * tm, atol=1e-6, rtol=0)
    # student log-prob of token t = log_softmax(logits[t-1])[x_t]; position 0 is 0
    want = torch.tensor([0.0] + [full[t - 1, rows[0].ids[t]].item() for t in range(1, len(rows[0]))])
    torch.testing.assert_close(student[0, : len(rows[0])], want, atol=1e-5, rtol=0)
    # and hindsight changes what the teacher says (the inline block is really seen)
    hinted, _ = teacher_logprobs(m, rows, HINDSIGHT)
    assert (hinted[0] - teacher[0]).abs().max() > 1e-3


def test_inline_differs_from_prefix_after_the_first_step(rows):
    # prefix and inline contexts coincide for the first step and differ afterwards
    m = _model("sdpa")
    inline, tm = teacher_logprobs(m, rows[:1], HINDSIGHT[:1])
    prefix, _ = teacher_logprobs(m, rows[:1], HINDSIGHT[:1], placement="prefix")
    step = torch.tensor(rows[0].step_index)
    torch.testing.assert_close(inline[0, step == 0], prefix[0, step == 0], atol=1e-5, rtol=0)
    assert (inline[0, step == 2] - prefix[0, step == 2]).abs().max() > 1e-4


def test_prompt_placement_is_hindsight_before_the_whole_row(rows):
    # SDAR (ALGORITHMS.md §6): the privileged context is prepended to the prompt, so the teacher
    # log-prob of target t is log p(x[t] | H, x[:t]): one plain forward over H + x, read at t + |H| - 1
    m = _model("sdpa")
    row, h = rows[0], HINDSIGHT[0]
    got, tm = teacher_logprobs(m, rows[:1], [h], placement="prompt")
    with torch.no_grad():
        logits = m(input_ids=torch.tensor([list(h) + list(row.ids)])).logits[0].float()  # [|H|+L, V]
    lp = torch.log_softmax(logits, -1)
    targets = tm[0].nonzero().flatten().tolist()
    want = torch.tensor([lp[t + len(h) - 1, row.ids[t]].item() for t in targets])
    torch.testing.assert_close(got[0, targets], want, atol=1e-5, rtol=0)
    prefix, _ = teacher_logprobs(m, rows[:1], [h], placement="prefix")
    assert (got[0, targets] - prefix[0, targets]).abs().max() > 1e-4  # a different context, not a renamed prefix


def test_errors_say_how_to_fix(rows):
    m = _model("sdpa")
    with pytest.raises(ValueError, match="hindsight_ids has 1 entries but there are 4 rows"):
        teacher_logprobs(m, rows, [None])
    with pytest.raises(ValueError, match="placement must be one of 'inline', 'prefix', 'prompt'"):
        teacher_logprobs(m, rows, HINDSIGHT, placement="middle")
    with pytest.raises(ValueError, match="temperature must be > 0"):
        teacher_logprobs(m, rows, HINDSIGHT, temperature=0)
    m.config._attn_implementation = "flash_attention_2"
    with pytest.raises(ValueError, match="attn_implementation='sdpa'"):
        teacher_logprobs(m, rows, HINDSIGHT)


def test_teacher_snapshot_refresh():
    policy = torch.nn.Linear(2, 1)
    snap = TeacherSnapshot(policy, refresh_every=10)
    t0 = snap.get(policy, 0)
    assert t0 is not policy and not any(p.requires_grad for p in t0.parameters())
    with torch.no_grad():
        policy.weight.add_(1.0)
    # steps 1..9 keep the stale copy; step 10 refreshes it
    assert snap.get(policy, 9) is t0 and not torch.equal(t0.weight, policy.weight)
    t10 = snap.get(policy, 10)  # refreshed in place (a sharded copy stays sharded)
    assert t10 is t0 is snap.model and torch.equal(t10.weight, policy.weight) and snap.taken_at == 10
    live = TeacherSnapshot(policy, refresh_every=0)
    assert live.get(policy, 3) is policy and live.taken_at == -1
    with pytest.raises(ValueError, match="refresh_every must be >= 0"):
        TeacherSnapshot(policy, refresh_every=-1)
    assert math.isfinite(float(t10.weight.sum()))
