import pytest
from pydantic import ValidationError
from stepgym.envs.records import StepRecord, TokenSequence, Trajectory


def _seq(n=4):
    return TokenSequence(
        ids=list(range(n)),
        loss_mask=[0, 0, 1, 1][:n],
        logprobs=[0.0, 0.0, -0.5, -1.25][:n],
        step_index=[-1, -1, 0, 0][:n],
        action_mask=[0, 0, 0, 1][:n],
    )


def _traj():
    step = StepRecord(
        index=0,
        observation="You are in a room.",
        action_text="<action>look</action>",
        action="look",
        valid=True,
        reward=1.0,
        terminated=True,
        truncated=False,
        info={"won": True, "admissible_actions": ["look", "go to desk 1"], "score": 0.5},
    )
    return Trajectory(
        env_id="stepgym/X-v0",
        task_id="t1",
        subset="pick",
        group_id="g0",
        seed=3,
        steps=[step],
        outcome=1.0,
        success=True,
        truncated=False,
        sequences=[_seq()],
        info={"gen_seconds": 0.25},
    )


def test_json_round_trip_is_exact():
    t = _traj()
    again = Trajectory.model_validate_json(t.model_dump_json())
    assert again == t
    assert again.sequences[0].logprobs == [0.0, 0.0, -0.5, -1.25]
    assert again.steps[0].info["admissible_actions"] == ["look", "go to desk 1"]


@pytest.mark.parametrize("field", ["loss_mask", "logprobs", "step_index", "action_mask"])
def test_mismatched_lengths_name_both_lengths(field):
    kw = dict(ids=[1, 2], loss_mask=[0, 1], logprobs=[0.0, -1.0], step_index=[-1, 0], action_mask=[0, 1])
    kw[field] = kw[field][:1]
    with pytest.raises(ValidationError, match=rf"{field} has 1 entries but ids has 2"):
        TokenSequence(**kw)


def test_trainable_token_must_belong_to_a_step():
    with pytest.raises(ValidationError, match="token 1 is trainable .* step_index -1"):
        TokenSequence(ids=[1, 2], loss_mask=[0, 1], logprobs=[0, 0], step_index=[-1, -1], action_mask=[0, 0])


def test_records_are_frozen_and_forbid_extra():
    s = _seq()
    with pytest.raises(ValidationError):
        s.ids = [1]  # type: ignore[misc]
    with pytest.raises(ValidationError, match="extra"):
        TokenSequence(ids=[], loss_mask=[], logprobs=[], step_index=[], action_mask=[], foo=1)


def test_step_indices_must_be_consecutive_and_sequences_in_range():
    t = _traj()
    with pytest.raises(ValidationError, match=r"steps\[0\] has index 1"):
        Trajectory(**{**t.model_dump(), "steps": [t.steps[0].model_copy(update={"index": 1})]})
    bad = TokenSequence(ids=[1], loss_mask=[1], logprobs=[-1.0], step_index=[2], action_mask=[0])
    with pytest.raises(ValidationError, match="refers to step 2 but the trajectory has 1 steps"):
        Trajectory(**{**t.model_dump(), "sequences": [bad.model_dump()]})


def test_info_rejects_non_json_values():
    with pytest.raises(ValidationError):
        StepRecord(
            index=0,
            observation="",
            action_text="",
            action=None,
            valid=False,
            reward=0.0,
            terminated=False,
            truncated=False,
            info={"x": object()},
        )
