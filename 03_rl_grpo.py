"""GRPO with Lean-verified rewards (proof x format), error-correction turns and fast rollouts (Kimina-Prover-RL).

NOT IMPLEMENTED YET: this entry point is tracked by issue #4. Running it exits with status 2
and says so; nothing here pretends to work.
"""
import sys

if __name__ == "__main__":
    print("03_rl_grpo.py is not implemented yet (issue #4): see README.md, 'Status'.", file=sys.stderr)
    sys.exit(2)
