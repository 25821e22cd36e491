#!/usr/bin/env bash
# OProver-style iterative post-training (arXiv 2605.17283; docs/PROTOCOL.md and docs/RECIPES.md) on a
# small released prover, on one GPU machine with the Hub and a Kimina Lean Server
# (docker run -d -p 80:8000 projectnumina/kimina-lean-server:2.0.0). NOT run here (no GPU):
# the same code runs on CPU in tests/test_iterate.py and in the toy loop of docs/RESULTS.md.
# Per iteration (05_iterate.py): agentic proving on the question bank with retrieval from the
# memory (OProver: top-k verified proofs, previous attempt, Lean diagnostics, stop at the first
# verified proof) -> new proofs into the memory (decontaminated against miniF2F) -> SFT on the
# round-level samples -> GSPO RL on the unsolved (--rollout repair) -> held-out eval.
# Paper settings: pass@32 from n = 64 multi-round rollouts; GSPO; memory grows only between
# iterations; 2 post-training iterations for the 8B model (Round1, Round2 checkpoints).
# Departures: a 1.7B model instead of OProver-8B/32B; Lean-Workbook as the bank (OProofs'
# 1.76M statements are not on our list); the paper's T, k and learning rates are not published
# in the seed: T = 3 rounds, k = 3 proofs, Kimina's RL lr 2e-6 below are our choices.
set -euo pipefail
cd "$(dirname "$0")/.."
: "${LEAN_SERVER_API_URL:?export LEAN_SERVER_API_URL=http://localhost:80}"
RUN=${RUN:-oprover_1.7b}
MODEL=${MODEL:-AI-MO/Kimina-Prover-Distill-1.7B}
NGPUS=${NGPUS:-$(nvidia-smi -L | wc -l)}
python 01_prepare_data.py --run_name "$RUN" --rl_sources leanworkbook_6k --sft_sources "" \
    --eval_sets minif2f_test_kimina --tokenizer "$MODEL" --max_prompt_tokens 8192
# optional first stage (OProver: CPT on ~65B tokens, 30% Lean): a Lean corpus as proof rows or text
if [ -n "${CPT_CORPUS:-}" ]; then
  accelerate launch --num_processes "$NGPUS" 02_sft.py --run_name "$RUN" --model "$MODEL" \
      --objective cpt --corpus "$CPT_CORPUS" --max_seq_len 8192 --lr 2e-5
  MODEL=runs/$RUN/02_cpt/final/model
fi
python 05_iterate.py --run_name "$RUN" --model "$MODEL" --iterations "${ITERATIONS:-2}" --loop repair \
    --prompt_format oprover --width 64 --repair_depth 3 --retrieve_k 3 --max_new_tokens 16384 --backend vllm \
    --sft_lr 1e-5 --sft_batch_size 8 --rl_steps 200 --rl_lr 2e-6 --prompts_per_step 64 --group_size 8 \
    --mini_batch_prompts 16 --launcher "accelerate launch --num_processes $NGPUS" \
    --rl_extra "--vllm_gpu_memory 0.4 --clip_low 0.2 --clip_high 0.3"
# results/$RUN/iterations.md: held-out multi-round pass@k per iteration (w64: pass@32 from n = 64)
