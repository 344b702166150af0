"""The recipe of issue 16: demonstrations and their keep-filter, SFT on them, the resumable stages, the report.

Everything runs the tiny random-init model (``load_model("tiny")``) on the real Search-QA data.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

pytest.importorskip("torch")
pytest.importorskip("pyserini")

from stepgym.agents.demos import (  # noqa: E402
    Demonstrator,
    get_demonstrator,
    register_demonstrator,
    searchqa_supported,
)
from stepgym.agents.rollout import rollout_metrics  # noqa: E402
from stepgym.envs.records import StepRecord, Trajectory  # noqa: E402
from stepgym.trainers import experiment as X  # noqa: E402
from stepgym.trainers import report as R  # noqa: E402

QA = "stepgym/SearchQA-v0"
# bm25s (pure Python): no JVM in the pytest process; Lucene BM25 itself is tested in test_searchqa_real.py
QA_TRAIN = {"split": "train", "retriever": "bm25s", "max_turns": 2, "topk": 2}
INFO = '<information>Doc 1(Title: "Paris") Paris is the capital and largest city of France.</information>'


def _qa_traj(answer: str, *, success: bool, info: str = INFO, group: str = "g", outcome: float | None = None):
    steps = [
        StepRecord(index=0, observation="Question: capital of france?", action_text="<search>capital</search>",
                   action="capital", valid=True, reward=0.0, terminated=False, truncated=False),
        StepRecord(index=1, observation=info, action_text=f"<answer>{answer}</answer>", action=answer, valid=True,
                   reward=float(success), terminated=True, truncated=False),
    ]  # fmt: skip
    score = float(success) if outcome is None else outcome
    return Trajectory(env_id=QA, task_id="nq/x", subset="nq", group_id=group, steps=steps, outcome=score,
                      success=success, truncated=False)  # fmt: skip


def _train_questions(n: int) -> list[str]:
    from stepgym.trainers.evaluate import task_subsets

    return list(task_subsets(QA, {**QA_TRAIN, "subset": "nq"})["nq"])[:n]


# =========================================================================== demonstrations
def test_searchqa_filter_keeps_only_answers_the_passages_contain():
    assert searchqa_supported(_qa_traj("Paris", success=True))
    assert searchqa_supported(_qa_traj("the paris", success=True))  # SQuAD normalisation: article and case
    # right (the gold) but not in what was retrieved: a guess, dropped
    assert not searchqa_supported(_qa_traj("Lyon", success=True))
    # whole words only: "Par" occurs inside "Paris" but is not supported
    assert not searchqa_supported(_qa_traj("Par", success=True))
    # supported but wrong (not the gold): dropped
    assert not searchqa_supported(_qa_traj("Paris", success=False))
    # no search at all: nothing retrieved supports the answer
    assert not searchqa_supported(_qa_traj("Paris", success=True, info="Invalid action: ..."))


def test_registry_did_you_mean_and_no_silent_overwrite():
    d = get_demonstrator(QA)
    with pytest.raises(KeyError, match=r"no demonstrator for env 'stepgym/SearchQA-v1'; did you mean 'stepgym/Sear"):
        get_demonstrator("stepgym/SearchQA-v1")
    with pytest.raises(ValueError, match="already has a demonstrator; pass overwrite=True"):
        register_demonstrator(QA, Demonstrator(make_agent=d.make_agent, keep=d.keep))
    assert register_demonstrator(QA, d, overwrite=True) is d


def test_sft_on_an_env_without_demonstrator_fails_before_the_model_loads():
    exp = X.ExperimentConfig(env="sandbox", model="tiny", overrides={"sft": {"enabled": True}})
    with pytest.raises(X.ExperimentError, match=r"no demonstrator for env 'stepgym/Sandbox-One-v0'; registered: "):
        X.run_experiment(exp, progress=False)


def test_searchqa_demonstrations_on_train_questions_are_filtered_by_retrieval(tmp_path):
    from stepgym.agents.models import build_tiny_tokenizer
    from stepgym.envs.searchqa.metrics import normalize_answer
    from stepgym.trainers.sft import collect_demonstrations

    d = get_demonstrator(QA)
    tok = build_tiny_tokenizer()
    tasks = _train_questions(8)
    demos = collect_demonstrations(QA, d.make_agent, tok, tasks, env_kwargs=QA_TRAIN, layout="concat", max_turns=2,
                                   stop=("</search>", "</answer>"), max_new_tokens=512)  # fmt: skip
    assert len(demos) == 8 and all(t.success for t in demos)  # the agent always answers a gold alias
    kept = [t for t in demos if d.keep(t)]
    assert 0 < len(kept) < 8  # top-2 BM25 passages hold the answer for some NQ questions, not all
    for t in demos:
        supported = normalize_answer(t.steps[-1].action) in normalize_answer(t.steps[-1].observation)
        assert d.keep(t) == supported
        assert t.steps[0].action_text.startswith("<search>") and t.steps[-1].action_text.startswith("<answer>")


# =========================================================================== SFT on demonstrations
def test_sft_on_demos_lowers_the_loss_and_makes_greedy_actions_parse():
    import torch
    from stepgym.agents.models import load_model
    from stepgym.trainers.runner import evaluate_model
    from stepgym.trainers.sft import collect_demonstrations, sft_train

    torch.manual_seed(0)
    model, tok = load_model("tiny", seed=0)
    d = get_demonstrator(QA)
    one = {**QA_TRAIN, "topk": 1}  # short rows: one passage
    train = _train_questions(2)
    demos = collect_demonstrations(QA, d.make_agent, tok, train, env_kwargs=one, layout="concat", max_turns=2,
                                   stop=("</search>", "</answer>"), max_new_tokens=64, num_envs=2)  # fmt: skip
    cfg = X.build_config({"model": "tiny", "env_id": QA, "env_kwargs": one, "layout": "concat", "max_turns": 2,
                          "sampling": {"max_new_tokens": 64}, "num_envs": 2})  # fmt: skip
    tasks = {"nq": train}  # the tasks it was trained on: this checks the format is learnt, not generalisation

    def invalid_share() -> float:
        res, _ = evaluate_model(cfg, model, tok, tasks, temperature=0.0)
        return res["nq"].invalid_rate

    before = invalid_share()
    losses = sft_train(model, demos, epochs=30, lr=3e-3, batch_size=2, seed=0, pad_token_id=tok.pad_token_id)
    after = invalid_share()
    # random init writes no tags (every step invalid); after SFT it writes <search>...</search> at least
    assert before == 1.0
    assert after <= 0.5, (before, after)
    assert losses[-1] < 0.5 * losses[0], losses[::10]


# =========================================================================== the recipe end to end
def _recipe_exp(out: Path) -> X.ExperimentConfig:
    return X.ExperimentConfig(
        env="searchqa",
        model="tiny",
        out=str(out),
        eval_tasks=1,
        overrides={
            "total_steps": 1,
            "group_size": 2,
            "sampling": {"max_new_tokens": 48},
            "sft": {"enabled": True, "demo_tasks": 8, "epochs": 1, "batch_size": 4, "lr": 1e-3},
            "env_kwargs": {"retriever": "bm25s"},  # no JVM in the pytest process (see QA_TRAIN)
        },
    )


def test_recipe_runs_every_stage_writes_the_report_and_a_rerun_skips_them(tmp_path):
    out = tmp_path / "qa"
    first = X.run_experiment(_recipe_exp(out), progress=False)
    assert first.status == "complete"
    seed = out / "seed0"
    for stage in ("base", "sft", "sft_eval", "rl", "final"):
        assert (seed / "recipe" / f"{stage}.json").is_file(), stage
    assert (seed / "recipe" / "sft-model" / "config.json").is_file()
    # the table: before / after SFT / after training per subset, the average last, and the demo counts
    table = (out / "table.md").read_text()
    assert "| subset | before training EM % | after SFT EM % | after training EM % | n |" in table
    for sub in ("nq", "bamboogle", "**avg**"):
        assert f"| {sub} | " in table
    sft = json.loads((seed / "recipe" / "sft.json").read_text())["result"]
    assert f"kept {sft['kept']} of 8 demonstrations" in table and 0 < sft["kept"] <= 8
    assert sft["optimizer_steps"] == -(-sft["rows"] // 4)  # ceil(rows / batch 4), one epoch
    # sample episodes: one file per subset and stage, each showing what the model wrote
    for stage in ("base", "sft_eval", "final"):
        nq = seed / "samples" / stage / "test-greedy" / "nq.md"
        assert nq.is_file() and "**model, step 0**" in nq.read_text()
    assert (out / "eval_curve.png").stat().st_size > 1000 and (out / "curves.png").is_file()
    res = json.loads((out / "results.json").read_text())
    stages = res["recipe"]["stages"]["greedy"]
    assert list(stages) == ["before training", "after SFT", "after training"]
    assert stages["after training"]["test"] == res["results"]["greedy"]["test"]  # the final column is the result
    assert set(res["recipe"]["cost"]["0"]) == {"base", "sft", "sft_eval", "rl", "final"}
    assert all(v["peak_rss_bytes"] and v["peak_rss_bytes"] > 0 for v in res["recipe"]["cost"]["0"].values())
    # per-question outcomes of each stage, for paired CIs
    assert len(res["recipe"]["outcomes"]["0"]["final"]["greedy"]["test"]) == 7
    metrics = R.read_metrics(seed / "metrics.jsonl")
    assert {"rollout/all_equal_groups", "rollout/response_tokens", "rollout/invalid_action_rate"} <= set(metrics[0])

    # rerun: every stage is skipped (files untouched), the same numbers come back
    stamps = {p.name: p.stat().st_mtime_ns for p in (seed / "recipe").glob("*.json") if p.name != "rl.json"}
    again = X.run_experiment(_recipe_exp(out), progress=False)
    assert {p.name: p.stat().st_mtime_ns for p in (seed / "recipe").glob("*.json") if p.name != "rl.json"} == stamps
    assert again.summary["results"] == first.summary["results"]
    assert all(v["skipped"] for v in again.summary["recipe"]["cost"]["0"].values())


def test_recipe_stage_with_other_settings_is_recomputed(tmp_path):
    import logging

    from stepgym.trainers.recipe import _Stages

    # a handler on the module's own logger: an earlier in-process CLI run may have set the stepgym logger not to
    # propagate to the root (where caplog listens), which made this check fail in the full suite only
    records: list[logging.LogRecord] = []
    handler = logging.Handler(logging.INFO)
    handler.emit = records.append  # type: ignore[method-assign]
    log = logging.getLogger("stepgym.trainers.recipe")
    log.addHandler(handler)
    level = log.level
    log.setLevel(logging.INFO)
    try:
        _check_stages_recompute(_Stages(tmp_path))
    finally:
        log.removeHandler(handler)
        log.setLevel(level)
    assert any("made with other settings" in r.getMessage() for r in records)


def _check_stages_recompute(stages) -> None:
    calls = []
    first = stages.run("base", {"a": 1}, lambda: calls.append(1) or {"x": 1})
    again = stages.run("base", {"a": 1}, lambda: calls.append(2) or {"x": 2})
    assert calls == [1] and first["result"] == again["result"] == {"x": 1} and again["skipped"]
    other = stages.run("base", {"a": 2}, lambda: calls.append(3) or {"x": 3})
    assert calls == [1, 3] and other["result"] == {"x": 3}


# =========================================================================== report pieces
def test_rollout_metrics_all_equal_groups_and_response_tokens():
    # groups g1 = (1, 0): mixed; g2 = (0, 0): all equal; g3 = one member: not counted -> 1 of 2 groups
    trajs = [_qa_traj("Paris", success=True, group="g1"), _qa_traj("Lyon", success=False, group="g1"),
             _qa_traj("Lyon", success=False, group="g2"), _qa_traj("Lyon", success=False, group="g2"),
             _qa_traj("Paris", success=True, group="g3")]  # fmt: skip
    m = rollout_metrics(trajs)
    assert m["rollout/all_equal_groups"] == 0.5
    assert m["rollout/response_tokens"] == 0.0  # hand-made records carry no token rows


def test_paired_bootstrap_ci_numbers():
    # a constant difference: every resample has the same mean, so the CI is that point
    assert R.paired_bootstrap_ci([1.0, 1.0, 0.0], [0.0, 0.0, -1.0]) == (1.0, 1.0, 1.0)
    # d = (1, 0, 0, 0) x 25: mean 0.25; the resampled means are binomial(100, .25)/100: sd sqrt(.25*.75/100) = .043,
    # so the 95% CI is about .25 +- 1.96 * .043 = (.165, .335)
    mean, lo, hi = R.paired_bootstrap_ci([1.0, 0.0, 0.0, 0.0] * 25, [0.0] * 100, n_boot=4000, seed=1)
    assert mean == 0.25 and 0.15 < lo < 0.18 and 0.32 < hi < 0.35
    with pytest.raises(ValueError, match="equal, non-zero lengths; got 2 and 1"):
        R.paired_bootstrap_ci([1.0, 0.0], [1.0])


def test_stage_table_and_rendered_episode():
    agg = {"nq": {"mean": 0.0, "std": 0.0, "n": 5, "seeds": 1}, "avg": {"mean": 0.0, "std": 0.0, "n": 5, "seeds": 1}}
    after = {"nq": {"mean": 0.4, "std": 0.0, "n": 5, "seeds": 1}, "avg": {"mean": 0.4, "std": 0.0, "n": 5, "seeds": 1}}
    table = R.stage_table({"before training": agg, "after training": after}, "EM")
    assert "| nq | 0.0 | 40.0 | 5 |" in table and "| subset | before training EM % | after training EM % | n |" in table
    text = R.render_episode(_qa_traj("Lyon", success=False), "EM")
    assert "### nq/x -- EM 0 (failure), 2 step(s)" in text and "<answer>Lyon</answer>" in text and INFO in text


@pytest.mark.skipif(os.environ.get("STEPGYM_DATA") is None, reason="needs the data folder")
def test_demonstrations_come_from_the_training_split_only():
    # the Search-QA train and test splits share no question, and the smoke preset's demos use env_kwargs (train)
    from stepgym.trainers import presets as P
    from stepgym.trainers.evaluate import task_subsets

    preset = P.get_preset("smoke", QA)
    assert preset.config["env_kwargs"]["split"] == "train" and preset.config["sft"]["enabled"]
    both = ["nq", "hotpotqa"]
    train = {t for v in task_subsets(QA, {**QA_TRAIN, "subset": both}).values() for t in v}
    test = {t for v in task_subsets(QA, {**QA_TRAIN, "split": "test", "subset": both}).values() for t in v}
    assert train and test and not train & test


def test_arm_comparison_pairs_the_same_questions_and_seeds():
    plan = {"test": {"nq": ["nq/1", "nq/2"], "popqa": ["popqa/1", "popqa/2"]}}

    def summary(sft: list[float], final: list[float]) -> dict:
        ids = ["nq/1", "nq/2", "popqa/1", "popqa/2"]
        per_seed = {
            "sft_eval": {"greedy": {"test": dict(zip(ids, sft, strict=True))}},
            "final": {"greedy": {"test": dict(zip(ids, final, strict=True))}},
        }
        return {"recipe": {"outcomes": {"0": per_seed}, "plan": plan}}

    # the same warm start in both arms; grpo gains nq/1 only, stepopsd gains nq/1 and popqa/1
    res = X.arm_comparison(
        {"grpo": summary([0, 0, 0, 1], [1, 0, 0, 1]), "stepopsd": summary([0, 0, 0, 1], [1, 0, 1, 1])}
    )
    rows = res["comparison"]
    assert rows["nq"]["grpo - SFT"]["diff"] == 0.5 and rows["popqa"]["grpo - SFT"]["diff"] == 0.0
    assert rows["popqa"]["grpo - SFT"]["lo"] == rows["popqa"]["grpo - SFT"]["hi"] == 0.0  # no change: a point CI
    assert rows["all"]["stepopsd - SFT"]["diff"] == 0.5 and rows["all"]["stepopsd - SFT"]["pairs"] == 4
    assert rows["all"]["stepopsd - grpo"]["diff"] == 0.25 and rows["nq"]["stepopsd - grpo"]["diff"] == 0.0
    table = X.comparison_table(res, "EM")
    assert "| nq | +50.0 [" in table and "| **all** | +25.0 [" in table


@pytest.mark.slow  # 33 s at load ~6 (two arms, each a recipe's RL and final evaluation)
def test_cpu_preset_arms_share_one_warm_start_and_compare_with_cis(tmp_path):
    out = tmp_path / "cpu"
    exp = X.ExperimentConfig(
        env="searchqa",
        preset="cpu",
        model="tiny",
        seeds=(0,),
        out=str(out),
        eval_tasks=1,
        overrides={
            "total_steps": 1,
            "group_size": 2,
            "tasks_per_step": 1,
            "eval": {"every": 0},
            "sft": {"demo_tasks": 6, "epochs": 1, "batch_size": 4},
        },
    )
    res = X.run_experiment(exp, progress=False)
    assert res.status == "complete" and res.summary["arms"] == ["grpo", "stepopsd"]
    # the stages before RL exist once, beside the arms; each arm has its own RL and final evaluation
    assert (out / "seed0" / "recipe" / "sft.json").is_file() and (out / "seed0" / "recipe" / "sft-model").is_dir()
    for arm in ("grpo", "stepopsd"):
        assert not (out / arm / "seed0" / "recipe" / "sft.json").exists()
        assert (out / arm / "seed0" / "recipe" / "final.json").is_file()
        cfg = json.loads((out / arm / "seed0" / "config.json").read_text())
        assert cfg["credit"] == arm and cfg["model"] == str((out / "seed0" / "recipe" / "sft-model").resolve())
    arms = {a: json.loads((out / a / "results.json").read_text())["recipe"] for a in ("grpo", "stepopsd")}
    assert arms["grpo"]["stages"]["greedy"]["after SFT"] == arms["stepopsd"]["stages"]["greedy"]["after SFT"]
    rows = res.summary["comparison"]
    assert set(rows) == {"nq", "triviaqa", "popqa", "hotpotqa", "2wikimultihopqa", "musique", "bamboogle", "all"}
    assert rows["all"]["grpo - SFT"]["pairs"] == 7 and "stepopsd - grpo" in rows["all"]
    assert "paired bootstrap 95% CIs" in (out / "comparison.md").read_text()


def test_sft_micro_batches_give_the_same_update():
    """Gradient accumulation over micro-batches re-weights each by its token share: the same loss and step."""
    import torch
    from stepgym.agents.models import load_model
    from stepgym.agents.sandbox_agents import NoisyExpert
    from stepgym.trainers.sft import collect_demonstrations, sft_train

    env, kw = "stepgym/Sandbox-One-v0", {"num_tasks": 2, "max_steps": 6}
    _, tok = load_model("tiny", seed=0)
    # per-step rows of different lengths, so the micro-batches hold different numbers of trained tokens
    demos = collect_demonstrations(env, lambda k: NoisyExpert(0.0, seed=k), tok, ["heat-train-0", "cool-train-1"],
                                   env_kwargs=kw, layout="per-step")  # fmt: skip
    rows = [s for d in demos for s in d.sequences]
    assert len(rows) > 5 and len({s.num_generated for s in rows}) > 1  # several steps of 5 rows, unequal rows
    runs = {}
    for micro in (None, 1, 3):
        model, _ = load_model("tiny", seed=0)
        losses = sft_train(model, demos, epochs=2, lr=1e-3, batch_size=5, seed=0, micro_batch_size=micro)
        runs[micro] = (losses, torch.cat([p.detach().flatten() for p in model.parameters()]))
    for micro in (1, 3):
        assert runs[micro][0] == pytest.approx(runs[None][0], rel=1e-5)
        # Adam divides by sqrt(v): float summation-order noise on a tiny gradient moves a weight by ~1e-5
        torch.testing.assert_close(runs[micro][1], runs[None][1], rtol=1e-3, atol=1e-4)
    with pytest.raises(ValueError, match="micro_batch_size=0 must be >= 1"):
        sft_train(model, demos, micro_batch_size=0)
