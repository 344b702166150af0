"""Step segmentation (both layouts, both target spans) and the hindsight builders."""

import pytest
import torch
from stepgym.distill.hindsight import (
    build_hindsight,
    build_hindsight_batch,
    expert_plan_hindsight,
    gold_answer_hindsight,
    outcome_hindsight,
    peer_hindsight,
    render_hindsight,
)
from stepgym.distill.segment import StepSpan, step_ids, step_spans, target_mask, target_mask_from_rows
from stepgym.envs.records import StepRecord, TokenSequence, Trajectory


def _seq(step_index, loss, action):
    n = len(step_index)
    return TokenSequence(
        ids=list(range(n)), loss_mask=loss, logprobs=[0.0] * n, step_index=step_index, action_mask=action
    )


# concat layout: prompt(2) | step0: think, think, act | obs(1) | step1: think, act(unfinished: no action tokens)
CONCAT = _seq(
    [-1, -1, 0, 0, 0, -1, 1, 1],
    [0, 0, 1, 1, 1, 0, 1, 1],
    [0, 0, 0, 0, 1, 0, 0, 0],
)


def test_step_spans_concat_layout():
    assert step_spans(CONCAT, "step") == [StepSpan(0, 2, 5, (2, 3, 4)), StepSpan(1, 6, 8, (6, 7))]
    # action target: step 0 keeps its one action token (the block still starts at the step's first token);
    # step 1 has no action tokens -> absent
    assert step_spans(CONCAT, "action") == [StepSpan(0, 2, 5, (4,))]
    with pytest.raises(ValueError, match="target must be 'step' or 'action'"):
        step_spans(CONCAT, "tokens")


def test_step_spans_per_step_layout():
    # per-step row: prompt holding the history, then the completion of step 3 only
    row = _seq([-1, -1, -1, 3, 3], [0, 0, 0, 1, 1], [0, 0, 0, 0, 1])
    assert step_spans(row) == [StepSpan(3, 3, 5, (3, 4))]
    assert step_spans(row, "action") == [StepSpan(3, 3, 5, (4,))]


def test_target_masks_agree_tensor_and_rows():
    row2 = _seq([-1, 2, 2], [0, 1, 1], [0, 1, 1])
    rows = [CONCAT, row2]
    for target in ("step", "action"):
        m = target_mask_from_rows(rows, target)
        si = torch.tensor([CONCAT.step_index, row2.step_index + [-1] * 5])
        lm = torch.tensor([CONCAT.loss_mask, row2.loss_mask + [0] * 5])
        am = torch.tensor([CONCAT.action_mask, row2.action_mask + [0] * 5])
        torch.testing.assert_close(m, target_mask(si, lm, am, target))
    assert target_mask_from_rows(rows, "action").sum().item() == 1 + 2


def test_step_ids_number_traj_step_pairs():
    # rows 0,1 are traj 0 (per-step layout, steps 0 and 1), row 2 is traj 1 (concat, steps 0 and 1)
    si = torch.tensor([[-1, 0, 0], [-1, 1, 1], [0, -1, 1]])
    mask = (si >= 0).float()
    sid, st, sk = step_ids(torch.tensor([0, 0, 1]), si, mask)
    assert sid.tolist() == [[-1, 0, 0], [-1, 1, 1], [2, -1, 3]]
    assert st.tolist() == [0, 0, 1, 1] and sk.tolist() == [0, 1, 0, 1]


def _traj(gid, success, actions, info=None):
    steps = [
        StepRecord(
            index=i,
            observation=f"obs{i}",
            action_text=a,
            action=a,
            valid=True,
            reward=0.0,
            terminated=False,
            truncated=False,
        )
        for i, a in enumerate(actions)
    ]
    return Trajectory(
        env_id="x",
        task_id="t",
        subset="s",
        group_id=gid,
        steps=steps,
        outcome=float(success),
        success=success,
        truncated=False,
        info=info or {},
    )


def test_hindsight_builders():
    fail = _traj(
        "g", False, ["a"], {"reset_info": {"golden_answers": ["Paris", "paris"], "expert_plan": ["go", "take"]}}
    )
    win1 = _traj("g", True, ["b1", "b2"])
    win2 = _traj("g", True, ["c"])
    other = _traj("h", False, ["d"])
    group = [other, fail, win1, win2]
    assert outcome_hindsight(fail) == "final_correctness: incorrect"
    assert outcome_hindsight(win1) == "final_correctness: correct"
    # first successful sibling of the same group, rendered as its steps
    assert peer_hindsight(fail, group) == (
        "peer_correct_trajectory:\nstep 1:\nobservation: obs0\naction: b1\nstep 2:\nobservation: obs1\naction: b2"
    )
    assert peer_hindsight(win2, group) is None  # successful: nothing to learn from a peer
    assert peer_hindsight(other, group) is None  # group h has no success (not mixed)
    assert gold_answer_hindsight(fail) == "gold_answer: Paris | paris"
    assert expert_plan_hindsight(fail) == "expert_plan:\n1. go\n2. take"
    assert gold_answer_hindsight(win1) is None and expert_plan_hindsight(win1) is None
    assert (
        build_hindsight(fail, group, ("outcome", "gold")) == "final_correctness: incorrect\ngold_answer: Paris | paris"
    )
    assert build_hindsight(win1, group, ("peer", "gold")) is None
    assert build_hindsight_batch(group, ("outcome",))[2] == "final_correctness: correct"
    with pytest.raises(KeyError, match="unknown hindsight part 'gold_answer'"):
        build_hindsight(fail, group, ("gold_answer",))


def test_render_hindsight_uses_the_tokenizer():
    class CharTok:
        def encode(self, text, add_special_tokens=True):
            assert add_special_tokens is False
            return [ord(c) for c in text]

    ids = render_hindsight("ok", CharTok(), template="[{text}]")
    assert ids == [ord("["), ord("o"), ord("k"), ord("]")]
    assert render_hindsight(None, CharTok()) is None
