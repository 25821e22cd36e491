"""What every stage shares that is not about Lean text, prompts or models: run folders,
settings, config/manifest, the Parquet contracts between stages, checkpoints, metrics (pass@k,
best@N, JSONL logs, plots) and the two collectives of the data-parallel RL stage.

Where the rest lives: Lean text helpers in `lean_client.py` (it stands alone), statement
identity in `canonical.py`, prompt formats and proof extraction in `formats.py`, models and
generators in `generation.py`, the toy task in `toy_task.py`.

Only the standard library is imported at the top; torch, pandas, pyarrow and matplotlib are
imported inside the functions that need them.
"""
from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import os
import sys
import time
from pathlib import Path
from typing import Any, Iterable, Sequence

PROJECT_ROOT = Path(__file__).resolve().parent
RUNS_ROOT = Path(os.environ.get("PROVER_RUNS_DIR", PROJECT_ROOT / "runs"))
# tables and plots
RESULTS_ROOT = Path(os.environ.get("PROVER_RESULTS_DIR", PROJECT_ROOT / "results"))

# ---------------------------------------------------------------------------------------------
# Metrics
# ---------------------------------------------------------------------------------------------

def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k for one problem with n samples of which c verify (Chen et al. 2021)."""
    if not (0 <= c <= n) or k < 1:
        raise ValueError(f"pass_at_k needs 0 <= c <= n and k >= 1 (n={n}, c={c}, k={k})")
    if k > n:
        raise ValueError(f"pass@{k} needs at least {k} samples per problem, got n={n}")
    if n - c < k:
        return 1.0
    prod = 1.0
    for i in range(n - c + 1, n + 1):
        prod *= 1.0 - k / i
    return 1.0 - prod


def best_at_n_bootstrap(successes: Sequence[bool], n: int, resamples: int = 1000,
                        seed: int = 0) -> float:
    """Kimina's best@N: draw N of the recorded samples with replacement, take the max, average
    over resamples (its expectation is 1 - (1 - c/len)^N). It sits below plain pass@N."""
    if not len(successes):
        raise ValueError("best@N needs at least one sample")
    import numpy as np
    draws = np.random.default_rng(seed).integers(0, len(successes), size=(resamples, n))
    return float(np.asarray(successes, dtype=bool)[draws].any(1).mean())


# ---------------------------------------------------------------------------------------------
# Settings: one dataclass per stage, built from the shared groups below; checked command-line
# overrides; config.json
# ---------------------------------------------------------------------------------------------

LORA_TARGETS = "q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj"


@dataclasses.dataclass
class RunSettings:
    run_name: str = "default"            # runs/<run_name>/<stage>/
    seed: int = 0


@dataclasses.dataclass
class DeviceSettings:
    # generation.device_policy decides both for every model a stage loads (docs/DESIGN.md)
    device: str = "auto"                 # auto (CUDA when there is one, else CPU) | cpu | cuda |
                                         # cuda:N
    dtype: str = "auto"                  # auto (bfloat16 on CUDA, float32 on CPU) | float32 |
                                         # bfloat16
    threads: int = 0                     # CPU intra-op threads; 0: the cores not busy (>= 1)


@dataclasses.dataclass
class FormatSettings:
    # formats.FORMATS; auto: 02 takes 01's SFT format, 03/04 the model name's family, else kimina
    prompt_format: str = "auto"


@dataclasses.dataclass
class SamplingSettings:
    temperature: float = 1.0             # Kimina: 1.0
    top_p: float = 1.0
    max_new_tokens: int = 24576          # Kimina: 32768 max length - 8192 prompt
    max_prompt_tokens: int = 8192        # Kimina: a longer (second-turn) prompt is dropped, counted
    backend: str = "hf"                  # hf (transformers) | vllm
    gen_batch_size: int = 64             # hf backend: sequences per generate call


@dataclasses.dataclass
class VerifySettings:
    lean_timeout: int = 60               # seconds per snippet
    lean_batch_size: int = 8             # snippets per request
    lean_retries: int = 4                # per batch, exponential backoff
    check_axioms: bool = False           # #print axioms on every proof that verifies
    reject_native_decide: bool = False   # for benchmarks that forbid native_decide
    goal_states: bool = False            # ask for infotrees: goal states in Kimina's feedback
    max_server_error_share: float = 0.02  # more server errors among the verified: stop, loudly


@dataclasses.dataclass
class RepairSettings:
    repair_depth: int = 3                # OProver: rounds per trajectory, stop at the first
                                         # verified
    retrieve_k: int = 3                  # proofs retrieved from the proof memory (0: none)


@dataclasses.dataclass
class ToolSettings:
    tool_budget: int = 20480             # StepFun: the whole context (prompt, generated, REPL)
    tool_max_checks: int = 0             # sketches allowed (0: no cap, as StepFun)


@dataclasses.dataclass
class LoraSettings:
    lora: bool = False
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.0
    lora_targets: str = LORA_TARGETS


# The allowed values of every choice-valued setting, whatever stage declares it; a stage adds its
# own in a class attribute CHOICES. Checked at parse time and by check_choices.
CHOICES = {
    "backend": ("hf", "vllm"),
    "dtype": ("auto", "float32", "bfloat16"),
}


def check_choices(cfg, where: str = "") -> None:
    """Raise SystemExit naming the setting and its allowed values when a value is not one of them
    (device: auto, cpu, cuda or cuda:N)."""
    allowed = {**CHOICES, **getattr(type(cfg), "CHOICES", {})}
    names = {f.name for f in dataclasses.fields(cfg)}
    if "prompt_format" in names and "prompt_format" not in allowed:
        import formats   # the formats' names live there (formats imports nothing of ours but
        allowed["prompt_format"] = ("auto",) + formats.FORMATS   # lean_client)
    prefix = f"{where}: " if where else ""
    for key, values in allowed.items():
        if key in names and getattr(cfg, key) not in values:
            raise SystemExit(f"{prefix}--{key} must be one of {', '.join(map(str, values))}; "
                             f"got {getattr(cfg, key)!r}")
    device = getattr(cfg, "device", "auto")
    if "device" in names and not (device in ("auto", "cpu", "cuda") or
                                  (device.startswith("cuda:") and device[5:].isdigit())):
        raise SystemExit(f"{prefix}--device must be auto, cpu, cuda or cuda:N; got {device!r}")


def _parse_bool(text: str) -> bool:
    low = text.strip().lower()
    if low in ("1", "true", "yes", "on"):
        return True
    if low in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true/false, got {text!r}")


def _field_type(f):
    if not isinstance(f.type, str):
        return f.type
    return {"int": int, "float": float, "str": str, "bool": bool}.get(f.type, str)


def settings_parser(settings_cls, description: str = "") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=description, allow_abbrev=False,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    for f in dataclasses.fields(settings_cls):
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        typ = _field_type(f)
        parser.add_argument(f"--{f.name}", type=_parse_bool if typ is bool else typ,
                            default=default, metavar=typ.__name__.upper(),
                            help=f"default: {default!r}")
    return parser


def parse_settings(settings_cls, argv: Sequence[str] | None = None, *, description: str = ""):
    """Build the stage's settings from its dataclass defaults and `--key value` overrides.
    An unknown key, a badly typed value or a value outside a setting's choices is an error
    (argparse exits with the message)."""
    parser = settings_parser(settings_cls, description)
    args = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
    cfg = settings_cls(**vars(args))
    check_choices(cfg)
    return cfg


def build_settings(settings_cls, stage: str, values: dict, argv: Sequence[str] = ()):
    """A stage's typed settings from keyword values plus `--key value` text, checked as the stage
    checks its command line; an unknown key or a bad value is a SystemExit naming the stage and
    the key. 05 builds every stage's settings this way before it starts anything."""
    names = {f.name: f for f in dataclasses.fields(settings_cls)}
    unknown = sorted(set(values) - set(names))
    if unknown:
        raise SystemExit(f"{stage}: unknown setting --{unknown[0]} "
                         f"(its settings: {', '.join(sorted(names))})")
    parser = settings_parser(settings_cls)
    parser.exit_on_error = False
    try:
        extra, rest = parser.parse_known_args(list(argv))
    except (argparse.ArgumentError, SystemExit) as exc:
        raise SystemExit(f"{stage}: {exc}") from None
    if rest:
        raise SystemExit(f"{stage}: unknown setting {rest[0]} in {' '.join(argv)!r}")
    given = {k: v for k, v in vars(extra).items() if any(a == f"--{k}" or a.startswith(f"--{k}=")
                                                         for a in argv)}
    for key, value in values.items():
        typ = _field_type(names[key])
        if typ is bool and not isinstance(value, bool):
            raise SystemExit(f"{stage}: --{key} must be true or false, got {value!r}")
        if typ in (int, float) and (isinstance(value, bool) or not isinstance(value, (int, float))):
            raise SystemExit(f"{stage}: --{key} must be a number, got {value!r}")
    cfg = settings_cls(**{**values, **given})
    check_choices(cfg, stage)
    return cfg


def settings_argv(cfg) -> list[str]:
    """The command line that rebuilds `cfg` in its stage: `--key value` for every setting that
    differs from the stage's default (one helper, so 05's subprocess calls and what it prints
    are the same thing)."""
    default = type(cfg)()
    argv: list[str] = []
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if value != getattr(default, f.name):
            argv += [f"--{f.name}", str(value).lower() if isinstance(value, bool) else str(value)]
    return argv


def save_config(settings: Any, folder: Path, extra: dict | None = None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    data = dataclasses.asdict(settings) if dataclasses.is_dataclass(settings) else dict(settings)
    if extra:
        data.update(extra)
    path = folder / "config.json"
    path.write_text(json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")
    return path


def stage_dir(run_name: str, stage: str) -> Path:
    """runs/<name>/<stage>, e.g. runs/smoke/01_data."""
    if not run_name or "/" in run_name or run_name.startswith("."):
        raise ValueError(f"bad run name {run_name!r}: use a plain folder name")
    return RUNS_ROOT / run_name / stage


_LOCKS: dict = {}   # folder -> its open lock file, held by this process until it exits


def lock_folder(folder: Path) -> None:
    """Hold an exclusive lock on an output folder for the rest of this process (released by
    the system when it exits, kill -9 included). Another run holding it is an error naming it:
    two runs writing one folder interleave their samples, metrics and checkpoints."""
    import fcntl
    folder.mkdir(parents=True, exist_ok=True)
    if str(folder.resolve()) in _LOCKS:
        return   # this process holds it already (a stage called twice in one process)
    fh = open(folder / ".lock", "a+")
    try:
        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        fh.seek(0)
        other = fh.read().strip() or "another process"
        fh.close()
        raise SystemExit(f"{folder} is in use by {other}: wait for it to finish, or stop it; "
                         "two runs on one folder would interleave what they write") from None
    fh.seek(0)
    fh.truncate()
    fh.write(f"pid {os.getpid()} ({' '.join(sys.argv)[:160]})")
    fh.flush()
    _LOCKS[str(folder.resolve())] = fh


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def write_manifest(folder: Path, files: Iterable[Path], extra: dict | None = None) -> Path:
    """Written last: its presence means the stage finished."""
    entries = {}
    for p in sorted(Path(f) for f in files):
        entries[p.name] = {"bytes": p.stat().st_size, "sha256": sha256_file(p)}
    data = {"files": entries, "written_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    data.update(extra or {})
    path = folder / "manifest.json"
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    tmp.replace(path)
    return path


def publish(staged: Path, out: Path, names: list[str]) -> list[Path]:
    """Move a finished stage's files from its staging folder into its output folder: the old
    manifest goes first (files and manifest never disagree: a crash in between leaves none),
    the new one is written after, by the caller. Files of the last run not written again go."""
    import shutil
    (out / "manifest.json").unlink(missing_ok=True)
    for old in out.glob("*.parquet"):
        if old.name not in names:
            old.unlink()
    moved = []
    for name in names:
        (staged / name).replace(out / name)
        moved.append(out / name)
    shutil.rmtree(staged, ignore_errors=True)
    return moved


def find_checkpoint(resume: str, stage_folder: Path) -> Path | None:
    """--resume: 'no', 'auto' (the latest complete step_* of this stage), or a checkpoint path."""
    if resume == "no":
        return None
    if resume != "auto":
        if not (Path(resume) / "trainer_state.pt").exists():
            raise SystemExit(f"--resume {resume}: not a checkpoint folder (no trainer_state.pt)")
        return Path(resume)
    found = sorted(p for p in stage_folder.glob("step_*[0-9]") if (p / "trainer_state.pt").exists())
    return found[-1] if found else None


def save_checkpoint(folder: Path, model, tok, trainer_state: dict, cfg, keep: int) -> None:
    """Write model, tokenizer, trainer state and config to folder.tmp, then move it into place
    (a crash never leaves half a checkpoint under the final name) and keep only the newest
    `keep`."""
    import shutil
    import torch
    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp / "model")
    tok.save_pretrained(tmp / "model")
    torch.save(trainer_state, tmp / "trainer_state.pt")
    save_config(cfg, tmp)
    shutil.rmtree(folder, ignore_errors=True)
    tmp.replace(folder)
    for old in sorted(folder.parent.glob("step_*[0-9]"))[:-keep]:
        shutil.rmtree(old, ignore_errors=True)


def load_checkpoint(ckpt: Path, model, lora: bool) -> dict:
    """Load a checkpoint's weights (full, or the LoRA adapter) into `model`; return its trainer
    state."""
    import torch
    from safetensors.torch import load_file
    weights = ckpt / "model"
    if lora:
        from peft import set_peft_model_state_dict
        set_peft_model_state_dict(model, load_file(weights / "adapter_model.safetensors"))
    else:
        state = {}
        for f in sorted(weights.glob("*.safetensors")):
            state.update(load_file(f))
        missing, unexpected = model.load_state_dict(state, strict=False)
        if unexpected or [m for m in missing if "lm_head" not in m]:   # a tied lm_head is not saved
            raise SystemExit(f"{weights}: weights do not fit the model "
                             f"({missing[:3]}, {unexpected[:3]})")
    # weights_only: a checkpoint from elsewhere (--resume PATH) cannot run code when loaded;
    # the stages store their trainer state in plain types for this
    try:
        return torch.load(ckpt / "trainer_state.pt", weights_only=True)
    except Exception as exc:   # an old checkpoint with pickled objects, or a tampered one
        raise SystemExit(f"{ckpt / 'trainer_state.pt'}: not a plain trainer state "
                         f"({type(exc).__name__}: {str(exc)[:200]}); it is not loaded with "
                         "unrestricted pickle, which could run code") from exc


def check_server_errors(statuses: list[str], limit: float, where: str, then: str) -> None:
    """Stop, loudly, when more than `limit` of the attempts that reached the verifier got a
    server error: their zeros would be trained on (03) or reported as failures (04)."""
    # a timeout is Lean's verdict on a slow proof; a server error is the infrastructure's
    sent = [s for s in statuses if s not in ("no_proof", "rejected")]
    errors = sum(s == "server_error" for s in sent)
    if sent and errors / len(sent) > limit:
        raise SystemExit(f"{where}: {errors} of {len(sent)} verifications were server errors "
                         f"(over --max_server_error_share {limit}); is the Lean server up, and is "
                         f"LEAN_SERVER_API_KEY right? {then}")


# ---------------------------------------------------------------------------------------------
# Several processes (torchrun / accelerate launch): the two collectives the RL stage needs
# ---------------------------------------------------------------------------------------------

def gather_lists(items: list, world: int) -> list:
    """Every process's list, concatenated in rank order, on every process."""
    if world == 1:
        return list(items)
    import torch.distributed as dist
    parts: list = [None] * world
    dist.all_gather_object(parts, items)
    return [x for part in parts for x in part]


def sum_gradients(params: list, world: int, bucket_elems: int = 25_000_000) -> None:
    """Sum .grad over processes in place, in flat buckets (one collective per bucket, not per
    tensor). A process with nothing to train on in a mini-batch takes part with zeros."""
    if world == 1:
        return
    import torch
    import torch.distributed as dist
    from torch._utils import _flatten_dense_tensors, _unflatten_dense_tensors
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    bucket: list = []
    for k, p in enumerate(params):
        bucket.append(p.grad)
        if k == len(params) - 1 or sum(g.numel() for g in bucket) >= bucket_elems:
            flat = _flatten_dense_tensors(bucket)
            dist.all_reduce(flat)
            for g, summed in zip(bucket, _unflatten_dense_tensors(flat, bucket)):
                g.copy_(summed)
            bucket = []


# ---------------------------------------------------------------------------------------------
# Parquet contracts between stages
# ---------------------------------------------------------------------------------------------

class SchemaError(ValueError):
    """A Parquet file that does not hold the columns a stage needs."""


# column -> pyarrow type name; every stage validates what it reads against these.
STATEMENT_COLUMNS = {
    "statement_id": "string", "source": "string", "split": "string", "header": "string",
    "formal_statement": "string", "informal_problem": "string",
}
SCHEMAS: dict[str, dict[str, str]] = {
    "statements": STATEMENT_COLUMNS,                               # RL prompts and eval sets
    "sft": {**STATEMENT_COLUMNS, "formal_proof": "string", "completion": "string",
            "prev_attempt": "string", "lean_feedback": "string"},  # repair rows fill the last two
    "rejects": {"statement_id": "string", "source": "string", "step": "string",
                "reason": "string", "raw": "string"},
    "samples": {"statement_id": "string", "benchmark": "string", "mode": "string",
                "sample_idx": "int64", "round": "int64", "prompt": "string",
                "completion": "string", "lean_code": "string", "status": "string",
                "ok": "bool", "feedback": "string", "n_tokens": "int64"},
    "rollouts": {"step": "int64", "prompt_id": "string", "turn": "int64", "prompt": "string",
                 "completion": "string", "status": "string", "format_errors": "string",
                 "reward": "float64", "advantage": "float64", "n_tokens": "int64",
                 "finish": "string"},
    "proof_bank": {"statement_id": "string", "formal_statement": "string", "header": "string",
                   "proof": "string", "source": "string", "run": "string"},
}


def _arrow_type(name: str):
    import pyarrow as pa
    return {"string": pa.string(), "int64": pa.int64(), "bool": pa.bool_(),
            "float64": pa.float64()}[name]


def arrow_schema(kind: str):
    import pyarrow as pa
    return pa.schema([(col, _arrow_type(t)) for col, t in SCHEMAS[kind].items()])


def validate_table(table, kind: str, path: str | Path = "<memory>") -> None:
    """Raise SchemaError naming the file and the first missing or mistyped column."""
    want = SCHEMAS[kind]
    have = {f.name: f.type for f in table.schema}
    for col, typ in want.items():
        if col not in have:
            raise SchemaError(f"{path}: missing column {col!r} (a {kind} file needs "
                              f"{', '.join(want)})")
        if have[col] != _arrow_type(typ) and not (typ == "string" and str(have[col]) in
                                                  ("large_string", "null")):
            raise SchemaError(f"{path}: column {col!r} has type {have[col]}, expected {typ}")


def write_parquet(rows: list[dict] | Any, path: Path, kind: str) -> Path:
    """Write rows (dicts or a DataFrame) with the exact schema `kind`; extra columns are kept
    after the contract's columns. Deterministic: same rows, same bytes."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    if hasattr(rows, "to_dict"):
        rows = rows.to_dict("records")
    schema = arrow_schema(kind)
    extra = sorted({k for r in rows for k in r} - set(schema.names)) if rows else []
    cols = {name: [r.get(name) for r in rows] for name in schema.names}
    table = pa.table(cols, schema=schema)
    for name in extra:
        table = table.append_column(name, pa.array([r.get(name) for r in rows]))
    validate_table(table, kind, path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    pq.write_table(table, tmp, compression="zstd")
    tmp.replace(path)
    return path


class ParquetAppender:
    """Rows written in row groups as they come, so a source of millions of rows never sits in
    a list; the file appears under its name only on close(). `extra`: column -> type beside the
    contract's columns."""

    def __init__(self, path: Path, kind: str, extra: dict[str, str] | None = None,
                 batch_rows: int = 4096):
        import pyarrow as pa
        import pyarrow.parquet as pq
        self.path, self.kind, self.batch_rows, self.rows = Path(path), kind, batch_rows, 0
        fields = list(arrow_schema(kind)) + [pa.field(c, _arrow_type(t))
                                             for c, t in (extra or {}).items()]
        self.schema = pa.schema(fields)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = self.path.with_suffix(self.path.suffix + ".tmp")
        self.writer = pq.ParquetWriter(self.tmp, self.schema, compression="zstd")
        self.buffer: list[dict] = []

    def add(self, row: dict) -> None:
        self.buffer.append(row)
        self.rows += 1
        if len(self.buffer) >= self.batch_rows:
            self._flush()

    def _flush(self) -> None:
        import pyarrow as pa
        if self.buffer:
            self.writer.write_table(pa.Table.from_pylist(self.buffer, schema=self.schema))
            self.buffer = []

    def close(self) -> Path:
        if self.writer is not None:
            self._flush()
            self.writer.close()
            self.writer = None
            self.tmp.replace(self.path)
        return self.path


def read_rows(path: Path, kind: str) -> list[dict]:
    """Read and validate a stage artifact as a list of dicts (missing values stay None)."""
    import pyarrow.parquet as pq
    read_parquet(path, kind)   # the checks
    return pq.read_table(path).to_pylist()


def require_published(path: Path) -> None:
    """A file of 01's output folder (runs/<run>/01_data/, what 02, 03 and 04 read) is read only
    when 01 finished: its manifest.json, written last, lists the file with this size and is not
    older than it. A crashed or running 01's files are refused, naming the folder."""
    folder = Path(path).parent
    if folder.name != "01_data":
        return   # a user's own file, a sample log, an iteration's data: no manifest to check
    manifest = folder / "manifest.json"
    if not manifest.exists():
        raise SystemExit(f"{folder}: no manifest.json: the stage that writes it did not finish "
                         f"(it crashed, or is running); rerun it before reading {Path(path).name}")
    listed = json.loads(manifest.read_text()).get("files", {}).get(Path(path).name)
    stat = Path(path).stat()
    newer = stat.st_mtime > manifest.stat().st_mtime
    if listed is None or listed["bytes"] != stat.st_size or newer:
        raise SystemExit(f"{path} changed after {manifest} was written (or is not in it): "
                         "rerun the stage that writes it")


def read_parquet(path: Path, kind: str):
    """Read and validate a stage artifact; returns a pandas DataFrame."""
    import pyarrow.parquet as pq
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file (did the previous stage run?)")
    require_published(path)
    try:
        table = pq.read_table(path)
    except Exception as exc:  # pyarrow raises several types for a corrupt file
        raise SchemaError(f"{path}: not a readable Parquet file ({exc})") from exc
    validate_table(table, kind, path)
    if table.num_rows == 0:
        raise SchemaError(f"{path}: no rows")
    return table.to_pandas()


# ---------------------------------------------------------------------------------------------
# Metrics: JSONL in the run folder, PNG plots, wandb only when asked for
# ---------------------------------------------------------------------------------------------

class MetricsLog:
    """One JSON line per step. On resume, lines after the checkpoint's step are dropped first,
    so a resumed run writes nothing twice."""

    def __init__(self, path: Path, resume_step: int = 0, wandb: bool = False, run_name: str = "",
                 config: dict | None = None):
        self.path = Path(path)
        self.rows: list[dict] = []
        if self.path.exists():
            for line in self.path.read_text().splitlines():
                try:
                    row = json.loads(line)
                except ValueError:
                    continue   # a line cut by a crash
                if row.get("step", 0) <= resume_step:
                    self.rows.append(row)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text("".join(json.dumps(r) + "\n" for r in self.rows))
        tmp.replace(self.path)
        self.wandb = None
        if wandb:
            import wandb as wandb_lib
            self.wandb = wandb_lib.init(project="lean-prover", name=run_name, config=config or {})

    def log(self, record: dict) -> None:
        self.rows.append(record)
        with open(self.path, "a") as fh:
            fh.write(json.dumps(record) + "\n")
        if self.wandb:
            self.wandb.log(record, step=record.get("step"))

    def last(self, key: str):
        for row in reversed(self.rows):
            if key in row:
                return row[key]
        return None

    def plot(self, path: Path, keys: Sequence[str], title: str = "", logy: bool = False) -> Path:
        plot_curves(self.rows, path, keys, title=title, logy=logy)
        return path


def plot_curves(rows: list[dict], path: Path, keys: Sequence[str], title: str = "",
                logy: bool = False, x: str = "step", smooth: int = 1) -> Path:
    """One line per key against `x`; smooth > 1 plots the trailing mean over that many points."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(6, 3.6), dpi=110)
    for key in keys:
        pts = [(r[x], r[key]) for r in rows if r.get(key) is not None and r[key] == r[key]]
        if pts:
            xs, ys = zip(*pts)
            if smooth > 1:
                ys = [sum(ys[max(0, i - smooth + 1):i + 1]) / len(ys[max(0, i - smooth + 1):i + 1])
                      for i in range(len(ys))]
            label = f"{key} (mean of last {smooth})" if smooth > 1 else key
            ax.plot(xs, ys, marker="." if len(pts) < 40 else None, label=label)
    ax.set_xlabel(x)
    ax.set_title(title)
    if logy:
        ax.set_yscale("log")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return Path(path)
