"""One resolver for the data folder: ``--data-dir`` > ``$STEPGYM_DATA`` > ``~/.cache/stepgym/data``.

The layout is the one of ``shared/data`` in the repository's checkout::

    <data>/searchqa/<subset>/questions.jsonl, <data>/searchqa/corpus.jsonl
    <data>/alfworld/json_2.1.1/<split>/<task>/<trial>/game.tw-pddl, <data>/alfworld/logic/
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

from stepgym.envs.records import JsonDict

__all__ = ["DataNotFoundError", "MalformedDataError", "default_data_dir", "read_jsonl", "resolve_data_dir"]

ENV_VAR = "STEPGYM_DATA"


class DataNotFoundError(FileNotFoundError):
    """Raised when the data folder (or a part of it) cannot be found."""


class MalformedDataError(ValueError):
    """Raised when a data file cannot be parsed; the message names the file and line."""


def default_data_dir() -> Path:
    """The last-resort data location, ``~/.cache/stepgym/data``."""
    return Path.home() / ".cache" / "stepgym" / "data"


def resolve_data_dir(data_dir: str | os.PathLike[str] | None = None, subdir: str | None = None) -> Path:
    """Find the data folder (and optionally a sub-folder inside it).

    Args:
        data_dir: Explicit folder (``--data-dir``); wins over everything else.
        subdir: A sub-folder that must exist inside the data folder, e.g. ``"searchqa"``.

    Returns:
        The resolved folder (``<data>/<subdir>`` when ``subdir`` is given).

    Raises:
        DataNotFoundError: Listing every place that was tried and how to fix it.
    """
    candidates: list[tuple[str, Path]] = []
    if data_dir is not None:
        candidates.append(("--data-dir / data_dir argument", Path(data_dir).expanduser()))
    elif os.environ.get(ENV_VAR):
        candidates.append((f"${ENV_VAR}", Path(os.environ[ENV_VAR]).expanduser()))
    candidates.append(("default", default_data_dir()))

    tried = []
    for how, base in candidates:
        target = base / subdir if subdir else base
        if target.is_dir():
            return target.resolve()
        tried.append(f"  - {target} ({how}): {'missing ' + subdir + '/' if base.is_dir() and subdir else 'not found'}")
        if data_dir is not None:
            break  # an explicit folder is never silently replaced by another one
    what = f"the '{subdir}' data folder" if subdir else "the stepgym data folder"
    raise DataNotFoundError(
        f"Could not find {what}. Looked in:\n" + "\n".join(tried) + "\n"
        f"Fix: pass --data-dir /path/to/data, or set {ENV_VAR}=/path/to/data "
        f"(in a checkout of the project: {ENV_VAR}=../shared/data), or copy the data to "
        f"{default_data_dir()}."
    )


def read_jsonl(path: str | os.PathLike[str]) -> Iterator[JsonDict]:
    """Yield the JSON objects of a ``.jsonl`` file, one per non-empty line.

    Raises:
        DataNotFoundError: The file does not exist.
        MalformedDataError: A line is not a JSON object; the message gives file and line number.
    """
    p = Path(path)
    if not p.is_file():
        raise DataNotFoundError(f"{p} does not exist")
    with p.open("r", encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise MalformedDataError(f"{p}:{lineno}: not valid JSON ({e.msg})") from e
            if not isinstance(obj, dict):
                raise MalformedDataError(f"{p}:{lineno}: expected a JSON object, got {type(obj).__name__}")
            yield obj
