"""benchmarks/credit_sandbox.py statistics: ddof=1, paired bootstrap CIs on the AULC, arms, resumable settings."""

import argparse
import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
import credit_sandbox as cs  # noqa: E402


def test_aulc_is_the_mean_of_the_eval_points_only():
    hist = [{"rollout/success": 1.0}, {"eval/avg/success": 0.25}, {}, {"eval/avg/success": 0.75}]
    assert cs.aulc(hist) == 0.5 and math.isnan(cs.aulc([{"rollout/success": 1.0}]))


def test_mean_sd_uses_ddof_1():
    m, s = cs.mean_sd(np.array([1.0, 2.0, 3.0, np.nan]))
    assert m == 2.0 and s == pytest.approx(1.0)  # ddof=0 would give 0.816
    assert math.isnan(cs.mean_sd(np.array([4.0]))[1])


def test_paired_bootstrap_covers_the_mean_and_separates_a_clear_effect():
    rng = np.random.default_rng(0)
    d = 0.2 + 0.05 * rng.standard_normal(12)
    lo, hi = cs.paired_bootstrap(d)
    assert lo < d.mean() < hi and lo > 0.1
    # the Bonferroni level is wider
    lo_b, hi_b = cs.paired_bootstrap(d, level=1 - 0.05 / 10)
    assert lo_b < lo and hi_b > hi
    # no effect: the CI covers 0; one pair: no CI
    lo0, hi0 = cs.paired_bootstrap(0.05 * rng.standard_normal(12) - 0.0)
    assert lo0 < 0.03 and hi0 > -0.03
    assert all(math.isnan(x) for x in cs.paired_bootstrap(np.array([0.3])))


def test_arms_cover_the_issue_and_resolve_to_registered_methods():
    from stepgym.trainers.credit import check_credit_kwargs

    need = {"grpo", "oracle", "gigpo", "rlsd", "stepopsd", "stepopsd_nobudget", "stepopsd_lam1", "stepopsd_clip08"}
    assert need <= set(cs.ARMS)
    for arm in cs.ARMS.values():
        check_credit_kwargs(arm.credit, dict(arm.kwargs))  # raises on a wrong name or option
    assert cs.ARMS["stepopsd_lam1"].kwargs == {"budget": False, "lam0": 1.0}


def test_quick_and_argument_checks(tmp_path):
    args = cs.parse_args(["--quick"])
    assert args.steps % args.eval_every == 0 and "grpo" in args.arms and args.warm_starts == 1
    with pytest.raises(SystemExit):
        cs.parse_args(["--arms", "oracle"])
    with pytest.raises(SystemExit):
        cs.parse_args(["--steps", "7", "--eval-every", "5"])


def test_resume_with_other_settings_stops(tmp_path):
    args = cs.parse_args(["--out", str(tmp_path)])
    cs.check_meta(tmp_path, args)
    meta = json.loads((tmp_path / "meta.json").read_text())
    assert meta["aggregation"] == cs.AGGREGATION and meta["steps"] == args.steps
    cs.check_meta(tmp_path, args)  # same settings: fine
    changed = argparse.Namespace(**{**vars(args), "lr": 2 * args.lr})
    with pytest.raises(SystemExit, match="lr"):
        cs.check_meta(tmp_path, changed)


def test_report_pairs_runs_by_warm_start_and_seed():
    def hist(aulc_value, share):
        return [{"eval/avg/success": aulc_value, "credit/share_pos_excess": share, "time/step": 1.0}]

    results = {
        "One": {
            "grpo": {(0, 0): hist(0.2, 0.0), (0, 1): hist(0.4, 0.0), (1, 0): hist(0.3, 0.0)},
            "oracle": {(0, 0): hist(0.5, 3.0), (0, 1): hist(0.7, 3.1), (1, 0): hist(0.6, 2.9)},
        }
    }
    text = cs.report(results, cs.parse_args([]))
    row = next(line for line in text.splitlines() if line.startswith("| oracle"))
    cells = [c.strip() for c in row.split("|")[1:-1]]
    assert cells[3] == "0.300"  # every pair differs by exactly 0.3
    assert cells[4] == "[0.300, 0.300]"
    assert cells[6].startswith("3.000 ± 0.100")


def test_quick_keeps_its_own_folder_unless_told():
    assert cs.parse_args(["--quick"]).out == "runs/credit_sandbox_quick"
    assert cs.parse_args(["--quick", "--out", "elsewhere"]).out == "elsewhere"
    assert cs.parse_args([]).out == "runs/credit_sandbox"


def test_run_order_is_pair_major_with_the_issue17_arms_first():
    assert (
        len(cs.ISSUE17_ARMS) == 13
        and {"placebo_step", "no_update"} < set(cs.ISSUE17_ARMS)
        and cs.ISSUE17_ARMS[-2:] == ("stepopsd_nohindsight", "stepopsd_shuffled_peer")
    )
    assert cs.parse_args([]).arms == list(cs.ISSUE17_ARMS)  # issue 22's methods and sdar only when named
    order = cs.run_order(["One"], ["craft", "grpo", "oracle"], [0, 1], [0, 1])
    # issue 17's arms first; within a tier every arm of a (seed, warm start) pair before the next pair
    assert [(a, s, w) for _, a, s, w in order] == [
        ("grpo", 0, 0), ("oracle", 0, 0), ("grpo", 0, 1), ("oracle", 0, 1),
        ("grpo", 1, 0), ("oracle", 1, 0), ("grpo", 1, 1), ("oracle", 1, 1),
        ("craft", 0, 0), ("craft", 0, 1), ("craft", 1, 0), ("craft", 1, 1),
    ]  # fmt: skip


def test_hindsight_probe_contrasts_the_decisive_step_with_the_neutral_ones():
    import hindsight_probe as hp

    nan = float("nan")
    gaps = [np.array([0.4, -0.2, 0.2, nan]), np.array([0.1, 0.3]), np.array([0.0, 0.5])]
    flags = [[False, True, False, False], [True, False], [False, True]]
    out = hp.contrasts(gaps, flags, [True, True, False])  # the third is not selected
    assert out["dec"].tolist() == pytest.approx([-0.2, 0.1])
    assert out["neu"].tolist() == pytest.approx([0.3, 0.3])  # NaN steps (no action tokens) are left out
    assert out["contrast"].tolist() == pytest.approx([-0.5, -0.2])
    assert out["lowest"].tolist() == [1.0, 1.0]
