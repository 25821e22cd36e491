#!/usr/bin/env bash
# Kimina-Prover-RL's GRPO run on verl 0.9.1 (requirements-verl.txt), for several GPUs or machines.
# Every key, with why, is in recipes/verl/kimina_grpo.overrides. Needs a Kimina Lean Server
# (LEAN_SERVER_API_URL) reachable from every node, and KIMINA_EC_CACHE on a file system every
# node shares (the error-correction cache: reward workers write it, the dataset reads it).
#   RUN=kimina bash recipes/verl/kimina_grpo.sh                        # one node, 8 GPUs
#   NNODES=4 bash recipes/verl/kimina_grpo.sh                          # after `ray start` on each node
# Multi-node: start Ray (`ray start --head` on node 0, `ray start --address=HEAD:6379` on the
# others), then run this on node 0; verl places workers across the cluster.
set -euo pipefail
cd "$(dirname "$0")/../.."
: "${LEAN_SERVER_API_URL:?export LEAN_SERVER_API_URL=http://host:80}"
export RUN=${RUN:-kimina_verl} MODEL=${MODEL:-AI-MO/Kimina-Prover-Distill-1.7B}
export NGPUS=${NGPUS:-8} NNODES=${NNODES:-1} DATA=${DATA:-data/verl_$RUN}
export KIMINA_EC_CACHE=${KIMINA_EC_CACHE:-$PWD/runs/$RUN/verl_ec_cache.jsonl}
mkdir -p "$(dirname "$KIMINA_EC_CACHE")"
python 01_prepare_data.py --run_name "$RUN" --rl_sources kimina_promptset --sft_sources "" \
    --eval_sets minif2f_test_kimina --tokenizer "$MODEL" --max_prompt_tokens 8192
python recipes/verl/export_verl.py --run_name "$RUN" --out "$DATA"
mapfile -t OVERRIDES < <(python -c 'import os, sys
for line in open(sys.argv[1]):
    if line.strip() and not line.lstrip().startswith("#"):
        print(os.path.expandvars(line.strip()))' recipes/verl/kimina_grpo.overrides)
python -m verl.trainer.main_ppo "${OVERRIDES[@]}" "$@"
