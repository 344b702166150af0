"""Shared test setup: offline, data from ../shared/data unless STEPGYM_DATA says otherwise."""

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
if "STEPGYM_DATA" not in os.environ and (ROOT.parent / "shared" / "data").is_dir():
    os.environ["STEPGYM_DATA"] = str(ROOT.parent / "shared" / "data")
elif os.environ.get("STEPGYM_DATA"):
    # the README's `STEPGYM_DATA=../shared/data` is relative to where pytest starts; resolve it now, so the
    # subprocesses the tests start in other folders (tests/test_run_cli.py) inherit a path that still resolves
    os.environ["STEPGYM_DATA"] = str(Path(os.environ["STEPGYM_DATA"]).expanduser().resolve())


def pytest_collection_modifyitems(config, items):
    try:
        import torch

        has_gpu = torch.cuda.is_available()
    except ImportError:
        has_gpu = False
    if not has_gpu:
        skip = pytest.mark.skip(reason="needs a CUDA GPU")
        for item in items:
            if "gpu" in item.keywords:
                item.add_marker(skip)
