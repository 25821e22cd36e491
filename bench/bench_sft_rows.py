"""Benchmark: what one SFT row costs in 02's step on the smoke's data, by model shape and layout.

The smoke's toy SFT rows (every statement a first turn and a correction row, smoke.sh's 01
flags), the tiny Qwen3 built on them with each shape, and 02's own collate, token_loss_sum,
backward, gradient clipping and AdamW, timed over the first `--steps` batches of each layout
(after `--warmup`), the configurations taking turns step by step. Layouts: `rows`
(02 --group_by_length, --batch_size rows a step) and `families` (02 --share_prefix
--group_by_length: a first turn and its correction row in one sequence, their common prefix
once; --batch_size/2 families, so the same rows a step). Printed: ms per
step and per row, and each configuration's speed against the first (the 2-layer shape with
an MLP of 384 until 2026-12-08, rows), measured in this process.

    python bench/bench_sft_rows.py                       # 2 threads (the smoke's on 2 cores)
    python bench/bench_sft_rows.py --threads 1
"""
import argparse
import json
import time

import torch

from _util import common, formats, generation, load_stage, toy_run

SHAPES = {"mlp384": {"intermediate_size": 384}, "mlp192": {"intermediate_size": 192},
          "mlp128": {"intermediate_size": 128}}


def main():
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--batch_size", type=int, default=8, help="rows a step")
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    work = toy_run("bench_sft_rows_", args=("--toy_sft_correct", "0.4", "--toy_sft_repair", "1.0"))
    rows = [r for r in common.read_rows(work / "runs/b/01_data/sft.parquet", "sft")
            if r["split"] != "valid"]
    texts = [formats.render_prompt_text(r) + r["completion"] for r in rows]
    sft = load_stage("sft", "02_sft.py")
    configs = []
    for shape_name, shape in SHAPES.items():
        folder = generation.build_tiny_model(texts, work / shape_name, seed=0, **shape)
        tok = generation.load_tokenizer(str(folder))
        for layout in ("rows", "families"):
            families = layout == "families"
            cfg = sft.Settings(prompt_format="kimina", group_by_length=True, max_seq_len=1024,
                               share_prefix=families,
                               batch_size=args.batch_size // 2 if families else args.batch_size)
            examples, _ = sft.tokenize_rows(rows, tok, cfg)
            fams = sft.prompt_families(examples, cfg.max_seq_len) if families else None
            model = generation.load_model(str(folder), trainable=True)
            configs.append({"shape": shape_name, "layout": layout, "cfg": cfg, "tok": tok,
                            "examples": examples, "units": sft.epoch_units(examples, 0, cfg, fams),
                            "model": model, "opt": torch.optim.AdamW(model.parameters(), lr=1e-3),
                            "spent": 0.0, "rows": 0, "tokens": 0})
    # the configurations take turns step by step, so a slower spell of the machine falls on all
    for s in range(args.warmup + args.steps):
        for c in configs:
            cfg, examples = c["cfg"], c["examples"]
            batch_units = c["units"][s * cfg.batch_size:(s + 1) * cfg.batch_size]
            t0 = time.perf_counter()
            batch = sft.collate(examples, batch_units, c["tok"].pad_token_id)
            loss, n = sft.token_loss_sum(c["model"], batch)
            (loss / n).backward()
            torch.nn.utils.clip_grad_norm_(c["model"].parameters(), 1.0)
            c["opt"].step()
            c["opt"].zero_grad(set_to_none=True)
            if s >= args.warmup:
                c["spent"] += time.perf_counter() - t0
                c["rows"] += sum(len(u) for u in batch_units)
                c["tokens"] += sum(sft.unit_length(examples, u) for u in batch_units)
    results = []
    for c in configs:
        ms_row = 1000 * c["spent"] / c["rows"]
        results.append({"shape": c["shape"], "layout": c["layout"],
                        "params": sum(p.numel() for p in c["model"].parameters()),
                        "ms_per_step": round(1000 * c["spent"] / args.steps, 1),
                        "ms_per_row": round(ms_row, 2),
                        "tokens_run_per_row": round(c["tokens"] / c["rows"], 1),
                        "speed_vs_first": round(1000 * configs[0]["spent"] / configs[0]["rows"]
                                                / ms_row, 2)})
    print(json.dumps({"threads": args.threads, "rows_per_step": args.batch_size,
                      "steps_timed": args.steps, "results": results}, indent=2))


if __name__ == "__main__":
    main()
