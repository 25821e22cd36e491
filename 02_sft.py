"""Supervised fine-tuning of a prover (full and LoRA) on the SFT Parquet from 01_prepare_data.py.

NOT IMPLEMENTED YET: this entry point is tracked by issue #3. Running it exits with status 2
and says so; nothing here pretends to work.
"""
import sys

if __name__ == "__main__":
    print("02_sft.py is not implemented yet (issue #3): see README.md, 'Status'.", file=sys.stderr)
    sys.exit(2)
