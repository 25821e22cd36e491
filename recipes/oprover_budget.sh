#!/usr/bin/env bash
# OProver's budget curve: multi-round pass@k against the total attempt budget (8 ... 256) for
# width x depth splits, with a frozen proof memory (shipped proofs; add an iteration's
# found_proofs.parquet via MEMORY), and the ablations without Lean feedback and without
# retrieval. One run of the largest width and depth; every split is read from it (unbiased
# pass@width over trajectories cut at each depth). Reference (docs/RECIPES.md): OProver-32B
# 93.3 pass@32 on miniF2F-test; small models land far lower.   CPU=1: small, on the toy task.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "${CPU:-0}" = 1 ]; then
  source recipes/cpu_setup.sh
  BENCH=toy; W=4; D=2; TOKENS=48; EXTRA=(--max_problems 12); MEMORY=${MEMORY:-sft}   # toy proofs that verify
else
  : "${LEAN_SERVER_API_URL:?export LEAN_SERVER_API_URL=http://localhost:80}"
  PY=python; RUN=${RUN:-oprover_budget}; MODEL=${MODEL:-AI-MO/Kimina-Prover-RL-1.7B}
  BENCH=minif2f_test; W=64; D=4; TOKENS=16384; EXTRA=(--backend vllm)
  $PY 01_prepare_data.py --run_name "$RUN" --rl_sources "" --sft_sources "" --eval_sets "$BENCH"
fi
MEMORY=${MEMORY:-shipped}
run() { $PY 04_eval.py --run_name "$RUN" --model "$MODEL" --tag oprover --benchmarks "$BENCH" --mode repair \
          --repair_width "$W" --repair_depth "$D" --max_new_tokens "$TOKENS" --memory "$MEMORY" "${EXTRA[@]}" "$@"; }
run --retrieve_k 3
run --retrieve_k 3 --repair_feedback false     # ablation 1: no Lean feedback
run --retrieve_k 0 --repair_feedback false     # ablation 2: no feedback, no retrieval
L="w$W-d$D"
$PY recipes/paper_tables.py budget --run "$RUN" --tag oprover --bench "$BENCH" \
    --labels "$L-k3-t$TOKENS,$L-k3-t$TOKENS-nofb,$L-k0-t$TOKENS-nofb" --name oprover_budget
