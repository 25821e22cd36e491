#!/usr/bin/env bash
# OProver-style repair evaluation: 8 trajectories x up to 3 rounds, top-3 retrieved verified proofs
# (BM25 over a frozen memory of the shipped proofs, never the scored benchmark), Lean feedback in
# every round. Reports multi-round pass@k over trajectories with the attempt/token budget, a
# width x depth budget plot, and repair_sft.parquet (fixes in the SFT schema) for 02_sft.py.
# For reference (docs/RECIPES.md): OProver-32B 93.3, Goedel-Prover-V2-32B with
# self-correction 90.4 pass@32 on miniF2F-test; small models land far lower.
set -euo pipefail
cd "$(dirname "$0")/.."
: "${LEAN_SERVER_API_URL:?export LEAN_SERVER_API_URL=http://localhost:80}"
RUN=${RUN:-eval_repair}
MODEL=${MODEL:-AI-MO/Kimina-Prover-RL-1.7B}
python 01_prepare_data.py --run_name "$RUN" --rl_sources "" --sft_sources "" --eval_sets minif2f_test
python 04_eval.py --run_name "$RUN" --model "$MODEL" --benchmarks minif2f_test --mode repair \
    --repair_width 8 --repair_depth 3 --retrieve_k 3 --backend vllm --max_new_tokens 16384
