"""The credit-sandbox text environments: ALFWorld in miniature with known decisive steps.

**Decisive step** (the definition every variant reports). A step is decisive iff its action is a
*commitment*: the first treatment (heat / cool / clean) applied to a goal object. By construction

* a commitment cannot be undone (a treated object cannot be treated again);
* the right commitment (the treatment the task names) is necessary: every winning episode
  contains exactly one per goal object; a wrong one (another treatment) dooms the episode at once
  -- no continuation can win -- and an episode that ends without it (the goal objects were put in
  place untreated, which ends the episode) fails;
* the observation of a commitment reads the same whether it was right or wrong ("You heat the
  apple 1 using the microwave 1."), and nothing before the final step reveals the outcome.

Every other step is **neutral**: navigation, opening, taking, putting elsewhere, treating a non-goal
object, look, inventory, inadmissible and unparsable actions. A neutral mistake only costs time.

Reward: ``1.0`` on the step that ends a won episode, else 0; an invalid step (unparsable or
inadmissible) gets ``-invalid_penalty`` instead (0 by default; ALFWorld uses 0.1), also when it ends
the episode (the outcome is ``info["won"]``): an invalid step's reward is only its penalty, which
the trainer adds to the trajectory score once (``trainers/batch.py``).

Per-step ``info``: ``decisive`` (bool, the above), ``commitment`` (``"right"``, ``"wrong"`` or
``None``), ``nominal_decisive`` (would be decisive outside the null variant), ``doomed`` (no
continuation can win any more, ignoring the step budget: set by a wrong commitment or by a failed
end -- for analysis only, never shown to the agent), ``won``,
``admissible_actions``. Reset ``info``: ``decisive_commands`` (the right commitments),
``nominal_decisive_commands``, ``expert_plan``, ``num_decisive``, plus ``won``/``doomed`` False.

Variants (env ids ``stepgym/Sandbox-<Variant>-v0``): ``One`` (one decisive step), ``Two``
(PickTwo-like: two goal objects, two decisive steps), ``Delayed`` (the decisive step, then a neutral
errand of four or more steps before the outcome shows), ``Null`` (the ``One`` worlds, but success is
a coin drawn from ``self.np_random`` at reset with probability ``null_success_prob``, independent
of every action -- also when the episode runs out of steps; no step is decisive there).
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from typing import Any, ClassVar

from stepgym.envs.base import TextEnv, parse_tagged_action
from stepgym.envs.sandbox.world import (
    APPLIANCE,
    OPENABLE,
    SUBSETS,
    World,
    expert_plan,
    generate_world,
    vocabulary,
)

__all__ = ["SandboxDelayedEnv", "SandboxEnv", "SandboxNullEnv", "SandboxOneEnv", "SandboxTwoEnv"]


def _listing(items: Sequence[str]) -> str:
    """ALFWorld's enumeration: "a x 1", "a x 1, and a y 1", "a x 1, a y 1, and a z 1"."""
    if not items:
        return "nothing"
    names = [f"a {i}" for i in items]
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + ", and " + names[-1]


class SandboxEnv(TextEnv):
    """Base of the sandbox variants; pick one with a subclass (``structure`` and ``null``)."""

    structure: ClassVar[str] = "one"
    null: ClassVar[bool] = False
    protocol: ClassVar[str] = (
        "You are in a household. Do the task written after 'Your task is to:'. Each turn, write exactly one "
        "command inside <action>...</action>, e.g. <action>go to cabinet 1</action>. Commands: go to X, open X, "
        "close X, take OBJ from X, put OBJ in/on X, heat OBJ with microwave 1, cool OBJ with fridge 1, "
        "clean OBJ with sinkbasin 1, look, inventory."
    )
    subsets: ClassVar[tuple[str, ...]] = SUBSETS

    def __init__(
        self,
        num_tasks: int = 1000,
        split: str = "train",
        max_steps: int = 40,
        null_success_prob: float = 0.5,
        invalid_penalty: float = 0.0,
        render_mode: str | None = None,
    ):
        """Create the env.

        Args:
            num_tasks: Tasks per subset (task ids ``<subset>-<split>-<k>``, k < num_tasks).
            split: ``"train"`` or ``"test"``; the two draw their worlds from disjoint seeds.
            max_steps: Steps before the episode is truncated.
            null_success_prob: Success probability of the null variant (ignored elsewhere).
            invalid_penalty: Reward of an invalid step is ``-invalid_penalty`` (>= 0).
            render_mode: ``"ansi"`` or ``None``.
        """
        super().__init__(render_mode=render_mode, max_text_chars=4096)
        if split not in ("train", "test"):
            raise ValueError(f"split={split!r} is not known; use 'train' or 'test'")
        if num_tasks < 1 or max_steps < 1:
            raise ValueError(f"num_tasks={num_tasks} and max_steps={max_steps} must both be >= 1")
        if not 0.0 <= null_success_prob <= 1.0:
            raise ValueError(f"null_success_prob={null_success_prob} must lie in [0, 1]")
        if invalid_penalty < 0:
            raise ValueError(f"invalid_penalty={invalid_penalty} must be >= 0 (it is subtracted)")
        self.invalid_penalty = float(invalid_penalty)
        self.max_steps = max_steps
        self.null_success_prob = null_success_prob
        self._ids = [f"{s}-{split}-{k}" for s in SUBSETS for k in range(num_tasks)]
        self._world: World | None = None

    @classmethod
    def vocabulary(cls) -> list[str]:
        """Every word an observation, command or the protocol of this env can contain."""
        return vocabulary(cls.protocol)

    # ----------------------------------------------------------------- TextEnv hooks
    @property
    def task_ids(self) -> Sequence[str]:
        """``<subset>-<split>-<k>`` for every subset and ``k < num_tasks``."""
        return self._ids

    def task_subset(self, task_id: str) -> str:
        """The treatment the task needs: ``clean``, ``heat`` or ``cool``."""
        return task_id.split("-", 1)[0]

    def _reset_task(self, task_id: str) -> tuple[str, dict[str, Any]]:
        seed = zlib.crc32(f"{self.structure}/{task_id}".encode())
        w = self._world = generate_world(self.structure, self.task_subset(task_id), seed)
        self._loc: str | None = None
        self._opened: set[str] = set()
        self._contents = {r: list(objs) for r, objs in w.start.items()}
        self._holding: str | None = None
        self._treated: dict[str, str] = {}
        self._goal_treatment = {o: t for o, t, _ in w.goals if t is not None}
        self._doomed = False
        self._coin = bool(self.np_random.random() < self.null_success_prob) if self.null else False
        nominal = [f"{t} {o} with {APPLIANCE[t]}" for o, t in self._goal_treatment.items()]
        obs = f"-= Welcome to TextWorld, ALFRED! =-\n\n{self._room_text()}\n\nYour task is to: {w.task_text}"
        info = {
            "admissible_actions": self._admissible(),
            "decisive_commands": [] if self.null else nominal,
            "nominal_decisive_commands": nominal,
            "num_decisive": 0 if self.null else len(nominal),
            "expert_plan": expert_plan(w),
            "won": False,
            "doomed": False,
        }
        return obs, info

    def _step(self, action_text: str) -> tuple[str, float, bool, bool, dict[str, Any]]:
        parsed = parse_tagged_action(action_text)
        info: dict[str, Any] = {"decisive": False, "nominal_decisive": False, "commitment": None}
        if not parsed.valid:
            obs, valid, cmd, terminal = f"Invalid action: {parsed.error}.", False, None, False
        else:
            cmd = parsed.content
            valid = cmd in self._admissible()
            obs, terminal = self._apply(cmd, info) if valid else ("Nothing happens.", False)
        truncated = not terminal and self._num_steps + 1 >= self.max_steps
        won = False
        if terminal or truncated:
            treated_right = all(self._treated.get(o) == t for o, t in self._goal_treatment.items())
            won = self._coin if self.null else (terminal and treated_right)
            if terminal:
                obs += "\n\nTask completed." if won else "\n\nTask failed."
        self._doomed = self._doomed or ((terminal or truncated) and not won)
        info.update(
            valid_action=valid,
            action=cmd if valid else None,
            won=won,
            doomed=self._doomed,
            admissible_actions=self._admissible(),
        )
        if self.null:
            info["decisive"] = False
        return obs, float(won) if valid else -self.invalid_penalty, terminal, truncated, info

    # ----------------------------------------------------------------- world mechanics
    def _admissible(self) -> list[str]:
        loc, held = self._loc, self._holding
        cmds = [f"go to {r}" for r in self._world.receptacles if r != loc]
        if loc is not None and loc not in APPLIANCE.values():
            closed = loc in OPENABLE and loc not in self._opened
            if loc in OPENABLE:
                cmds.append(f"open {loc}" if closed else f"close {loc}")
            if not closed:
                if held is None:
                    cmds += [f"take {o} from {loc}" for o in self._contents[loc]]
                else:
                    cmds.append(f"put {held} in/on {loc}")
        if held is not None and held not in self._treated:  # the appliances are within reach
            cmds += [f"{t} {held} with {a}" for t, a in APPLIANCE.items()]
        return cmds + ["inventory", "look"]

    def _room_text(self) -> str:
        seen = _listing(self._world.receptacles)
        return f"You are in the middle of a room. Looking quickly around you, you see {seen}."

    def _seen(self, r: str) -> str:
        objs = _listing(self._contents[r])
        return f"In it, you see {objs}." if r in OPENABLE else f"On the {r}, you see {objs}."

    def _apply(self, cmd: str, info: dict[str, Any]) -> tuple[str, bool]:
        """Apply an admissible command; returns the observation and whether the episode ended."""
        w = self._world
        words = cmd.split()
        verb = words[0]
        if verb == "go":
            r = self._loc = cmd[6:]
            if r in APPLIANCE.values():
                return f"You arrive at {r}.", False
            if r in OPENABLE and r not in self._opened:
                return f"You arrive at {r}. The {r} is closed.", False
            if r in OPENABLE:
                return f"You arrive at {r}. The {r} is open. {self._seen(r)}", False
            return f"You arrive at {r}. {self._seen(r)}", False
        if verb == "open":
            self._opened.add(self._loc)
            return f"You open the {self._loc}. The {self._loc} is open. {self._seen(self._loc)}", False
        if verb == "close":
            self._opened.discard(self._loc)
            return f"You close the {self._loc}.", False
        if verb == "take":
            obj = " ".join(words[1:3])
            self._contents[self._loc].remove(obj)
            self._holding = obj
            return f"You pick up the {obj} from the {self._loc}.", False
        if verb == "put":
            obj = self._holding
            self._contents[self._loc].append(obj)
            self._holding = None
            done = all(o in self._contents[target] for o, _, target in w.goals)
            return f"You put the {obj} in/on the {self._loc}.", done
        if verb in APPLIANCE:
            obj = self._holding
            self._treated[obj] = verb
            if obj in self._goal_treatment:
                right = verb == self._goal_treatment[obj]
                info.update(decisive=True, nominal_decisive=True, commitment="right" if right else "wrong")
                if not right and not self.null:
                    self._doomed = True
            return f"You {verb} the {obj} using the {' '.join(words[-2:])}.", False
        if verb == "inventory":
            held = self._holding
            return (f"You are carrying: a {held}." if held else "You are not carrying anything."), False
        # look
        if self._loc is None:
            return self._room_text(), False
        return f"You are facing the {self._loc}. Next to it, you see nothing.", False


class SandboxOneEnv(SandboxEnv):
    """One decisive step: put a hot / cool / clean object somewhere."""

    structure = "one"


class SandboxTwoEnv(SandboxEnv):
    """Two decisive steps (PickTwo-like): two objects, each needs the treatment."""

    structure = "two"


class SandboxDelayedEnv(SandboxEnv):
    """One decisive step followed by a neutral errand: the consequence shows several steps later."""

    structure = "delayed"


class SandboxNullEnv(SandboxEnv):
    """The ``One`` worlds with a random outcome independent of every action (no decisive step)."""

    structure = "one"
    null = True
