"""Benchmark: 02_sft.py's training loop against TRL's SFTTrainer, same model, data and settings.

Both train the same tiny Qwen3 (identical initial weights, tokenizer trained on the data) on the
smoke's toy SFT rows (first turns and correction turns), batch 8, fp32, no gradient
checkpointing, loss on completion tokens only, for the same number of steps, in one process.
Reported: mean seconds per step after warm-up, training tokens per second, and the ratio
ours / TRL.

    pip install -r requirements-bench.txt          # trl
    python bench/bench_sft.py                       # both as they come
    python bench/bench_sft.py --group_by_length     # both batching rows of similar length
    python bench/bench_sft.py --group_by_length --share_prefix   # ours also runs a first turn
                                    # and its correction row as one family (02 --share_prefix):
                                    # batch_size/2 families a step, the same rows per step
"""
import argparse
import dataclasses
import json
import shutil
import statistics
import time

from _util import common, formats, generation, load_stage, toy_run


def main():
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--warmup", type=int, default=10, help="steps left out of the timing")
    p.add_argument("--batch_size", type=int, default=8)
    p.add_argument("--group_by_length", action="store_true",
                   help="both loops batch rows of similar length (ours: --group_by_length true, "
                        "TRL: its group_by_length)")
    p.add_argument("--share_prefix", action="store_true",
                   help="ours: 02 --share_prefix, batch_size/2 families (a first turn and its "
                        "correction row each) a step; TRL has no such option")
    args = p.parse_args()

    # the smoke's SFT data (smoke.sh's DATA_ARGS): every statement also has a correction row
    work = toy_run("bench_sft_", args=("--toy_sft_correct", "0.4", "--toy_sft_repair", "1.0"))
    data = work / "runs/b/01_data/sft.parquet"
    rows = [r for r in common.read_rows(data, "sft") if r["split"] != "valid"]
    base = generation.build_tiny_model([formats.render_prompt_text(r) + r["completion"]
                                        for r in rows],
                                   work / "base", seed=0)

    # ---- ours: the stage's own train() on a copy of the base model
    sft = load_stage("sft", "02_sft.py")
    cfg = sft.Settings(run_name="ours", data=str(data), model=str(base), batch_size=args.batch_size,
                       prompt_format="kimina",
                       max_steps=args.steps, lr=1e-3, warmup_steps=0, schedule="constant",
                       eval_every=0, save_every=0, max_seq_len=512, grad_clip=1.0,
                       group_by_length=args.group_by_length, share_prefix=args.share_prefix)
    if args.share_prefix:   # every statement of the smoke's data has one correction row
        cfg = dataclasses.replace(cfg, batch_size=args.batch_size // 2)
    sft.train(cfg)
    ours = [json.loads(l)
            for l in (work / "runs/ours/02_sft/metrics.jsonl").read_text().splitlines()]
    # means, not medians: with grouped batches a step's time follows its length
    ours_sec = statistics.mean(r["sec_per_step"] for r in ours[args.warmup:])
    tok = generation.load_tokenizer(str(base))
    examples, _ = sft.tokenize_rows(rows, tok, cfg)
    mean_tokens = statistics.mean(len(e["input_ids"]) for e in examples)

    # ---- TRL: SFTTrainer, prompt-completion rows rendered with the same chat template
    from datasets import Dataset
    from transformers import TrainerCallback
    from trl import SFTConfig, SFTTrainer
    ds = Dataset.from_list([{"prompt": formats.render_prompt(tok, formats.prompt_messages(r)),
                             "completion": r["completion"]} for r in rows])
    times = []

    class Timer(TrainerCallback):
        def on_step_begin(self, *a, **k):
            self.t0 = time.perf_counter()

        def on_step_end(self, *a, **k):
            times.append(time.perf_counter() - self.t0)

    # TRL 1.16 on transformers 5 has no group_by_length (its padding-free packing needs flash
    # attention, a GPU): there TRL runs its plain batches, and the result says so
    has_grouping = "group_by_length" in {f.name for f in dataclasses.fields(SFTConfig)}
    trl_grouping = {"group_by_length": True} if args.group_by_length and has_grouping else {}
    trl_cfg = SFTConfig(output_dir=str(work / "trl"), per_device_train_batch_size=args.batch_size,
                        max_steps=args.steps, learning_rate=1e-3, lr_scheduler_type="constant",
                        warmup_steps=0, max_grad_norm=1.0, max_length=512, packing=False,
                        completion_only_loss=True, gradient_checkpointing=False, bf16=False,
                        fp16=False,
                        use_cpu=True, report_to="none", save_strategy="no", logging_steps=1000,
                        dataloader_num_workers=0, seed=0, disable_tqdm=True,
                        **trl_grouping)
    trainer = SFTTrainer(model=generation.load_model(str(base)), args=trl_cfg, train_dataset=ds,
                         processing_class=tok, callbacks=[Timer()])
    trainer.train()
    trl_sec = statistics.mean(times[args.warmup:])

    tokens_per_step = mean_tokens * args.batch_size
    result = {"ours_group_by_length": args.group_by_length, "ours_share_prefix": args.share_prefix,
              "trl_group_by_length": bool(trl_grouping),
              "model_params": sum(p.numel()
                                  for p in generation.load_model(str(base)).parameters()),
              "batch_size": args.batch_size, "mean_tokens_per_row": round(mean_tokens, 1),
              "steps_timed": args.steps - args.warmup,
              "ours_sec_per_step": round(ours_sec, 4), "trl_sec_per_step": round(trl_sec, 4),
              "ours_tokens_per_sec": round(tokens_per_step / ours_sec),
              "trl_tokens_per_sec": round(tokens_per_step / trl_sec),
              "speed_ratio_ours_over_trl": round(trl_sec / ours_sec, 2)}
    print(json.dumps(result, indent=2))
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
