"""Stage 04: evaluation: pass@k, error correction, repair with retrieval, tool-integrated proving,
and tables recomputed from recorded verdicts.

--mode single (n samples per problem, unbiased pass@k) | correction (then rounds of new
attempts per failed one, the whole history in the prompt: Kimina 1 x 1, Goedel 2 x 2) | repair
(OProver: trajectories of up to repair_depth rounds with proofs retrieved from a frozen proof
memory) | tool (StepFun's <sketch>/<REPL> loop) | recompute (tables from recorded verdicts). Samples are logged as they are verified,
so a rerun resumes; other sample settings are an error naming them.
Writes runs/<run>/04_eval/<tag>/<benchmark>/<mode>/<budget>/samples.{jsonl,parquet} and
results/<run>/<tag>/ (pass@k tables with bootstrap CIs, best@k, curves), config.json and
manifest.json (last). Prompt formats per family: formats.py, docs/FORMATS.md.

    python 04_eval.py --run_name smoke --n_samples 8 --max_new_tokens 64           # CPU toy
    python 04_eval.py --model AI-MO/Kimina-Prover-RL-1.7B --benchmarks minif2f_test \
        --n_samples 32 --backend vllm                                              # one GPU
    python 04_eval.py --mode repair --repair_width 8 --repair_depth 3 --backend vllm ...
    python 04_eval.py --mode recompute \
        --verdicts data/proofs/internlm_math_minif2f_test_proofsearch_output.zip
Several GPUs: --vllm_tp N, or one process per benchmark shard. Departures: docs/DESIGN.md.
"""
from dataclasses import dataclass

import common


@dataclass
class Settings(common.RunSettings, common.DeviceSettings, common.FormatSettings,
               common.SamplingSettings, common.VerifySettings, common.RepairSettings,
               common.ToolSettings):
    # Kimina-Prover-RL's evaluation: pass@32 on miniF2F-test, temperature 1.0, top_p 0.95
    mode: str = "single"                 # single | correction | repair | tool | recompute
    n_samples: int = 32
    top_p: float = 0.95                  # Kimina's validation sampling (03 trains at 1.0)
    check_axioms: bool = True            # #print axioms on every verified proof: reported numbers
    model: str = ""                      # default: this run's 03_grpo, else 02_sft final model
    tag: str = ""                        # name in results/ (default: from the model path)
    benchmarks: str = ""                 # names of runs/<run>/01_data/eval_<name>.parquet, or paths
    max_problems: int = 0                # 0: all
    problems_per_chunk: int = 8
    vllm_tp: int = 1
    feedback_style: str = "auto"         # kimina | goedel (auto: the prompt format's own)
    # correction: Kimina's second turn is 1 round x 1; Goedel-Prover-V2's pipeline.sh 2 x 2
    correction_rounds: int = 1           # rounds after the first attempt
    correction_samples: int = 1          # new attempts per failed attempt and round
    # repair (OProver); repair_depth and retrieve_k are the shared ones
    repair_width: int = 8
    repair_feedback: bool = True         # false: later rounds see the attempt, not Lean's
                                         # (ablation)
    memory: str = "shipped"              # the frozen proof memory: shipped,sft,<proof file>...
    online_memory: bool = False          # experiment: found proofs join the memory mid-evaluation
    memory_exclude: str = "benchmark"    # benchmark: no proof of a scored statement | self: only a
                                         # problem's own (proving on a training bank, 05)
    # recompute and tables
    verdicts: str = ""                   # recompute: a recorded verdict file
    bootstrap: int = 1000

    CHOICES = {"mode": ("single", "correction", "repair", "tool", "recompute"),
               "feedback_style": ("auto", "kimina", "goedel"),
               "memory_exclude": ("benchmark", "self")}


# imports below the settings, so that the settings are the first screen
import concurrent.futures as cf  # noqa: E402
import hashlib  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import sys  # noqa: E402
from collections import Counter  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

import agent_loops  # noqa: E402
import formats  # noqa: E402
import generation  # noqa: E402
from eval_tables import (default_ks, pass_at_k_table, plot_pass_at_k,  # noqa: E402
                         recompute_tables, trajectory_successes, write_tables)
from lean_client import LeanClient  # noqa: E402
from proof_memory import ProofMemory, read_proof_file, shipped_proofs  # noqa: E402


# ---------------------------------------------------------------------------------------------
# Setup: model, benchmarks
# ---------------------------------------------------------------------------------------------


def resolve_model(cfg: Settings) -> str:
    if cfg.model:
        return cfg.model
    for stage in ("03_grpo", "02_sft"):
        path = common.stage_dir(cfg.run_name, stage) / "final" / "model"
        if (path / "config.json").exists():
            return str(path)
    raise SystemExit(f"no model: give --model, or run 02_sft.py / 03_rl_grpo.py "
                     f"for run {cfg.run_name!r}")


def model_tag(model_path: str) -> str:
    """runs/<run>/03_grpo/final/model -> grpo; an HF name -> its last part."""
    p = Path(model_path)
    if p.name == "model" and p.parent.name == "final":
        return p.parent.parent.name.split("_", 1)[-1]
    return p.name


def load_benchmarks(cfg: Settings) -> dict[str, list[dict]]:
    data = common.stage_dir(cfg.run_name, "01_data")
    specs = [s for s in cfg.benchmarks.split(",") if s] or [
        p.stem[len("eval_"):] for p in sorted(data.glob("eval_*.parquet"))]
    if not specs:
        raise SystemExit(f"no benchmarks: run 01_prepare_data.py for "
                         f"{cfg.run_name!r} or pass --benchmarks")
    out = {}
    for spec in specs:
        path = Path(spec) if spec.endswith(".parquet") else data / f"eval_{spec}.parquet"
        rows = common.read_rows(path, "statements")
        repeated = sorted(k for k, n in Counter(r["statement_id"] for r in rows).items() if n > 1)
        if repeated:   # samples are keyed by id: two theorems under one id would merge
            raise SystemExit(f"{path}: duplicate statement_id {', '.join(repeated[:5])}"
                             f"{f' (+{len(repeated) - 5} more)' if len(repeated) > 5 else ''}; "
                             "rerun 01_prepare_data.py, which makes ids unique")
        out[path.stem.removeprefix("eval_")] = rows[:cfg.max_problems] if cfg.max_problems else rows
    return out


# ---------------------------------------------------------------------------------------------
# Data: samples on disk (append as verified, resume by skipping)
# ---------------------------------------------------------------------------------------------

class SampleLog:
    def __init__(self, folder: Path):
        folder.mkdir(parents=True, exist_ok=True)
        self.path = folder / "samples.jsonl"
        self.rows, self.redone = [], 0
        if self.path.exists():
            text = self.path.read_text()
            for line in text.splitlines():
                try:
                    self.rows.append(json.loads(line))
                except ValueError:
                    pass   # a line cut by a crash: that sample is redone
            # a server error is the infrastructure's, not the proof's: its attempt is redone, and
            # so are the later rounds that followed from it (a correction tree whole: reruns
            # resume from first attempts; same seeds, cached verdicts)
            cut = {}
            for r in self.rows:
                if r["status"] == "server_error":
                    key = (r["statement_id"], r["sample_idx"])
                    at = 1 if r["mode"] == "correction" else r["round"]
                    cut[key] = min(cut.get(key, at), at)
            kept = [r for r in self.rows
                    if r["round"] < cut.get((r["statement_id"], r["sample_idx"]), 1 << 30)]
            self.redone, self.rows = len(self.rows) - len(kept), kept
            if (self.redone or len(self.rows) != len(text.splitlines())
                    or (text and not text.endswith("\n"))):
                # rewrite before appending: a cut line would glue onto the next record
                tmp = self.path.with_suffix(".tmp")
                tmp.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in self.rows))
                tmp.replace(self.path)
        self.done = {(r["statement_id"], r["sample_idx"], r["round"]) for r in self.rows}

    def append(self, rows: list[dict]) -> None:
        with open(self.path, "a") as fh:
            for r in rows:
                fh.write(json.dumps(r, ensure_ascii=False) + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        self.rows += rows
        self.done |= {(r["statement_id"], r["sample_idx"], r["round"]) for r in rows}

    def open_trajectories(self, depth: int) -> dict[tuple, dict]:
        """Repair trajectories a crash cut between rounds: (statement, k) -> their last record,
        when it failed before the last round."""
        last: dict[tuple, dict] = {}
        for r in self.rows:
            key = (r["statement_id"], r["sample_idx"])
            if key not in last or r["round"] > last[key]["round"]:
                last[key] = r
        return {key: r for key, r in last.items() if not r["ok"] and r["round"] < depth}


BUDGET_KEYS = {"single": ("n_samples", "max_new_tokens"),
               "correction": ("n_samples", "correction_rounds", "correction_samples",
                              "max_new_tokens"),
               "repair": ("repair_width", "repair_depth", "retrieve_k", "max_new_tokens"),
               "tool": ("n_samples", "tool_budget", "tool_max_checks", "max_new_tokens")}
SHORT = {"n_samples": "n", "max_new_tokens": "t", "correction_rounds": "r",
         "correction_samples": "s", "repair_width": "w", "repair_depth": "d",
         "retrieve_k": "k",
         "tool_budget": "b", "tool_max_checks": "c"}


def budget_label(cfg: Settings) -> str:
    """The search budget in a name, e.g. n32-t24576 or w8-d3-k3-t16384: one folder and one table
    per budget, so a sweep never mixes budgets."""
    label = "-".join(f"{SHORT[k]}{getattr(cfg, k)}" for k in BUDGET_KEYS[cfg.mode]
                     if not (k.startswith("correction_") and getattr(cfg, k) == 1))  # Kimina's
    return label + ("-nofb" if cfg.mode == "repair" and not cfg.repair_feedback else "")


def model_fingerprint(model_path: str) -> str:
    """A local model folder by its files (name, size, first and last MiB of each); a Hub name as
    is."""
    folder = Path(model_path)
    if not folder.is_dir():
        return model_path
    h = hashlib.sha256()
    for f in sorted(p for p in folder.iterdir() if p.is_file()):
        size = f.stat().st_size
        h.update(f"{f.name}:{size}".encode())
        with open(f, "rb") as fh:
            h.update(fh.read(1 << 20))
            fh.seek(max(0, size - (1 << 20)))
            h.update(fh.read(1 << 20))
    return h.hexdigest()[:16]


def sample_settings(cfg: Settings, model_path: str, server: str, memory: str) -> dict:
    """Everything that changes a sample besides the budget: resuming under other values would
    label old samples with a new command."""
    out = {"model": model_path, "model_files": model_fingerprint(model_path),
           "prompt_format": formats.format_for(model_path, cfg.prompt_format, cfg.mode),
           "mode": cfg.mode, "temperature": cfg.temperature, "top_p": cfg.top_p,
           "backend": cfg.backend,
           "seed": cfg.seed, "server": server, "check_axioms": cfg.check_axioms,
           "reject_native_decide": cfg.reject_native_decide,
           "dtype": generation.device_policy(cfg.device, cfg.dtype).dtype}
    if cfg.mode == "repair":
        out.update(memory=memory, feedback_style=cfg.feedback_style)
    if cfg.mode == "tool":
        out["repl"] = "stepfun: import Mathlib preloaded, REPL JSON"
    return out


def open_samples(folder: Path, settings: dict) -> "SampleLog":
    """The sample log of this budget, locked for this run; a resume with other sample settings
    stops, naming them."""
    common.lock_folder(folder)
    path = folder / "sample_settings.json"
    if path.exists() and (folder / "samples.jsonl").exists():
        before = json.loads(path.read_text())
        changed = {k: (before.get(k), v) for k, v in settings.items() if before.get(k) != v}
        if changed:
            raise SystemExit(f"{folder} holds samples drawn with other settings: " + "; ".join(
                f"{k} was {a!r}, now {b!r}" for k, (a, b) in changed.items()) +
                ". Use another --tag (or --run_name), or remove that folder to start over.")
    path.write_text(json.dumps(settings, indent=1, sort_keys=True) + "\n")
    return SampleLog(folder)


def sample_row(bench, mode, row, k, rnd, prompt, text, verdict_or_none, n_tokens,
               feedback="") -> dict:
    v = verdict_or_none
    return {"statement_id": row["statement_id"], "benchmark": bench, "mode": mode, "sample_idx": k,
            "round": rnd, "prompt": prompt, "completion": text, "lean_code": v.code if v else "",
            "status": v.status if v else "no_proof", "ok": bool(v and v.ok), "feedback": feedback,
            "n_tokens": n_tokens}


# ---------------------------------------------------------------------------------------------
# Metrics: eval_tables.py (pass@k with CIs and best@k, tables, plots)
# ---------------------------------------------------------------------------------------------

# ---------------------------------------------------------------------------------------------
# Loop: the sampling modes
# ---------------------------------------------------------------------------------------------

class Evaluator:
    def __init__(self, cfg: Settings, model_path: str, client: LeanClient):
        self.cfg, self.client = cfg, client
        self.tok = generation.load_tokenizer(model_path)
        self.placement = generation.device_policy(cfg.device, cfg.dtype)
        if cfg.backend == "vllm":
            self.gen = generation.VLLMGenerator(model_path, tensor_parallel_size=cfg.vllm_tp,
                                                dtype=self.placement.dtype)
        else:
            model = generation.load_model(model_path, self.placement).eval()
            self.gen = generation.HFGenerator(model, self.tok, batch_size=cfg.gen_batch_size)
        self.tokens, self.dropped_long = 0, 0
        self.fmt = formats.format_for(model_path, cfg.prompt_format, cfg.mode)
        self.style = (formats.FEEDBACK_STYLE.get(self.fmt, "kimina")
                      if cfg.feedback_style == "auto" else cfg.feedback_style)

    def prompt(self, row, retrieved=(), attempt="", feedback="", earlier=()) -> str:
        msgs = formats.prompt_messages({**row, "prev_attempt": attempt, "lean_feedback": feedback},
                                       self.fmt, retrieved, earlier)
        return formats.render(self.tok, msgs, self.fmt)

    def feedback(self, verdict, rnd: int = 1) -> str:
        if verdict is None or verdict.ok:
            return ""
        return formats.lean_feedback(verdict, self.style, round_idx=rnd)

    def sample(self, prompts: list[str], seeds: list[int], stop=()) -> list[generation.Generation]:
        gens = self.gen.generate(prompts, seeds, self.cfg.max_new_tokens, self.cfg.temperature,
                                 self.cfg.top_p, stop)
        self.tokens += sum(len(g.token_ids) for g in gens)
        return gens

    def verify(self, rows, texts) -> list:
        """Extract, gate and verify; None where the completion holds no proof of the statement."""
        return formats.verify_completions(self.client, rows, texts, self.fmt)

    def tool_generate(self, prompts, seeds) -> list[tuple[str, int]]:
        """StepFun's loop (agent_loops.tool_rollouts, the one 03 --rollout tool trains with): the
        budget is the whole context (tool_budget), checks unlimited unless tool_max_checks.
        Returns (text, generated tokens) per sample."""
        cfg = self.cfg
        traces = agent_loops.tool_rollouts(self.gen, self.tok, self.client, prompts, seeds,
                                           max_new_tokens=cfg.max_new_tokens,
                                           budget=cfg.tool_budget,
                                           max_checks=cfg.tool_max_checks,
                                           temperature=cfg.temperature, top_p=cfg.top_p)
        self.tokens += sum(t.generated for t in traces)
        return [(t.text, t.generated) for t in traces]

    def run_problems(self, bench: str, rows: list[dict], log: SampleLog, memory: ProofMemory | None,
                     repair_rows: list[dict], found: list[dict] | None = None) -> None:
        cfg = self.cfg
        width = cfg.repair_width if cfg.mode == "repair" else cfg.n_samples
        from tqdm import tqdm
        bar = tqdm(total=len(rows), desc=f"{bench}/{cfg.mode}")
        with cf.ThreadPoolExecutor(1) as pool:
            pending = None
            cut = log.open_trajectories(cfg.repair_depth) if cfg.mode == "repair" else {}
            for c in range(0, len(rows), cfg.problems_per_chunk):
                chunk = rows[c:c + cfg.problems_per_chunk]
                todo = [(r, k) for r in chunk for k in range(width)
                        if (r["statement_id"], k, 1) not in log.done
                        or (r["statement_id"], k) in cut]
                if not todo:
                    bar.update(len(chunk))
                    continue
                if cfg.mode == "repair":
                    if pending:
                        pending.result()
                    self.repair(bench, todo, log, memory, found if found is not None else [], cut)
                else:
                    prompts = [self.prompt(r) for r, _ in todo]
                    # a sample's seed depends on (problem, index) only: a resumed run draws the same
                    seeds = [generation.rollout_seed(cfg.seed, r["statement_id"], k)
                             for r, k in todo]
                    if cfg.mode == "tool":
                        outs = self.tool_generate(prompts, seeds)
                    else:
                        outs = [(g.text, len(g.token_ids)) for g in self.sample(prompts, seeds)]
                    if pending:   # verification of the previous chunk ran while this one generated
                        pending.result()
                    pending = pool.submit(self.finish_chunk, bench, todo, prompts, outs, log)
                bar.update(len(chunk))
            if pending:
                pending.result()
        bar.close()
        if cfg.mode == "repair":   # from the whole log: a resumed run keeps the fixes of before
            repair_rows += repairs_in_log(log.rows, rows, memory, cfg, self.fmt)

    def finish_chunk(self, bench, todo, prompts, outs, log: SampleLog) -> None:
        rows = [r for r, _ in todo]
        verdicts = self.verify(rows, [t for t, _ in outs])
        records = [sample_row(bench, self.cfg.mode, r, k, 1, p, t, v, n, self.feedback(v))
                   for (r, k), p, (t, n), v in zip(todo, prompts, outs, verdicts)]
        if self.cfg.mode == "correction":
            records += self.correct(bench, rows, records)
        log.append(records)

    def correct(self, bench, rows: list[dict], records: list[dict]) -> list[dict]:
        """Rounds 2 .. correction_rounds + 1 after the first attempts `records`: each failed
        attempt with feedback gets correction_samples new ones, prompted with the whole history.
        Kimina: one round of one; Goedel-Prover-V2 (scripts/pipeline.sh): two of two, and in
        goedel style no round for a problem any attempt proved (load_data_for_correction). A
        correction keeps its root's sample_idx (pass@k counts first attempts with their trees)
        and its place in `branch` ("1", then "1.0")."""
        cfg, width = self.cfg, self.cfg.correction_samples
        # (row index, the attempt, the (attempt, feedback) pairs before it)
        frontier = [(i, rec, ()) for i, rec in enumerate(records)]
        made = []
        for rnd in range(2, cfg.correction_rounds + 2):
            solved = ({x["statement_id"] for x in records + made if x["ok"]}
                      if self.style == "goedel" else set())
            failed = [(i, rec, earlier) for i, rec, earlier in frontier
                      if not rec["ok"] and rec["feedback"] and len(rec["feedback"]) <= 3000
                      and rec["statement_id"] not in solved]
            todo, prompts = [], []
            for i, rec, earlier in failed:
                p = self.prompt(rows[i], attempt=rec["completion"], feedback=rec["feedback"],
                                earlier=earlier)
                if len(self.tok(p, add_special_tokens=False).input_ids) > cfg.max_prompt_tokens:
                    self.dropped_long += 1
                    continue
                todo += [(i, rec, earlier, j) for j in range(width)]
                prompts += [p] * width
            if not todo:
                break
            branch = [f"{rec.get('branch') or ''}{'.' if rec.get('branch') else ''}{j}"
                      for _, rec, _, j in todo]
            # round 2's only branch "0" keeps the seed a one-round run always had
            seeds = [generation.rollout_seed(cfg.seed, rnd, rows[i]["statement_id"],
                                             rec["sample_idx"], *([b] if b != "0" else []))
                     for (i, rec, _, _), b in zip(todo, branch)]
            gens = self.sample(prompts, seeds)
            verdicts = self.verify([rows[i] for i, *_ in todo], [g.text for g in gens])
            frontier = []
            for (i, rec, earlier, _), b, p, g, v in zip(todo, branch, prompts, gens, verdicts):
                new = {**sample_row(bench, "correction", rows[i], rec["sample_idx"], rnd, p,
                                    g.text, v, len(g.token_ids), self.feedback(v, rnd)),
                       "branch": b}
                made.append(new)
                frontier.append((i, new, (*earlier, (rec["completion"], rec["feedback"]))))
        return made

    def repair(self, bench, todo, log: SampleLog, memory: ProofMemory, found: list[dict],
               cut: dict) -> None:
        """Trajectories (row, k) of agent_loops.repair_rounds (the loop 03 --rollout repair trains
        with): round t sees retrieved proofs, the last attempt and its feedback. Each round is
        logged when verified; verified proofs go to `found`, not into the memory (unless online)."""
        cfg = self.cfg

        def prompt_of(item, attempt, feedback, rnd):
            row = item[0]
            return self.prompt(row,
                               memory.retrieve(row["formal_statement"], cfg.retrieve_k,
                                               row["statement_id"]),
                               attempt, feedback)

        def feedback_for_next(verdict, rnd):
            return next_round_feedback(cfg, self.feedback(verdict, rnd))

        def on_round(rnd, rounds):
            records = []
            for i, r in rounds:
                row, k = todo[i]
                records.append(sample_row(bench, "repair", row, k, rnd, r.prompt, r.gen.text,
                                          r.verdict,
                                          len(r.gen.token_ids), self.feedback(r.verdict, rnd)))
                if not r.ok:
                    continue
                proof = formats.extract_proof(r.gen.text, row["formal_statement"], self.fmt)
                proved = {"statement_id": row["statement_id"],
                          "formal_statement": row["formal_statement"],
                          "header": row["header"], "proof": proof, "source": bench,
                          "run": cfg.run_name}
                found.append(proved)
                if memory.online:
                    memory.add_found(proved)
            log.append(records)

        def verify(items, texts):
            return self.verify([row for row, _ in items], texts)

        def seed_of(item, rnd):   # (round, problem, trajectory): a resumed run draws the same
            return generation.rollout_seed(cfg.seed, rnd, item[0]["statement_id"], item[1])

        resume = {i: (cut[r["statement_id"], k]["round"] + 1,
                      cut[r["statement_id"], k]["completion"],
                      next_round_feedback(cfg, cut[r["statement_id"], k]["feedback"]))
                  # cut by a crash
                  for i, (r, k) in enumerate(todo) if (r["statement_id"], k) in cut}
        agent_loops.repair_rounds(todo, cfg.repair_depth, prompt_of, self.sample, verify,
                                  feedback_for_next,
                                  seed_of, on_round, resume)


def build_memory(cfg: Settings, client: LeanClient, scored: list[dict]) -> ProofMemory:
    """The frozen memory of this evaluation, from --memory: shipped, sft, or proof files."""
    entries = []
    for part in (p for p in cfg.memory.split(",") if p):
        if part == "shipped":
            entries += shipped_proofs()
        elif part == "sft":
            entries += sft_proofs_that_verify(cfg, client)
        elif Path(part).exists():
            entries += read_proof_file(Path(part))
        else:
            raise SystemExit(f"--memory {part}: not 'shipped', 'sft' or an existing proof file")
    return ProofMemory(entries, scored, online=cfg.online_memory)


# ---------------------------------------------------------------------------------------------
# Save
# ---------------------------------------------------------------------------------------------

def main(argv=None):
    cfg = common.parse_settings(Settings, argv, description=__doc__)
    command = " ".join(argv if argv is not None else sys.argv[1:])
    command = command.replace(str(common.PROJECT_ROOT) + "/", "")
    caption = f"`python 04_eval.py {command}`, {os.cpu_count()} CPU cores"
    if cfg.mode == "recompute":
        return recompute(cfg, caption)
    generation.device_policy(cfg.device, cfg.dtype)   # a missing GPU stops here, before any work
    if min(cfg.correction_rounds, cfg.correction_samples) < 1:
        raise SystemExit("--correction_rounds and --correction_samples must be >= 1")
    threads = generation.cpu_threads(cfg.threads)
    model_path = resolve_model(cfg)
    tag = cfg.tag or model_tag(model_path)
    benches = load_benchmarks(cfg)
    out = common.stage_dir(cfg.run_name, "04_eval") / tag
    common.save_config(cfg, out, extra={"resolved_model": model_path, "cpu_threads": threads})
    client = LeanClient(timeout=cfg.lean_timeout, batch_size=cfg.lean_batch_size,
                        check_axioms=cfg.check_axioms,
                        reject_native_decide=cfg.reject_native_decide,
                        infotree="original" if cfg.goal_states else None,
                        max_retries=cfg.lean_retries,
                        cache_path=common.stage_dir(cfg.run_name, "04_eval") / "verdicts.sqlite")
    client.require_healthy()
    client.probe_line_numbering()   # how this server counts message lines, asked, not assumed
    ev = Evaluator(cfg, model_path, client)
    results = common.RESULTS_ROOT / cfg.run_name / tag
    label = budget_label(cfg)
    memory, memory_note = None, ""
    if cfg.mode == "repair":   # built once, before any problem, from training-side proofs only
        memory = build_memory(cfg, client, [r for rs in benches.values() for r in rs]
                              if cfg.memory_exclude == "benchmark" else [])
        mem_path = memory.save(common.stage_dir(cfg.run_name, "04_eval") / "memory")
        memory_note = (f"{memory.name} ({len(memory.rows)} proofs from {cfg.memory}; "
                       f"{memory.left_out} left out as "
                       f"scored problems; {mem_path.relative_to(common.RUNS_ROOT)})" +
                       ("; ONLINE: found proofs joined it during this evaluation, "
                        "results depend on problem order"
                        if memory.online else "; frozen during this evaluation"))
    server = json.dumps({k: v for b in client.health().values() if b for k, v in b.items()
                         if k != "status"},
                        sort_keys=True) or "{}"
    written, curves, overall, verdicts = [], {}, {}, {}
    for bench, rows in benches.items():
        folder = out / bench / cfg.mode / label
        log = open_samples(folder,
                           sample_settings(cfg, model_path, server, memory.name if memory else ""))
        repair_rows, found = [], []
        if log.redone:
            print(f"[04] {bench}: redoing {log.redone} attempt(s) that got a server error")
        ev.run_problems(bench, rows, log, memory, repair_rows, found)
        ids = {r["statement_id"] for r in rows}
        statuses = [x["status"] for x in log.rows if x["statement_id"] in ids]
        verdicts[bench] = dict(sorted(Counter(statuses).items()))
        common.check_server_errors(statuses, cfg.max_server_error_share, f"{bench}",
                                   f"no table written; the samples are kept in {folder}, and a "
                                   "rerun redoes the ones that got a server error")
        common.write_parquet(log.rows, folder / "samples.parquet", "samples")
        if repair_rows:
            common.write_parquet(repair_rows, folder / "repair_sft.parquet", "sft")
        if cfg.mode == "repair":   # this evaluation's new proofs: training data for the next
                                   # iteration
            found += [p for p in found_in_log(log.rows, rows, cfg.run_name, bench, ev.fmt)
                      if p not in found]
            common.write_parquet(found, folder / "found_proofs.parquet", "proof_bank")
        n = cfg.repair_width if cfg.mode == "repair" else cfg.n_samples
        scored = [x for x in log.rows if x["statement_id"] in ids and x["sample_idx"] < n]
        everyone = trajectory_successes(scored, n)           # any round of the trajectory
        succ = {r["statement_id"]: everyone.get(r["statement_id"], [False] * n) for r in rows}
        attempts = Counter(x["statement_id"] for x in scored)
        table = pass_at_k_table(succ, default_ks(n), cfg.bootstrap, cfg.seed)
        overall.update({f"{bench}/{sid}": v for sid, v in succ.items()})
        extra = {"model": model_path.replace(str(common.PROJECT_ROOT) + "/", ""),
                 "benchmark source": rows[0].get("eval_source") or "(not recorded by 01)",
                 "samples (trajectories) per problem": n,
                 "attempts": sum(attempts.values()),
                 "generated tokens": sum(x["n_tokens"] for x in log.rows),
                 "verifier": "stand-in server (NOT Lean)" if "standin" in (client.identity or "")
                 else "Lean server",
                 "search budget": label,
                 # every attempt's verdict, the infrastructure's errors among them
                 "verdicts": ", ".join(f"{k} {v}" for k, v in verdicts[bench].items())}
        if memory_note:
            extra["proof memory"] = memory_note
        if cfg.mode == "correction":
            extra["second turns dropped as longer than max_prompt_tokens"] = ev.dropped_long
            first = {sid: [any(x["ok"] for x in log.rows if x["statement_id"] == sid
                               and x["sample_idx"] == k and x["round"] == 1)
                           for k in range(n)] for sid in succ}
            before = pass_at_k_table(first, [1], 0, 0)[0]["pass"]
            extra["pass@1 before correction"] = f"{100 * before:.2f}%"
            extra["pass@1 after correction"] = f"{100 * table[0]['pass']:.2f}%"
        written += write_tables(results, tag, f"{bench}", f"{cfg.mode}_{label}", table, extra,
                                caption)
        curves[f"{tag} {bench} ({cfg.mode})"] = table
        if cfg.mode == "repair":
            written.append(plot_budget(results / f"{bench}_repair_{label}_budget.png", log.rows,
                                       rows, cfg))
    if len(benches) > 1:   # every problem of every benchmark, one pool
        n = cfg.repair_width if cfg.mode == "repair" else cfg.n_samples
        written += write_tables(results, tag, "overall", f"{cfg.mode}_{label}",
                                pass_at_k_table(overall, default_ks(n), cfg.bootstrap,
                                cfg.seed), {"benchmarks": ", ".join(benches)}, caption)
    written.append(plot_pass_at_k(results / f"pass_at_k_{cfg.mode}_{label}.png", curves,
                                  f"{tag}: pass@k ({cfg.mode}, {label})",
                                  anchors=any("minif2f" in b for b in benches)))
    common.write_manifest(out, [out / "config.json"] + written,
                          extra={"stage": "04_eval", "mode": cfg.mode,
                          "lean_client": dict(client.stats), "generated_tokens": ev.tokens,
                          "verdicts": verdicts})
    for p in written:
        if p.suffix == ".md":
            print(p.read_text())
    return written


def recompute(cfg: Settings, caption: str) -> dict:
    """--mode recompute: tables from a recorded verdict file, with this stage's config.json and
    manifest in runs/<run>/04_eval/recompute/<tag>/."""
    if not cfg.verdicts:
        raise SystemExit("--mode recompute needs --verdicts FILE")
    verdicts = Path(cfg.verdicts)
    tag = cfg.tag or verdicts.stem
    out = common.stage_dir(cfg.run_name, "04_eval") / "recompute" / tag
    (out / "manifest.json").unlink(missing_ok=True)
    common.save_config(cfg, out, extra={"verdicts_sha256": common.sha256_file(verdicts)
                                        if verdicts.exists() else ""})
    solved, written = recompute_tables(verdicts, tag, cfg.bootstrap, cfg.seed, caption)
    common.write_manifest(out, [out / "config.json"] + written,
                          extra={"stage": "04_eval", "mode": "recompute",
                                 "verdicts": str(verdicts)})
    return solved


def plot_budget(path: Path, samples: list[dict], rows: list[dict], cfg: Settings) -> Path:
    """Repair budget: pass rate with w trajectories of at most d rounds, for every (w, d)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    grid = np.zeros((cfg.repair_width, cfg.repair_depth))
    for w in range(1, cfg.repair_width + 1):
        for d in range(1, cfg.repair_depth + 1):
            solved = {x["statement_id"] for x in samples if x["ok"] and x["sample_idx"] < w
                      and x["round"] <= d}
            grid[w - 1, d - 1] = 100 * len(solved) / max(1, len(rows))
    fig, ax = plt.subplots(figsize=(5, 4), dpi=110)
    im = ax.imshow(grid, origin="lower", aspect="auto",
                   extent=(0.5, cfg.repair_depth + 0.5, 0.5, cfg.repair_width + 0.5))
    fig.colorbar(im, label="solved (%)")
    ax.set_xlabel("depth (rounds per trajectory)")
    ax.set_ylabel("width (trajectories)")
    ax.set_title("repair budget")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def next_round_feedback(cfg: Settings, feedback: str) -> str:
    """What the next repair round is shown after a failed one: Lean's feedback, or the ablation's
    line without diagnostics (--repair_feedback false), or the no-proof line."""
    return (feedback if cfg.repair_feedback
            else "The proof is not correct.") or agent_loops.NO_PROOF_FEEDBACK


def repairs_in_log(samples: list[dict], rows: list[dict], memory: ProofMemory,
                   cfg: Settings, fmt: str = "kimina") -> list[dict]:
    """Round-level samples (OProver) from a sample log, so a resumed run loses none: every
    verified round with the proofs retrieved for it (JSON; the memory is frozen, so the same)
    and, for a fix (round t > 1), the attempt and feedback of round t - 1, in the SFT schema:
    02 rebuilds the very prompt the round was deployed with."""
    by_id = {r["statement_id"]: r for r in rows}
    by_round = {(x["statement_id"], x["sample_idx"], x["round"]): x for x in samples}
    out = []
    for x in samples:
        row, prev = by_id.get(x["statement_id"]), by_round.get((x["statement_id"], x["sample_idx"],
                                                                x["round"] - 1))
        if not (x["ok"] and row and (x["round"] == 1 or prev)):
            continue
        retrieved = memory.retrieve(row["formal_statement"], cfg.retrieve_k, row["statement_id"])
        out.append({**{c: row.get(c, "") for c in common.STATEMENT_COLUMNS}, "split": "train",
                    "formal_proof": formats.extract_proof(x["completion"], row["formal_statement"],
                                                          fmt),
                    "completion": x["completion"], "prev_attempt": prev["completion"] if prev
                    else None,
                    "lean_feedback": next_round_feedback(cfg, prev["feedback"]) if prev else None,
                    "retrieved": json.dumps(retrieved, ensure_ascii=False)})
    return out


def found_in_log(samples: list[dict], rows: list[dict], run: str, bench: str,
                 fmt: str = "kimina") -> list[dict]:
    """Verified proofs in a sample log (also those of an earlier, resumed part of the run)."""
    by_id = {r["statement_id"]: r for r in rows}
    out = []
    for x in samples:
        row = by_id.get(x["statement_id"])
        if x["ok"] and row:
            proof = formats.extract_proof(x["completion"], row["formal_statement"], fmt)
            out.append({"statement_id": row["statement_id"],
                        "formal_statement": row["formal_statement"],
                        "header": row["header"], "proof": proof, "source": bench, "run": run})
    return out


def sft_proofs_that_verify(cfg: Settings, client: LeanClient) -> list[dict]:
    path = common.stage_dir(cfg.run_name, "01_data") / "sft.parquet"
    rows = common.read_rows(path, "sft")
    verdicts = client.verify([{"id": r["statement_id"], "statement": r["formal_statement"],
                               "code": formats.build_lean_code(r["header"], r["formal_statement"],
                                                               r["formal_proof"])}
                              for r in rows])
    return [{"statement_id": r["statement_id"], "formal_statement": r["formal_statement"],
             "header": r["header"],
             "proof": r["formal_proof"], "source": "sft", "run": cfg.run_name}
            for r, v in zip(rows, verdicts) if v.ok]


if __name__ == "__main__":
    main(sys.argv[1:])
