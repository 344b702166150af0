"""benchmarks/run.py: the CLI generated from TrainConfig, input validation, reports, and subprocess smoke runs."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))

import presets as P  # noqa: E402
import report as R  # noqa: E402
import run as cli  # noqa: E402
from stepgym.trainers.config import TrainConfig  # noqa: E402

SEARCHQA_SUBSETS = ["nq", "triviaqa", "popqa", "hotpotqa", "2wikimultihopqa", "musique", "bamboogle"]
ALFWORLD_SUBSETS = ["pick", "look", "clean", "heat", "cool", "pick_two"]


def _field_paths(model_cls, prefix=""):
    from pydantic import BaseModel

    out = []
    for name, f in model_cls.model_fields.items():
        if isinstance(f.annotation, type) and issubclass(f.annotation, BaseModel):
            out += _field_paths(f.annotation, prefix + name + ".")
        else:
            out.append(prefix + name)
    return out


# =========================================================================== CLI generation
def test_every_config_field_is_a_flag_with_its_default_once():
    parser = cli.build_parser()
    by_dest = {a.dest: a for a in parser._actions}
    paths = _field_paths(TrainConfig)
    for path in paths:
        if path in cli.RUN_LEVEL:  # model, env_id, seed, output_dir: --model, --env, --seeds, --out
            continue
        action = by_dest[f"cfg:{path}"]
        assert action.help.count("(default:") == 1, path
    # the defaults come from the field definitions, e.g. SamplingConfig.max_new_tokens = 512
    assert by_dest["cfg:sampling.max_new_tokens"].help.endswith("(default: 512)")
    assert by_dest["cfg:sampling.max_new_tokens"].option_strings == ["--sampling.max_new_tokens"]
    assert by_dest["cfg:optim.betas"].help.endswith("(default: 0.9 0.999)")
    assert by_dest["cfg:credit"].option_strings == ["--method", "--credit"]
    assert by_dest["cfg:total_steps"].option_strings == ["--steps", "--total_steps"]
    # no flag states its default twice, and the rendered help shows each once (argparse adds none of its own)
    assert all((a.help or "").count("(default:") <= 1 for a in parser._actions)
    text = " ".join(parser.format_help().split())
    assert text.count("(default:") == sum((a.help or "").count("(default:") for a in parser._actions)
    assert "--sampling.max_new_tokens INT Most tokens generated for one agent step. (default: 512)" in text


def test_overrides_nested_and_typed_and_merged_over_the_preset():
    args = cli.build_parser().parse_args(
        [
            "--sampling.top_p", "0.9",
            "--group_size", "3",
            "--subsets", "nq,popqa",
            "--env_kwargs", '{"topk": 5}',
            "--no-shuffle_rows",
            "--optim.max_grad_norm", "none",
            "--optim.betas", "0.8", "0.9",
            "--method", "grpo",
        ]
    )  # fmt: skip
    over = cli.config_overrides(args)
    assert over == {
        "sampling": {"top_p": 0.9},
        "group_size": 3,
        "eval": {"subsets": ["nq", "popqa"]},
        "env_kwargs": {"topk": 5},
        "shuffle_rows": False,
        "optim": {"max_grad_norm": None, "betas": [0.8, 0.9]},
        "credit": "grpo",
    }
    preset = P.get_preset("smoke", "stepgym/SearchQA-v0")
    merged = cli.deep_merge(preset.config, over)
    # flags win, the preset's other keys stay (dict-valued fields merge key by key)
    assert merged["env_kwargs"] == {"split": "train", "retriever": "bm25", "max_turns": 2, "topk": 5}
    assert merged["sampling"] == {"max_new_tokens": 32, "top_p": 0.9}
    assert merged["group_size"] == 3 and merged["total_steps"] == 2
    assert cli.config_overrides(cli.build_parser().parse_args(["--subsets", "all"])) == {"eval": {"subsets": []}}


def test_presets_build_valid_configs_for_every_env_family():
    for env_id in ["stepgym/SearchQA-v0", "stepgym/ALFWorld-v0", "stepgym/Sandbox-Two-v0", "thirdparty/X-v0"]:
        for name in P.PRESETS:
            p = P.get_preset(name, env_id)
            cfg = TrainConfig(**p.config, model="tiny", env_id=env_id)
            assert cfg.credit == "stepopsd"
            if name == "paper":  # ALGORITHMS.md §9: lr 1e-6, 150 steps, validation temperature 0.4, G = 8
                assert (cfg.optim.lr, cfg.total_steps, cfg.eval.temperature, cfg.group_size) == (1e-6, 150, 0.4, 8)
    paper_qa = TrainConfig(**P.get_preset("paper", "stepgym/SearchQA-v0").config, model="x", env_id="e")
    assert (paper_qa.tasks_per_step, paper_qa.max_turns, paper_qa.max_prompt_tokens, paper_qa.loss.kl_coef) == (
        128, 4, 4096, 0.001
    )  # fmt: skip
    paper_alf = TrainConfig(**P.get_preset("paper", "stepgym/ALFWorld-v0").config, model="x", env_id="e")
    assert (paper_alf.tasks_per_step, paper_alf.max_turns, paper_alf.max_prompt_tokens) == (16, 50, 2048)
    assert (paper_alf.sampling.max_new_tokens, paper_alf.loss.kl_coef) == (512, 0.01)
    assert [s.label for s in P.get_preset("smoke", "stepgym/ALFWorld-v0").eval_splits] == ["valid_seen", "valid_unseen"]


# =========================================================================== validation
def test_bad_inputs_say_did_you_mean_and_list_the_choices():
    with pytest.raises(cli.CliError, match=r"unknown env 'serchqa'; did you mean 'searchqa'\? use an alias \(searchqa"):
        cli.resolve_env("serchqa")
    assert cli.resolve_env("alfworld") == "stepgym/ALFWorld-v0"
    # Gymnasium's module:EnvId form is kept, so every process (pool workers, --eval-only) imports the module
    assert cli.resolve_env("thirdparty_env:thirdparty/GuessDigit-v0") == "thirdparty_env:thirdparty/GuessDigit-v0"
    with pytest.raises(cli.CliError, match=r"unknown method 'stepopsdd'; did you mean 'stepopsd'.*choose from: .*grpo"):
        cli.resolve_method("stepopsdd")
    with pytest.raises(cli.CliError, match=r"unknown model 'smolm2'; did you mean 'smollm2-135m'"):
        cli.resolve_model("smolm2")
    with pytest.raises(cli.CliError, match=r"looks like a local path but there is no model folder"):
        cli.resolve_model("./no/such/model")
    assert cli.resolve_model("Qwen/Qwen2.5-3B-Instruct") == "Qwen/Qwen2.5-3B-Instruct"
    with pytest.raises(cli.CliError, match=r"unknown subset 'triviaqaa'; did you mean 'triviaqa'"):
        cli.resolve_subsets(["nq", "triviaqaa"], SEARCHQA_SUBSETS)


def test_memory_estimate_refuses_a_model_too_large_before_loading():
    # bf16 training with two frozen copies: weights 2 + grads 2 + AdamW moments 8 + copies 2*2 = 16 bytes
    # per parameter, times the 1.2 headroom: 1e9 parameters -> 19.2e9 bytes
    assert cli.memory_needed(1e9, "bfloat16", training=True, copies=2) == pytest.approx(19.2e9)
    # evaluation in fp32: 4 bytes x 1.2
    assert cli.memory_needed(1e9, "float32", training=False, copies=0) == pytest.approx(4.8e9)
    # offline, the hub id's size is read from its name: "72B" -> 72e9
    assert cli.estimate_params("Qwen/Qwen2.5-72B-Instruct") == (72e9, "name")
    with pytest.raises(cli.CliError, match=r"model too large for this machine: .*72,000M parameters"):
        cli.check_model_fits("Qwen/Qwen2.5-72B-Instruct", "bfloat16", "cpu", training=True, copies=1)


def test_missing_data_and_paper_preset_on_this_machine_fail_with_the_fix(capsys, tmp_path):
    with pytest.raises(SystemExit) as e:
        cli.main(["--env", "searchqa", "--model", "tiny", "--data-dir", str(tmp_path / "none"), "--out", str(tmp_path)])
    assert e.value.code == 2
    assert "Could not find the 'searchqa' data folder" in capsys.readouterr().err
    # the paper preset's Qwen2.5-3B (size from its name offline) needs ~57.6 GB to train: refused before loading
    # unless this machine has that much free memory
    need = cli.memory_needed(3e9, "bfloat16", training=True, copies=2)
    assert need == pytest.approx(3e9 * (2 + 2 + 8 + 4) * 1.2)
    if cli.available_memory("auto")[0] < need:
        with pytest.raises(SystemExit) as e:
            cli.main(["--env", "searchqa", "--preset", "paper", "--out", str(tmp_path)])
        assert e.value.code == 2 and "model too large for this machine" in capsys.readouterr().err


def test_data_found_beside_the_checkout_when_nothing_else_is_set(tmp_path, monkeypatch):
    # a fresh clone next to shared/data (the README quickstart layout), no $STEPGYM_DATA, no cache
    (tmp_path / "shared" / "data").mkdir(parents=True)
    monkeypatch.setattr(cli, "REPO", tmp_path / "stepgym")
    monkeypatch.delenv("STEPGYM_DATA", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cli._default_data_dir() == str(tmp_path / "shared" / "data")
    monkeypatch.setenv("STEPGYM_DATA", "/elsewhere")  # an explicit choice wins
    assert cli._default_data_dir() is None


# =========================================================================== reports
def _res(success, n=4, f1=None):
    return {"success": success, "n": n, "f1": f1, "outcome": success, "num_steps": 1.0}


def test_aggregate_mean_std_over_seeds_and_average_over_subsets():
    seed0 = {"test": {"nq": _res(0.5), "popqa": _res(0.0)}}
    seed1 = {"test": {"nq": _res(1.0), "popqa": _res(0.5)}}
    agg = R.aggregate([seed0, seed1])["test"]
    # nq: mean(0.5, 1.0) = 0.75, population std = 0.25; popqa: 0.25 +- 0.25
    assert (agg["nq"]["mean"], agg["nq"]["std"], agg["nq"]["n"]) == (0.75, 0.25, 4)
    # avg: per seed the mean over subsets (0.25, 0.75) -> 0.5 +- 0.25; n = 4 + 4
    assert (agg["avg"]["mean"], agg["avg"]["std"], agg["avg"]["n"]) == (0.5, 0.25, 8)
    table = R.results_table({"test": agg}, "EM")
    assert "| nq | 75.0 ± 25.0 | 4 |" in table and "| **avg** | 50.0 ± 25.0 | 8 |" in table
    cmp = R.comparison_table({"A greedy": seed0, "B greedy": seed1}, "EM")
    assert "| test | nq | 50.0 | 100.0 | 4 |" in cmp and "| test | **avg** | 25.0 | 75.0 | 8 |" in cmp


def test_curves_png_and_data_fingerprint(tmp_path):
    rows = [{"step": s, "rollout/score": 0.1 * s, "rollout/success": 0.05 * s, "eval/nq/success": 0.2} for s in (1, 2)]
    png = R.plot_curves({"seed 0": rows, "seed 1": rows}, tmp_path / "c.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert R.plot_curves({"seed 0": []}, tmp_path / "none.png") is None
    a = R.data_fingerprint("stepgym/SearchQA-v0", {}, ["nq/1", "nq/2"])
    assert a == R.data_fingerprint("stepgym/SearchQA-v0", {}, ["nq/2", "nq/1"])  # order-free
    assert a["files"] == 8 and len(a["files_sha256"]) == 16  # 7 questions.jsonl + corpus.jsonl
    assert R.data_fingerprint("x/Y-v0", {}, ["a"])["task_ids_sha256"] != a["task_ids_sha256"]


# =========================================================================== subprocess runs
def _run(args, cwd, timeout=300, **kw):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    return subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "run.py"), *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        **kw,
    )


TINY_FAST = ["--model", "tiny", "--steps", "1", "--group_size", "2", "--sampling.max_new_tokens", "16"]


def test_searchqa_smoke_run_then_eval_only_reproduces_greedy_numbers(tmp_path):
    out = tmp_path / "qa"
    r = _run(["--env", "searchqa", *TINY_FAST, "--eval-tasks", "2", "--out", str(out)], tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    for f in ("results.json", "table.md", "curves.png", "seed0/metrics.jsonl", "seed0/eval.json"):
        assert (out / f).is_file(), f
    table = (out / "table.md").read_text()
    for sub in [*SEARCHQA_SUBSETS, "**avg**"]:
        assert f"| {sub} | " in table, sub
        assert f"| {sub} | " in r.stdout  # printed too
    res = json.loads((out / "results.json").read_text())
    assert res["status"] == "complete" and res["model"] == "tiny" and res["method"] == "stepopsd"
    assert list(res["results"]["greedy"]["test"]) == [*SEARCHQA_SUBSETS, "avg"]
    assert res["results"]["greedy"]["test"]["avg"]["n"] == 14  # 7 subsets x 2 questions
    assert res["provenance"]["git"]["commit"] and res["provenance"]["data"]["files"] == 8
    assert res["decoding"]["evaluations"]["greedy"]["temperature"] == 0.0
    assert res["training"]["0"]["final_step"] == 1

    ev = tmp_path / "ev"
    r2 = _run(["--eval-only", "--checkpoint", str(out), "--eval-tasks", "2", "--decoding", "greedy", "--out", str(ev)],
              tmp_path)  # fmt: skip
    assert r2.returncode == 0, r2.stderr[-3000:]
    again = json.loads((ev / "results.json").read_text())["results"]
    (label,) = again
    assert label.endswith("greedy")
    first = res["per_seed"]["0"]["greedy"]["test"]
    # same checkpoint, same questions, greedy: every per-subset number is identical
    assert again[label]["test"] == first
    assert "| test | **avg** |" in (ev / "table.md").read_text()


@pytest.mark.slow  # ~2-4 min on 2 cores: ALFWorld resets take 0.5-2 s per game
def test_alfworld_smoke_one_game_per_task_type(tmp_path):
    out = tmp_path / "alf"
    r = _run(["--env", "alfworld", *TINY_FAST, "--max_turns", "2", "--out", str(out)], tmp_path, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    res = json.loads((out / "results.json").read_text())["results"]["greedy"]
    for split in ("valid_seen", "valid_unseen"):
        assert list(res[split]) == [*ALFWORLD_SUBSETS, "avg"]
        assert all(res[split][s]["n"] == 1 for s in ALFWORLD_SUBSETS)
        assert res[split]["avg"]["n"] == 6


def test_ctrl_c_writes_checkpoint_and_partial_results_then_rerun_resumes(tmp_path):
    out = tmp_path / "sb"
    args = ["--env", "sandbox", *TINY_FAST, "--steps", "3", "--max_turns", "2", "--eval-tasks", "1", "--out", str(out)]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "benchmarks" / "run.py"), *args],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    metrics = out / "seed0" / "metrics.jsonl"
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and proc.poll() is None:
        if metrics.is_file() and metrics.read_text().strip():
            break
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)  # during step 2 (or right after step 1)
    _, err = proc.communicate(timeout=240)
    assert proc.returncode == 130, err[-3000:]
    assert "interrupted: re-run the same command to resume" in err
    partial = json.loads((out / "results.json").read_text())
    assert partial["status"] == "interrupted"
    stopped_at = partial["training"]["0"]["final_step"]
    assert 1 <= stopped_at < 3 and partial["training"]["0"]["interrupted"]
    assert (out / "seed0" / "checkpoints" / f"step-{stopped_at:08d}").is_dir()

    r = _run(args, tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    done = json.loads((out / "results.json").read_text())
    assert done["status"] == "complete"
    assert done["training"]["0"]["resumed_from"] == stopped_at and done["training"]["0"]["final_step"] == 3
    steps = [row["step"] for row in R.read_metrics(metrics)]
    assert steps == [1, 2, 3]  # each step logged once across the two runs
