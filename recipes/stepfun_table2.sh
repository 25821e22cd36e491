#!/usr/bin/env bash
# StepFun-Prover's Table 2: pass@1 (mean of 32 samples) on miniF2F-test against the maximum
# generation length (the whole context: 4096 ... 20480 tokens) and against the maximum number of
# REPL interactions. StepFun's sampling: temperature 0.999, top_p 0.95, 16,384 new tokens per
# call. Expected (docs/RECIPES.md): StepFun-Prover-Preview-7B 66.0, 32B 70.0 pass@1 at
# 20,480.   CPU=1: the same sweep, small, on the toy task.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "${CPU:-0}" = 1 ]; then
  source recipes/cpu_setup.sh
  BENCH=toy; N=4; TOKENS=48; LENGTHS=(200 400); CHECKS=(1 2); EXTRA=(--max_problems 12)
else
  : "${LEAN_SERVER_API_URL:?export LEAN_SERVER_API_URL=http://localhost:80}"
  PY=python; RUN=${RUN:-stepfun_table2}; MODEL=${MODEL:-stepfun-ai/StepFun-Prover-Preview-7B}
  BENCH=minif2f_test; N=32; TOKENS=16384; LENGTHS=(4096 8192 12288 16384 20480); CHECKS=(1 2 4 8 16)
  EXTRA=(--backend vllm)
  $PY 01_prepare_data.py --run_name "$RUN" --rl_sources "" --sft_sources "" --eval_sets "$BENCH"
fi
run() { $PY 04_eval.py --run_name "$RUN" --model "$MODEL" --tag stepfun --benchmarks "$BENCH" --mode tool \
          --prompt_format stepfun --n_samples "$N" --max_new_tokens "$TOKENS" --temperature 0.999 --top_p 0.95 \
          "${EXTRA[@]}" "$@"; }
by_length=(); by_checks=()
for L in "${LENGTHS[@]}"; do run --tool_budget "$L" --tool_max_checks 0; by_length+=("n$N-b$L-c0-t$TOKENS"); done
MAXLEN=${LENGTHS[-1]}
for C in "${CHECKS[@]}"; do run --tool_budget "$MAXLEN" --tool_max_checks "$C"; by_checks+=("n$N-b$MAXLEN-c$C-t$TOKENS"); done
$PY recipes/paper_tables.py sweep --run "$RUN" --tag stepfun --bench "$BENCH" --mode tool \
    --labels "$(IFS=,; echo "${by_length[*]}")" --x "maximum context length" --name stepfun_table2_length
$PY recipes/paper_tables.py sweep --run "$RUN" --tag stepfun --bench "$BENCH" --mode tool \
    --labels "$(IFS=,; echo "${by_checks[*]}")" --x "maximum REPL interactions" --name stepfun_table2_interactions
