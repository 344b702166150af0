"""Issue 17 item 2(c): the hindsight-SFT teacher of the credit sandbox (rows, arms, end to end)."""

import json
import sys
from pathlib import Path

import pytest
import torch
from stepgym.agents.sandbox_model import build_sandbox_tokenizer

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
import credit_sandbox as cs  # noqa: E402


@pytest.fixture(scope="module")
def demos():
    """NoisyExpert(2/3) episodes of two One tasks per subset, 8 each: successes and failed ones with a peer."""
    from stepgym.agents.sandbox_agents import NoisyExpert
    from stepgym.envs.sandbox import SUBSETS
    from stepgym.trainers.sft import collect_demonstrations

    tok = build_sandbox_tokenizer()
    trajs = collect_demonstrations(
        "stepgym/Sandbox-One-v0",
        lambda k: NoisyExpert(2 / 3, "alter", seed=k),
        tok,
        [f"{s}-train-{k}" for s in SUBSETS for k in range(2)],
        env_kwargs={"num_tasks": 2, "max_steps": 12},
        group_size=8,
        layout="concat",
        max_turns=12,
    )
    return tok, trajs


def test_hindsight_rows_are_the_rescoring_context_then_a_successful_trajectory(demos):
    from stepgym.distill.hindsight import build_hindsight_batch, render_hindsight
    from stepgym.trainers.sft import hindsight_sft_rows

    tok, trajs = demos
    ok = [t for t in trajs if t.success]
    failed_peer = [t for t in trajs if not t.success and any(o.success and o.group_id == t.group_id for o in trajs)]
    assert ok and failed_peer  # the fixture mixes outcomes
    rows = hindsight_sft_rows(trajs, tok, parts=("outcome", "peer"), placement="prefix")
    assert rows.num_rows == len(ok) + len(failed_peer)  # one concat row per shown trajectory
    texts = build_hindsight_batch(trajs, ("outcome", "peer"))
    b = 0
    for t, text in zip(trajs, texts):
        shown = t if t.success else next((o for o in trajs if o.group_id == t.group_id and o.success), None)
        if shown is None:
            continue
        assert ("peer_correct_trajectory" in text) == (not t.success)  # a failed one reads its peer
        x = shown.sequences[0]
        h = render_hindsight(text, tok)
        s0 = next(p for p, k in enumerate(x.step_index) if k >= 0)  # the prefix placement: before the first step
        n = len(x.ids) + len(h)
        assert rows.input_ids[b, :n].tolist() == x.ids[:s0] + h + x.ids[s0:]
        assert rows.attention_mask[b].sum() == n
        # the loss: exactly the shown (successful) trajectory's agent tokens, none in the prompt or the block
        loss = rows.loss_mask[b]
        assert loss[: s0 + len(h)].sum() == 0 and loss.sum() == sum(x.loss_mask) > 0
        assert rows.input_ids[b][loss > 0].tolist() == [i for i, m in zip(x.ids, x.loss_mask) if m]
        b += 1
    assert b == rows.num_rows
    with pytest.raises(ValueError, match="one hindsight block per row"):
        hindsight_sft_rows(trajs, tok, placement="inline")


def test_sft_on_hindsight_rows_lowers_their_loss(demos):
    from stepgym.agents.models import load_model
    from stepgym.agents.sandbox_model import sandbox_model_dir
    from stepgym.trainers.sft import hindsight_sft_rows, sft_loss, sft_train

    tok, trajs = demos
    rows = hindsight_sft_rows(trajs[:16], tok)
    model, _ = load_model(str(sandbox_model_dir(0)))
    with torch.no_grad():
        before = sft_loss(model, rows.input_ids, rows.attention_mask, rows.loss_mask).item()
    losses = sft_train(model, rows, epochs=3, lr=3e-3, batch_size=8)
    with torch.no_grad():
        after = sft_loss(model, rows.input_ids, rows.attention_mask, rows.loss_mask).item()
    assert len(losses) == 3 * -(-rows.num_rows // 8) and after < before - 0.5, (before, after)


def test_hsft_arms_point_at_their_warm_starts_teacher(tmp_path):
    args = cs.parse_args(["--out", str(tmp_path)])
    for w in (0, 1):
        model_dir = tmp_path / f"warm_start{w}"
        cfg = cs.train_config(model_dir, "One", "stepopsd_hsft", 0, args, tmp_path / "run")
        assert cfg.teacher.model == str(tmp_path / f"hindsight_teacher{w}")
        assert cfg.credit_kwargs == cs.STRONG and cfg.teacher.placement == args.teacher_placement
        default = cs.train_config(model_dir, "One", "stepopsd_hsft_default", 0, args, tmp_path / "run")
        assert default.teacher.model == cfg.teacher.model and default.credit_kwargs == {}
        for arm in ("grpo", "stepopsd", "stepopsd_lam1_clip08"):  # every other arm keeps the policy's snapshot
            assert cs.train_config(model_dir, "One", arm, 0, args, tmp_path / "run").teacher.model is None
    with pytest.raises(SystemExit):
        cs.parse_args(["--hsft-only", "--report-only"])
    with pytest.raises(ValueError, match="warm_start"):
        cs.teacher_dir_of(tmp_path / "elsewhere")
    # not in the default comparison; a tier of their own after issue 17's arms, before issue 22's
    assert not set(cs.ISSUE17C_ARMS) & set(cs.DEFAULT_ARMS)
    order = cs.run_order(["One"], ["craft", "stepopsd_hsft", "grpo"], [0], [0])
    assert [a for _, a, _, _ in order] == ["grpo", "stepopsd_hsft", "craft"]


@pytest.mark.slow
def test_quick_teacher_diagnostic_and_one_hsft_run(tmp_path):
    """--quick sizes: warm start, its hindsight teacher, the diagnostic, and stepopsd_hsft for one pair."""
    args = cs.parse_args(["--quick", "--out", str(tmp_path)])
    torch.set_num_threads(1)
    warm = cs.warm_start(tmp_path, args, 0)
    teacher = cs.hindsight_teacher(tmp_path, args, 0)
    info = json.loads((teacher / "hsft.json").read_text())
    assert teacher == tmp_path / "hindsight_teacher0" and info["rows"] > 0
    assert info["settings"]["hsft_epochs"] == 2 and info["losses"][-1] < info["losses"][0]
    assert cs.hindsight_teacher(tmp_path, args, 0) == teacher  # cached
    res = cs.teacher_diagnostic(tmp_path, args, 0)
    assert (teacher / "diagnostic.json").is_file() and set(res["conditions"]) == set(cs.HSFT_CONDITIONS)
    for row in res["conditions"].values():
        assert row["failed"]["n"] + row["successful"]["n"] > 0
    # the teacher differs from the student: its gap on neutral tokens is not 0 (a self-teacher without hindsight's is)
    ctl = res["conditions"]["hindsight-SFT teacher, no hindsight (control)"]
    assert abs(ctl["successful"]["neu"][0]) > 1e-4
    hist = cs.run_one(warm, "One", "stepopsd_hsft", 0, 0, args, tmp_path)
    assert len(hist) == args.steps and "eval/avg/success" in hist[-1]
    cs.main(["--quick", "--out", str(tmp_path), "--hsft-only"])  # the cached teacher and diagnostic, no RL run
    assert not (tmp_path / "One" / "w0" / "grpo").exists()
    changed = cs.parse_args(["--quick", "--out", str(tmp_path), "--hsft-lr", "0.01"])
    with pytest.raises(SystemExit, match="hsft_lr"):
        cs.hindsight_teacher(tmp_path, changed, 0)
