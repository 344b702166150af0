"""Imports point one way: envs <- agents <- distill <- trainers; envs never needs torch."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
ORDER = ["envs", "agents", "distill", "trainers"]


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


@pytest.mark.parametrize("part", ORDER)
def test_no_import_against_the_direction(part):
    allowed = set(ORDER[: ORDER.index(part) + 1])
    bad = []
    for f in (ROOT / part).rglob("*.py"):
        for name in _imports(f):
            bits = name.split(".")
            if bits[0] == "stepgym" and len(bits) > 1 and bits[1] in ORDER and bits[1] not in allowed:
                bad.append(f"{f.relative_to(ROOT)} imports {name}")
            if bits[0] in ORDER:
                bad.append(f"{f.relative_to(ROOT)} imports bare {name!r}; use stepgym.{name}")
    assert not bad, "\n".join(bad)


def test_envs_import_without_torch():
    code = (
        "import sys; import stepgym.envs, gymnasium as gym; "
        "[gym.spec(i) for i in stepgym.envs.BUILTIN_ENVS]; "
        "[gym.spec(i) for i in stepgym.envs.list_adapter_env_ids()]; "
        "heavy = ('torch', 'transformers', 'pyserini', 'faiss', 'alfworld', "
        "'textarena', 'reasoning_gym', 'textworld', 'scienceworld'); "
        "bad = [m for m in heavy if m in sys.modules]; "
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_every_package_folder_is_declared_in_pyproject():
    import tomllib

    conf = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    declared = set(conf["packages"])
    dirs = conf["package-dir"]
    for pkg, folder in dirs.items():
        for init in (ROOT / folder).rglob("__init__.py"):
            rel = init.parent.relative_to(ROOT / folder)
            name = ".".join([pkg, *rel.parts]) if rel.parts else pkg
            assert name in declared, f"{name} ({init.parent}) missing from [tool.setuptools] packages"
