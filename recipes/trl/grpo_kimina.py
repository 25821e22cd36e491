"""Kimina-Prover-RL's GRPO run on TRL's GRPOTrainer, with our Lean reward (lean_reward.py).

    pip install -r requirements-bench.txt                      # trl (pinned)
    python recipes/trl/grpo_kimina.py --run_name kimina        # one GPU; accelerate launch: several
    python recipes/trl/grpo_kimina.py --run_name smoke --model runs/smoke/02_sft/final/model \\
        --cpu --max_steps 3 --prompts_per_step 2 --group_size 4 --max_completion_length 64 \\
        --require_tactic_blocks false                           # CPU, toy, stand-in server

Every GRPOConfig value below says which of Kimina's settings it maps (docs/RECIPES.md). What TRL
cannot express, said plainly: Kimina's error-correction second turn (failed attempts with their
Lean feedback cached as new prompts, sampled with probability 0.5: TRL's dataset is fixed; use
03_rl_grpo.py or recipes/verl/ for it) and its validation with error correction. Kimina ran
verl's dual clip (c = 3): TRL's `delta` clamps the ratio at 3 in the unclipped term, which for a
negative advantage caps the loss at 3|A| as verl does and leaves positive advantages unchanged.
"""
import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from lean_reward import LeanReward, ROOT, export_prompts  # noqa: E402

sys.path.insert(0, str(ROOT))
import common  # noqa: E402
import generation  # noqa: E402


def kimina_config(args, output_dir: str):
    from trl import GRPOConfig
    world = max(1, args.processes)
    completions = args.prompts_per_step * args.group_size          # 256 x 8 = 2,048 per step
    per_update = args.mini_batch_prompts * args.group_size         # 32 x 8 = 256 per update
    return GRPOConfig(
        output_dir=output_dir,
        num_generations=args.group_size,               # rollout.n = 8: the group size
        generation_batch_size=completions,             # train_batch_size 256 prompts x 8 per step
        per_device_train_batch_size=args.micro_batch,  # ppo_micro_batch_size_per_gpu = 2
        gradient_accumulation_steps=per_update // (args.micro_batch * world),  # mini-batch 32 x 8
        num_iterations=1,                              # one pass over each step's rollouts
        learning_rate=args.lr,                         # 2e-6, constant
        lr_scheduler_type="constant", warmup_steps=0,
        weight_decay=0.0,                              # verl's default 0.01 is overridden too
        max_grad_norm=1.0,
        epsilon=0.2, epsilon_high=0.3,                 # clip_ratio_low / clip_ratio_high
        delta=3.0,                                     # verl's dual clip c = 3 (see the docstring)
        loss_type="dr_grpo",                           # seq-mean-token-sum-norm: token sum / max
                                                       # length
        scale_rewards="none",                          # norm_adv_by_std_in_grpo=False
        beta=0.0,                                      # use_kl_loss=False, no KL in the reward
        temperature=1.0, top_p=1.0,                    # rollout sampling
        max_completion_length=args.max_completion_length,  # 32,768 - 8,192 = 24,576
        num_train_epochs=args.epochs,                  # total_epochs = 15
        max_steps=args.max_steps or -1,
        gradient_checkpointing=not args.cpu,           # enable_gradient_checkpointing=True
        bf16=not args.cpu, use_cpu=args.cpu,
        use_vllm=args.vllm, vllm_mode="colocate",      # rollout.name=vllm, colocated
        vllm_gpu_memory_utilization=0.6,               # rollout.gpu_memory_utilization=0.6
        mask_truncated_completions=False,              # Kimina scores a truncated answer 0, trains
                                                       # on it
        logging_steps=1, save_strategy="steps", save_steps=5,   # save_freq = 5
        report_to="none", seed=args.seed, disable_tqdm=args.cpu)


def main(argv=None, callbacks=()):
    """Train; `callbacks`: TRL TrainerCallbacks (the tests stop the server from one)."""
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run_name", required=True)
    p.add_argument("--model", default="AI-MO/Kimina-Prover-Distill-1.7B")
    p.add_argument("--data", default="", help="default: runs/<run>/01_data/rl_prompts.parquet")
    p.add_argument("--prompt_format", default="kimina")
    p.add_argument("--prompts_per_step", type=int, default=256)
    p.add_argument("--group_size", type=int, default=8)
    p.add_argument("--mini_batch_prompts", type=int, default=32)
    p.add_argument("--micro_batch", type=int, default=2)
    p.add_argument("--processes", type=int, default=1, help="GPUs under accelerate launch")
    p.add_argument("--lr", type=float, default=2e-6)
    p.add_argument("--max_completion_length", type=int, default=24576)
    p.add_argument("--epochs", type=int, default=15)
    p.add_argument("--max_steps", type=int, default=0)
    p.add_argument("--require_tactic_blocks", default="true", choices=("true", "false"))
    p.add_argument("--lean_timeout", type=int, default=60)
    p.add_argument("--vllm", action="store_true")
    p.add_argument("--cpu", action="store_true")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    if args.prompts_per_step % args.mini_batch_prompts:
        p.error("--prompts_per_step must be a multiple of --mini_batch_prompts")
    from trl import GRPOTrainer
    from lean_client import LeanClient
    data = Path(args.data) if args.data else \
        common.stage_dir(args.run_name, "01_data") / "rl_prompts.parquet"
    out = common.stage_dir(args.run_name, "03_trl_grpo")
    dataset = export_prompts(data, args.prompt_format)
    reward = LeanReward(LeanClient(timeout=args.lean_timeout), prompt_format=args.prompt_format,
                        require_tactic_blocks=args.require_tactic_blocks == "true",
                        max_new_tokens=args.max_completion_length)
    reward.client.require_healthy()
    placement = generation.device_policy("cpu" if args.cpu else "auto", "float32")
    tok = generation.load_tokenizer(args.model)
    # float32 master weights; TRL's bf16=True runs the forward in bf16 autocast (as 02 and 03)
    model = generation.load_model(args.model, placement)
    trainer = GRPOTrainer(model=model, reward_funcs=[reward], args=kimina_config(args, str(out)),
                          train_dataset=dataset, processing_class=tok, callbacks=list(callbacks))
    trainer.train()
    trainer.save_model(str(out / "final" / "model"))
    return trainer


if __name__ == "__main__":
    main()
