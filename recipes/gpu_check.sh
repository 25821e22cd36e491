#!/usr/bin/env bash
# The GPU check in one call (issue #32). On one CUDA GPU, no internet, a CUDA machine's usual
# stack (torch, transformers, peft, accelerate, pandas, pyarrow, matplotlib, pytest) and the
# wheels that recipes/gpu_wheels.sh downloads beforehand into the git-ignored .whl/ (TRL and what
# it needs beyond that stack), it runs, each part's failure recorded and the rest still run:
#   1. the tests under the gpu marker, and the bf16 dtype lane's tests (tests/test_dtype_lane.py);
#   2. the tiny-preset pipeline 01 -> 02 -> 04 -> 03 (KL) -> 04 on CUDA, the stand-in verifier
#      (NOT Lean): stage times and pass@1 before and after RL;
#   3. bench/gpu_throughput.py at Kimina's shape (a random Qwen3-1.7B in bf16): the card's bf16
#      matrix rate, 02's SFT step (tokens/s, peak memory, MFU), TRL's SFTTrainer on the same
#      model and batch, 03's update on 8 x 4,096 tokens, HF generation at batch 64;
# and writes $OUT/summary.md (default results/gpu_check/): card, versions, every figure, the
# command. Budget: under 8 minutes on one H100.
#   bash recipes/gpu_wheels.sh        # once, on a machine with PyPI: the wheels into .whl/
#   bash recipes/gpu_check.sh         # on the GPU machine
#   CPU=1 bash recipes/gpu_check.sh   # the same code on CPU at toy sizes (a slow test runs it)
set -uo pipefail
cd "$(dirname "$0")/.."
CPU=${CPU:-0}
if [ "$CPU" = 1 ]; then
  PY=${PY:-.venv/bin/python}; DEVICE=cpu; SHAPE=tiny; OUT=${OUT:-$(mktemp -d)/gpu_check}
  SFT_STEPS=60; RL_STEPS=3; PROBLEMS=8
else
  PY=${PY:-python3}; DEVICE=cuda; SHAPE=qwen3-1.7b; OUT=${OUT:-results/gpu_check}
  SFT_STEPS=400; RL_STEPS=20; PROBLEMS=32
fi
export PY PYTHONUNBUFFERED=1
if ls .whl/*.whl >/dev/null 2>&1; then   # TRL and friends for this machine's Python
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
      --target /tmp/gpu_check_site .whl/*.whl \
    && export PYTHONPATH=/tmp/gpu_check_site${PYTHONPATH:+:$PYTHONPATH}
fi
WORK=$(mktemp -d)
export PROVER_RUNS_DIR=$WORK/runs PROVER_RESULTS_DIR=$WORK/results
mkdir -p "$OUT"
START=$(date +%s)
stamp() { echo "$1 $(( $(date +%s) - START ))" >> "$OUT/times.txt"; }
: > "$OUT/times.txt"

echo "[gpu_check] 1. tests"
$PY -m pytest -q -p no:cacheprovider -m "gpu or not slow" tests/test_gpu.py \
    tests/test_dtype_lane.py > "$OUT/tests.log" 2>&1
echo "tests_rc $?" >> "$OUT/times.txt"; stamp tests

echo "[gpu_check] 2. the tiny pipeline on $DEVICE"
if [ -z "${LEAN_SERVER_API_URL:-}" ]; then source recipes/standin.sh; fi
DEV=(--device "$DEVICE")
EVAL=(--n_samples 4 --max_problems "$PROBLEMS" --max_new_tokens 64 --bootstrap 0 "${DEV[@]}")
(
  set -e
  $PY 01_prepare_data.py --task toy --run_name gpu --toy_n_statements 4000 \
      --toy_sft_correct 0.4 --toy_sft_repair 1.0
  stamp 01
  $PY 02_sft.py --run_name gpu --preset tiny --max_steps "$SFT_STEPS" --lr 3e-3 \
      --warmup_steps 30 --batch_size 8 --eval_every 100 --save_every 0 "${DEV[@]}"
  stamp 02
  $PY 04_eval.py --run_name gpu --tag sft --model "$PROVER_RUNS_DIR/gpu/02_sft/final/model" \
      "${EVAL[@]}"
  stamp 04_sft
  $PY 03_rl_grpo.py --run_name gpu --prompts_per_step 8 --group_size 8 --mini_batch_prompts 4 \
      --lr 3e-4 --kl_coef 0.05 --ec_prob 0.25 --max_steps "$RL_STEPS" --max_new_tokens 64 \
      --require_tactic_blocks false --eval_every 0 --save_every 0 "${DEV[@]}"
  stamp 03
  $PY 04_eval.py --run_name gpu --tag grpo "${EVAL[@]}"
  stamp 04_grpo
) > "$OUT/pipeline.log" 2>&1
echo "pipeline_rc $?" >> "$OUT/times.txt"

echo "[gpu_check] 3. throughput at Kimina's shape"
$PY bench/gpu_throughput.py --shape "$SHAPE" --device "$DEVICE" --out "$OUT/throughput.json" \
    > "$OUT/throughput.log" 2>&1
echo "throughput_rc $?" >> "$OUT/times.txt"; stamp throughput

$PY recipes/gpu_summary.py --out "$OUT" --runs "$PROVER_RUNS_DIR" \
    --results "$PROVER_RESULTS_DIR" --command "${CPU:+CPU=$CPU }bash recipes/gpu_check.sh"
