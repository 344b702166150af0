"""Adapters that expose other ecosystems' environments as stepgym text envs (one adapter per ecosystem).

Each adapter is one :class:`~stepgym.envs.base.TextEnv` subclass that plays any environment of its
ecosystem, chosen by a constructor argument; the ids below register it once per environment with that
argument in the spec's kwargs, so ``gym.make("textarena/Sudoku-v0")`` and
``gym.make("reasoning_gym/leg_counting")`` work like any other id (Gymnasium itself suggests close names
for a mistyped one). Registering imports no ecosystem: each loads on ``gym.make`` and a missing one
raises ``gymnasium.error.DependencyNotInstalled`` naming the stepgym extra that installs it.

=============  =======================  ==================  ======================================
namespace      ids                      extra               env
=============  =======================  ==================  ======================================
textarena      ``textarena/<game>``     ``textarena``       :class:`.textarena.TextArenaEnv`
reasoning_gym  ``reasoning_gym/<name>`` ``reasoning-gym``   :class:`.reasoning_gym.ReasoningGymEnv`
textworld      ``textworld/<game>``     ``textworld``       :class:`.textworld.TextWorldEnv`
scienceworld   ``scienceworld/<task>``  ``scienceworld``    :class:`.scienceworld.ScienceWorldEnv`
=============  =======================  ==================  ======================================
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass

from gymnasium.envs.registration import register, registry
from gymnasium.error import DependencyNotInstalled
from stepgym.envs.adapters.catalog import (
    REASONING_GYM_DATASETS,
    SCIENCEWORLD_TASKS,
    TEXTARENA_GAMES,
    TEXTARENA_NLTK_GAMES,
    TEXTWORLD_GAMES,
)

__all__ = ["ADAPTERS", "Adapter", "list_adapter_env_ids", "check_known", "dependency_error", "register_adapter_envs"]


@dataclass(frozen=True)
class Adapter:
    """One ecosystem: where its adapter lives and which of its environments get ids."""

    namespace: str
    """The id namespace (``<namespace>/<name>``)."""
    entry_point: str
    """The adapter class, as a string entry point (imported only by ``gym.make``)."""
    kwarg: str
    """The adapter's constructor argument that names the environment."""
    names: tuple[str, ...]
    """The environment names, one registered id each."""
    extra: str
    """The stepgym extra that installs the ecosystem (``pip install 'stepgym[<extra>]'``)."""


ADAPTERS: dict[str, Adapter] = {
    a.namespace: a
    for a in (
        Adapter(
            "textarena",
            "stepgym.envs.adapters.textarena:TextArenaEnv",
            "game",
            TEXTARENA_GAMES + TEXTARENA_NLTK_GAMES,
            "textarena",
        ),
        Adapter(
            "reasoning_gym",
            "stepgym.envs.adapters.reasoning_gym:ReasoningGymEnv",
            "dataset",
            REASONING_GYM_DATASETS,
            "reasoning-gym",
        ),
        Adapter("textworld", "stepgym.envs.adapters.textworld:TextWorldEnv", "game", TEXTWORLD_GAMES, "textworld"),
        Adapter(
            "scienceworld",
            "stepgym.envs.adapters.scienceworld:ScienceWorldEnv",
            "task",
            SCIENCEWORLD_TASKS,
            "scienceworld",
        ),
    )
}
"""Every ecosystem adapter, by id namespace."""


def list_adapter_env_ids(namespace: str | None = None) -> list[str]:
    """The registered adapter env ids, sorted (all ecosystems, or one namespace).

    Raises:
        ValueError: ``namespace`` is not an adapter's (with a did-you-mean).
    """
    if namespace is None:
        return sorted(f"{a.namespace}/{n}" for a in ADAPTERS.values() for n in a.names)
    check_known("adapter namespace", namespace, ADAPTERS)
    return sorted(f"{namespace}/{n}" for n in ADAPTERS[namespace].names)


def check_known(kind: str, name: str, known: object) -> None:
    """Raise ``ValueError`` with a did-you-mean when ``name`` is not in ``known``."""
    names = sorted(str(k) for k in known)  # type: ignore[attr-defined]
    if name in names:
        return
    close = difflib.get_close_matches(name, names, n=3)
    hint = f"did you mean {' or '.join(repr(c) for c in close)}? " if close else ""
    shown = ", ".join(names[:12]) + (f", ... ({len(names)} in all)" if len(names) > 12 else "")
    raise ValueError(f"unknown {kind} {name!r}; {hint}choose from: {shown}")


def dependency_error(namespace: str, e: BaseException) -> DependencyNotInstalled:
    """The error for a missing ecosystem package: what is missing and the extra that installs it."""
    extra = ADAPTERS[namespace].extra
    return DependencyNotInstalled(
        f"{namespace}/* envs need the {extra} package: pip install 'stepgym[{extra}]' ({type(e).__name__}: {e})"
    )


def register_adapter_envs() -> None:
    """Register every adapter id with Gymnasium (idempotent; imports no ecosystem)."""
    for a in ADAPTERS.values():
        for name in a.names:
            env_id = f"{a.namespace}/{name}"
            if env_id not in registry:
                register(id=env_id, entry_point=a.entry_point, kwargs={a.kwarg: name})
