#!/usr/bin/env bash
# Kimina-Prover-RL 1.7B: the published run (expected: 76.63% pass@32 on miniF2F-test). One GPU here; RL_ENGINE=verl for 8.
SIZE=1.7B exec bash "$(dirname "$0")/kimina_rl.sh" "$@"
