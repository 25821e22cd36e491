#!/usr/bin/env bash
# StepFun-Prover-style tool-integrated RL alternating with SFT (arXiv 2507.20199, Figure 2: the
# "iterative RL-SFT cycle"; docs/RECIPES.md), on one GPU machine with the Hub and a Kimina
# Lean Server. NOT run here (no GPU); tests/test_agentic_rl.py runs --rollout tool on CPU.
# Rollouts (agent_loops.tool_rollouts, the loop 04 --mode tool evaluates with): StepFun's system
# prompt, generation pauses at </sketch>, the sketch runs (Mathlib preloaded), the REPL's JSON is
# appended as "\n<REPL>\n{json}\n</REPL>", generation resumes; the whole context is capped at
# 20,480 tokens, checks are unlimited; temperature 0.999, top_p 0.95 (the demo's sampling).
# The REPL's tokens are masked out of the loss and the importance ratio; reward at the end
# (Lean verifies the final proof). Each cycle: tool RL on the bank, then SFT on the verified
# tool traces (02 masks the REPL spans), as 05_iterate.py --loop tool does.
# Departures: StepFun starts from its own cold-start SFT model (7B/32B) and does not publish
# RL hyperparameters in the seed; Kimina's 2e-6 and our group sizes are our choices.
set -euo pipefail
cd "$(dirname "$0")/.."
: "${LEAN_SERVER_API_URL:?export LEAN_SERVER_API_URL=http://localhost:80}"
RUN=${RUN:-stepfun_7b}
MODEL=${MODEL:-stepfun-ai/StepFun-Prover-Preview-7B}
NGPUS=${NGPUS:-$(nvidia-smi -L | wc -l)}
python 01_prepare_data.py --run_name "$RUN" --rl_sources leanworkbook_6k --sft_sources "" \
    --eval_sets minif2f_test_kimina --tokenizer "$MODEL" --max_prompt_tokens 4096
python 05_iterate.py --run_name "$RUN" --model "$MODEL" --iterations "${CYCLES:-2}" --loop tool \
    --prompt_format stepfun --width 32 --tool_budget 20480 --max_new_tokens 16384 --temperature 0.999 \
    --backend vllm --sft_lr 1e-5 --rl_steps 200 --rl_lr 2e-6 --prompts_per_step 64 --group_size 8 \
    --mini_batch_prompts 16 --launcher "accelerate launch --num_processes $NGPUS" \
    --rl_extra "--temperature 0.999 --top_p 0.95 --vllm_gpu_memory 0.4" --eval_extra "--top_p 0.95"
# results/$RUN/iterations.md: miniF2F pass@1 (mean of 32) per cycle; StepFun reports 66.0% (7B)
