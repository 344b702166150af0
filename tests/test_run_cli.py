"""The main job (stepgym.trainers.experiment / cli, benchmarks/run.py): flags from TrainConfig, validation, reports,
subprocess smoke runs."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from stepgym.trainers import cli
from stepgym.trainers import experiment as X
from stepgym.trainers import memory as M
from stepgym.trainers import presets as P
from stepgym.trainers import report as R
from stepgym.trainers.config import TrainConfig

ROOT = Path(__file__).resolve().parent.parent

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
    merged = X.deep_merge(preset.config, over)
    # flags win, the preset's other keys stay (dict-valued fields merge key by key)
    assert merged["env_kwargs"] == {"split": "train", "retriever": "bm25", "max_turns": 2, "topk": 5}
    assert merged["sampling"] == {"max_new_tokens": 48, "top_p": 0.9}
    assert merged["group_size"] == 3 and merged["total_steps"] == 2
    assert cli.config_overrides(cli.build_parser().parse_args(["--subsets", "all"])) == {"eval": {"subsets": []}}


def test_presets_build_valid_configs_for_every_env_family():
    for env_id in ["stepgym/SearchQA-v0", "stepgym/ALFWorld-v0", "stepgym/Sandbox-Two-v0", "thirdparty/X-v0"]:
        for name in P.PRESETS:
            if not P.has_preset(name, env_id):  # cpu: the full recipe, Search-QA and ALFWorld only
                with pytest.raises(
                    ValueError, match=f"preset '{name}' is defined for the alfworld, searchqa env family"
                ):
                    P.get_preset(name, env_id)
                continue
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
    with pytest.raises(X.ExperimentError, match=r"unknown env 'serchqa'; did you mean 'searchqa'\? use an alias"):
        X.resolve_env("serchqa")
    assert X.resolve_env("alfworld") == "stepgym/ALFWorld-v0"
    # Gymnasium's module:EnvId form is kept, so every process (pool workers, --eval-only) imports the module
    assert X.resolve_env("thirdparty_env:thirdparty/GuessDigit-v0") == "thirdparty_env:thirdparty/GuessDigit-v0"
    with pytest.raises(X.ExperimentError, match=r"unknown method 'stepopsdd'; did you mean 'stepopsd'.*from: .*grpo"):
        X.resolve_method("stepopsdd")
    with pytest.raises(X.ExperimentError, match=r"unknown model 'smolm2'; did you mean 'smollm2-135m'"):
        X.resolve_model("smolm2")
    with pytest.raises(X.ExperimentError, match=r"looks like a local path but there is no model folder"):
        X.resolve_model("./no/such/model")
    assert X.resolve_model("Qwen/Qwen2.5-3B-Instruct") == "Qwen/Qwen2.5-3B-Instruct"
    with pytest.raises(X.ExperimentError, match=r"unknown subset 'triviaqaa'; did you mean 'triviaqa'"):
        X.resolve_subsets(["nq", "triviaqaa"], SEARCHQA_SUBSETS)


def test_memory_estimate_counts_weights_activations_and_logits():
    shape = M.KNOWN_SHAPES["smollm2-135m"]
    est = M.estimate_memory(shape, "float32", training=True, copies=1, micro_batch=4, seq_len=1024, generated=64)
    # weights + frozen copy 4 + 4, gradients 4, AdamW moments 8: 20 bytes per parameter
    assert est.weights == pytest.approx(134.5e6 * 20)
    # fp32 logits, log_softmax and gradient of the generated tokens only: 4 rows x 64 x 49152 vocab x 4 bytes x 3
    assert est.logits == pytest.approx(4 * 64 * 49152 * 4 * 3)
    # Korthikanti §4.1: s b h 34 bytes per layer at width 2 (sdpa: no a s^2 score term), doubled for fp32, 30 layers
    assert est.activations == pytest.approx(1024 * 4 * 576 * 34 * 2 * 30)
    eager = M.estimate_memory(
        shape, "float32", training=True, copies=1, micro_batch=4, seq_len=1024, eager_attention=True
    )
    assert eager.activations == pytest.approx(1024 * 4 * 576 * (34 + 5 * 9 * 1024 / 576) * 2 * 30)
    assert est.total == pytest.approx(est.weights + est.activations + est.logits + M.RUNTIME_BYTES)
    # evaluation: weights only (no gradient, no optimizer), one layer of activations alive
    ev = M.estimate_memory(shape, "bfloat16", training=False, copies=0, micro_batch=1, seq_len=0)
    assert ev.weights == pytest.approx(134.5e6 * 2) and ev.logits == 0
    # offline, a hub id's size is read from its name: "72B" -> 72e9
    assert M.model_shape("Qwen/Qwen2.5-72B-Instruct") == (M.ModelShape(72e9), "name")


def test_memory_guard_gives_a_range_and_refuses_only_what_cannot_fit(monkeypatch):
    data = X.deep_merge(P.get_preset("smoke", "stepgym/SearchQA-v0").config, {})
    cfg = TrainConfig(**data, model="smollm2-135m", env_id="stepgym/SearchQA-v0")
    low = X.estimate_run_memory(cfg, training=True, seq_len=96)  # 2 turns x 48 generated tokens
    high = X.estimate_run_memory(cfg, training=True)  # prompt cap 1536 + 96
    assert high.activations == pytest.approx(low.activations * 1632 / 96)
    line = X.check_model_fits(cfg, training=True)
    assert f"needs ~{low.total / 2**30:.1f}-{high.total / 2**30:.1f} GiB" in line and "rows of 96-1632 tokens" in line
    monkeypatch.setattr(M, "available_memory", lambda device: ((low.total + high.total) / 2, "host RAM"))
    X.check_model_fits(cfg, training=True)  # between the bounds: a warning, not a refusal
    monkeypatch.setattr(M, "available_memory", lambda device: (low.total * 0.9, "host RAM"))
    with pytest.raises(X.ExperimentError, match="model too large for this machine"):
        X.check_model_fits(cfg, training=True)


def test_memory_guard_refuses_a_model_too_large_before_loading():
    cfg = TrainConfig(model="Qwen/Qwen2.5-72B-Instruct", env_id="stepgym/Sandbox-One-v0", dtype="bfloat16")
    with pytest.raises(X.ExperimentError, match=r"model too large for this machine: .*72,000M parameters"):
        X.check_model_fits(cfg, training=True)


def test_missing_data_and_paper_preset_on_this_machine_fail_with_the_fix(capsys, tmp_path):
    code = cli.run_main(
        ["--env", "searchqa", "--model", "tiny", "--data-dir", str(tmp_path / "none"), "--out", str(tmp_path)]
    )
    assert code == 2
    assert "Could not find the 'searchqa' data folder" in capsys.readouterr().err
    # the paper preset's Qwen2.5-3B (size from its name offline) needs > 3e9 x 16 bytes to train: refused before
    # loading unless this machine has that much free memory
    if M.available_memory("auto")[0] < 3e9 * 16:
        assert cli.run_main(["--env", "searchqa", "--preset", "paper", "--out", str(tmp_path)]) == 2
        assert "model too large for this machine" in capsys.readouterr().err


def test_data_found_beside_the_checkout_when_nothing_else_is_set(tmp_path, monkeypatch):
    # a fresh clone next to shared/data (the README quickstart layout), no $STEPGYM_DATA, no cache
    (tmp_path / "shared" / "data").mkdir(parents=True)
    monkeypatch.setattr(X, "REPO", tmp_path / "stepgym")
    monkeypatch.delenv("STEPGYM_DATA", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert X.default_data_dir() == str(tmp_path / "shared" / "data")
    monkeypatch.setenv("STEPGYM_DATA", "/elsewhere")  # an explicit choice wins
    assert X.default_data_dir() is None


def test_data_found_message_is_info_not_warning(tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(X, "default_data_dir", lambda: str(tmp_path))
    monkeypatch.delenv("STEPGYM_DATA", raising=False)
    # the CLI prints this logger's lines itself (propagate off) once it has run in this process
    monkeypatch.setattr(X.logger, "propagate", True)
    with caplog.at_level("INFO", logger="stepgym.trainers.experiment"):
        X._use_default_data_dir()
    (rec,) = [r for r in caplog.records if "data: using" in r.message]
    assert rec.levelname == "INFO" and os.environ["STEPGYM_DATA"] == str(tmp_path)


# =========================================================================== reports
def _res(success, n=4, f1=None):
    return {"success": success, "n": n, "f1": f1, "outcome": success, "num_steps": 1.0}


def test_aggregate_mean_std_over_seeds_and_average_over_subsets():
    seed0 = {"test": {"nq": _res(0.5), "popqa": _res(0.0)}}
    seed1 = {"test": {"nq": _res(1.0), "popqa": _res(0.5)}}
    agg = R.aggregate([seed0, seed1])["test"]
    # nq: mean(0.5, 1.0) = 0.75, sample std (ddof=1) = sqrt(2 * 0.25^2 / 1) = 0.3536; popqa: 0.25 +- 0.3536
    assert (agg["nq"]["mean"], agg["nq"]["n"]) == (0.75, 4) and agg["nq"]["std"] == pytest.approx(0.25 * 2**0.5)
    # avg: per seed the mean over subsets (0.25, 0.75) -> 0.5 +- 0.3536; n = 4 + 4
    assert (agg["avg"]["mean"], agg["avg"]["n"]) == (0.5, 8) and agg["avg"]["std"] == pytest.approx(0.25 * 2**0.5)
    table = R.results_table({"test": agg}, "EM")
    assert "| nq | 75.0 ± 35.4 | 4 |" in table and "| **avg** | 50.0 ± 35.4 | 8 |" in table
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
    # the smoke preset's SFT stage is tested in test_recipe.py; here RL + evaluation alone, as fast as before
    r = _run(["--env", "searchqa", *TINY_FAST, "--no-sft.enabled", "--eval-tasks", "2", "--out", str(out)], tmp_path)
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


# =========================================================================== installed CLI
def _timed_cli(args):
    """Run ``stepgym`` in a fresh interpreter; returns (result, CPU seconds of the child, modules it imported)."""
    import resource

    code = (
        "import sys; from stepgym.trainers.cli import main; rc = main(sys.argv[1:]); "
        "sys.stderr.write('\\nIMPORTED ' + ' '.join(m for m in ('torch', 'transformers') if m in sys.modules)); "
        "sys.exit(rc)"
    )
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    r = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=60)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    imported = r.stderr.rsplit("IMPORTED", 1)[-1].split()
    return r, cpu, wall, imported


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["train", "--env", "serchqa"], "unknown env 'serchqa'; did you mean 'searchqa'?"),
        (["train", "--env", "sandbox", "--method", "stepopsdd"], "unknown method 'stepopsdd'; did you mean 'stepopsd'"),
        (["eval", "--env", "alfwrld", "--checkpoint", "x"], "unknown env 'alfwrld'; did you mean 'alfworld'?"),
        (["train", "--env", "sandbox", "--preset", "cpu"], "preset 'cpu' is defined for the alfworld, searchqa env"),
    ],
)
def test_argument_errors_come_before_torch_within_2_s(args, message):
    r, cpu, wall, imported = _timed_cli(args)
    assert r.returncode == 2 and message in r.stderr, r.stderr
    assert imported == []  # neither torch nor transformers was imported
    # CPU seconds, not wall time: this machine is shared, so wall time measures the neighbours (printed for the log)
    print(f"{args}: {cpu:.2f} s CPU, {wall:.2f} s wall")
    assert cpu < 2.0


def test_help_shows_the_chosen_presets_value_and_groups_by_section():
    r, cpu, _, imported = _timed_cli(["train", "--env", "alfworld", "--help"])
    assert r.returncode == 0 and imported == [] and cpu < 2.0
    text = " ".join(r.stdout.split())
    assert "--sampling.max_new_tokens INT Most tokens generated for one agent step. (default: 512; smoke preset for " \
        "stepgym/ALFWorld-v0: 24)" in text  # fmt: skip
    assert "config: sampling: How the rollout engine decodes during training." in text
    paper = " ".join(cli.build_parser("train", env="stepgym/SearchQA-v0", preset="paper").format_help().split())
    assert "update). (default: 150) --checkpoint_every" in paper  # the paper preset's 150 steps = the default: once
    assert "(default: 512; paper preset for stepgym/SearchQA-v0: 500)" in paper


def test_envs_lists_every_stepgym_id_with_its_subsets_and_metric(capsys):
    import gymnasium as gym

    assert cli.main(["envs"]) == 0
    out = capsys.readouterr().out
    for env_id in (k for k in gym.registry if k.startswith("stepgym/")):
        assert env_id in out
    assert "stepgym/SearchQA-v0  (--env searchqa)  subsets: nq, triviaqa, popqa, hotpotqa" in out
    assert "metric: EM" in out and "stepgym/Sandbox-One-v0  (--env sandbox)" in out


def test_credit_names_read_from_source_match_the_registry():
    from stepgym.trainers.credit import _BUILTIN_MODULES, get_credit, list_credits

    # other test modules register throwaway methods at import (collection), so compare the built-ins only
    builtins = [n for n in list_credits() if get_credit(n).fn.__module__ in _BUILTIN_MODULES]
    assert "grpo" in builtins and "stepopsd" in builtins
    assert cli.credit_names_from_source() == builtins


def test_config_file_json_or_yaml_under_flag_overrides(tmp_path):
    (tmp_path / "c.yaml").write_text("env: alfworld\nseeds: [1, 2]\nsampling:\n  top_p: 0.8\n  max_new_tokens: 40\n")
    (tmp_path / "c.json").write_text(json.dumps({"env_id": "stepgym/Sandbox-Two-v0", "seed": 3, "group_size": 5}))
    args, run, over = cli._parse("train", ["--config", str(tmp_path / "c.yaml"), "--sampling.top_p", "0.9"], "t")
    assert run == {"env": "alfworld", "seeds": [1, 2]}
    assert over == {"sampling": {"top_p": 0.9, "max_new_tokens": 40}}  # the flag wins, the file's other keys stay
    args, run, over = cli._parse("train", ["--config", str(tmp_path / "c.json")], "t")
    assert run == {"env": "stepgym/Sandbox-Two-v0", "seeds": [3]} and over == {"group_size": 5}
    gym_syntax = ["--env", "thirdparty_env:thirdparty/GuessDigit-v0"]
    _, _, over = cli._parse("train", ["--env-kwargs", '{"topk": 3}', *gym_syntax], "t")
    assert over == {"env_kwargs": {"topk": 3}}
    # searchqa sugar for the remote retriever (issue 21)
    _, _, over = cli._parse("train", ["--retriever", "remote", "--retriever-url", "http://127.0.0.1:1"], "t")
    assert over == {"env_kwargs": {"retriever": "remote", "retriever_url": "http://127.0.0.1:1"}}
    with pytest.raises(X.ExperimentError, match="no such file"):
        cli._parse("train", ["--config", str(tmp_path / "none.yaml")], "t")


def test_stepgym_is_an_installed_command():
    import shutil

    exe = shutil.which("stepgym", path=str(Path(sys.executable).parent))
    assert exe, "pip install -e . puts stepgym on PATH ([project.scripts])"
    r = subprocess.run([exe, "--help"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and "train" in r.stdout and "export" in r.stdout


def test_export_subcommand_checks_its_source_before_importing_the_exporter(tmp_path, capsys):
    assert cli.main(["export", str(tmp_path / "no-run"), "--out", str(tmp_path / "x")]) == 2
    assert "does not exist; pass a run folder or a step-* folder" in capsys.readouterr().err
    assert cli.main(["trian"]) == 2 and "did you mean 'train'" in capsys.readouterr().err


@pytest.mark.slow  # ~35 s CPU (2 min wall at load 11); the subprocess smoke runs cover the same code by default
def test_run_experiment_from_python_then_rerun_resumes_and_reuses_the_evaluation(tmp_path):
    exp = X.ExperimentConfig(
        env="sandbox",
        model="tiny",
        out=str(tmp_path / "sb"),
        eval_tasks=1,
        overrides={"total_steps": 1, "group_size": 2, "max_turns": 2, "sampling": {"max_new_tokens": 8}},
    )
    first = X.run_experiment(exp, progress=False)
    assert first.status == "complete" and first.out == tmp_path / "sb"
    saved = json.loads((first.out / "results.json").read_text())
    assert saved["results"] == json.loads(json.dumps(first.summary["results"]))  # the file is the returned summary
    assert list(saved["results"]["greedy"]["test"]) == ["clean", "heat", "cool", "avg"]  # the env's declared order
    assert saved["metric"] == "success" and saved["training"]["0"]["final_step"] == 1
    assert "| **avg** |" in first.table and {f.name for f in first.files} >= {"results.json", "table.md"}
    eval_cache = first.out / "seed0" / "eval.json"
    stamp = eval_cache.stat().st_mtime_ns
    again = X.run_experiment(exp, progress=False)  # nothing left to train; the evaluation is reused, not rerun
    assert again.summary["training"]["0"]["resumed_from"] == 1
    assert again.summary["per_seed"] == first.summary["per_seed"]
    assert eval_cache.stat().st_mtime_ns == stamp
