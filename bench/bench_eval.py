"""Benchmark: 04_eval.py's sampling (batched generation, verification overlapped with the next
chunk) against a naive loop (one problem at a time, one sample at a time, verify, repeat), on the
same model, problems and stand-in server (NOT Lean; --latency_ms per proof), in one run.

    python bench/bench_eval.py --model runs/smoke/02_sft/final/model --data
    runs/smoke/01_data/eval_toy.parquet
"""
import argparse
import json
import tempfile
import time
from pathlib import Path

from _util import common, formats, load_stage
from lean_client import LeanClient
from lean_standin_server import StandinProcess


def main():
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True)
    p.add_argument("--data", required=True)
    p.add_argument("--problems", type=int, default=16)
    p.add_argument("--samples", type=int, default=8)
    p.add_argument("--max_new_tokens", type=int, default=64)
    p.add_argument("--latency_ms", type=float, default=50)
    args = p.parse_args()
    ev = load_stage("ev", "04_eval.py")
    rows = common.read_rows(Path(args.data), "statements")[:args.problems]
    n = len(rows) * args.samples
    with StandinProcess(workers=8, latency_ms=args.latency_ms) as url:
        cfg = ev.Settings(mode="single", n_samples=args.samples, max_new_tokens=args.max_new_tokens,
                          problems_per_chunk=8)
        evaluator = ev.Evaluator(cfg, args.model, LeanClient(url))
        log = ev.SampleLog(Path(tempfile.mkdtemp()))
        t0 = time.perf_counter()
        evaluator.run_problems("bench", rows, log, None, [])
        ours = time.perf_counter() - t0
        solved_ours = sum(r["ok"] for r in log.rows)

        model, tok = evaluator.gen.model, evaluator.tok
        client = LeanClient(url)
        t0 = time.perf_counter()
        solved_naive = 0
        for row in rows:
            prompt = formats.render_prompt(tok, formats.prompt_messages(row))
            ids = tok(prompt, return_tensors="pt", add_special_tokens=False)
            for k in range(args.samples):
                out = model.generate(**ids, max_new_tokens=args.max_new_tokens, do_sample=True,
                                     temperature=1.0,
                                     top_p=0.95, pad_token_id=tok.pad_token_id)
                text = tok.decode(out[0, ids.input_ids.shape[1]:], skip_special_tokens=True)
                proof = formats.extract_proof(text, row["formal_statement"])
                if proof is not None:
                    v = client.verify([{"id": "x", "statement": row["formal_statement"],
                                        "code": formats.build_lean_code(row["header"],
                                                                        row["formal_statement"],
                                                                        proof)}])[0]
                    solved_naive += v.ok
        naive = time.perf_counter() - t0
    print(json.dumps({"samples": n, "latency_ms_per_proof": args.latency_ms,
                      "ours_samples_per_sec": round(n / ours, 2),
                      "naive_samples_per_sec": round(n / naive, 2),
                      "speedup": round(naive / ours, 2), "valid_ours": solved_ours,
                      "valid_naive": solved_naive},
                     indent=2))


if __name__ == "__main__":
    main()
