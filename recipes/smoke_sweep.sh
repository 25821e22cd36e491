#!/usr/bin/env bash
# The sweep behind the CPU smoke's RL settings (issue #16): a few 03 settings x several seeds,
# each from the same SFT model (runs/$BASE, made by `bash smoke.sh` first), each scored by
# issue #16's criteria (collect_results.toy_criteria), one table in results/smoke_sweep/.
#   bash smoke.sh && bash recipes/smoke_sweep.sh          # ~7 min per (setting, seed) on 2 cores
#   ONLY=lr3e-4-kl0.05 bash recipes/smoke_sweep.sh        # one setting of the list below
#   SEEDS="0 1 2 3" SETTINGS_FILE=my_settings.txt bash recipes/smoke_sweep.sh
# A settings file has one `name|03 flags` per line (the flags override smoke.sh's 03 command).
# Every run is runs/<BASE>_sweep_<name>_s<seed>; a finished run is skipped, so a cut sweep resumes.
set -euo pipefail
cd "$(dirname "$0")/.."
BASE=${BASE:-smoke}
SEEDS=${SEEDS:-0 1 2}
OUT=${OUT:-results/smoke_sweep}
if [ -n "${SETTINGS_FILE:-}" ]; then mapfile -t SETTINGS < "$SETTINGS_FILE"; else SETTINGS=(
  "lr3e-4-kl0.05|--lr 3e-4 --kl_coef 0.05"     # smoke.sh's setting
  "lr3e-4-nokl|--lr 3e-4 --kl_coef 0"
  "lr1e-4-kl0.05|--lr 1e-4 --kl_coef 0.05"
); fi
for line in "${SETTINGS[@]}"; do
  name=${line%%|*}; flags=${line#*|}
  flags=${flags%%#*}   # a trailing comment
  [ -z "${ONLY:-}" ] || [ "$name" = "$ONLY" ] || continue
  for seed in $SEEDS; do
    run="${BASE}_sweep_${name}_s${seed}"
    if [ -f "$OUT/$run/criteria.json" ]; then echo "[sweep] $run done"; continue; fi
    echo "[sweep] $run: $flags, seed $seed"
    SFT_FROM=$BASE RUN=$run SEED=$seed RL_EXTRA="$flags" RESULTS_DIR=$OUT bash smoke.sh > "$OUT.$run.log" 2>&1 \
      || { echo "[sweep] $run failed: see $OUT.$run.log"; exit 1; }
    mkdir -p "$OUT/$run"; mv "$OUT.$run.log" "$OUT/$run/smoke.log"
  done
done
.venv/bin/python collect_results.py --sweep "$OUT"
