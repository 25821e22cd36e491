"""Benchmark: torch's intra-op threads (1 against 2) for the smoke's three CPU workloads, on an
idle machine and on one where another process keeps a core busy.

Workloads at the tiny smoke's shape (the tiny preset's Qwen3, its toy data): an SFT step (batch 8,
02's collate and loss), HF generation (64 prompts x 32 new tokens, 03's generator), and a GRPO
update (03's update() on those 64 rollouts). Each configuration runs in its own process (the
thread count is set before any work); reported: median seconds over the repeats, and the ratio
of 1 thread to 2 threads (above 1: two threads are faster).

    python bench/bench_threads.py                    # idle and loaded, about 3 minutes
"""
import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

from _util import ROOT


def measure(threads: int, repeats: int) -> dict:
    """In this process: the three workloads at `threads` intra-op threads."""
    import torch
    torch.set_num_threads(threads)
    from _util import common, formats, generation, load_stage, toy_run
    work = toy_run("bench_threads_")
    rows = [r for r in common.read_rows(work / "runs/b/01_data/sft.parquet", "sft")
            if r["split"] != "valid"][:64]
    base = generation.build_tiny_model([formats.render_prompt_text(r) + r["completion"]
                                        for r in rows], work / "base", seed=0)
    sft, grpo = load_stage("sft", "02_sft.py"), load_stage("grpo", "03_rl_grpo.py")
    tok = generation.load_tokenizer(str(base))
    model = generation.load_model(str(base))
    cfg = sft.Settings(prompt_format="kimina", max_seq_len=512)
    examples, _ = sft.tokenize_rows(rows, tok, cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    out = {}

    def timed(fn):
        times = []
        for _ in range(repeats + 1):   # the first is a warm-up
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
        return statistics.median(times[1:])

    def sft_step():
        batch = sft.collate(examples, [[i] for i in range(8)], tok.pad_token_id)
        loss, _ = sft.token_loss_sum(model, batch)
        loss.backward()
        opt.step()
        opt.zero_grad()
    out["sft_step"] = timed(sft_step)
    gen = generation.HFGenerator(model, tok, batch_size=64)
    prompts = [formats.render(tok, formats.prompt_messages(r), "kimina") for r in rows]
    gens = []
    out["generate_64x32"] = timed(lambda: gens.__setitem__(slice(None), gen.generate(
        prompts, list(range(64)), 32, 1.0, 1.0)))
    ids = [tok(p, add_special_tokens=False).input_ids for p in prompts]
    rollouts = [grpo.Rollout(grpo.PromptItem(r), ids[k], g, n_tokens=len(g.token_ids),
                             advantage=0.5 if k % 2 else -0.5)
                for k, (r, g) in enumerate(zip(rows, gens))]
    rl = grpo.Settings(group_size=8, prompts_per_step=8, mini_batch_prompts=4,
                       micro_batch_size=16, max_new_tokens=32, lr=1e-4)
    out["grpo_update_64"] = timed(lambda: grpo.update(model, None, opt, rollouts, rl, 1, "cpu"))
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--one", type=int, default=0, help=argparse.SUPPRESS)   # a child's threads
    args = p.parse_args()
    if args.one:
        print(json.dumps(measure(args.one, args.repeats)))
        return
    table = {}
    for load in ("idle", "loaded"):
        hog = (subprocess.Popen([sys.executable, "-c", "while True: pass"]) if load == "loaded"
               else None)
        try:
            for threads in (1, 2):
                proc = subprocess.run([sys.executable, __file__, "--one", str(threads),
                                       "--repeats", str(args.repeats)], capture_output=True,
                                      text=True, check=True, cwd=ROOT)
                table[(load, threads)] = json.loads(proc.stdout.strip().splitlines()[-1])
        finally:
            if hog:
                hog.kill()
    lines = ["| machine | workload | 1 thread (s) | 2 threads (s) | 1 / 2 |", "|---|---|---:|---:|---:|"]
    result = {}
    for load in ("idle", "loaded"):
        for work in table[(load, 1)]:
            one, two = table[(load, 1)][work], table[(load, 2)][work]
            lines.append(f"| {load} | {work} | {one:.3f} | {two:.3f} | {one / two:.2f} |")
            result[f"{load}/{work}"] = {"1": round(one, 4), "2": round(two, 4),
                                        "ratio_1_over_2": round(one / two, 2)}
    print("\n".join(lines))
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
