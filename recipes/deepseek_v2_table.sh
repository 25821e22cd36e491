#!/usr/bin/env bash
# A DeepSeek-Prover-V2 style table: pass@k with 95% intervals on miniF2F-test, ProofNet-test,
# PutnamBench and MathOlympiadBench side by side, DeepSeek-Prover-V2's prompt (CoT).
# Expected (docs/RECIPES.md): DeepSeek-Prover-V2-7B 75.6 pass@32 on miniF2F-test.
# GPUs: one with vLLM (--vllm_tp N for more).   CPU=1: the same commands on the toy task.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "${CPU:-0}" = 1 ]; then
  source recipes/cpu_setup.sh
  BENCHES=toy; N=8; TOKENS=64; FORMAT=kimina; EXTRA=(--max_problems 24)
else
  : "${LEAN_SERVER_API_URL:?export LEAN_SERVER_API_URL=http://localhost:80}"
  PY=python; RUN=${RUN:-dsv2_table}; MODEL=${MODEL:-deepseek-ai/DeepSeek-Prover-V2-7B}
  BENCHES=minif2f_test,proofnet_test,putnambench,mobench; N=32; TOKENS=8192; FORMAT=deepseek_v2
  EXTRA=(--backend vllm --vllm_tp "${TP:-1}")
  $PY 01_prepare_data.py --run_name "$RUN" --rl_sources "" --sft_sources "" --eval_sets "$BENCHES"
fi
$PY 04_eval.py --run_name "$RUN" --model "$MODEL" --tag dsv2 --benchmarks "$BENCHES" --n_samples "$N" \
    --max_new_tokens "$TOKENS" --prompt_format "$FORMAT" "${EXTRA[@]}"
$PY recipes/paper_tables.py benchmarks --run "$RUN" --tag dsv2 --label "n$N-t$TOKENS" --benchmarks "$BENCHES" \
    --name deepseek_v2_table
