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
    d = resolve_data_dir(subdir="searchqa")  # .ci/run sets STEPGYM_DATA=../shared/data
    first = next(read_jsonl(Path(d) / "nq" / "questions.jsonl"))
    assert {"id", "question", "golden_answers"} <= set(first)
