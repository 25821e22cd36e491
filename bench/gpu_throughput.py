"""Throughput at Kimina's shape on one GPU (issue #32; recipes/gpu_check.sh runs it): a randomly
initialised Qwen3-1.7B (its public config, QWEN3_1_7B below: nothing to download) in bf16.

  matmul   the card's measured bf16 matrix rate (8192^3 products): the MFU denominator
  sft      02_sft.py's own train() on synthetic rows of --sft_len tokens, batch --sft_batch,
           gradient checkpointing: tokens/s, peak memory, MFU = 6 x params x tokens/s / rate
  trl_sft  TRL's SFTTrainer on the same model, rows and batch in this process: the ratio
  update   03_rl_grpo.py's update() on 8 sequences of 4,096 tokens, micro-batches of 2 (Kimina)
  generate generation.HFGenerator (the hf backend of 03 and 04) at batch 64

    python bench/gpu_throughput.py --out results/gpu_check/throughput.json          # a GPU
    python bench/gpu_throughput.py --shape tiny --device cpu --out /tmp/t.json      # CPU dry run
MFU counts 6 x parameters per trained token (no attention FLOPs, no checkpointing recompute).
Each part that fails records its error and the others still run; the exit code is 1 then.
"""
import argparse
import gc
import json
import statistics
import sys
import time
import traceback
from pathlib import Path

from _util import common, formats, generation, load_stage

# Qwen/Qwen3-1.7B's public config.json (the base of Kimina-Prover-Distill/RL-1.7B)
QWEN3_1_7B = dict(hidden_size=2048, intermediate_size=6144, num_hidden_layers=28,
                  num_attention_heads=16, num_key_value_heads=8, head_dim=128, vocab_size=151936,
                  max_position_embeddings=40960, rope_theta=1000000.0, rms_norm_eps=1e-6,
                  tie_word_embeddings=True)
TINY = dict(generation.TINY_SHAPE, vocab_size=2048, max_position_embeddings=2048,
            tie_word_embeddings=True)
SIZES = {  # shape -> sft_len, sft_batch, sft_steps, update_len, gen_batch, gen_prompt, gen_new
    "qwen3-1.7b": dict(sft_len=4096, sft_batch=4, sft_steps=8, update_len=4096, gen_batch=64,
                       gen_prompt=512, gen_new=256, matmul_n=8192),
    "tiny": dict(sft_len=640, sft_batch=2, sft_steps=4, update_len=64, gen_batch=8, gen_prompt=32,
                 gen_new=16, matmul_n=256),
}


def sync(device: str) -> None:
    import torch
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def peak_gib(device: str) -> float | None:
    import torch
    return round(torch.cuda.max_memory_allocated() / 2**30,
                 2) if device.startswith("cuda") else None


def reset_peak(device: str) -> None:
    import torch
    gc.collect()
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def matmul_rate(device: str, n: int) -> float:
    """bf16 TFLOP/s of an n x n x n product: mean of 10 after 3 warm-ups."""
    import torch
    a = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    b = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    sync(device)
    t0 = time.perf_counter()
    for _ in range(10):
        a @ b
    sync(device)
    return 2 * n ** 3 * 10 / (time.perf_counter() - t0) / 1e12


def build_model(folder: Path, shape: dict, device: str, dtype: str) -> int:
    """A random model of `shape` and a digit tokenizer, saved as a model folder; its parameters."""
    import torch
    from transformers import Qwen3Config, Qwen3ForCausalLM
    tok = generation.train_tiny_tokenizer(["0123456789 theorem t : := by"] * 50)
    cfg = Qwen3Config(eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
                      bos_token_id=None, **shape)
    torch.manual_seed(0)
    with torch.device(device):
        model = Qwen3ForCausalLM(cfg).to(getattr(torch, dtype))
    model.generation_config.eos_token_id = tok.eos_token_id
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    n = sum(p.numel() for p in model.parameters())
    del model
    return n


def digits(n: int, seed: int) -> str:
    import random
    rng = random.Random(seed)
    return "".join(rng.choice("0123456789") for _ in range(n))


def sft_rows(tok, n_rows: int, length: int) -> list[dict]:
    """Statements whose prompt and completion are digit strings (one token per digit), each row
    `length` tokens with the Kimina template, its completion 7/8 of them."""
    def row(i, stmt_digits, completion_digits):
        return {"statement_id": f"s{i}", "source": "synthetic", "split": "train", "header": "",
                "formal_statement": f"theorem t{i} : {digits(stmt_digits, i)} := by",
                "informal_problem": "", "formal_proof": "",
                "completion": digits(completion_digits, 10_000 + i),
                "prev_attempt": None, "lean_feedback": None}
    empty = row(0, 0, 0)
    overhead = len(tok(formats.render_prompt(tok, formats.prompt_messages(empty))).input_ids) + 1
    completion = length * 7 // 8
    stmt = max(1, length - completion - overhead)
    return [row(i, stmt, completion) for i in range(n_rows)]


def part_sft(work, folder, size, device, dtype, n_params, rate, out):
    sft = load_stage("sft", "02_sft.py")
    tok = generation.load_tokenizer(str(folder))
    rows = sft_rows(tok, size["sft_batch"] * size["sft_steps"], size["sft_len"])
    data = common.write_parquet(rows, work / "sft.parquet", "sft")
    longest = max(len(tok(formats.render_prompt(tok, formats.prompt_messages(r))
                          + r["completion"]).input_ids) for r in rows[:4]) + 8
    reset_peak(device)
    cfg = sft.Settings(run_name="gpu_sft", data=str(data), model=str(folder),
                       prompt_format="kimina", batch_size=size["sft_batch"],
                       max_steps=size["sft_steps"], lr=1e-5, warmup_steps=0, schedule="constant",
                       eval_every=0, save_every=0, max_seq_len=longest,
                       grad_checkpointing=True, device=device, dtype=dtype)
    run = sft.train(cfg)
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    timed = rows[2:] or rows
    tps = statistics.median(r["tokens_per_sec"] for r in timed)
    out["sft"] = {"batch": size["sft_batch"], "seq_tokens": longest - 8,
                  "steps_timed": len(timed), "tokens_per_s": round(tps),
                  "sec_per_step": round(statistics.median(r["sec_per_step"] for r in timed), 3),
                  "peak_memory_gib": peak_gib(device),
                  "mfu": round(6 * n_params * tps / (rate * 1e12), 3) if rate else None}
    return data, cfg


def part_trl(folder, data, sft_cfg, size, device, dtype, n_params, rate, out):
    import torch
    from datasets import Dataset
    from transformers import TrainerCallback
    from trl import SFTConfig, SFTTrainer
    tok = generation.load_tokenizer(str(folder))
    rows = common.read_rows(data, "sft")
    ds = Dataset.from_list([{"prompt": formats.render_prompt(tok, formats.prompt_messages(r)),
                             "completion": r["completion"]} for r in rows])
    times = []

    class Timer(TrainerCallback):
        def on_step_begin(self, *a, **k):
            sync(device)
            self.t0 = time.perf_counter()

        def on_step_end(self, *a, **k):
            sync(device)
            times.append(time.perf_counter() - self.t0)

    reset_peak(device)
    args = SFTConfig(output_dir=str(data.parent / "trl"),
                     per_device_train_batch_size=size["sft_batch"],
                     max_steps=size["sft_steps"], learning_rate=1e-5, lr_scheduler_type="constant",
                     warmup_steps=0, max_grad_norm=1.0, max_length=sft_cfg.max_seq_len,
                     packing=False, completion_only_loss=True, gradient_checkpointing=True,
                     bf16=dtype == "bfloat16" and device != "cpu", use_cpu=device == "cpu",
                     report_to="none", save_strategy="no", logging_steps=1000,
                     dataloader_num_workers=0, seed=0, disable_tqdm=True)
    # as 02 trains: float32 master weights, the forward in bf16 autocast (TRL's bf16=True)
    model = generation.load_model(str(folder), generation.Placement(device, "float32"))
    SFTTrainer(model=model, args=args, train_dataset=ds, processing_class=tok,
               callbacks=[Timer()]).train()
    n_tokens = statistics.mean(min(sft_cfg.max_seq_len, len(tok(
        formats.render_prompt(tok, formats.prompt_messages(r)) + r["completion"]).input_ids))
        for r in rows) * size["sft_batch"]
    sec = statistics.median(times[2:] or times)
    out["trl_sft"] = {"trl_version": __import__("trl").__version__,
                      "tokens_per_s": round(n_tokens / sec), "sec_per_step": round(sec, 3),
                      "peak_memory_gib": peak_gib(device),
                      "mfu": round(6 * n_params * n_tokens / sec / (rate * 1e12), 3) if rate
                      else None}
    if "sft" in out:
        out["sft_ours_over_trl"] = round(out["sft"]["tokens_per_s"] / out["trl_sft"]["tokens_per_s"], 2)
    del model
    torch.cuda.empty_cache() if device != "cpu" else None


def part_update(folder, size, device, dtype, n_params, rate, out):
    import torch
    grpo = load_stage("grpo", "03_rl_grpo.py")
    placement = generation.Placement(device, dtype)
    reset_peak(device)
    model = generation.load_model(str(folder), placement, trainable=True)   # as 03 loads it
    model.gradient_checkpointing_enable()
    model.config.use_cache = False
    length, prompt_len = size["update_len"], size["update_len"] // 8
    gen = torch.Generator().manual_seed(0)
    cfg = grpo.Settings(group_size=8, prompts_per_step=1, mini_batch_prompts=1, micro_batch_size=2,
                        max_new_tokens=length - prompt_len, lr=2e-6, device=device, dtype=dtype)
    item = grpo.PromptItem({"statement_id": "u"})
    rollouts = []
    for k in range(8):
        ids = torch.randint(3, 260, (length,), generator=gen).tolist()
        g = generation.Generation("", ids[prompt_len:], [], "length")
        rollouts.append(grpo.Rollout(item, ids[:prompt_len], g, n_tokens=length - prompt_len,
                                     advantage=0.5 if k % 2 else -0.5))
    with torch.no_grad():   # the old log-probs, as 03 recomputes them after vLLM
        for r in rollouts:
            lp, _, _ = grpo.sequence_logprobs(model, [r.sequence()], 1.0, device)
            r.gen.logprobs = lp[0].tolist()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=cfg.lr,
                                  weight_decay=0.0)
    times = []
    for step in range(4):
        sync(device)
        t0 = time.perf_counter()
        grpo.update(model, None, optimizer, rollouts, cfg, step + 1, device)
        sync(device)
        times.append(time.perf_counter() - t0)
    sec = statistics.median(times[1:])
    tokens = 8 * length
    out["update"] = {"sequences": 8, "seq_tokens": length, "micro_batch": 2,
                     "sec_per_update": round(sec, 3), "tokens_per_s": round(tokens / sec),
                     "peak_memory_gib": peak_gib(device),
                     "mfu": round(6 * n_params * tokens / sec / (rate * 1e12), 3) if rate else None}
    del model, optimizer


def part_generate(folder, size, device, dtype, out):
    tok = generation.load_tokenizer(str(folder))
    reset_peak(device)
    model = generation.load_model(str(folder), generation.Placement(device, dtype)).eval()
    gen = generation.HFGenerator(model, tok, batch_size=size["gen_batch"])
    prompts = [digits(size["gen_prompt"], i) for i in range(size["gen_batch"])]
    seeds = list(range(size["gen_batch"]))
    gen.generate(prompts[:2], seeds[:2], 4)   # warm-up
    sync(device)
    t0 = time.perf_counter()
    gens = gen.generate(prompts, seeds, size["gen_new"], 1.0, 1.0)
    sync(device)
    sec = time.perf_counter() - t0
    new = sum(len(g.token_ids) for g in gens)
    out["generate"] = {"batch": size["gen_batch"], "prompt_tokens": size["gen_prompt"],
                       "new_tokens_each": size["gen_new"], "generated": new,
                       "tokens_per_s": round(new / sec), "sec": round(sec, 2),
                       "peak_memory_gib": peak_gib(device)}
    del model


def main() -> int:
    import tempfile
    import torch
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shape", default="qwen3-1.7b", choices=sorted(SIZES))
    p.add_argument("--device", default="auto")
    p.add_argument("--dtype", default="auto")
    p.add_argument("--parts", default="matmul,sft,trl_sft,update,generate")
    p.add_argument("--out", required=True)
    args = p.parse_args()
    placement = generation.device_policy(args.device, args.dtype)
    device, dtype = placement.device, placement.dtype
    size = SIZES[args.shape]
    shape = QWEN3_1_7B if args.shape == "qwen3-1.7b" else TINY
    work = Path(tempfile.mkdtemp(prefix="gpu_throughput_"))
    common.RUNS_ROOT = work / "runs"
    out = {"shape": args.shape, "device": device, "dtype": dtype, "torch": torch.__version__,
           "card": torch.cuda.get_device_name() if device.startswith("cuda") else "cpu",
           "errors": {}}
    parts = args.parts.split(",")
    rate = None
    folder, data, sft_cfg = work / "model", None, None
    t_all = time.perf_counter()
    try:
        if "matmul" in parts:
            rate = matmul_rate(device, size["matmul_n"])
            out["matmul_tflops_bf16"] = round(rate, 1)
        out["params"] = n_params = build_model(folder, shape, device, dtype)
    except Exception:
        out["errors"]["setup"] = traceback.format_exc(limit=3)
        print(json.dumps(out, indent=1))
        Path(args.out).write_text(json.dumps(out, indent=1) + "\n")
        return 1
    for name in parts[1:] if parts[0] == "matmul" else parts:
        t0 = time.perf_counter()
        try:
            if name == "sft":
                data, sft_cfg = part_sft(work, folder, size, device, dtype, n_params, rate, out)
            elif name == "trl_sft":
                if data is None:
                    raise RuntimeError("trl_sft runs on the sft part's data")
                part_trl(folder, data, sft_cfg, size, device, dtype, n_params, rate, out)
            elif name == "update":
                part_update(folder, size, device, dtype, n_params, rate, out)
            elif name == "generate":
                part_generate(folder, size, device, dtype, out)
        except Exception:
            out["errors"][name] = traceback.format_exc(limit=4)
        out.setdefault("part_seconds", {})[name] = round(time.perf_counter() - t0, 1)
        reset_peak(device)
    out["total_seconds"] = round(time.perf_counter() - t_all, 1)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=1) + "\n")
    print(json.dumps(out, indent=1))
    return 1 if out["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
