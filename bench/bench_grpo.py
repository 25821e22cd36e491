"""Benchmark: 03_rl_grpo.py against TRL's GRPOTrainer, same model, prompts, reward and settings.

Both run GRPO on the toy task from the same model folder (a tiny Qwen3, SFT'd by 02_sft.py when
--model is given, else built fresh), 4 prompts x 4 generations x up to 64 new tokens per step,
fp32, no gradient checkpointing, one update per step, no KL, clip 0.2/0.3, and the same reward:
proof x format, the proof verified through lean_client against the stand-in server (NOT Lean)
at --latency_ms per proof. Reported: median seconds per step after warm-up, the ratio, and the
share of our wall time spent waiting on the verifier (goal < 10% at 50 ms per proof).

    pip install -r requirements-bench.txt
    python bench/bench_grpo.py --model runs/smoke/02_sft/final/model
"""
import argparse
import json
import os
import shutil
import statistics
import time

from _util import common, formats, generation, load_stage, toy_run
from lean_client import LeanClient
from lean_standin_server import StandinProcess


def main():
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="")
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--latency_ms", type=float, default=50)
    args = p.parse_args()

    work = toy_run("bench_grpo_")
    rows = [r for r in common.read_rows(work / "runs/b/01_data/rl_prompts.parquet", "statements")
            if r["split"] != "valid"]
    model = args.model or str(generation.build_tiny_model(
        [formats.render_prompt_text(r) for r in rows[:2000]], work / "base"))
    grpo = load_stage("grpo", "03_rl_grpo.py")

    with StandinProcess(workers=16, latency_ms=args.latency_ms) as url:
        os.environ["LEAN_SERVER_API_URL"] = url
        # ---- ours
        cfg = grpo.Settings(run_name="b", model=model, prompts_per_step=4, group_size=4,
                            max_new_tokens=64,
                            mini_batch_prompts=4, micro_batch_size=16, lr=1e-5,
                            require_tactic_blocks=False,
                            max_steps=args.steps, eval_every=0, save_every=0,
                            error_correction=False)
        grpo.train(cfg)
        ours = [json.loads(l)
                for l in (work / "runs/b/03_grpo/metrics.jsonl").read_text().splitlines()][args.warmup:]
        ours_sec = statistics.median(r["time_step"] for r in ours)
        wait_share = sum(r["time_verify_wait"] for r in ours) / sum(r["time_step"] for r in ours)
        ours_len = statistics.mean(r["response_length"] for r in ours)
        ours_parts = {f"ours_{k}_sec": round(statistics.median(r[f"time_{k}"] for r in ours), 4)
                      for k in ("generate", "verify_wait", "update")}

        # ---- TRL: the same reward through the same client, called per batch of completions
        from datasets import Dataset
        from transformers import TrainerCallback
        from trl import GRPOConfig, GRPOTrainer
        tok = generation.load_tokenizer(model)
        by_prompt = {}
        for r in rows:
            by_prompt[formats.render_prompt(tok, formats.prompt_messages(r))] = r
        ds = Dataset.from_list([{"prompt": p} for p in list(by_prompt)[:4 * (args.steps + 2)]])
        client = LeanClient(url, batch_size=8)

        def reward(prompts, completions, **kw):
            rollouts = [grpo.Rollout(grpo.PromptItem(by_prompt[p]), [],
                                     generation.Generation(c, [], [], "eos"))
                        for p, c in zip(prompts, completions)]
            grpo.score(rollouts, client, cfg)
            return [r.reward for r in rollouts]

        times, lengths = [], []

        class Timer(TrainerCallback):
            def on_step_begin(self, *a, **k):
                self.t0 = time.perf_counter()

            def on_step_end(self, *a, **k):
                times.append(time.perf_counter() - self.t0)

            def on_log(self, args_, state, control, logs=None, **k):
                if logs and "completions/mean_length" in logs:
                    lengths.append(logs["completions/mean_length"])

        trl_cfg = GRPOConfig(output_dir=str(work / "trl"), per_device_train_batch_size=16,
                             num_generations=4,
                             max_completion_length=64, temperature=1.0, learning_rate=1e-5,
                             beta=0.0,
                             epsilon=0.2, epsilon_high=0.3, max_steps=args.steps, logging_steps=1,
                             gradient_checkpointing=False, bf16=False, use_cpu=True,
                             report_to="none",
                             save_strategy="no", seed=0, disable_tqdm=True, scale_rewards=False)
        trainer = GRPOTrainer(model=generation.load_model(model), reward_funcs=reward, args=trl_cfg,
                              train_dataset=ds, processing_class=tok, callbacks=[Timer()])
        trainer.train()
        trl_sec = statistics.median(times[args.warmup:])

    result = {"steps_timed": args.steps - args.warmup, "latency_ms_per_proof": args.latency_ms,
              "ours_sec_per_step": round(ours_sec, 3), "trl_sec_per_step": round(trl_sec, 3),
              "speedup_ours_over_trl": round(trl_sec / ours_sec, 2),
              "ours_verify_wait_share": round(wait_share, 4), **ours_parts,
              "ours_mean_completion_tokens": round(ours_len, 1),
              "trl_mean_completion_tokens": round(statistics.mean(lengths[args.warmup:]), 1)
              if lengths else None}
    print(json.dumps(result, indent=2))
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
