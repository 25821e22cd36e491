# Sourced by the paper-table recipes when CPU=1: the toy task, a tiny model SFT'd on it (built once
# per run folder) and the stand-in Lean server (NOT Lean) unless LEAN_SERVER_API_URL is set. The
# tables it yields have the papers' shape, not their numbers.
PY=${PY:-.venv/bin/python}
export PROVER_RUNS_DIR=${PROVER_RUNS_DIR:-$PWD/runs}
RUN=${RUN:-paper_cpu}
[ -n "${LEAN_SERVER_API_URL:-}" ] || STANDIN_WORKERS=2 source recipes/standin.sh
[ -f "$PROVER_RUNS_DIR/$RUN/01_data/manifest.json" ] || $PY 01_prepare_data.py --task toy --run_name "$RUN" --toy_n_statements 4000
[ -f "$PROVER_RUNS_DIR/$RUN/02_sft/manifest.json" ] || $PY 02_sft.py --run_name "$RUN" --preset tiny \
    --max_steps "${SFT_STEPS:-300}" --lr 3e-3 --warmup_steps 30 --eval_every 100 --save_every 300
MODEL=$PROVER_RUNS_DIR/$RUN/02_sft/final/model
