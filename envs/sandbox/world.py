"""Procedural worlds of the credit sandbox: rooms, objects, goals, the expert plan and the vocabulary.

A world is a pure function of ``(structure, subset, seed)`` (``random.Random(seed)``), so every
rollout of one task id sees the same room -- the property GRPO-style groups need.

Miniature of ALFWorld (Shridhar et al., 2021, arXiv 2010.03768): one room of receptacles
(``cabinet 1``, ``countertop 2``, ...), three appliances (``microwave 1`` heats, ``fridge 1``
cools, ``sinkbasin 1`` cleans), a few objects, ALFWorld's command grammar and wording. Deliberate
simplifications, each there to make the decisive steps exact:

* Treating an object (heat / cool / clean) is a one-time **commitment**: a treated object cannot be
  treated again (the command becomes inadmissible, "Nothing happens."). The observation of a
  treatment never says whether it was the right one.
* Putting the goal object(s) where the task says ends the episode; only then is success revealed.
* The appliances are not containers (nothing is put in or taken from them), and they are within
  reach: while holding an untreated object the agent may apply any of the three treatments from
  wherever it stands. In ALFWorld the choice of appliance is made one step before the treatment
  (``go to microwave 1``), where the treatment that follows is forced; here the commitment step is
  itself the choice, so the step that decides the outcome is exactly the step flagged decisive.
  (``go to microwave 1`` stays a valid, neutral command.)
* The pick and look task types of ALFWorld are not subsets: their only decision (the final put /
  turning on the lamp) shows its result at once, so they have no hidden decisive step. The
  subsets are the treatment types ``clean``, ``heat`` and ``cool``; the ``two`` structure is the
  PickTwo analogue ("find two hot apple and put them in ...").
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass, field

__all__ = [
    "ADJECTIVE",
    "APPLIANCE",
    "HOLDERS",
    "OBJECT_TYPES",
    "OPENABLE",
    "STRUCTURES",
    "SUBSETS",
    "World",
    "all_commands",
    "expert_plan",
    "generate_world",
    "split_words",
    "vocabulary",
]

SUBSETS: tuple[str, ...] = ("clean", "heat", "cool")
"""Task types (= evaluation subsets): which treatment the goal object needs."""
STRUCTURES: tuple[str, ...] = ("one", "two", "delayed")
"""Episode structures: one decisive step; two (PickTwo-like); one decisive step followed by a neutral errand."""
APPLIANCE: dict[str, str] = {"heat": "microwave 1", "cool": "fridge 1", "clean": "sinkbasin 1"}
"""The appliance that applies each treatment."""
ADJECTIVE: dict[str, str] = {"heat": "hot", "cool": "cool", "clean": "clean"}
"""How the task text names a treated object."""
HOLDERS: tuple[str, ...] = (
    "cabinet 1",
    "cabinet 2",
    "cabinet 3",
    "countertop 1",
    "countertop 2",
    "diningtable 1",
    "drawer 1",
    "drawer 2",
    "shelf 1",
    "shelf 2",
    "sidetable 1",
)
"""Every receptacle an object can be in (a room holds 4 to 6 of them)."""
OPENABLE: frozenset[str] = frozenset(h for h in HOLDERS if h.split()[0] in ("cabinet", "drawer"))
"""Receptacles that start closed and must be opened to see, take or put inside."""
OBJECT_TYPES: tuple[str, ...] = ("apple", "bread", "cup", "egg", "mug", "plate", "potato", "tomato")
"""Object types; instances are numbered 1 and 2."""
MAX_INSTANCE = 2


@dataclass
class World:
    """One generated task: the room, where every object starts, and the goals."""

    structure: str
    subset: str
    receptacles: list[str]
    """Holders and appliances of the room, in the order the welcome text lists them."""
    start: dict[str, list[str]]
    """Holder -> objects in it at the start."""
    goals: list[tuple[str, str | None, str]]
    """``(object, treatment or None, target receptacle)`` in the order the expert does them."""
    task_text: str
    location_of: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.location_of = {o: r for r, objs in self.start.items() for o in objs}


def generate_world(structure: str, subset: str, seed: int) -> World:
    """Build the room and task for ``(structure, subset, seed)`` deterministically."""
    if structure not in STRUCTURES or subset not in SUBSETS:
        raise ValueError(f"unknown structure/subset {structure!r}/{subset!r}; use one of {STRUCTURES} / {SUBSETS}")
    rng = random.Random(seed)
    holders = sorted(rng.sample(HOLDERS, rng.randint(4, 6)))
    receptacles = sorted(holders + list(APPLIANCE.values()))
    types = rng.sample(OBJECT_TYPES, 4)
    goal_type, errand_type, distractors = types[0], types[1], types[2:]
    target = rng.choice(holders)
    others = [h for h in holders if h != target]
    start: dict[str, list[str]] = {h: [] for h in holders}
    if structure == "two":
        goal_objs = [f"{goal_type} 1", f"{goal_type} 2"]
        goals = [(o, subset, target) for o in goal_objs]
        task = f"find two {ADJECTIVE[subset]} {goal_type} and put them in {target}."
    else:
        goal_objs = [f"{goal_type} 1"]
        goals = [(goal_objs[0], subset, target)]
        task = f"put a {ADJECTIVE[subset]} {goal_type} in {target}."
    for o in goal_objs:
        start[rng.choice(others)].append(o)
    if structure == "delayed":
        target2 = rng.choice(others)
        errand = f"{errand_type} 1"
        start[rng.choice([h for h in holders if h != target2])].append(errand)
        goals.append((errand, None, target2))
        task = f"put a {ADJECTIVE[subset]} {goal_type} in {target}, then put a {errand_type} in {target2}."
    for t in distractors:
        start[rng.choice(holders)].append(f"{t} 1")
    return World(structure, subset, receptacles, start, goals, task)


def expert_plan(world: World) -> list[str]:
    """The shortest command sequence that wins ``world`` (the expert walkthrough)."""
    cmds: list[str] = []
    loc: str | None = None
    opened: set[str] = set()

    def go(r: str) -> None:
        nonlocal loc
        if loc != r:
            cmds.append(f"go to {r}")
            loc = r
        if r in OPENABLE and r not in opened:
            cmds.append(f"open {r}")
            opened.add(r)

    for obj, treatment, target in world.goals:
        src = world.location_of[obj]
        go(src)
        cmds.append(f"take {obj} from {src}")
        if treatment is not None:
            cmds.append(f"{treatment} {obj} with {APPLIANCE[treatment]}")
        go(target)
        cmds.append(f"put {obj} in/on {target}")
    return cmds


def all_commands() -> list[str]:
    """Every command string any sandbox world can make admissible."""
    objs = [f"{t} {i}" for t in OBJECT_TYPES for i in range(1, MAX_INSTANCE + 1)]
    cmds = ["inventory", "look"]
    cmds += [f"go to {r}" for r in (*HOLDERS, *APPLIANCE.values())]
    cmds += [f"{verb} {r}" for r in sorted(OPENABLE) for verb in ("open", "close")]
    for o in objs:
        cmds += [f"take {o} from {h}" for h in HOLDERS]
        cmds += [f"put {o} in/on {h}" for h in HOLDERS]
        cmds += [f"{t} {o} with {a}" for t, a in APPLIANCE.items()]
    return cmds


_WORD_RE = re.compile(r"[A-Za-z]+|[0-9]|[^\sA-Za-z0-9]")


def split_words(text: str) -> list[str]:
    """The word split the vocabulary uses: letter runs, single digits, single punctuation marks."""
    return _WORD_RE.findall(text)


# Fixed text of observations, task texts, protocol and the parse errors of parse_tagged_action.
_TEMPLATE_TEXT = """
-= Welcome to TextWorld, ALFRED! =- You are in the middle of a room. Looking quickly around you, you see
a nothing. Your task is to: put a in, then find two and put them in hot cool clean
You arrive at On the you see nothing. The is closed. The is open. In it, you see
You open the You close the You pick up the from the You put the in/on the You heat the using the
You cool the using the You clean the using the You are facing the Next to it, you see nothing.
You are carrying: You are not carrying anything. Nothing happens. Task completed. Task failed.
Invalid action: no complete <action>...</action> found found 0123456789 actions; write exactly one
the <action> tag is empty
"""


def vocabulary(protocol: str = "") -> list[str]:
    """Every word (see :func:`split_words`) that can appear in a sandbox observation or command.

    Args:
        protocol: The env's protocol text, whose words are added too.

    Returns:
        The sorted word list: build a tokenizer for the sandbox from it.
    """
    words = set(split_words(_TEMPLATE_TEXT + " " + protocol))
    for c in all_commands():
        words.update(split_words(c))
    return sorted(words)
