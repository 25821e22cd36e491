#!/usr/bin/env bash
# Kimina-Prover-RL (docs/RECIPES.md): GRPO from Kimina-Prover-Distill-$SIZE on
# AI-MO/Kimina-Prover-Promptset, validated on AI-MO/minif2f_test (Kimina's corrected miniF2F-test). Needs a GPU machine, the Hub, and a
# Kimina Lean Server (docker run -d -p 80:8000 projectnumina/kimina-lean-server:2.0.0).
# Expected: mean response length grows, format errors fall, best@8 on miniF2F rises before and
# after error correction; the released models reach 76.63% (1.7B) and 71.30% (0.6B) pass@32
# on miniF2F-test. Called by kimina_rl_1.7b.sh and kimina_rl_0.6b.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
: "${LEAN_SERVER_API_URL:?export LEAN_SERVER_API_URL=http://localhost:80}"
SIZE=${SIZE:?SIZE=1.7B or 0.6B}
RUN=${RUN:-kimina_$SIZE}
python 01_prepare_data.py --run_name "$RUN" --rl_sources kimina_promptset --sft_sources "" \
    --eval_sets minif2f_test_kimina --tokenizer AI-MO/Kimina-Prover-Distill-$SIZE --max_prompt_tokens 8192
# lr 2e-6 constant, 256 prompts x 8 samples, mini-batch 32 prompts, temperature 1.0, clip 0.2/0.3,
# no KL, loss = per-sequence token sum / max response length, 15 epochs, validation every 5 steps.
# One process per GPU (NGPUS, default all visible): each generates and verifies its share of the
# 256 prompts with its own colocated vLLM engine, gradients are summed over processes. Every GPU
# holds the whole model (no FSDP): fine for 0.6B/1.7B on 80 GB cards. Several machines, or the
# published run's speed: RL_ENGINE=verl runs recipes/verl/kimina_grpo.sh (verl 0.9.1).
if [ "${RL_ENGINE:-local}" = verl ]; then
  RUN="$RUN" MODEL="AI-MO/Kimina-Prover-Distill-$SIZE" exec bash recipes/verl/kimina_grpo.sh
fi
NGPUS=${NGPUS:-$(nvidia-smi -L | wc -l)}
accelerate launch --num_processes "$NGPUS" 03_rl_grpo.py --run_name "$RUN" \
    --model AI-MO/Kimina-Prover-Distill-$SIZE --backend vllm --vllm_gpu_memory 0.4 \
    --prompts_per_step 256 --group_size 8 --mini_batch_prompts 32 --lr 2e-6 --temperature 1.0 \
    --max_new_tokens 24576 --clip_low 0.2 --clip_high 0.3 --loss_agg seq_sum_norm --kl_coef 0 \
    --error_correction true --ec_prob 0.5 --epochs 15 --eval_every 5 --eval_samples 8 --eval_top_p 0.95
python 04_eval.py --run_name "$RUN" --benchmarks minif2f_test_kimina --n_samples 32 --backend vllm \
    --max_new_tokens 24576 --temperature 1.0 --top_p 0.95
