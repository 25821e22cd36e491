#!/usr/bin/env bash
# Kimina-Prover-RL 0.6B: the published run (expected: 71.30% pass@32 on miniF2F-test). One GPU here; RL_ENGINE=verl for 8.
SIZE=0.6B exec bash "$(dirname "$0")/kimina_rl.sh" "$@"
