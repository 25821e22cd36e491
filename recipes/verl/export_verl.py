"""Export this project's RL prompts to verl's Parquet format (Kimina-Prover-RL runs on verl).

    python recipes/verl/export_verl.py --run_name kimina --out data/verl
gives data/verl/{train,val}.parquet with verl's columns: data_source, prompt (chat messages),
ability, reward_model {style, ground_truth}, extra_info {statement_id, header, formal_statement}.
The reward is recipes/verl/reward_fn.py (proof x format, verified through lean_client); the
error-correction turns come from recipes/verl/ec_dataset.py; the command is
recipes/verl/kimina_grpo.sh.
"""
import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
import common  # noqa: E402
import formats  # noqa: E402


def to_verl(rows: list[dict], source: str) -> list[dict]:
    return [{"data_source": source,
             "prompt": formats.prompt_messages(r),
             "ability": "lean4_theorem_proving",
             "reward_model": {"style": "rule", "ground_truth": r["formal_statement"]},
             "extra_info": {"statement_id": r["statement_id"], "header": r["header"],
                            "formal_statement": r["formal_statement"],
                            "informal_problem": r.get("informal_problem") or "", "index": i}}
            for i, r in enumerate(rows)]


def main():
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run_name", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--val", default="", help="eval set name (default: the first eval_*.parquet)")
    args = p.parse_args()
    import pyarrow as pa
    import pyarrow.parquet as pq
    data = common.stage_dir(args.run_name, "01_data")
    rows = common.read_rows(data / "rl_prompts.parquet", "statements")
    val_path = data / f"eval_{args.val}.parquet" if args.val else sorted(data.glob("eval_*.parquet"))[0]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(to_verl(rows, "lean4_prover")), out / "train.parquet")
    pq.write_table(pa.Table.from_pylist(to_verl(common.read_rows(val_path, "statements"),
                                                val_path.stem)),
                   out / "val.parquet")
    print(f"wrote {out}/train.parquet ({len(rows)} rows) and {out}/val.parquet ({val_path.stem})")


if __name__ == "__main__":
    main()
