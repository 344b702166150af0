"""Credit sandbox envs: decisive-step bookkeeping, expert, doom-only-at-the-end, null variant, determinism."""

import math
import re

import gymnasium as gym
import pytest
import stepgym.envs  # noqa: F401  (registers the ids)
from stepgym.agents.sandbox_agents import NoisyExpert, RandomAdmissibleAgent, SandboxExpert
from stepgym.agents.scripted import run_episode
from stepgym.envs import EnvPool
from stepgym.envs.sandbox import SandboxEnv, all_commands, split_words

VARIANTS = ["One", "Two", "Delayed"]
ALL = VARIANTS + ["Null"]
EXPECTED_DECISIVE = {"One": 1, "Two": 2, "Delayed": 1, "Null": 0}


def make(variant, **kw):
    return gym.make(f"stepgym/Sandbox-{variant}-v0", **kw).unwrapped


def play(env, commands, seed=None, task_id=None):
    """Reset, then send ``commands``; returns the reset info and [(cmd, obs, r, term, trunc, info)]."""
    _, info0 = env.reset(seed=seed, options={"task_id": task_id} if task_id else None)
    out = []
    for c in commands:
        obs, r, term, trunc, info = env.step(f"<action>{c}</action>")
        out.append((c, obs, r, term, trunc, info))
        if term or trunc:
            break
    return info0, out


def alter(plan, cmd, wrong):
    """Replace '<treat> X with <appliance>' by the wrong treatment (the appliances are within reach)."""
    from stepgym.envs.sandbox.world import APPLIANCE

    treatment, rest = cmd.split(" ", 1)
    obj = rest.split(" with ")[0]
    i = plan.index(cmd)
    assert not plan[i - 1].startswith("go to ")  # the treatment is applied where the object was taken
    return plan[:i] + [f"{wrong} {obj} with {APPLIANCE[wrong]}"] + plan[i + 1 :]


@pytest.mark.parametrize("variant", VARIANTS)
def test_expert_wins_and_flags_exactly_the_right_commitments(variant):
    env = make(variant)
    for seed in range(40):
        info0, steps = play(env, make(variant).reset(seed=seed)[1]["expert_plan"], seed=seed)
        assert info0["num_decisive"] == EXPECTED_DECISIVE[variant] == len(info0["decisive_commands"])
        flagged = [c for c, *_, info in steps if info["decisive"]]
        # the decisive steps are exactly the treatments the reset info announced, in order
        assert flagged == info0["decisive_commands"]
        assert all(info["commitment"] == "right" for *_, info in steps if info["decisive"])
        assert [info["decisive"] for *_, info in steps] == [info["nominal_decisive"] for *_, info in steps]
        assert len(steps) == len(info0["expert_plan"])
        *_, (c, obs, r, term, trunc, info) = steps
        assert (r, term, trunc, info["won"], info["doomed"]) == (1.0, True, False, True, False)
        assert obs.endswith("Task completed.")
        assert sum(s[2] for s in steps) == 1.0
        assert all(s[5]["valid_action"] for s in steps)


def test_every_subset_occurs_and_the_task_names_the_treatment():
    env = make("One")
    seen = {}
    for seed in range(30):
        obs, info = env.reset(seed=seed)
        seen[info["subset"]] = obs
        adj = {"heat": "hot", "cool": "cool", "clean": "clean"}[info["subset"]]
        assert re.search(rf"Your task is to: put a {adj} \w+ in \w+ \d\.$", obs)
        assert info["decisive_commands"][0].startswith(info["subset"] + " ")
    assert sorted(seen) == ["clean", "cool", "heat"]


@pytest.mark.parametrize("variant", VARIANTS)
def test_a_wrong_commitment_dooms_silently_until_the_end(variant):
    env = make(variant)
    for seed in range(20):
        _, info = env.reset(seed=seed)
        plan, cmd = info["expert_plan"], info["decisive_commands"][-1]
        wrong = "cool" if cmd.startswith("heat") else "heat"
        _, good = play(env, plan, seed=seed)
        _, bad = play(env, alter(plan, cmd, wrong), seed=seed)
        k = [i for i, s in enumerate(bad) if s[5]["decisive"]][-1]  # the altered (last) decisive step
        assert bad[k][5]["commitment"] == "wrong" and bad[k][5]["doomed"]
        assert not any(s[5]["doomed"] for s in bad[:k])
        # after the wrong commitment: same commands, same observations, no reward, no end ...
        k_good = [i for i, s in enumerate(good) if s[5]["decisive"]][-1]
        assert len(bad) - k == len(good) - k_good
        for g, b in zip(good[k_good + 1 : -1], bad[k + 1 : -1]):
            assert (g[0], g[1], g[2], g[3], g[4]) == (b[0], b[1], 0.0, False, False)
            assert b[5]["doomed"]
        # ... until the last step, where only the outcome differs
        assert bad[-1][0] == good[-1][0] and bad[-1][3] and not bad[-1][5]["won"] and bad[-1][2] == 0.0
        assert bad[-1][1] == good[-1][1].replace("Task completed.", "Task failed.")
        assert all("Task" not in s[1] for s in bad[:-1])


@pytest.mark.parametrize("variant", VARIANTS)
def test_skipping_the_decisive_step_fails_at_the_end_with_no_decisive_step(variant):
    env = make(variant)
    agent = NoisyExpert(p=1.0, mode="skip", seed=0)
    for seed in range(20):
        steps = run_episode(env, agent, seed=seed)
        assert agent.corrupted == ["skipped"] * EXPECTED_DECISIVE[variant]
        infos = [s[5] for s in steps]
        assert not any(i["decisive"] for i in infos)
        assert not any(i["doomed"] for i in infos[:-1]) and infos[-1]["doomed"]
        assert steps[-1][3] and not steps[-1][4] and not infos[-1]["won"]
        assert sum(s[2] for s in steps) == 0.0


def test_two_needs_both_commitments():
    env = make("Two")
    for seed in range(10):
        _, info = env.reset(seed=seed)
        first, second = info["decisive_commands"]
        wrong = "clean" if not first.startswith("clean") else "cool"
        for cmd, doomed_at in ((first, 0), (second, 1)):
            _, steps = play(env, alter(info["expert_plan"], cmd, wrong), seed=seed)
            dec = [s for s in steps if s[5]["decisive"]]
            expected = ["wrong", "right"] if doomed_at == 0 else ["right", "wrong"]
            assert [s[5]["commitment"] for s in dec] == expected
            doomed = [s[5]["doomed"] for s in steps]
            assert doomed.index(True) == steps.index(dec[doomed_at])  # doomed from the wrong commitment on
            assert steps[-1][3] and not steps[-1][5]["won"]


def test_delayed_consequence_shows_four_or_more_steps_after_the_decisive_step():
    env = make("Delayed")
    gaps = []
    for seed in range(40):
        _, info = env.reset(seed=seed)
        _, steps = play(env, info["expert_plan"], seed=seed)
        k = next(i for i, s in enumerate(steps) if s[5]["decisive"])
        gaps.append(len(steps) - 1 - k)
    one = make("One")
    gaps_one = []
    for seed in range(40):
        _, info = one.reset(seed=seed)
        _, steps = play(one, info["expert_plan"], seed=seed)
        gaps_one.append(len(steps) - 1 - next(i for i, s in enumerate(steps) if s[5]["decisive"]))
    assert min(gaps) >= 4 and max(gaps_one) <= 3  # One: go to, (open), put


def test_null_outcome_is_the_same_coin_whatever_the_policy():
    env = make("Null", null_success_prob=0.3)
    agents = [SandboxExpert(), NoisyExpert(1.0, "alter", seed=1), RandomAdmissibleAgent(seed=2)]
    n = 300
    outcomes = {i: [] for i in range(len(agents))}
    for seed in range(n):
        for i, agent in enumerate(agents):
            steps = run_episode(env, agent, seed=seed)
            infos = [s[5] for s in steps]
            assert not any(x["decisive"] for x in infos)
            assert steps[-1][3] or steps[-1][4]
            outcomes[i].append(infos[-1]["won"])
            assert sum(s[2] for s in steps) == float(infos[-1]["won"])
    # The coin is drawn from np_random at reset, so for one seed every policy gets the same outcome ...
    assert outcomes[0] == outcomes[1] == outcomes[2]
    # ... and the rate matches p: |rate - 0.3| < 4 standard errors (sqrt(.3*.7/300) = 0.0265).
    rate = sum(outcomes[0]) / n
    assert abs(rate - 0.3) < 4 * math.sqrt(0.3 * 0.7 / n)
    # nominal decisive steps are still marked for analysis
    info0, steps = play(env, env.reset(seed=0)[1]["expert_plan"], seed=0)
    assert info0["decisive_commands"] == [] and info0["num_decisive"] == 0
    assert sum(s[5]["nominal_decisive"] for s in steps) == 1


def test_outcome_varies_within_a_null_group():
    env = make("Null")
    task = env.task_ids[5]
    won = [run_episode(env, SandboxExpert(), seed=s, options={"task_id": task})[-1][5]["won"] for s in range(40)]
    assert 5 < sum(won) < 35  # p=0.5 over 40 draws


def test_noisy_expert_makes_mixed_groups_and_wins_iff_kept():
    env = make("Two")
    agent = NoisyExpert(p=0.3, mode="mixed", seed=5)
    kinds = set()
    for seed in range(60):
        won = run_episode(env, agent, seed=seed)[-1][5]["won"]
        kinds.update(agent.corrupted)
        assert won == all(c == "kept" for c in agent.corrupted)
    assert kinds == {"kept", "altered", "skipped"}


@pytest.mark.parametrize("variant", ALL)
def test_same_seed_same_episode_and_task_id_fixes_the_world(variant):
    def roll(seed, task=None):
        env = make(variant)
        steps = run_episode(env, RandomAdmissibleAgent(seed=3), seed=seed, options={"task_id": task} if task else None)
        return [(s[0], s[1], s[2], s[3], s[4], s[5]["decisive"], s[5]["won"]) for s in steps]

    assert roll(11) == roll(11)
    env = make(variant)
    t = env.task_ids[17]
    obs_a, _ = env.reset(seed=1, options={"task_id": t})
    obs_b, _ = env.reset(seed=2, options={"task_id": t})
    assert obs_a == obs_b
    assert env.reset(options={"task_id": env.task_ids[18]})[0] != obs_a


def test_random_agent_rarely_wins_and_truncation_counts_every_step():
    env = make("One", max_steps=40)
    agent = RandomAdmissibleAgent(seed=0)
    wins = 0
    for seed in range(50):
        steps = run_episode(env, agent, seed=seed)
        assert len(steps) <= 40 and (steps[-1][3] or steps[-1][4])
        if steps[-1][4]:
            assert len(steps) == 40
        wins += steps[-1][5]["won"]
    assert wins < 25  # the expert wins 50/50; a random walk needs the right treatment and the right put
    env = make("One", max_steps=3)
    env.reset(seed=0)
    res = [env.step("gibberish") for _ in range(3)]
    assert [r[3] for r in res] == [False, False, True]


def test_invalid_and_inadmissible_actions():
    env = make("One")
    _, info = env.reset(seed=0)
    obs, r, term, trunc, i = env.step("no tags")
    assert obs.startswith("Invalid action: no complete <action>") and not i["valid_action"] and i["action"] is None
    obs, r, term, trunc, i = env.step("<action>fly to the moon</action>")
    assert obs == "Nothing happens." and not i["valid_action"] and not term
    # treating twice is impossible: the commitment is final
    plan = info["expert_plan"]
    dec = info["decisive_commands"][0]
    _, steps = play(env, plan[: plan.index(dec) + 1] + [dec], seed=0)
    assert steps[-1][1] == "Nothing happens." and not steps[-1][5]["decisive"]
    assert dec not in steps[-1][5]["admissible_actions"]


def test_vocabulary_and_command_list_cover_everything_seen():
    vocab = set(SandboxEnv.vocabulary())
    commands = set(all_commands())
    assert len(vocab) < 200 and len(commands) < 1000
    assert set(split_words(SandboxEnv.protocol)) <= vocab
    for variant in ALL:
        env = make(variant)
        for seed in range(15):
            for agent in (RandomAdmissibleAgent(seed=seed), NoisyExpert(0.5, "mixed", seed=seed)):
                obs, info = env.reset(seed=seed)
                agent.reset(obs, info)
                for _ in range(40):
                    assert set(split_words(obs)) <= vocab, set(split_words(obs)) - vocab
                    assert set(info["admissible_actions"]) <= commands
                    obs, r, term, trunc, info = env.step(agent.act(obs, info))
                    if term or trunc:
                        assert set(split_words(obs)) <= vocab
                        break
    for text in ("", "<action></action>", "<action>a</action><action>b</action>"):
        env.reset(seed=0)
        assert set(split_words(env.step(text)[0])) <= vocab


def test_split_and_kwargs_are_checked():
    assert make("One", split="test").task_ids[0] == "clean-test-0"
    a = make("One").reset(options={"task_id": "heat-train-3"})[0]
    b = make("One", split="test").reset(options={"task_id": "heat-test-3"})[0]
    assert a != b
    with pytest.raises(ValueError, match="split='dev' is not known"):
        make("One", split="dev")
    with pytest.raises(ValueError, match=r"null_success_prob=1.5 must lie in \[0, 1\]"):
        make("Null", null_success_prob=1.5)


def test_runs_in_the_env_pool():
    pool = EnvPool("stepgym/Sandbox-Two-v0", num_envs=3)
    resets = pool.reset(seeds=[0, 1, 2])
    plans = [info["expert_plan"] for _, info in resets]
    done = {}
    for k in range(max(len(p) for p in plans)):
        acts = {i: f"<action>{p[k]}</action>" for i, p in enumerate(plans) if k < len(p)}
        for i, st in pool.step(acts).items():
            if st.terminated:
                done[i] = st.info["won"]
    pool.close()
    assert done == {0: True, 1: True, 2: True}


def test_every_treatment_is_within_reach_so_the_commitment_step_is_the_choice():
    env = make("One")
    _, info = env.reset(seed=3)
    plan = info["expert_plan"]
    k = next(i for i, c in enumerate(plan) if c.startswith("take "))
    obj = " ".join(plan[k].split()[1:3])
    _, steps = play(env, plan[: k + 1], seed=3)
    adm = steps[-1][5]["admissible_actions"]
    # holding the untreated goal object: all three treatments are admissible where the agent stands
    assert {f"heat {obj} with microwave 1", f"cool {obj} with fridge 1", f"clean {obj} with sinkbasin 1"} <= set(adm)
    obs, *_ = env.step(f"<action>cool {obj} with fridge 1</action>")
    assert obs == f"You cool the {obj} using the fridge 1."
    assert not any(
        c.split()[0] in ("heat", "cool", "clean") for c in env.step("<action>look</action>")[4]["admissible_actions"]
    )
