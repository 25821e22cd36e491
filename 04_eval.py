"""Evaluation: pass@k curves, repair with retrieval (OProver), tool-integrated proving (StepFun), paper tables.

NOT IMPLEMENTED YET: this entry point is tracked by issue #5. Running it exits with status 2
and says so; nothing here pretends to work.
"""
import sys

if __name__ == "__main__":
    print("04_eval.py is not implemented yet (issue #5): see README.md, 'Status'.", file=sys.stderr)
    sys.exit(2)
