"""Stage 01: from raw sources to validated Parquet artifacts for every later stage.

Writes runs/<run_name>/01_data/:
    rl_prompts.parquet      statements for RL (split train / valid by a hash of the statement)
    sft.parquet             SFT rows: statement + target completion in the Kimina format
    eval_<set>.parquet      one file per benchmark
    rejects.parquet         every dropped row with the step and the reason
    counts.md               rows per source after each cleaning step
    config.json             the resolved settings
    manifest.json           row counts, column schema and sha256 of each file (written last)

Cleaning, in this order, each step counted per source: parse (header split off, whitespace and
the `:= by` ending normalised; unparseable rows rejected), deduplicate on the normalised
statement, decontaminate against every eval set (same theorem name, or the same canonical
statement: whitespace, comments and bound-variable names factored out), filter by prompt token
length with the target tokenizer (when one is given), split by a hash of the statement. miniF2F
test is always in the decontamination set, so no miniF2F-test proof is ever trained on.

Departures from the papers:
- Kimina trains RL on AI-MO/Kimina-Prover-Promptset and distils SFT from long reasoning traces
  we do not have; SFT rows built from a bare proof get a short templated reasoning
  (formats.thinking_from_proof) that passes Kimina's format checks.
- n-gram overlap is reported (on conclusions only) as a diagnostic, never used to drop rows:
  binder boilerplate makes unrelated statements share long n-grams.
- `--task toy` generates the CPU smoke task instead: closed ℕ statements whose right tactic
  depends on the relation symbol (the stand-in server's fragment, lean_standin_server.py), with
  SFT proofs that are right only part of the time, so that RL has something to learn. A share
  of the SFT statements also get a second-turn (repair) row: a wrong first attempt, the
  stand-in's feedback on it in Kimina's error-correction format, and a different tactic (right
  one time in three), with `--toy_sft_repair 0.3`: SFT then teaches the shape of a correction.
  Off by default: with these rows, 1,500 SFT steps of the tiny preset copy statements much worse
  (03's step-0 validation pass@1 9.6% instead of 17.2%, README), which costs more than the
  second turn gives.

Commands:
    python 01_prepare_data.py --task toy --run_name smoke                       # CPU smoke
    python 01_prepare_data.py --run_name bundled --rl_sources leanworkbook_6k \\
        --sft_sources minif2f_valid_proofs --eval_sets minif2f_test,proofnet_test,putnambench,mobench
    python 01_prepare_data.py --run_name kimina                                 # paper sources (Hub)
    python 01_prepare_data.py --sft_sources numina_lean=/data/numina.parquet     # a local copy
This stage runs on CPU; on a GPU machine the commands are the same.
"""
import dataclasses
import hashlib
import json
import random
import re
import sys
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import common
import formats
import lean_client
from canonical import canonical_statement, statement_conclusion
from formats import kimina_completion, thinking_from_proof
from lean_client import collapse_ws, normalize_statement, split_header, theorem_name
from toy_task import TACTIC_RULES, TOY_HEADER, toy_completion, toy_feedback, toy_statement

# ---------------------------------------------------------------------------------------------
# Settings (defaults: the Kimina-Prover-RL sources; override with --key value)
# ---------------------------------------------------------------------------------------------


@dataclass
class Settings:
    run_name: str = "default"
    task: str = "lean"                      # lean: real statements | toy: the CPU smoke task
    # sources: NAME, NAME=LOCAL_PATH (NAME's columns, rows from a local JSONL/Parquet), or a path
    rl_sources: str = "kimina_promptset"
    sft_sources: str = "numina_lean"
    eval_sets: str = "minif2f_test"
    hf_mirror: str = ""                     # folder with local copies of Hub datasets (<org>/<name>/...)
    limit_per_source: int = 0               # 0 = all rows
    # NuminaMath-LEAN: keep rows whose rl_data.win_rate lies in [min, max]
    min_win_rate: float = 0.0
    max_win_rate: float = 1.0
    # length filter with the target model's tokenizer (empty: no filter); Kimina: 8192
    tokenizer: str = ""
    max_prompt_tokens: int = 8192
    valid_fraction: float = 0.02            # held out of the training pools, by statement hash
    ngram: int = 8                          # conclusion n-gram overlap diagnostic
    # toy task
    toy_n_statements: int = 20000          # enough that SFT must learn to copy, not memorise
    toy_eval_fraction: float = 0.1
    toy_sft_fraction: float = 0.5           # of the training statements, the rest are RL prompts
    toy_sft_correct: float = 0.25           # chance an SFT proof uses the right tactic (4 tactics)
    toy_sft_repair: float = 0.0             # share of SFT statements that also get a repair row (see above)
    seed: int = 0


# ---------------------------------------------------------------------------------------------
# Setup: the source registry
# ---------------------------------------------------------------------------------------------

DATA = common.PROJECT_ROOT / "data"
DEEPSEEK_HEADER = ("import Mathlib\nimport Aesop\n\nset_option maxHeartbeats 400000\n\n"
                   "open BigOperators Real Nat Topology Rat\n\n")
ID_COLUMNS = ("statement_id", "uuid", "id", "problem_id", "name")
INFORMAL_COLUMNS = ("informal_problem", "problem", "informal_statement", "natural_language_statement",
                    "informal_prefix", "informal_stmt", "nl_statement")


@dataclass(frozen=True)
class Source:
    hub: str = ""             # Hugging Face dataset id (online sources)
    path: str = ""            # bundled file under data/
    split: str = ""           # keep rows whose 'split' column equals this
    hub_split: str = "train"
    proof_column: str = ""    # the column holding a verified proof (SFT sources)
    header_column: str = ""
    statement_column: str = "formal_statement"


SOURCES = {
    # online, by name (need the Hub or --hf_mirror / NAME=PATH)
    "numina_lean": Source(hub="AI-MO/NuminaMath-LEAN", proof_column="formal_proof"),
    "kimina_promptset": Source(hub="AI-MO/Kimina-Prover-Promptset"),
    "lean_workbook": Source(hub="internlm/Lean-Workbook"),
    "goedel_pset": Source(hub="Goedel-LM/Goedel-Pset-v1"),
    "minif2f_test_kimina": Source(hub="AI-MO/minif2f_test", hub_split="train"),
    # bundled with this repository (data/README.md gives origins and licenses)
    "minif2f_test": Source(path="minif2f/deepseek_v15_minif2f.jsonl", split="test", header_column="header"),
    "minif2f_valid": Source(path="minif2f/deepseek_v15_minif2f.jsonl", split="valid", header_column="header"),
    "minif2f_v424_test": Source(path="minif2f/yangky11_minif2f_lean4_v4.24.jsonl", split="test", header_column="header"),
    "minif2f_v424_valid": Source(path="minif2f/yangky11_minif2f_lean4_v4.24.jsonl", split="valid", header_column="header"),
    "proofnet_valid": Source(path="proofnet/deepseek_v15_proofnet.jsonl", split="valid", header_column="header"),
    "proofnet_test": Source(path="proofnet/deepseek_v15_proofnet.jsonl", split="test", header_column="header"),
    "putnambench": Source(path="putnambench/putnambench_lean4_v4.27.jsonl", header_column="preamble"),
    "mobench": Source(path="matholympiadbench/goedel_v2_MOBench.jsonl", header_column="header"),
    "leanworkbook_6k": Source(path="training/leanworkbook_statements_6k.jsonl"),
    "minif2f_valid_proofs": Source(path="proofs/deepseek_v15_minif2f_valid_few_shot.jsonl",
                                   proof_column="formal_proof"),
}


class RowError(ValueError):
    """A row that cannot be used; it goes to the rejects file with this reason."""


def parse_spec(spec: str) -> tuple[str, Source, str]:
    """'name', 'name=path' or 'path' -> (name, Source, local path or '')."""
    name, _, path = spec.partition("=")
    if path or name in SOURCES:
        if name not in SOURCES:
            raise SystemExit(f"unknown source {name!r}; known: {', '.join(sorted(SOURCES))}")
        return name, SOURCES[name], path
    if Path(spec).suffix in (".jsonl", ".json", ".parquet"):
        return Path(spec).stem, Source(proof_column="formal_proof", header_column="header"), spec
    raise SystemExit(f"unknown source {spec!r}: not a known name ({', '.join(sorted(SOURCES))}) "
                     "nor a .jsonl/.parquet path")


# ---------------------------------------------------------------------------------------------
# Data: loading and cleaning
# ---------------------------------------------------------------------------------------------

def read_local(path: Path, rejects: list, name: str) -> list[dict]:
    """Rows of a JSONL or Parquet file. A line that is not UTF-8 or not JSON is a counted reject."""
    if not path.exists():
        raise SystemExit(f"source {name}: no such file {path}")
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq
        return pq.read_table(path).to_pylist()
    rows = []
    with open(path, "rb") as fh:
        for lineno, raw in enumerate(fh, 1):
            if not raw.strip():
                continue
            try:
                rows.append(json.loads(raw.decode("utf-8")))
            except UnicodeDecodeError as exc:
                rejects.append(reject(f"{path.name}:{lineno}", name, "load",
                                      f"non-UTF-8 bytes at line {lineno} ({exc.reason})", raw[:500]))
            except json.JSONDecodeError as exc:
                rejects.append(reject(f"{path.name}:{lineno}", name, "load",
                                      f"line {lineno} is not JSON ({exc.msg})", raw[:500]))
    return rows


def read_hub(src: Source, name: str, cfg: Settings) -> list[dict]:
    from datasets import load_dataset
    target = src.hub
    if cfg.hf_mirror:
        target = str(Path(cfg.hf_mirror) / src.hub)
        if not Path(target).exists():
            raise SystemExit(f"source {name}: --hf_mirror has no folder {target}")
    try:
        return list(load_dataset(target, split=src.hub_split))
    except Exception as exc:
        raise SystemExit(f"source {name}: cannot load {target} ({type(exc).__name__}: {exc}).\n"
                         f"Offline? Pass a local copy: --rl_sources {name}=/path/file.parquet, "
                         "or --hf_mirror /folder/with/<org>/<name>") from exc


def load_source(spec: str, cfg: Settings, rejects: list) -> tuple[str, Source, list[dict]]:
    name, src, path = parse_spec(spec)
    if path:
        rows, origin = read_local(Path(path), rejects, name), path
    elif src.path:
        rows, origin = read_local(DATA / src.path, rejects, name), str(DATA / src.path)
    else:
        rows, origin = read_hub(src, name, cfg), src.hub
    if rows and src.statement_column not in rows[0]:
        raise SystemExit(f"{origin}: source {name} needs column {src.statement_column!r}; "
                         f"the file has {sorted(rows[0])}")
    if src.split:
        rows = [r for r in rows if r.get("split") == src.split]
    if name == "numina_lean":
        rows = [r for r in rows
                if cfg.min_win_rate <= float(((r.get("rl_data") or {}).get("win_rate")) or 0.0)
                <= cfg.max_win_rate]
    if cfg.limit_per_source:
        rows = rows[:cfg.limit_per_source]
    return name, src, rows


def reject(statement_id: str, source: str, step: str, reason: str, raw) -> dict:
    raw_text = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else json.dumps(
        raw, ensure_ascii=False, default=str)
    return {"statement_id": statement_id, "source": source, "step": step, "reason": reason,
            "raw": raw_text[:2000]}


def first_present(row: dict, columns: tuple[str, ...]) -> str:
    for col in columns:
        if row.get(col) not in (None, ""):
            return str(row[col])
    return ""


def to_record(name: str, src: Source, row: dict, idx: int) -> dict:
    """One raw row -> a record with the contract's columns, or RowError."""
    text = row.get(src.statement_column)
    if not isinstance(text, str) or not text.strip():
        raise RowError(f"empty or missing {src.statement_column}")
    header, body = split_header(text)
    header = header or (str(row.get(src.header_column) or "") if src.header_column else "")
    if not header.strip():
        header = DEEPSEEK_HEADER
    header = header.strip("\n") + "\n\n"
    try:
        statement = normalize_statement(body)
    except ValueError as exc:
        raise RowError(str(exc)) from exc
    # keep only the theorem itself; a docstring or comment before it is not part of the statement
    starts = [m.start() for m in re.finditer(rf"\n{lean_client.DECL}\s", statement)]
    statement = statement[starts[-1] + 1:] if starts else statement.lstrip()
    if not theorem_name(statement):
        raise RowError("no theorem name")
    informal = first_present(row, INFORMAL_COLUMNS)
    if informal.startswith("/--") or informal.startswith("/-"):
        informal = informal.strip().lstrip("/-").rstrip("-/").strip()
    record = {"statement_id": f"{name}/{first_present(row, ID_COLUMNS) or idx}", "source": name,
              "split": "", "header": header, "formal_statement": statement,
              "informal_problem": informal}
    if src.proof_column:
        proof = row.get(src.proof_column)
        if not isinstance(proof, str) or not proof.strip():
            raise RowError(f"no proof in column {src.proof_column}")
        _, proof_body = split_header(proof)
        at = proof_body.find(statement) if statement in proof_body else -1
        if at >= 0:   # a full file: keep what follows the statement
            proof_body = proof_body[at + len(statement):]
        elif ":= by" in proof_body and theorem_name(proof_body):
            proof_body = proof_body.split(":= by", 1)[1]
        proof_body = proof_body.rstrip()
        if not proof_body.startswith("\n"):
            proof_body = "\n" + proof_body
        record["formal_proof"] = proof_body
        record["completion"] = kimina_completion(header, statement, proof_body,
                                                 thinking_from_proof(informal, proof_body))
    return record


def hash_split(statement: str, fraction: float, held_out: str = "valid") -> str:
    bucket = int(hashlib.sha256(collapse_ws(statement).encode()).hexdigest()[:8], 16) / 0xFFFFFFFF
    return held_out if bucket < fraction else "train"


def ngrams(text: str, n: int) -> set:
    toks = text.split()
    return {tuple(toks[i:i + n]) for i in range(len(toks) - n + 1)}


class Cleaner:
    """Runs the cleaning steps in order and counts what each step keeps, per source."""

    STEPS = ("loaded", "parsed", "deduplicated", "decontaminated", "length_filtered", "final")

    def __init__(self, cfg: Settings, eval_records: dict[str, list[dict]], rejects: list):
        self.cfg, self.rejects = cfg, rejects
        self.counts: dict[tuple[str, str], dict[str, int]] = defaultdict(lambda: dict.fromkeys(self.STEPS, 0))
        self.eval_names: dict[str, str] = {}
        self.eval_canon: dict[str, str] = {}
        self.eval_ngrams: set = set()
        for set_name, recs in eval_records.items():
            for r in recs:
                where = f"{set_name}:{r['statement_id']}"
                self.eval_names.setdefault(theorem_name(r["formal_statement"]), where)
                self.eval_canon.setdefault(canonical_statement(r["formal_statement"]), where)
                self.eval_ngrams |= ngrams(statement_conclusion(r["formal_statement"]), cfg.ngram)
        self.tokenizer = load_tokenizer(cfg.tokenizer) if cfg.tokenizer else None

    def run(self, pool: str, loaded: list[tuple[str, Source, list[dict]]], sft: bool):
        """Clean one pool; SFT rows need a proof and are deduplicated on (statement, completion),
        RL rows on the statement alone (a proof column, if any, is ignored)."""
        kept, seen, overlap = [], set(), 0
        for name, src, rows in loaded:
            if sft and not src.proof_column:
                raise SystemExit(f"source {name} has no proofs; it cannot be an SFT source")
            src = src if sft else dataclasses.replace(src, proof_column="")
            c = self.counts[(pool, name)]
            c["loaded"] += len(rows)
            for idx, row in enumerate(rows):
                try:
                    rec = to_record(name, src, row, idx)
                except RowError as exc:
                    self.rejects.append(reject(f"{name}/{idx}", name, "parse", str(exc), row))
                    continue
                c["parsed"] += 1
                key = collapse_ws(rec["formal_statement"]) + (rec.get("completion", "") if sft else "")
                if key in seen:
                    self.rejects.append(reject(rec["statement_id"], name, "dedup", "duplicate statement", row))
                    continue
                seen.add(key)
                c["deduplicated"] += 1
                hit = self.eval_names.get(theorem_name(rec["formal_statement"]))
                canon_hit = self.eval_canon.get(canonical_statement(rec["formal_statement"]))
                if hit or canon_hit:
                    why = f"same theorem name as {hit}" if hit else f"same statement as {canon_hit}"
                    self.rejects.append(reject(rec["statement_id"], name, "decontaminate", why, row))
                    continue
                c["decontaminated"] += 1
                overlap += bool(ngrams(statement_conclusion(rec["formal_statement"]), self.cfg.ngram)
                                & self.eval_ngrams)
                if self.tokenizer is not None:
                    n_tok = prompt_tokens(self.tokenizer, rec)
                    if n_tok > self.cfg.max_prompt_tokens:
                        self.rejects.append(reject(rec["statement_id"], name, "length",
                                                   f"prompt has {n_tok} tokens > {self.cfg.max_prompt_tokens}", row))
                        continue
                c["length_filtered"] += 1
                rec["split"] = hash_split(rec["formal_statement"], self.cfg.valid_fraction)
                c["final"] += 1
                kept.append(rec)
        return kept, overlap


def load_tokenizer(name_or_path: str):
    from transformers import AutoTokenizer
    try:
        tok = AutoTokenizer.from_pretrained(name_or_path)
    except Exception as exc:
        raise SystemExit(f"--tokenizer {name_or_path}: cannot load ({exc})") from exc
    if not tok.chat_template:
        raise SystemExit(f"--tokenizer {name_or_path}: has no chat template; prompts are built with it")
    return tok


def prompt_tokens(tok, rec: dict) -> int:
    msgs = formats.kimina_messages(rec["formal_statement"], rec["informal_problem"], rec["header"])
    return len(tok.apply_chat_template(msgs, add_generation_prompt=True, tokenize=True))


# ---------------------------------------------------------------------------------------------
# Data: the toy task (CPU smoke run; decided by the stand-in server, not by Lean)
# ---------------------------------------------------------------------------------------------

def build_toy(cfg: Settings) -> tuple[dict[str, list[dict]], list[dict], list[dict]]:
    rng = random.Random(cfg.seed)
    props: dict[str, str] = {}
    while len(props) < cfg.toy_n_statements:   # unique statements, deterministic order
        prop, rel = toy_statement(rng)
        props.setdefault(prop, rel)
    right = {rel: tac for tac, rels in TACTIC_RULES.items() for rel in rels}
    evals, rl, sft = [], [], []
    for i, (prop, rel) in enumerate(props.items()):
        stmt = f"theorem toy_{i:05d} : {prop} := by"
        rec = {"statement_id": f"toy/{i:05d}", "source": "toy", "split": "", "header": TOY_HEADER,
               "formal_statement": stmt, "informal_problem": f"Prove that {prop} holds for natural numbers."}
        bucket = hash_split(prop, cfg.toy_eval_fraction, held_out="test")
        if bucket == "test":
            evals.append({**rec, "split": "test"})
        elif hash_split(prop + "#sft", cfg.toy_sft_fraction, held_out="sft") == "sft":
            correct = rng.random() < cfg.toy_sft_correct
            tactic = right[rel] if correct else rng.choice([t for t in TACTIC_RULES if t != right[rel]])
            split = hash_split(stmt, cfg.valid_fraction)
            sft.append({**rec, "split": split, "formal_proof": f"\n  {tactic}",
                        "completion": toy_completion(stmt, tactic)})
            if cfg.toy_sft_repair and rng.random() < cfg.toy_sft_repair:   # no draw when off
                first = rng.choice([t for t in TACTIC_RULES if t != right[rel]])
                second = rng.choice([t for t in TACTIC_RULES if t != first])
                sft.append({**rec, "split": split, "formal_proof": f"\n  {second}",
                            "completion": toy_completion(stmt, second),
                            "prev_attempt": toy_completion(stmt, first),
                            "lean_feedback": toy_feedback(stmt, first)})
        else:
            rl.append({**rec, "split": hash_split(stmt, cfg.valid_fraction)})
    return {"toy": evals}, rl, sft


# ---------------------------------------------------------------------------------------------
# Loop: run the cleaning for every pool
# ---------------------------------------------------------------------------------------------

def prepare(cfg: Settings):
    rejects: list[dict] = []
    if cfg.task == "toy":
        evals, rl, sft = build_toy(cfg)
        counts = {("rl", "toy"): {s: len(rl) for s in Cleaner.STEPS},
                  ("sft", "toy"): {s: len(sft) for s in Cleaner.STEPS}}
        return evals, rl, sft, rejects, counts, {"rl": 0, "sft": 0}
    if cfg.task != "lean":
        raise SystemExit(f"--task must be 'lean' or 'toy', got {cfg.task!r}")
    eval_specs = [s for s in cfg.eval_sets.split(",") if s]
    evals: dict[str, list[dict]] = {}
    for spec in eval_specs + (["minif2f_test"] if "minif2f_test" not in eval_specs else []):
        name, src, rows = load_source(spec, cfg, rejects)
        recs, seen = [], set()
        for idx, row in enumerate(rows):
            try:
                rec = to_record(name, dataclasses.replace(src, proof_column=""), row, idx)
            except RowError as exc:
                rejects.append(reject(f"{name}/{idx}", name, "parse", str(exc), row))
                continue
            if collapse_ws(rec["formal_statement"]) in seen:
                rejects.append(reject(rec["statement_id"], name, "dedup", "duplicate statement", row))
                continue
            seen.add(collapse_ws(rec["formal_statement"]))
            recs.append({**rec, "split": src.split or "test"})
        evals[name] = recs
    # miniF2F test always guards the training data, but is written only when asked for
    cleaner = Cleaner(cfg, evals, rejects)
    if "minif2f_test" not in eval_specs:
        evals.pop("minif2f_test")
    pools, overlap = {}, {}
    for pool, specs, by_completion in (("rl", cfg.rl_sources, False), ("sft", cfg.sft_sources, True)):
        loaded = [load_source(s, cfg, rejects) for s in specs.split(",") if s]
        pools[pool], overlap[pool] = cleaner.run(pool, loaded, by_completion)
    return evals, pools["rl"], pools["sft"], rejects, dict(cleaner.counts), overlap


def counts_table(counts: dict, evals: dict[str, list[dict]]) -> str:
    lines = ["| pool | source | " + " | ".join(Cleaner.STEPS) + " |",
             "|---|---|" + "---:|" * len(Cleaner.STEPS)]
    for (pool, name), c in sorted(counts.items()):
        lines.append(f"| {pool} | {name} | " + " | ".join(str(c[s]) for s in Cleaner.STEPS) + " |")
    for name, recs in sorted(evals.items()):
        lines.append(f"| eval | {name} | " + " | ".join(["", "", "", "", ""]) + f" | {len(recs)} |")
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------
# Save
# ---------------------------------------------------------------------------------------------

def main(argv=None):
    cfg = common.parse_settings(Settings, argv, description=__doc__)
    out = common.stage_dir(cfg.run_name, "01_data")
    out.mkdir(parents=True, exist_ok=True)
    (out / "manifest.json").unlink(missing_ok=True)   # the manifest marks a finished stage
    evals, rl, sft, rejects, counts, overlap = prepare(cfg)
    files = [common.write_parquet(rejects, out / "rejects.parquet", "rejects")]
    for pool, rows, specs in (("rl", rl, cfg.rl_sources), ("sft", sft, cfg.sft_sources)):
        if specs and not rows:  # the rejects file is already written: nothing is lost
            raise SystemExit(f"no {pool} rows left after cleaning ({specs}); "
                             f"see {out / 'rejects.parquet'}")
    files += [common.write_parquet(rl, out / "rl_prompts.parquet", "statements"),
              common.write_parquet(sft, out / "sft.parquet", "sft")]
    for name, recs in evals.items():
        files.append(common.write_parquet(recs, out / f"eval_{name}.parquet", "statements"))
    table = counts_table(counts, evals)
    (out / "counts.md").write_text(table)
    common.save_config(cfg, out)
    import pyarrow.parquet as pq
    rows = {p.name: pq.read_metadata(p).num_rows for p in files}
    schema = {p.name: [f"{f.name}: {f.type}" for f in pq.read_schema(p)] for p in files}
    common.write_manifest(out, files + [out / "config.json", out / "counts.md"], extra={
        "rows": rows, "schema": schema, "stage": "01_data",
        "counts": {f"{pool}/{name}": c for (pool, name), c in sorted(counts.items())},
        "rejects_by_step": {step: sum(r["step"] == step for r in rejects)
                            for step in sorted({r["step"] for r in rejects})},
        "conclusion_ngram_overlap": {pool: n for pool, n in overlap.items()},
    })
    print(table)
    print(f"wrote {out} ({', '.join(f'{k}: {v}' for k, v in rows.items())})")
    return out


if __name__ == "__main__":
    main(sys.argv[1:])
