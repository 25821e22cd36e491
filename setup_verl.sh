#!/usr/bin/env bash
# A third venv, .venv-verl, with the verl release recipes/verl/ targets (requirements-verl.txt):
# verl itself without its dependencies (they pin transformers < 5.11 and a GPU stack), then the
# modules its trainer config, dataset, reward loop and core_algos import. tests/test_verl.py
# runs real verl code from it on CPU. About 2 minutes.
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
want=$(sha256sum requirements-verl.txt | cut -d' ' -f1)
stamp=.venv-verl/.requirements.sha256
[ "$(cat "$stamp" 2>/dev/null)" = "$want" ] && exit 0
[ -x .venv-verl/bin/python ] || "$PY" -m venv .venv-verl
pip_retry .venv-verl/bin/pip install -q --upgrade pip
echo "[setup_verl] installing verl (no deps) and what it imports into .venv-verl"
pip_retry .venv-verl/bin/pip install -q $(grep -v '^verl==' requirements-verl.txt | sed 's/#.*//' | tr '\n' ' ')
pip_retry .venv-verl/bin/pip install -q --no-deps "$(grep '^verl==' requirements-verl.txt)"
echo "$want" > "$stamp"
