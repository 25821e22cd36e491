#!/usr/bin/env bash
# Evaluate the released AI-MO/Kimina-Prover-RL-1.7B: pass@32 on AI-MO/minif2f_test, the miniF2F-test
# Kimina reported on (statements corrected against DeepSeek's; Kimina's table: 76.63; 0.6B: 71.30). One GPU, vLLM; a Kimina Lean Server on LEAN_SERVER_API_URL.
set -euo pipefail
cd "$(dirname "$0")/.."
: "${LEAN_SERVER_API_URL:?export LEAN_SERVER_API_URL=http://localhost:80}"
RUN=${RUN:-eval_kimina}
MODEL=${MODEL:-AI-MO/Kimina-Prover-RL-1.7B}
python 01_prepare_data.py --run_name "$RUN" --rl_sources "" --sft_sources "" --eval_sets minif2f_test_kimina
python 04_eval.py --run_name "$RUN" --model "$MODEL" --benchmarks minif2f_test_kimina --n_samples 32 \
    --backend vllm --vllm_tp "${TP:-1}" --max_new_tokens 24576 --temperature 1.0 --top_p 0.95
# results/$RUN/<model>/minif2f_test_kimina_single.md: expect pass@32 near 76.6 (+- the bootstrap interval)
