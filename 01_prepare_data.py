"""Stage 01: from raw sources to validated Parquet artifacts for every later stage.

Sources are streamed row by row and cleaned, each step counted per source: parse (header split
off, `:= by` normalised), drop statements known false, deduplicate on the canonical statement
(Kimina's deliberate Promptset copies become a `weight`), decontaminate against every eval set
(miniF2F-test always), filter by prompt length (with --tokenizer), split by statement hash.
--task toy writes the CPU smoke task instead (toy_task.py; NOT Lean).
Writes runs/<run>/01_data/: rl_prompts.parquet, sft.parquet, eval_<set>.parquet,
rejects.parquet (every dropped row with its step and reason), counts.md, config.json,
manifest.json (last).

    python 01_prepare_data.py --task toy --run_name smoke                        # CPU smoke
    python 01_prepare_data.py --run_name bundled --rl_sources leanworkbook_6k \
        --sft_sources minif2f_valid_proofs --eval_sets minif2f_test,proofnet_test,putnambench
    python 01_prepare_data.py --run_name kimina                                  # Hub sources
    python 01_prepare_data.py --sft_sources numina_lean=/data/numina.parquet      # a local copy
Runs on CPU. Departures (templated reasoning for bare proofs, n-gram overlap only reported, the
toy's knobs): docs/DESIGN.md; the sources' layouts: docs/DATASETS.md.
"""
from dataclasses import dataclass

import common


@dataclass
class Settings(common.RunSettings):
    # sources (Kimina-Prover-RL's): NAME, NAME=LOCAL_PATH (NAME's columns, a local file), a path
    rl_sources: str = "kimina_promptset"
    sft_sources: str = "numina_lean"
    eval_sets: str = "minif2f_test"
    task: str = "lean"                   # lean: real statements | toy: the CPU smoke task
    hf_mirror: str = ""                  # a folder with local copies of Hub datasets (<org>/<name>)
    limit_per_source: int = 0            # 0: all rows
    keep_duplicates: bool = False        # Promptset: each deliberate copy a row, not a weight
    prompt_format: str = "kimina"        # SFT targets in this format's answer shape; 02 checks it
    min_win_rate: float = 0.0            # NuminaMath-LEAN: keep rl_data.win_rate in [min, max]
    max_win_rate: float = 1.0
    tokenizer: str = ""                  # length filter with the target model's tokenizer
    max_prompt_tokens: int = 8192        # Kimina: 8192
    max_statement_chars: int = 32768     # without --tokenizer: a cap on a statement's length
    valid_fraction: float = 0.02         # held out of the training pools, by statement hash
    ngram: int = 8                       # conclusion n-gram overlap diagnostic (reported only)
    # toy task (docs/DESIGN.md: why these values)
    toy_n_statements: int = 20000        # enough that SFT must learn to copy, not memorise
    toy_eval_fraction: float = 0.1
    toy_sft_fraction: float = 0.5        # of the training statements; the rest are RL prompts
    toy_sft_correct: float = 0.25        # chance an SFT proof uses the right tactic (of 4)
    toy_sft_repair: float = 0.0          # share of SFT statements that also get a repair row

    CHOICES = {"task": ("lean", "toy")}


# imports below the settings, so that the settings are the first screen
import dataclasses  # noqa: E402
import hashlib  # noqa: E402
import itertools  # noqa: E402
import json  # noqa: E402
import random  # noqa: E402
import re  # noqa: E402
import shutil  # noqa: E402
import sys  # noqa: E402
from collections import Counter, defaultdict  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Iterable, Iterator  # noqa: E402

from tqdm import tqdm  # noqa: E402

import formats  # noqa: E402
import lean_client  # noqa: E402
from canonical import (canonical_statement, hash_split, split_header,  # noqa: E402
                       statement_conclusion)
from formats import target_completion, thinking_from_proof  # noqa: E402
from lean_client import (collapse_ws, normalize_statement,  # noqa: E402
                         strip_lean_comments, theorem_name)
from toy_task import build_toy  # noqa: E402


# ---------------------------------------------------------------------------------------------
# Setup: the source registry
# ---------------------------------------------------------------------------------------------

DATA = common.PROJECT_ROOT / "data"
DEEPSEEK_HEADER = ("import Mathlib\nimport Aesop\n\nset_option maxHeartbeats 400000\n\n"
                   "open BigOperators Real Nat Topology Rat\n\n")
ID_COLUMNS = ("statement_id", "uuid", "id", "problem_id", "name")
INFORMAL_COLUMNS = ("informal_problem", "natural_language", "problem", "informal_statement",
                    "natural_language_statement", "informal_prefix", "informal_stmt",
                    "nl_statement")
BATCH_ROWS = 4096   # rows per read batch and per Parquet row group: sources are streamed, never
                    # listed


@dataclass(frozen=True)
class Source:
    hub: str = ""                  # Hugging Face dataset id (online sources)
    path: str = ""                 # bundled file under data/
    split: str = ""                # keep rows whose 'split' column equals this
    hub_split: str = "train"
    hub_files: str = ""            # read this file of the repository explicitly (not the default
                                   # pick)
    status_file: str = ""          # Lean-Workbook: the file that says which statements were
                                   # disproved
    proof_columns: tuple = ()      # verified-proof columns, first non-empty wins (SFT sources)
    header_column: str = ""
    statement_column: str = "formal_statement"
    multiplicity_is_weight: bool = False   # duplicates were made on purpose: count them, keep one
    raw_informal: bool = False     # keep the informal text as the source writes it (Kimina's
                                   # miniF2F)
    answer_format: str = "kimina"  # the prompt format whose answer shape SFT targets take
                                   # (--prompt_format)


SOURCES = {
    # online, by name (need the Hub, or --hf_mirror / NAME=PATH); layouts in docs/DATASETS.md
    "numina_lean": Source(hub="AI-MO/NuminaMath-LEAN",
                          proof_columns=("formal_proof", "formal_ground_truth")),
    "kimina_promptset": Source(hub="AI-MO/Kimina-Prover-Promptset", multiplicity_is_weight=True),
    # load_dataset("internlm/Lean-Workbook") reads wkbk_1009.parquet (proof steps), not the problems
    "lean_workbook": Source(hub="internlm/Lean-Workbook", hub_files="lean_workbook.json",
                            status_file="wkbk_1009.parquet"),
    "goedel_pset": Source(hub="Goedel-LM/Goedel-Pset-v1"),
    "minif2f_test_kimina": Source(hub="AI-MO/minif2f_test", hub_split="train", raw_informal=True),
    # bundled with this repository (data/MANIFEST.tsv gives origins, commits and licenses)
    "minif2f_test": Source(path="minif2f/deepseek_v15_minif2f.jsonl", split="test",
                           header_column="header"),
    "minif2f_valid": Source(path="minif2f/deepseek_v15_minif2f.jsonl", split="valid",
                            header_column="header"),
    "minif2f_v424_test": Source(path="minif2f/yangky11_minif2f_lean4_v4.24.jsonl", split="test",
                                header_column="header"),
    "minif2f_v424_valid": Source(path="minif2f/yangky11_minif2f_lean4_v4.24.jsonl", split="valid",
                                 header_column="header"),
    "proofnet_valid": Source(path="proofnet/deepseek_v15_proofnet.jsonl", split="valid",
                             header_column="header"),
    "proofnet_test": Source(path="proofnet/deepseek_v15_proofnet.jsonl", split="test",
                            header_column="header"),
    "putnambench": Source(path="putnambench/putnambench_lean4_v4.27.jsonl",
                          header_column="preamble"),
    "mobench": Source(path="matholympiadbench/goedel_v2_MOBench.jsonl", header_column="header"),
    "leanworkbook_6k": Source(path="training/leanworkbook_statements_6k.jsonl"),
    "minif2f_valid_proofs": Source(path="proofs/deepseek_v15_minif2f_valid_few_shot.jsonl",
                                   proof_columns=("formal_proof",)),
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
        return Path(spec).stem, Source(proof_columns=("formal_proof",),
                                       header_column="header"), spec
    raise SystemExit(f"unknown source {spec!r}: not a known name ({', '.join(sorted(SOURCES))}) "
                     "nor a .jsonl/.json/.parquet path")


# ---------------------------------------------------------------------------------------------
# Data: loading (streamed) and cleaning
# ---------------------------------------------------------------------------------------------

def read_local(path: Path, rejects, name: str) -> Iterator[dict]:
    """Rows of a JSONL, JSON-list or Parquet file, in batches. A line that is not UTF-8 or not
    JSON is a counted reject."""
    if not path.exists():
        raise SystemExit(f"source {name}: no such file {path}")
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq
        try:
            for batch in pq.ParquetFile(path).iter_batches(batch_size=BATCH_ROWS):
                yield from batch.to_pylist()
        except Exception as exc:   # pyarrow raises several types for a cut or corrupt file
            raise SystemExit(f"source {name}: {path} is not a readable Parquet file "
                             f"({type(exc).__name__}: {str(exc)[:200]})") from exc
        return
    if path.suffix == ".json":
        try:
            with open(path, encoding="utf-8") as fh:
                data = json.load(fh)
        except UnicodeDecodeError as exc:
            raise SystemExit(f"source {name}: {path} is not UTF-8 text (byte {exc.start}: "
                             f"{exc.reason})") from exc
        except json.JSONDecodeError as exc:
            raise SystemExit(f"source {name}: {path} is not JSON (line {exc.lineno}, column "
                             f"{exc.colno}: {exc.msg})") from exc
        if not isinstance(data, list):
            raise SystemExit(f"source {name}: {path} holds a JSON {type(data).__name__}, "
                             "expected a list of objects")
        for idx, row in enumerate(data):
            if isinstance(row, dict):
                yield row
            else:
                rejects.add(f"{path.name}:[{idx}]", name, "load",
                            f"item {idx} is a JSON {type(row).__name__}, not an object", row)
        return
    with open(path, "rb") as fh:
        for lineno, raw in enumerate(fh, 1):
            if not raw.strip():
                continue
            try:
                row = json.loads(raw.decode("utf-8"))
                if not isinstance(row, dict):
                    rejects.add(f"{path.name}:{lineno}", name, "load", f"line {lineno} is a "
                                f"JSON {type(row).__name__}, not an object", raw[:500])
                    continue
                yield row
            except UnicodeDecodeError as exc:
                rejects.add(f"{path.name}:{lineno}", name, "load",
                            f"non-UTF-8 bytes at line {lineno} ({exc.reason})", raw[:500])
            except json.JSONDecodeError as exc:
                rejects.add(f"{path.name}:{lineno}", name, "load",
                            f"line {lineno} is not JSON ({exc.msg})", raw[:500])


def read_hub(src: Source, name: str, cfg: Settings, data_file: str = ""):
    """A Hub dataset (or its --hf_mirror copy) as an Arrow-backed, memory-mapped Dataset."""
    from datasets import load_dataset
    target = src.hub
    if cfg.hf_mirror:
        target = str(Path(cfg.hf_mirror) / src.hub)
        if not Path(target).exists():
            raise SystemExit(f"source {name}: --hf_mirror has no folder {target}")
    try:
        return load_dataset(target, split=src.hub_split, data_files=data_file or None)
    except Exception as exc:
        raise SystemExit(f"source {name}: cannot load "
                         f"{target}{' file ' + data_file if data_file else ''} "
                         f"({type(exc).__name__}: {exc}).\nOffline? Pass a local copy: "
                         f"--rl_sources {name}=/path/file.parquet, or --hf_mirror "
                         f"/folder/with/<org>/<name>") from exc


def disproved_statements(src: Source, name: str, cfg: Settings, local: str) -> dict[str, str]:
    """Lean-Workbook: theorem name and canonical statement -> id, for every statement InternLM
    disproved (wkbk_1009.parquet, status 'disproved'). Such a statement is false: never an RL
    prompt."""
    if local:
        status = Path(local).with_name(src.status_file)
        if not status.exists():   # without it, false statements would reach the RL pool unseen
            raise SystemExit(f"source {name}: {status} not found; put {src.status_file} from "
                             f"{src.hub} beside {local} (it says which statements are disproved)")
        rows = read_local(status, None, name)
    else:
        rows = read_hub(src, name, cfg, src.status_file)
    out: dict[str, str] = {}
    for r in rows:
        if r.get("status") == "disproved" and isinstance(r.get("formal_statement"), str):
            try:
                stmt = normalize_statement(r["formal_statement"])
            except ValueError:
                continue
            out[canonical_statement(stmt)] = out[theorem_name(stmt) or ""] = str(r.get("id", ""))
    out.pop("", None)
    return out


@dataclass
class Loaded:
    name: str
    src: Source
    origin: str
    rows: Iterable[dict]
    disproved: dict = dataclasses.field(default_factory=dict)


def load_source(spec: str, cfg: Settings, rejects) -> Loaded:
    name, src, path = parse_spec(spec)
    if path:
        rows, origin = read_local(Path(path), rejects, name), path
    elif src.path:
        rows, origin = read_local(DATA / src.path, rejects, name), f"data/{src.path}"
    else:
        rows, origin = read_hub(src, name, cfg,
                                src.hub_files), src.hub + (f"/{src.hub_files}" if src.hub_files
                                                           else "")
    if src.split:
        rows = (r for r in rows if r.get("split") == src.split)
    if name == "numina_lean":
        rows = (r for r in rows
                if cfg.min_win_rate <= float(((r.get("rl_data") or {}).get("win_rate"))
                                             or 0.0) <= cfg.max_win_rate)
    if cfg.limit_per_source:
        rows = itertools.islice(rows, cfg.limit_per_source)
    disproved = disproved_statements(src, name, cfg, path) if src.status_file else {}
    return Loaded(name, src, origin, rows, disproved)


class Rejects:
    """Every dropped row, with the step and the reason, streamed to rejects.parquet."""

    def __init__(self, path: Path | None):
        self.writer = common.ParquetAppender(path, "rejects") if path else None
        self.by_step: Counter = Counter()

    def add(self, statement_id: str, source: str, step: str, reason: str, raw) -> None:
        raw_text = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else json.dumps(
            raw, ensure_ascii=False, default=str)
        self.by_step[step] += 1
        if self.writer:
            self.writer.add({"statement_id": statement_id, "source": source, "step": step,
                             "reason": reason, "raw": raw_text[:2000]})


def first_present(row: dict, columns: tuple[str, ...]) -> str:
    for col in columns:
        if row.get(col) not in (None, ""):
            return str(row[col])
    return ""


_PROOF_DECL = re.compile(r"(?m)^[ \t]*(?:@\[[^\]\n]*\][ \t]*)?"
                         r"(?:(?:private|protected|noncomputable)\s+)*"
                         r"(?:theorem|lemma|def|abbrev|instance|structure|inductive)"
                         r"\s+([^\s:({\[]+)")


def proof_body(row: dict, src: Source, statement: str) -> str:
    """The tactic proof of `statement` from the row's proof column: a whole file (header,
    maybe a comment, the theorem, its proof) or tactics only. A file that declares helper
    lemmas or defs before the theorem is refused: 02-04 rebuild header + statement + proof, so
    the helpers would be lost and the target would call lemmas it does not contain."""
    proof = ""
    for col in src.proof_columns:
        if col == "formal_ground_truth" and row.get("ground_truth_type") != "complete":
            continue      # Numina's human proofs count only when complete (not with_sorry)
        if isinstance(row.get(col), str) and row[col].strip():
            proof = row[col]
            break
    if not proof:
        raise RowError(f"no proof in {' / '.join(src.proof_columns)}")
    _, text = split_header(proof)
    bare = strip_lean_comments(text, keep_columns=True)
    decls = list(_PROOF_DECL.finditer(bare))
    if decls:
        name = theorem_name(statement)
        main = next((d for d in decls if d.group(1) == name), None)
        if main is None:
            raise RowError(f"the proof file declares no theorem {name}")
        helpers = [d.group(1) for d in decls if d.start() < main.start()]
        if helpers:
            raise RowError(f"the proof declares {', '.join(helpers[:3])} before the theorem; the "
                           "pipeline rebuilds header + statement + proof, so they would be lost")
        by = re.compile(r":=\s*by\b").search(bare, main.start())
        if not by:
            raise RowError("term-mode proof (no `:= by` after the theorem)")
        text = text[by.end():]
    if re.search(r"\b(sorry|admit)\b", strip_lean_comments(text)):
        raise RowError("the proof contains sorry/admit")
    text = text.rstrip()
    return text if text.startswith("\n") else "\n" + text


def to_record(name: str, src: Source, row: dict, idx: int) -> dict:
    """One raw row -> a record with the contract's columns (+ theorem_name), or RowError."""
    text = row.get(src.statement_column)
    if text is not None and not isinstance(text, str):
        raise RowError(f"{src.statement_column} is a {type(text).__name__}, not text")
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
    # keep only the theorem itself: a problem comment or docstring before it is not the statement
    bare = strip_lean_comments(statement, keep_columns=True)
    starts = [m.start() for m in re.finditer(rf"(?m)^[ \t]*{lean_client.DECL}\s", bare)]
    statement = statement[starts[-1]:].lstrip() if starts else statement.lstrip()
    name_in_lean = theorem_name(statement)
    if not name_in_lean:
        raise RowError("no theorem name")
    informal = first_present(row, INFORMAL_COLUMNS)
    if not src.raw_informal and informal.lstrip().startswith("/-"):
        informal = formats.docstring_body(informal)
    record = {"statement_id": f"{name}/{first_present(row, ID_COLUMNS) or idx}", "source": name,
              "split": "", "header": header, "formal_statement": statement,
              "informal_problem": informal.strip() if src.raw_informal else informal,
              "theorem_name": name_in_lean}
    if src.proof_columns:
        record["formal_proof"] = proof_body(row, src, statement)
        record["completion"] = target_completion(src.answer_format, header, statement,
                                                 record["formal_proof"],
                                                 thinking_from_proof(informal,
                                                                     record["formal_proof"]))
    return record


def ngrams(text: str, n: int) -> set:
    toks = text.split()
    return {tuple(toks[i:i + n]) for i in range(len(toks) - n + 1)}


class UniqueIds:
    """Ids stay unique within an output file: a repeated id gets #2, #3, ... (ProofNet-test has
    4 theorem names shared by 9 different theorems); the theorem name keeps its own column."""

    def __init__(self):
        self.seen: Counter = Counter()

    def __call__(self, rec: dict) -> dict:
        self.seen[rec["statement_id"]] += 1
        n = self.seen[rec["statement_id"]]
        return rec if n == 1 else {**rec, "statement_id": f"{rec['statement_id']}#{n}"}


def _digest(text: str) -> bytes:
    return hashlib.blake2b(text.encode(), digest_size=16).digest()   # 16 bytes a key, not the text


class Cleaner:
    """Runs the cleaning steps in order, row by row, and counts what each step keeps, per source."""

    STEPS = ("loaded", "parsed", "true", "deduplicated", "decontaminated", "length_filtered",
             "final")

    def __init__(self, cfg: Settings, eval_records: dict[str, list[dict]], rejects: Rejects):
        self.cfg, self.rejects = cfg, rejects
        self.counts: dict[tuple[str, str],
                          dict[str, int]] = defaultdict(lambda: dict.fromkeys(self.STEPS, 0))
        self.multiplicity: dict[str, dict[str, int]] = {}
        self.overlap: Counter = Counter()
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

    def run(self, pool: str, loaded: list[Loaded], sft: bool) -> Iterator[dict]:
        """Clean one pool, yielding kept records. Duplicates are found on the canonical statement
        (theorem name, whitespace, comments and bound-variable names factored out; SFT rows on
        statement + proof). A source whose duplicates are deliberate (Kimina's Promptset repeats
        hard problems) keeps one row with `weight` = its count, or every copy with
        --keep_duplicates; its rows are held until the source ends, the others stream."""
        seen: set[bytes] = set()
        ids = UniqueIds()
        for ld in loaded:
            if sft and not ld.src.proof_columns:
                raise SystemExit(f"source {ld.name} has no proofs; it cannot be an SFT source")
            src = dataclasses.replace(ld.src, answer_format=self.cfg.prompt_format) if sft else \
                dataclasses.replace(ld.src, proof_columns=())
            c = self.counts[(pool, ld.name)]
            weighted: dict[bytes, dict] = {}
            hold = src.multiplicity_is_weight and not self.cfg.keep_duplicates
            for idx, row in enumerate(ld.rows):
                c["loaded"] += 1
                if c["loaded"] == 1 and src.statement_column not in row:
                    raise SystemExit(f"{ld.origin}: source {ld.name} needs column "
                                     f"{src.statement_column!r}; "
                                     f"the file has {sorted(row)}")
                try:
                    rec = to_record(ld.name, src, row, idx)
                except RowError as exc:
                    self.rejects.add(f"{ld.name}/{idx}", ld.name, "parse", str(exc), row)
                    continue
                c["parsed"] += 1
                canon = canonical_statement(rec["formal_statement"])
                false_id = ld.disproved.get(rec["theorem_name"]) or ld.disproved.get(canon)
                if false_id:
                    self.rejects.add(rec["statement_id"], ld.name, "disproved",
                                     f"disproved by InternLM ({false_id} in "
                                     f"{ld.src.status_file}): the statement is false", row)
                    continue
                c["true"] += 1
                key = _digest(canon + ("\x00" + rec["formal_proof"] if sft else ""))
                if key in weighted:
                    weighted[key]["weight"] += 1
                    continue
                if key in seen and not (src.multiplicity_is_weight and self.cfg.keep_duplicates):
                    self.rejects.add(rec["statement_id"], ld.name, "dedup", "duplicate statement "
                                     "(same up to name, whitespace, comments and bound variables)",
                                     row)
                    continue
                seen.add(key)
                c["deduplicated"] += 1
                hit = self.eval_names.get(rec["theorem_name"])
                canon_hit = self.eval_canon.get(canon)
                if hit or canon_hit:
                    why = f"same theorem name as {hit}" if hit else f"same statement as {canon_hit}"
                    self.rejects.add(rec["statement_id"], ld.name, "decontaminate", why, row)
                    continue
                c["decontaminated"] += 1
                self.overlap[pool] += bool(ngrams(statement_conclusion(rec["formal_statement"]),
                                                  self.cfg.ngram)
                                           & self.eval_ngrams)
                if len(rec["formal_statement"]) > self.cfg.max_statement_chars:
                    self.rejects.add(rec["statement_id"], ld.name, "length",
                                     f"statement has {len(rec['formal_statement'])} characters > "
                                     f"--max_statement_chars {self.cfg.max_statement_chars}", row)
                    continue
                if self.tokenizer is not None:
                    n_tok = prompt_tokens(self.tokenizer, rec)
                    if n_tok > self.cfg.max_prompt_tokens:
                        self.rejects.add(rec["statement_id"], ld.name, "length",
                                         f"prompt has {n_tok} tokens > "
                                         f"{self.cfg.max_prompt_tokens}", row)
                        continue
                c["length_filtered"] += 1
                rec["split"] = hash_split(rec["formal_statement"], self.cfg.valid_fraction)
                rec["weight"] = 1
                c["final"] += 1
                if hold:
                    weighted[key] = rec
                else:
                    yield ids(rec)
            if weighted:
                weights = [r["weight"] for r in weighted.values()]
                self.multiplicity[ld.name] = {"rows": sum(weights), "unique": len(weights),
                                              "max_weight": max(weights)}
                for rec in weighted.values():
                    yield ids(rec)


def load_tokenizer(name_or_path: str):
    from transformers import AutoTokenizer
    try:
        tok = AutoTokenizer.from_pretrained(name_or_path)
    except Exception as exc:
        raise SystemExit(f"--tokenizer {name_or_path}: cannot load ({exc})") from exc
    if not tok.chat_template:
        raise SystemExit(f"--tokenizer {name_or_path}: has no chat template; "
                         f"prompts are built with it")
    return tok


def prompt_tokens(tok, rec: dict) -> int:
    msgs = formats.kimina_messages(rec["formal_statement"], rec["informal_problem"], rec["header"])
    return len(tok.apply_chat_template(msgs, add_generation_prompt=True, tokenize=True))


# ---------------------------------------------------------------------------------------------
# Loop: run the cleaning for every pool
# ---------------------------------------------------------------------------------------------

def load_evals(cfg: Settings, rejects: Rejects) -> dict[str, list[dict]]:
    """Every eval set, with unique ids, exact duplicates dropped, in a seeded random order (so
    any prefix, as 04 --max_problems takes, is a fair sample). miniF2F-test is always loaded: it
    guards the training data even when it is not written."""
    eval_specs = [s for s in cfg.eval_sets.split(",") if s]
    evals: dict[str, list[dict]] = {}
    for spec in eval_specs + (["minif2f_test"] if "minif2f_test" not in eval_specs else []):
        ld = load_source(spec, cfg, rejects)
        recs, seen, ids = [], set(), UniqueIds()
        for idx, row in enumerate(ld.rows):
            try:
                rec = to_record(ld.name, dataclasses.replace(ld.src, proof_columns=()), row, idx)
            except RowError as exc:
                rejects.add(f"{ld.name}/{idx}", ld.name, "parse", str(exc), row)
                continue
            if collapse_ws(rec["formal_statement"]) in seen:
                rejects.add(rec["statement_id"], ld.name, "dedup", "duplicate statement", row)
                continue
            seen.add(collapse_ws(rec["formal_statement"]))
            recs.append(ids({**rec, "split": ld.src.split or "test", "eval_source": ld.origin}))
        random.Random(f"{cfg.seed}/{ld.name}").shuffle(recs)
        evals[ld.name] = recs
    return evals


def counts_table(counts: dict, evals: dict[str, list[dict]]) -> str:
    lines = ["| pool | source | " + " | ".join(Cleaner.STEPS) + " |",
             "|---|---|" + "---:|" * len(Cleaner.STEPS)]
    for (pool, name), c in sorted(counts.items()):
        lines.append(f"| {pool} | {name} | " + " | ".join(str(c[s]) for s in Cleaner.STEPS) + " |")
    for name, recs in sorted(evals.items()):
        lines.append(f"| eval | {name} | " + " | " * (len(Cleaner.STEPS) - 1) + f"{len(recs)} |")
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------
# Save: stream each pool into its Parquet file; the manifest last
# ---------------------------------------------------------------------------------------------

POOL_COLUMNS = {"theorem_name": "string", "weight": "int64"}   # beside the contract's columns


def main(argv=None):
    cfg = common.parse_settings(Settings, argv, description=__doc__)
    toy_formats = ("kimina", "stepfun")   # stepfun: the toy's SFT rows are tool traces
    if cfg.prompt_format not in (toy_formats if cfg.task == "toy" else formats.FORMATS):
        raise SystemExit(f"--prompt_format must be one of {formats.FORMATS} (the toy task: "
                         f"kimina, or stepfun for tool traces), got {cfg.prompt_format!r}")
    if cfg.task == "toy" and cfg.prompt_format == "stepfun" and cfg.toy_sft_repair:
        raise SystemExit("--toy_sft_repair: repair rows are Kimina's second turns; a "
                         "stepfun trace corrects itself "
                         "in the REPL (use --toy_sft_repair 0)")
    out = common.stage_dir(cfg.run_name, "01_data")
    # everything is written into a staging folder and published only when the stage finishes:
    # a crashed rerun leaves the last finished outputs and their manifest as they were
    staged = out / ".partial"
    common.lock_folder(out)
    shutil.rmtree(staged, ignore_errors=True)
    staged.mkdir(parents=True)
    rejects = Rejects(staged / "rejects.parquet")
    # the toy's class
    extra = {**POOL_COLUMNS, "toy_tactic": "string"} if cfg.task == "toy" else POOL_COLUMNS
    writers = {"rl": common.ParquetAppender(staged / "rl_prompts.parquet", "statements", extra),
               "sft": common.ParquetAppender(staged / "sft.parquet", "sft", extra)}
    multiplicity, overlap = {}, {"rl": 0, "sft": 0}
    try:
        if cfg.task == "toy":
            evals, rl, sft = build_toy(cfg)
            for pool, rows in (("rl", rl), ("sft", sft)):
                for r in rows:
                    writers[pool].add(r)
            counts = {("rl", "toy"): {s: len(rl) for s in Cleaner.STEPS},
                      ("sft", "toy"): {s: len(sft) for s in Cleaner.STEPS}}
        else:
            evals = load_evals(cfg, rejects)
            cleaner = Cleaner(cfg, evals, rejects)
            if "minif2f_test" not in cfg.eval_sets.split(","):
                evals.pop("minif2f_test")
            for pool, specs in (("rl", cfg.rl_sources), ("sft", cfg.sft_sources)):
                loaded = [load_source(s, cfg, rejects) for s in specs.split(",") if s]
                for rec in tqdm(cleaner.run(pool, loaded, sft=pool == "sft"), desc=f"01 {pool}",
                                unit="row", disable=None):
                    writers[pool].add(rec)
            counts, overlap = dict(cleaner.counts), dict(cleaner.overlap)
            multiplicity = cleaner.multiplicity
    except BaseException:
        print(f"01 stopped: nothing published in {out}; what it had cleaned, and every reject "
              f"with its reason, is in {staged}", file=sys.stderr)
        raise
    finally:
        files = [rejects.writer.close()] + [w.close() for w in writers.values()]
    for pool, specs in (("rl", cfg.rl_sources), ("sft", cfg.sft_sources)):
        if specs and cfg.task == "lean" and not writers[pool].rows:
            raise SystemExit(f"no {pool} rows left after cleaning ({specs}); nothing published, "
                             f"the rejects with their reasons are in {staged / 'rejects.parquet'}")
    for name, recs in evals.items():
        files.append(common.write_parquet(recs, staged / f"eval_{name}.parquet", "statements"))
    table = counts_table(counts, evals)
    (staged / "counts.md").write_text(table)
    common.save_config(cfg, staged)
    files = common.publish(staged, out, [f.name for f in files] + ["counts.md", "config.json"])
    import pyarrow.parquet as pq
    tables = [p for p in files if p.suffix == ".parquet"]
    rows = {p.name: pq.read_metadata(p).num_rows for p in tables}
    schema = {p.name: [f"{f.name}: {f.type}" for f in pq.read_schema(p)] for p in tables}
    common.write_manifest(out, files, extra={
        "rows": rows, "schema": schema, "stage": "01_data",
        "counts": {f"{pool}/{name}": c for (pool, name), c in sorted(counts.items())},
        "rejects_by_step": dict(sorted(rejects.by_step.items())),
        "multiplicity": multiplicity,   # deliberate duplicates kept as `weight` (Kimina's
                                        # Promptset)
        "eval_sources": {name: recs[0].get("eval_source", "toy_task.py") if recs else ""
                         for name, recs in evals.items()},
        "conclusion_ngram_overlap": overlap,
    })
    print(table)
    print(f"wrote {out} ({', '.join(f'{k}: {v}' for k, v in rows.items())})")
    return out


if __name__ == "__main__":
    main(sys.argv[1:])
