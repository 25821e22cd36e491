"""Stage 03: GRPO with Lean-verified rewards and error-correction turns (Kimina-Prover-RL).

Each step samples prompts (with probability ec_prob a cached second-turn prompt), generates
group_size rollouts per prompt, scores them (reward = proof x format: Lean verdict, format
checks, soundness gate), takes advantage = reward - group mean and runs clipped policy-gradient
updates; failed attempts with Lean errors become second-turn prompts. --rollout repair (OProver,
GSPO) and --rollout tool (StepFun) use the loops 04 evaluates with (agent_loops.py).
Writes runs/<run>/03_grpo/: metrics.jsonl + PNGs, rollouts/step_*.parquet, validation.jsonl,
step_*/ checkpoints (exact resume), final/model, config.json, manifest.json (last).

    python 03_rl_grpo.py --run_name kimina --backend vllm                              # one GPU
    accelerate launch --num_processes 8 03_rl_grpo.py --run_name kimina --backend vllm # 8 GPUs
    python 03_rl_grpo.py --run_name it1 --rollout repair --memory runs/it0/memory.parquet
    python 03_rl_grpo.py --run_name sf --rollout tool --prompt_format stepfun
CPU toy: smoke.sh. Several machines: recipes/verl/. Where this departs from Kimina's verl run
and from OProver/StepFun: docs/DESIGN.md; the recipe's numbers: docs/RECIPES.md.
"""
from dataclasses import dataclass

import common


@dataclass
class Settings(common.RunSettings, common.DeviceSettings, common.FormatSettings,
               common.SamplingSettings, common.VerifySettings, common.LoraSettings,
               common.RepairSettings,
               common.ToolSettings):
    # Kimina-Prover-RL 1.7B (docs/RECIPES.md): 256 prompts x 8, mini-batches of 32 prompts,
    # lr 2e-6 constant, clip 0.2/0.3, no KL, advantage not divided by std, 15 epochs
    prompts_per_step: int = 256
    group_size: int = 8
    mini_batch_prompts: int = 32
    lr: float = 2e-6
    clip_low: float = 0.2
    clip_high: float = 0.3
    clip_ratio_c: float = 3.0            # dual clip for negative advantages (verl; <= 1: off)
    kl_coef: float = 0.0
    adv_std_norm: bool = False
    loss_agg: str = "seq_sum_norm"       # seq_sum_norm (Kimina) | token_mean | seq_mean
    ratio_level: str = "auto"            # token (GRPO) | sequence (GSPO) | auto: GSPO for repair
    epochs: int = 15
    max_steps: int = 0                   # 0: run the epochs
    micro_batch_size: int = 16           # rollouts per forward pass (memory only)
    share_prompts: int = 2048            # a group's prompt once per forward row of up to this
                                         # many tokens (the same values; 0: a row per rollout)
    grad_checkpointing: bool = False     # Kimina: on (GPU memory); slower on CPU
    ppo_epochs: int = 1
    grad_clip: float = 1.0
    skip_zero_variance: bool = False     # dynamic sampling: drop groups with one reward value
    overlong_buffer: int = 0             # >0: linear length penalty in the last N tokens
    require_tactic_blocks: bool = True   # Kimina's ```tactics format checks (off for the toy)
    # a step tolerates transient faults (their rollouts get reward 0); a dead server stops it
    max_server_error_share: float = 0.5
    # error correction (Kimina's second turn; single rollouts only)
    error_correction: bool = True
    ec_prob: float = 0.5
    ec_cache_size: int = 5000
    ec_max_feedback_chars: int = 3000
    # inputs (defaults: runs/<run>/02_sft/final/model, 01_data/rl_prompts and first eval_*)
    model: str = ""
    data: str = ""
    eval_data: str = ""
    balance_by: str = ""                 # a prompt column whose values fresh prompts take in turn
    # rollouts: sampling, verification, LoRA, repair and tool settings are the shared ones
    rollout: str = "single"              # single (Kimina) | repair (OProver) | tool (StepFun)
    repair_credit: str = "trajectory"    # repair: trajectory's advantage on every round | round
    memory: str = ""                     # repair: a frozen proof file (04's memory_*.parquet)
    gen_chunks: int = 2                  # verify chunk k while generating chunk k+1
    vllm_gpu_memory: float = 0.5
    # validation on the eval set (Kimina: every 5 steps, 8 samples, temperature 1, top_p 0.95)
    eval_every: int = 5
    eval_samples: int = 8
    eval_temperature: float = 1.0
    eval_top_p: float = 0.95
    eval_max_problems: int = 0           # 0: all
    # bookkeeping
    max_generated_tokens: int = 0        # >0: stop where the rollouts' tokens reach it
    save_every: int = 5
    keep_checkpoints: int = 2
    resume: str = "auto"                 # auto: latest step_* | no | a checkpoint folder
    stop_after_steps: int = 0            # stop early with a checkpoint (time-boxing, tests)
    wandb: bool = False

    CHOICES = {"loss_agg": ("seq_sum_norm", "token_mean", "seq_mean"),
               "ratio_level": ("auto", "token", "sequence"),
               "rollout": ("single", "repair", "tool"),
               "repair_credit": ("trajectory", "round")}

    def __post_init__(self):   # resolved here, so config.json and every reader see the one in use
        if self.ratio_level == "auto":
            self.ratio_level = "sequence" if self.rollout == "repair" else "token"


# imports below the settings, so that the settings are the first screen
import concurrent.futures as cf  # noqa: E402
import dataclasses  # noqa: E402
import itertools  # noqa: E402
import random  # noqa: E402
import shutil  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from collections import Counter, deque  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402
import torch  # noqa: E402

import formats  # noqa: E402
import generation  # noqa: E402
from lean_client import LeanClient  # noqa: E402
from proof_memory import ProofMemory, read_proof_file  # noqa: E402
from rl_objective import policy_loss, sequence_logprobs  # noqa: E402
from rollouts import (PromptItem, Rollout, rollout_mode, rollout_step,  # noqa: E402,F401
                      score)  # tests use grpo.score / grpo.Rollout


# ---------------------------------------------------------------------------------------------
# Setup
# ---------------------------------------------------------------------------------------------

def resolve_paths(cfg: Settings) -> tuple[str, Path, Path | None]:
    data_dir = common.stage_dir(cfg.run_name, "01_data")
    model = cfg.model or str(common.stage_dir(cfg.run_name, "02_sft") / "final" / "model")
    data = Path(cfg.data) if cfg.data else data_dir / "rl_prompts.parquet"
    evals = sorted(data_dir.glob("eval_*.parquet"))
    eval_data = Path(cfg.eval_data) if cfg.eval_data else (evals[0] if evals else None)
    return model, data, eval_data


def check_settings(cfg: Settings, world: int) -> None:
    common.check_choices(cfg)   # also for a Settings built in code, not parsed
    if cfg.prompts_per_step % cfg.mini_batch_prompts:
        raise SystemExit("--prompts_per_step must be a multiple of --mini_batch_prompts")
    if cfg.prompts_per_step % world:
        raise SystemExit("--prompts_per_step must be a multiple of the number of processes "
                         f"({world})")


# ---------------------------------------------------------------------------------------------
# Data: prompts for a step (fresh, or cached second turns)
# ---------------------------------------------------------------------------------------------

class PromptSampler:
    """Fresh prompts walk a per-epoch permutation; with probability ec_prob a slot takes a
    cached second-turn prompt instead. Deterministic in (seed, step): resume needs only the
    cursor, the epoch and the cache."""

    def __init__(self, rows: list[dict], cfg: Settings):
        self.rows, self.cfg = rows, cfg
        self.epoch, self.cursor = 0, 0
        self.cache: deque = deque(maxlen=cfg.ec_cache_size)
        self.order = self._order(0)

    def _order(self, epoch):
        # a row with weight w (01 keeps Kimina's deliberate Promptset duplicates as weight) comes
        # w times per epoch, as the duplicated rows did in Kimina's run
        order = [i for i, r in enumerate(self.rows) for _ in range(int(r.get("weight") or 1))]
        rng = random.Random(self.cfg.seed * 7919 + epoch)
        rng.shuffle(order)
        if self.cfg.balance_by:
            # stratified: each value's rows keep their shuffled order and fresh prompts take the
            # values in turn, so a step's mix does not drift to whichever class the shuffle favoured
            # (until the smaller classes of an epoch run out)
            lanes: dict = {}
            for i in order:
                lanes.setdefault(str(self.rows[i][self.cfg.balance_by]), []).append(i)
            turn = [lanes[k] for k in sorted(lanes)]
            rng.shuffle(turn)
            order = [i for group in itertools.zip_longest(*turn) for i in group if i is not None]
        return order

    def sample(self, step: int) -> list[PromptItem]:
        rng = random.Random(generation.rollout_seed(self.cfg.seed, step, -1))
        items = []
        for _ in range(self.cfg.prompts_per_step):
            if self.cfg.error_correction and self.cache and rng.random() < self.cfg.ec_prob:
                items.append(self.cache.pop() if len(self.cache) == 1 else
                             self._take(rng.randrange(len(self.cache))))
                continue
            if self.cursor >= len(self.order):
                self.epoch, self.cursor = self.epoch + 1, 0
                self.order = self._order(self.epoch)
            items.append(PromptItem(self.rows[self.order[self.cursor]]))
            self.cursor += 1
        return items

    def _take(self, k: int) -> PromptItem:
        self.cache.rotate(-k)
        item = self.cache.popleft()
        self.cache.rotate(k)
        return item

    def state(self) -> dict:
        return {"epoch": self.epoch, "cursor": self.cursor,
                "cache": [dataclasses.asdict(i) for i in self.cache]}

    def load(self, st: dict) -> None:
        self.epoch, self.cursor = st["epoch"], st["cursor"]
        self.order = self._order(self.epoch)
        self.cache = deque((PromptItem(**i) for i in st["cache"]), maxlen=self.cfg.ec_cache_size)


# ---------------------------------------------------------------------------------------------
# Loop
# ---------------------------------------------------------------------------------------------

def update(model, ref_model, optimizer, rollouts: list[Rollout], cfg: Settings, step: int, device,
           world: int = 1) -> dict:
    """ppo_epochs passes of mini-batch updates over the step's rollouts (all processes' rollouts,
    the same list on every process). Each process runs forward/backward on its own (local) ones
    with the loss normalised by the mini-batch's global totals, so summing gradients over
    processes gives the one-process gradient. Log-probs, advantages and the loss are float32
    whatever the model's dtype (docs/DESIGN.md, mixed precision)."""
    params = [p for p in model.parameters() if p.requires_grad]
    stats = Counter()
    per_mb = cfg.mini_batch_prompts * cfg.group_size
    order = list(range(len(rollouts)))
    old = {i: torch.tensor(r.gen.logprobs, dtype=torch.float32)
           for i, r in enumerate(rollouts) if r.has_ids}
    use_kl = bool(cfg.kl_coef) and ref_model is not None
    for epoch in range(cfg.ppo_epochs):
        random.Random(generation.rollout_seed(cfg.seed, step, epoch, -2)).shuffle(order)
        for m in range(0, len(order), per_mb):
            mb = order[m:m + per_mb]
            n_tokens = sum(rollouts[i].n_tokens for i in mb)
            own = [i for i in mb if rollouts[i].has_ids]   # this process's share of the batch
            # with no KL term, a rollout whose advantage is 0 adds exactly 0 to the gradient
            # (a zero-variance group): it gets a forward pass for the entropy metrics only
            idle = [] if use_kl else [i for i in own if rollouts[i].advantage == 0.0]
            trained = [i for i in own if use_kl or rollouts[i].advantage != 0.0]
            # micro-batches of whole groups, so a prompt runs once in each (share_prompts):
            # the split is for memory only, the mini-batch's gradient is the same
            idle, trained = by_prompt(rollouts, idle), by_prompt(rollouts, trained)
            optimizer.zero_grad(set_to_none=True)
            chunks = [(group[u:u + cfg.micro_batch_size], with_grad)
                      for group, with_grad in ((trained, True), (idle, False))
                      for u in range(0, len(group), cfg.micro_batch_size)]
            for micro, with_grad in chunks:
                pairs = [rollouts[i].sequence() for i in micro]
                if not with_grad:
                    with torch.no_grad():
                        _, ent, mask = sequence_logprobs(model, pairs, cfg.temperature, device,
                                                         cfg.share_prompts)
                    stats["tokens"] += float(mask.sum())
                    stats["idle_rollouts"] += len(micro)
                    if epoch == 0:
                        log_entropy(stats, rollouts, micro, ent, mask)
                    continue
                logp, ent, mask = sequence_logprobs(model, pairs, cfg.temperature, device,
                                                    cfg.share_prompts)
                old_lp = torch.zeros_like(logp)
                for b, i in enumerate(micro):
                    old_lp[b, :len(old[i])] = old[i].to(device)
                ref_lp = None
                if ref_model is not None:
                    with torch.no_grad():
                        ref_lp, _, _ = sequence_logprobs(ref_model, pairs, cfg.temperature,
                                                         device, cfg.share_prompts)
                adv = torch.tensor([rollouts[i].advantage for i in micro], device=device,
                                   dtype=torch.float32)
                loss, st = policy_loss(logp, old_lp, adv, mask, cfg, cfg.max_new_tokens, ref_lp,
                                       n_seqs_total=len(mb), n_tokens_total=n_tokens)
                loss.backward()
                stats.update(st)
                stats["loss"] += float(loss.detach())
                if epoch == 0:
                    log_entropy(stats, rollouts, micro, ent, mask)
                if ref_lp is not None:
                    d = (ref_lp - logp).detach()   # the k3 estimate, for the metric only
                    stats["kl_sum"] += float((d.exp() - d - 1).mul(mask).sum())
            if not trained:   # idle rollouts only: the zero gradient the full backward would give
                for p in params:   # (Adam's moments still move the weights)
                    if p.grad is None:
                        p.grad = torch.zeros_like(p)
            common.sum_gradients(params, world)
            if cfg.grad_clip:
                stats["grad_norm"] = float(torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip))
            optimizer.step()
            stats["updates"] += 1
    totals = Counter()
    for part in common.gather_lists([dict(stats)], world):   # loss and token counts of all
                                                             # processes
        totals.update({k: v for k, v in part.items() if k not in ("updates", "grad_norm")})
    tokens = max(1.0, totals["tokens"])
    out = {"loss": totals["loss"] / max(1, stats["updates"]),
           "clip_fraction": totals["clipped_tokens"] / tokens,
           "entropy": totals["entropy_sum"] * cfg.ppo_epochs / tokens, "updates": stats["updates"],
           "entropy_decision": totals["decision_entropy_sum"] / max(1, totals["decisions"]),
           "grad_norm": stats.get("grad_norm", 0.0), "idle_rollouts": totals["idle_rollouts"]}
    if ref_model is not None:
        out["kl"] = totals["kl_sum"] / tokens
    return out


def by_prompt(rollouts: list[Rollout], idx: list[int]) -> list[int]:
    """idx reordered so rollouts of the same prompt are neighbours (first appearance order)."""
    groups: dict[tuple, list[int]] = {}
    for i in idx:
        groups.setdefault(tuple(rollouts[i].prompt_ids), []).append(i)
    return [i for g in groups.values() for i in g]


def log_entropy(stats: Counter, rollouts: list[Rollout], micro: list[int], ent, mask) -> None:
    stats["entropy_sum"] += float((ent.detach() * mask).sum())
    for b, i in enumerate(micro):   # the token that decides: the proof's first
        at = rollouts[i].decision_at
        if at is not None and at < ent.shape[1]:
            stats["decision_entropy_sum"] += float(ent[b, at].detach())
            stats["decisions"] += 1


def add_second_turns(rollouts: list[Rollout], sampler: PromptSampler, tok, cfg: Settings) -> int:
    """Failed first turns with Lean errors (or a timeout) become cached second-turn prompts;
    feedback over ec_max_feedback_chars is dropped (Kimina), and so is a second-turn prompt over
    max_prompt_tokens (the first answer can be long). Returns how many were too long."""
    too_long = 0
    for r in rollouts:
        if (r.item.turn == 1 and r.reward == 0 and r.status in ("lean_error", "timeout")
                and r.feedback and len(r.feedback) <= cfg.ec_max_feedback_chars):
            item = PromptItem(r.item.row, 2, r.gen.text, r.feedback)
            if len(tok(formats.render(tok, item.messages(cfg.prompt_format), cfg.prompt_format),
                       add_special_tokens=False).input_ids) \
                    > cfg.max_prompt_tokens:
                too_long += 1
                continue
            sampler.cache.append(item)
    return too_long


def validate(rows, gen, tok, client, cfg, step, rank: int = 0, world: int = 1) -> dict:
    """pass@1 and best@N (bootstrap) on the eval set, before and after one error-correction turn.
    Success is the proof reward alone (Lean verified it), as Kimina's validation accuracy counts;
    the format reward is reported beside it (format_error_rate, and pass@1 with format).
    With several processes each takes a contiguous share of the problems."""
    lo, hi = rank * len(rows) // world, (rank + 1) * len(rows) // world
    items = [PromptItem(r) for r in rows[lo:hi]]
    n = cfg.eval_samples
    vcfg = dataclasses.replace(cfg, group_size=n, temperature=cfg.eval_temperature,
                               top_p=cfg.eval_top_p, seed=cfg.seed + 1_000_003, gen_chunks=1)
    with cf.ThreadPoolExecutor(1) as pool:
        first, _ = rollout_step(items, step, gen, tok, client, vcfg, pool, list(range(lo, hi)))
        failed = [k for k, r in enumerate(first)
                  if r.status != "valid" and r.feedback
                  and len(r.feedback) <= cfg.ec_max_feedback_chars]
        fixed: set[int] = set()
        if failed and cfg.error_correction:
            seconds = [PromptItem(first[k].item.row, 2, first[k].gen.text, first[k].feedback)
                       for k in failed]
            second, _ = rollout_step(seconds, step, gen, tok, client,
                                     dataclasses.replace(vcfg, group_size=1),
                                     # seeded by attempt
                                     pool, [f"ec{lo * n + k}" for k in failed])
            fixed = {k for k, r in zip(failed, second) if r.status == "valid"}
    # per problem: (proved before, proved after error correction, proved with the format right)
    per_problem = [([first[k].status == "valid" for k in range(g, g + n)],
             [first[k].status == "valid" or k in fixed for k in range(g, g + n)],
             [first[k].reward > 0 for k in range(g, g + n)],
             [bool(first[k].format_errors) for k in range(g, g + n)])
                   for g in range(0, len(first), n)]
    results = common.gather_lists(per_problem, world)
    res = {"step": step, "problems": len(rows)}
    for j, tag in ((0, ""), (1, "_after_ec")):
        res[f"pass@1{tag}"] = float(np.mean([np.mean(r[j]) for r in results]))
        res[f"best@{n}{tag}"] = float(np.mean([common.best_at_n_bootstrap(r[j], n, seed=step)
                                               for r in results]))
    res["pass@1_with_format"] = float(np.mean([np.mean(r[2]) for r in results]))
    res["format_error_rate"] = float(np.mean([np.mean(r[3]) for r in results]))
    return res


@dataclasses.dataclass
class Processes:
    """Who this process is among torchrun / accelerate launch's: one per GPU."""
    acc: object
    world: int
    rank: int
    is_main: bool
    device: torch.device


def start_processes(placement) -> Processes:
    from accelerate import Accelerator
    acc = Accelerator(cpu=placement.device == "cpu")
    # one process: the policy's device as asked (cuda:N included); several: each its own GPU
    device = torch.device(placement.device) if acc.num_processes == 1 else acc.device
    return Processes(acc, acc.num_processes, acc.process_index, acc.is_main_process, device)


def load_models(cfg: Settings, model_path: str, placement):
    """The policy (LoRA-wrapped when asked; float32 master weights under a bfloat16 compute
    dtype) and, with a KL term, the frozen reference model: both through the device policy, so
    the reference always computes on the policy's device and in its dtype."""
    model = generation.load_model(model_path, placement, trainable=True)
    if cfg.grad_checkpointing:
        model.gradient_checkpointing_enable()
        model.config.use_cache = False   # generation passes its own cache; training needs none
    if cfg.lora:
        from peft import LoraConfig, get_peft_model
        model = get_peft_model(model, LoraConfig(
            r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
            target_modules=cfg.lora_targets.split(","), task_type="CAUSAL_LM"))
    ref_model = generation.load_model(model_path, placement).eval() if cfg.kl_coef else None
    return model, ref_model


def read_prompts(cfg: Settings, data_path: Path, eval_path: Path | None):
    rows = common.read_rows(data_path, "statements")
    train_rows = [r for r in rows if r["split"] != "valid"] or rows
    if cfg.balance_by:
        missing = next((r for r in train_rows if r.get(cfg.balance_by) is None), None)
        if missing is not None:
            raise SystemExit(f"--balance_by {cfg.balance_by}: {data_path}, row "
                             f"{missing['statement_id']}, has no value in that column "
                             f"(columns: {', '.join(rows[0])})")
    eval_rows = common.read_rows(eval_path, "statements") if eval_path and cfg.eval_every else []
    return train_rows, eval_rows[:cfg.eval_max_problems or None]


def train(cfg: Settings) -> Path:
    # -----------------------------------------------------------------------------------------
    # Setup: processes, data, models, verifier, resume
    # -----------------------------------------------------------------------------------------
    placement = generation.device_policy(cfg.device, cfg.dtype)
    threads = generation.cpu_threads(cfg.threads)
    procs = start_processes(placement)
    world, rank, is_main = procs.world, procs.rank, procs.is_main
    check_settings(cfg, world)
    out = common.stage_dir(cfg.run_name, "03_grpo")
    (out / "rollouts").mkdir(parents=True, exist_ok=True)
    if is_main:
        common.lock_folder(out)
        (out / "manifest.json").unlink(missing_ok=True)
    model_path, data_path, eval_path = resolve_paths(cfg)
    cfg = dataclasses.replace(cfg, prompt_format=formats.format_for(model_path, cfg.prompt_format))
    train_rows, eval_rows = read_prompts(cfg, data_path, eval_path)
    torch.manual_seed(cfg.seed)
    tok = generation.load_tokenizer(model_path)
    placement = generation.Placement(str(procs.device), placement.dtype)
    model, ref_model = load_models(cfg, model_path, placement)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=cfg.lr,
                                  weight_decay=0.0)
    cache = out / ("verdicts.sqlite" if is_main else f"verdicts.rank{rank}.sqlite")
    client = LeanClient(timeout=cfg.lean_timeout, batch_size=cfg.lean_batch_size,
                        check_axioms=cfg.check_axioms,
                        reject_native_decide=cfg.reject_native_decide,
                        infotree="original" if cfg.goal_states else None,
                        max_retries=cfg.lean_retries, cache_path=cache)
    client.require_healthy()
    client.probe_line_numbering()   # how this server counts message lines, asked, not assumed
    sampler = PromptSampler(train_rows, cfg)   # the same on every process: same seed, same cache
    # repair rollouts retrieve from a frozen memory, never holding the validation statements
    memory = ProofMemory(read_proof_file(Path(cfg.memory)), eval_rows) if cfg.memory else None
    step = 0
    ckpt = common.find_checkpoint(cfg.resume, out)
    if ckpt:
        step = load_checkpoint(ckpt, model, optimizer, sampler, cfg)
        print(f"resumed from {ckpt} at step {step}")
    generated = generated_so_far(out, step)   # the model's tokens in the rollouts of steps 1..step
    if cfg.backend == "vllm":
        gen = generation.VLLMGenerator(model_path, lora=cfg.lora, max_lora_rank=cfg.lora_r,
                                       gpu_memory_utilization=cfg.vllm_gpu_memory,
                                       external_launcher=world > 1, dtype=placement.dtype)
        push_weights(gen, model, cfg, out)
    else:
        gen = generation.HFGenerator(model, tok, batch_size=cfg.gen_batch_size)
    total = cfg.max_steps or cfg.epochs * max(1, len(train_rows) // cfg.prompts_per_step)
    if cfg.max_generated_tokens and generated >= cfg.max_generated_tokens:
        total = step   # a run that already spent its token budget: resumed, it trains no further
    if is_main:
        common.save_config(cfg, out, extra={
            "resolved_model": model_path, "data": str(data_path), "processes": world,
            "eval_data": str(eval_path), "total_steps": total, "placement": vars(placement),
            "cpu_threads": threads})
        kept = step if ckpt else -1   # no checkpoint: a crashed run's step-0 validation goes too
        metrics = common.MetricsLog(out / "metrics.jsonl", kept, cfg.wandb, cfg.run_name,
                                    dataclasses.asdict(cfg))
        vlog = common.MetricsLog(out / "validation.jsonl", kept)
    from tqdm import tqdm
    bar = tqdm(total=total, initial=step, desc="grpo", disable=not is_main)
    pool = cf.ThreadPoolExecutor(1)
    mode = rollout_mode(cfg, gen, tok, client, memory, pool)   # single | repair | tool
    if eval_rows and step == 0:
        res = validate(eval_rows, gen, tok, client, cfg, 0, rank, world)
        if is_main:
            vlog.log(res)
    # this process's share of each step's prompts: whole groups, contiguous
    lo, hi = rank * cfg.prompts_per_step // world, (rank + 1) * cfg.prompts_per_step // world

    # -----------------------------------------------------------------------------------------
    # Loop: rollouts -> rewards -> advantages -> update -> metrics, validation, checkpoint
    # -----------------------------------------------------------------------------------------
    while step < total:
        step += 1
        t_step = time.perf_counter()
        hits_before = client.stats["cache_hits"]
        items = sampler.sample(step)
        own, timing = mode.generate(items[lo:hi], step, list(range(lo, hi)))
        if cfg.backend == "vllm":   # vLLM's log-probs are not the trainer's: recompute them
            with torch.no_grad():
                for r in own:
                    lp, _, _ = sequence_logprobs(model, [r.sequence()], cfg.temperature,
                                                 procs.device)
                    r.gen.logprobs = lp[0, :len(r.gen.token_ids)].tolist()
        # every process gets every verdict (not the token ids): same cache, same metrics
        gathered = common.gather_lists([r.shareable() for r in own], world)
        rollouts = mode.merge(gathered, own, lo, hi)
        common.check_server_errors([r.status for r in rollouts], cfg.max_server_error_share,
                            f"step {step}", "nothing of this step was trained on; rerun to "
                            "resume from the last checkpoint")
        too_long = (add_second_turns(rollouts, sampler, tok, cfg)
                    if cfg.error_correction and mode.second_turns else 0)
        train_on, zero_var = mode.advantages(rollouts)
        t0 = time.perf_counter()
        upd = (update(model, ref_model, optimizer, train_on, cfg, step, procs.device, world)
               if train_on else {})
        t_update = time.perf_counter() - t0
        if cfg.backend == "vllm":
            push_weights(gen, model, cfg, out)
        record = step_metrics(step, rollouts, zero_var, upd, timing, t_update,
                              time.perf_counter() - t_step,
                              client.stats["cache_hits"] - hits_before, len(sampler.cache))
        record["ec_skipped_long_prompts"] = too_long
        generated += sum(r.n_tokens for r in rollouts)
        record["generated_tokens"] = generated
        if cfg.max_generated_tokens and generated >= cfg.max_generated_tokens:
            total = step   # this step is the last: validated, saved and finalised as such
        if is_main:
            metrics.log(record)
            save_rollouts(out / "rollouts" / f"step_{step:06d}.parquet", step, rollouts)
        bar.update(1)
        bar.set_postfix(reward=f"{record['reward_mean']:.2f}",
                        pass_rate=f"{record['pass_rate']:.2f}")
        if eval_rows and cfg.eval_every and (step % cfg.eval_every == 0 or step == total):
            res = validate(eval_rows, gen, tok, client, cfg, step, rank, world)
            if is_main:
                vlog.log(res)
        stop_now = cfg.stop_after_steps and step >= cfg.stop_after_steps
        if (cfg.save_every and step % cfg.save_every == 0) or stop_now or step == total:
            if is_main:
                save_checkpoint(out / f"step_{step:06d}", model, tok, optimizer, sampler, step, cfg)
            procs.acc.wait_for_everyone()
        if stop_now and step < total:
            print(f"stopped after step {step} (--stop_after_steps); rerun to resume")
            pool.shutdown()
            return out
    bar.close()
    pool.shutdown()
    if not is_main:
        return out

    # -----------------------------------------------------------------------------------------
    # Save
    # -----------------------------------------------------------------------------------------
    final = out / "final"
    shutil.rmtree(final, ignore_errors=True)
    plain = model.merge_and_unload() if cfg.lora else model
    generation.save_model(plain, tok, final / "model", placement)
    common.save_config(cfg, final, extra={"resolved_model": model_path, "steps": step})
    plots = make_plots(out, metrics.rows, vlog.rows)
    common.write_manifest(
        out, [out / "metrics.jsonl", out / "validation.jsonl", out / "config.json", *plots],
        extra={"stage": "03_grpo", "steps": step, "generated_tokens": generated,
               "final_model": str(final / "model"), "lean_client": dict(client.stats),
               "first": metrics.rows[0] if metrics.rows else {},
               "last": metrics.rows[-1] if metrics.rows else {}})
    print(f"wrote {final / 'model'}")
    return out


def generated_so_far(out: Path, step: int) -> int:
    """Tokens the model generated in steps 1..step, from the rollout files (a resumed run counts
    on)."""
    files = [f for f in (out / "rollouts").glob("step_*.parquet")
             if int(f.stem.split("_")[1]) <= step]
    return int(sum(pq.read_table(f, columns=["n_tokens"]).column("n_tokens").to_numpy().sum()
                   for f in files))


def step_metrics(step, rollouts, zero_var, upd, timing, t_update, t_step, cache_hits,
                 ec_cache) -> dict:
    n = len(rollouts)
    fmt = Counter(e for r in rollouts for e in r.format_errors)
    status = Counter(r.status for r in rollouts)
    rec = {"step": step, "reward_mean": float(np.mean([r.reward for r in rollouts])),
           "pass_rate": sum(r.status == "valid" for r in rollouts) / n,
           "format_error_rate": sum(bool(r.format_errors) for r in rollouts) / n,
           "response_length": float(np.mean([r.n_tokens for r in rollouts])),
           "second_turn_fraction": sum(r.item.turn == 2 for r in rollouts) / n,
           "zero_variance_groups": zero_var, "cache_hits": cache_hits, "ec_cache": ec_cache,
           "time_update": t_update, "time_step": t_step, **timing, **upd}
    # each turn's (round's) own rates
    for turn in range(1, max(r.item.turn for r in rollouts) + 1):
        of_turn = [r for r in rollouts if r.item.turn == turn]
        if of_turn:
            rec[f"pass_rate_turn{turn}"] = sum(r.status == "valid" for r in of_turn) / len(of_turn)
            rec[f"format_error_rate_turn{turn}"] = sum(bool(r.format_errors)
                                                       for r in of_turn) / len(of_turn)
            for k, v in sorted(Counter(e for r in of_turn for e in r.format_errors).items()):
                rec[f"format_turn{turn}/{k}"] = v / len(of_turn)
    if rollouts[0].trajectory >= 0:   # repair/tool: solved trajectories, REPL checks
        trajs = Counter(r.trajectory for r in rollouts)
        rec["pass_rate_trajectory"] = len({r.trajectory for r in rollouts
                                           if r.status == "valid"}) / len(trajs)
        rec["rounds_per_trajectory"] = n / len(trajs)
        rec["tool_checks"] = float(np.mean([r.gen.text.count("\n<REPL>\n") for r in rollouts]))
    rec["verify_wait_share"] = timing["time_verify_wait"] / t_step
    rec.update({f"format/{k}": v / n for k, v in sorted(fmt.items())})
    rec.update({f"lean/{k}": v / n for k, v in sorted(status.items())})
    return rec


def save_rollouts(path: Path, step: int, rollouts: list[Rollout]) -> None:
    common.write_parquet([{
        "step": step, "prompt_id": r.item.row["statement_id"], "turn": r.item.turn,
        "prompt": r.item.messages()[-1]["content"], "completion": r.gen.text, "status": r.status,
        "format_errors": ",".join(r.format_errors), "reward": r.reward, "advantage": r.advantage,
        "n_tokens": r.n_tokens, "finish": r.gen.finish} for r in rollouts], path, "rollouts")


def make_plots(out: Path, rows: list[dict], vrows: list[dict]) -> list[Path]:
    plots = [common.plot_curves(rows, out / "reward.png",
                                ["reward_mean", "pass_rate", "pass_rate_turn1",
                                                           "pass_rate_turn2"],
                                "GRPO reward and pass rate", smooth=10),
             common.plot_curves(rows, out / "format_errors.png", ["format_error_rate"] +
                                sorted({k for r in rows for k in r if k.startswith("format/")}),
                                "format errors"),
             common.plot_curves(rows, out / "response_length.png", ["response_length"],
                                "mean response length (tokens)")]
    if vrows:
        keys = [k for k in vrows[-1] if k.startswith(("pass@1", "best@"))]
        plots.append(common.plot_curves(vrows, out / "validation.png", keys, "validation"))
    return plots


# ---------------------------------------------------------------------------------------------
# Checkpoints and the vLLM weight push
# ---------------------------------------------------------------------------------------------

def save_checkpoint(folder: Path, model, tok, optimizer, sampler, step: int, cfg: Settings) -> None:
    common.save_checkpoint(folder, model, tok, {"optimizer": optimizer.state_dict(), "step": step,
                                                "sampler": sampler.state()}, cfg,
                           cfg.keep_checkpoints)


def load_checkpoint(ckpt: Path, model, optimizer, sampler, cfg) -> int:
    st = common.load_checkpoint(ckpt, model, cfg.lora)
    optimizer.load_state_dict(st["optimizer"])
    sampler.load(st["sampler"])
    return st["step"]


def push_weights(gen, model, cfg: Settings, out: Path) -> None:
    if cfg.lora:
        gen.push_lora(model, out / "adapters")
    else:
        gen.push_full_weights(model)


if __name__ == "__main__":
    train(common.parse_settings(Settings, sys.argv[1:], description=__doc__))
