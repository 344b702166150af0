import json
from pathlib import Path

import pytest
from stepgym.envs.data import DataNotFoundError, MalformedDataError, read_jsonl, resolve_data_dir


def test_precedence_argument_over_env_var(tmp_path, monkeypatch):
    a, b = tmp_path / "a", tmp_path / "b"
    (a / "searchqa").mkdir(parents=True)
    (b / "searchqa").mkdir(parents=True)
    monkeypatch.setenv("STEPGYM_DATA", str(b))
    assert resolve_data_dir(a, "searchqa") == (a / "searchqa").resolve()
    assert resolve_data_dir(None, "searchqa") == (b / "searchqa").resolve()


def test_default_location_used_last(tmp_path, monkeypatch):
    monkeypatch.delenv("STEPGYM_DATA", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / ".cache/stepgym/data/alfworld").mkdir(parents=True)
    assert resolve_data_dir(subdir="alfworld") == (tmp_path / ".cache/stepgym/data/alfworld").resolve()


def test_missing_lists_every_place_and_the_fix(tmp_path, monkeypatch):
    monkeypatch.setenv("STEPGYM_DATA", str(tmp_path / "nowhere"))
    monkeypatch.setenv("HOME", str(tmp_path))
    with pytest.raises(DataNotFoundError) as e:
        resolve_data_dir(subdir="searchqa")
    msg = str(e.value)
    assert str(tmp_path / "nowhere" / "searchqa") in msg and "$STEPGYM_DATA" in msg
    assert str(tmp_path / ".cache/stepgym/data/searchqa") in msg
    assert "--data-dir" in msg


def test_explicit_dir_is_never_replaced(tmp_path, monkeypatch):
    (tmp_path / "env" / "searchqa").mkdir(parents=True)
    monkeypatch.setenv("STEPGYM_DATA", str(tmp_path / "env"))
    with pytest.raises(DataNotFoundError, match="data_dir argument"):
        resolve_data_dir(tmp_path / "wrong", "searchqa")


def test_read_jsonl_reports_file_and_line(tmp_path):
    p = tmp_path / "q.jsonl"
    p.write_text(json.dumps({"id": 1}) + "\n\n" + '{"id": 2\n')
    with pytest.raises(MalformedDataError, match=rf"{p}:3: not valid JSON"):
        list(read_jsonl(p))
    p.write_text("[1, 2]\n")
    with pytest.raises(MalformedDataError, match=r":1: expected a JSON object, got list"):
        list(read_jsonl(p))


def test_real_shared_data_resolves():
    d = resolve_data_dir(subdir="searchqa")  # .ci/run runs the README's STEPGYM_DATA=../shared/data
    first = next(read_jsonl(Path(d) / "nq" / "questions.jsonl"))
    assert {"id", "question", "golden_answers"} <= set(first)


def test_data_resolves_in_a_subprocess_started_elsewhere(tmp_path):
    # the README's relative STEPGYM_DATA must still resolve in a child running in another folder
    # (tests/test_run_cli.py starts benchmarks/run.py in tmp_path); conftest makes it absolute
    import subprocess
    import sys

    code = "from stepgym.envs.data import resolve_data_dir; print(resolve_data_dir(subdir='searchqa'))"
    r = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    assert Path(r.stdout.strip()) == resolve_data_dir(subdir="searchqa")
