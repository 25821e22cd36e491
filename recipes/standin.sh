# Sourced by smoke.sh and the CPU recipes: starts the stand-in Lean server (lean_standin_server.py,
# NOT Lean) on a free localhost port, exports LEAN_SERVER_API_URL, and stops it when the sourcing
# script exits. STANDIN_WORKERS sets its pool (default 4). Callers source it only when no
# LEAN_SERVER_API_URL is set.
exec 3< <(exec ${PY:-.venv/bin/python} lean_standin_server.py --port 0 --workers "${STANDIN_WORKERS:-4}")
STANDIN_PID=$!
trap 'kill $STANDIN_PID 2>/dev/null || true' EXIT
read -r line <&3
export LEAN_SERVER_API_URL=${line##* }
echo "[standin] stand-in Lean server (NOT Lean) at $LEAN_SERVER_API_URL"
