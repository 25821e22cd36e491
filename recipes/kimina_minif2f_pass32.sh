#!/usr/bin/env bash
# Kimina's row: pass@32 of a released Kimina-Prover-RL model on AI-MO/minif2f_test (Kimina's
# corrected miniF2F-test), Kimina's prompt, temperature 1.0, top_p 0.95, 24,576 new tokens.
# Expected (docs/RECIPES.md): 1.7B 76.63, 0.6B 71.30 pass@32. One GPU with vLLM and a
# Kimina Lean Server on LEAN_SERVER_API_URL.   CPU=1: the same commands on the toy task.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "${CPU:-0}" = 1 ]; then
  source recipes/cpu_setup.sh
  BENCH=toy; N=8; TOKENS=64; EXTRA=(--max_problems 24)
else
  : "${LEAN_SERVER_API_URL:?export LEAN_SERVER_API_URL=http://localhost:80}"
  PY=python; RUN=${RUN:-kimina_row}; MODEL=${MODEL:-AI-MO/Kimina-Prover-RL-1.7B}
  BENCH=minif2f_test_kimina; N=32; TOKENS=24576; EXTRA=(--backend vllm)
  $PY 01_prepare_data.py --run_name "$RUN" --rl_sources "" --sft_sources "" --eval_sets "$BENCH"
fi
$PY 04_eval.py --run_name "$RUN" --model "$MODEL" --tag kimina --benchmarks "$BENCH" --n_samples "$N" \
    --max_new_tokens "$TOKENS" --temperature 1.0 --top_p 0.95 --prompt_format kimina "${EXTRA[@]}"
$PY recipes/paper_tables.py benchmarks --run "$RUN" --tag kimina --label "n$N-t$TOKENS" --benchmarks "$BENCH" \
    --name kimina_row
