"""Stage 04: evaluation. pass@k curves, error correction, repair with retrieval, tool-integrated
proving, and tables recomputed from recorded verdicts.

Modes (--mode), all writing the same sample schema:
  single      n independent samples per problem (Kimina / DeepSeek), unbiased pass@k
  correction  single, then one Kimina second turn for every failed sample: pass rates before/after
  repair      OProver / Goedel: `repair_width` trajectories of up to `repair_depth` rounds; round t
              sees the statement, the top-k verified proofs retrieved (BM25) from a proof bank,
              and (t > 1) the previous attempt with its Lean feedback; a trajectory stops at its
              first verified proof. pass@k counts trajectories; attempts and tokens are reported
  tool        StepFun: the model may write <sketch>...</sketch>; generation stops there, the sketch
              is checked, <REPL>...</REPL> with the result is appended and generation goes on
  recompute   no generation: tables from a recorded verdict file (--verdicts): the InternLM
              miniF2F proof-search outputs, or JSONL rows {"statement_id", "benchmark", "successes"}

Writes runs/<run>/04_eval/<tag>/<benchmark>/<mode>/samples.jsonl (appended as each sample is
verified: a rerun resumes and skips finished samples) and samples.parquet, and results/<tag>/:
<benchmark>_<mode>.md and .csv (pass@k with bootstrap 95% intervals), a pass@k curve PNG with
the published anchor points (REFERENCE.md section 5), and for repair mode a budget plot.
The proof bank (runs/<run>/04_eval/proof_bank.parquet) is seeded from the verified proofs we
ship, never from the benchmark being scored, and grows with every proof a run verifies; repair
trajectories that end in a fix are saved in the SFT schema (repair_sft.parquet) for 02_sft.py.

Departures: one sample per prompt per round in repair mode (OProver samples several); the tool
mode's REPL output is our compact JSON of the verdict, not the raw REPL response.

Commands:
    python 04_eval.py --run_name smoke --n_samples 8 --max_new_tokens 64                 # CPU toy
    python 04_eval.py --model AI-MO/Kimina-Prover-RL-1.7B --benchmarks minif2f_test \\
        --n_samples 32 --backend vllm                                                      # 1 GPU
    python 04_eval.py --mode repair --repair_width 8 --repair_depth 3 --backend vllm ...
    python 04_eval.py --mode recompute --verdicts data/proofs/internlm_math_minif2f_test_proofsearch_output.zip
Several GPUs: --vllm_tp N (tensor parallel) or one process per benchmark shard.
"""
import concurrent.futures as cf
import csv
import json
import math
import os
import sys
import zipfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np

import common
import formats
import generation
from lean_client import LeanClient
from proof_memory import ProofBank, shipped_proofs

# ---------------------------------------------------------------------------------------------
# Settings
# ---------------------------------------------------------------------------------------------


@dataclass
class Settings:
    run_name: str = "default"
    model: str = ""                     # default: this run's 03_grpo, else 02_sft final model
    tag: str = ""                       # name in results/ (default: from the model path)
    benchmarks: str = ""                # names of runs/<run>/01_data/eval_<name>.parquet, or paths
    mode: str = "single"                # single | correction | repair | tool | recompute
    n_samples: int = 32                 # Kimina: pass@32
    temperature: float = 1.0
    top_p: float = 0.95
    max_new_tokens: int = 24576
    backend: str = "hf"                 # hf | vllm
    vllm_tp: int = 1
    gen_batch_size: int = 64
    problems_per_chunk: int = 8
    max_problems: int = 0               # 0: all
    # repair (OProver)
    repair_width: int = 8
    repair_depth: int = 3
    retrieve_k: int = 3
    feedback_style: str = "kimina"      # kimina | goedel
    bank_from_sft: bool = False         # also seed the bank with this run's SFT proofs that verify
    # tool-integrated (StepFun)
    tool_max_checks: int = 4
    tool_budget: int = 20480            # total tokens per sample
    # recompute
    verdicts: str = ""
    # metrics and verification
    bootstrap: int = 1000
    lean_timeout: int = 60
    lean_batch_size: int = 8
    check_axioms: bool = True           # #print axioms on every proof that verifies: reported numbers
    reject_native_decide: bool = False   # for benchmarks that forbid native_decide
    seed: int = 0


ANCHORS_MINIF2F = {  # REFERENCE.md section 5: (k, pass rate %) published on miniF2F-test
    "Kimina-Prover-RL-1.7B": (32, 76.63), "Kimina-Prover-RL-0.6B": (32, 71.30),
    "DeepSeek-Prover-V2-7B": (32, 75.6), "Goedel-Prover-V2-8B": (32, 84.6), "OProver-32B": (32, 93.3)}
TOOL_SYSTEM = (" You may check partial Lean 4 code while you think: write it between <sketch> and "
               "</sketch>, and the Lean REPL's answer will follow between <REPL> and </REPL>.")

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
    raise SystemExit(f"no model: give --model, or run 02_sft.py / 03_rl_grpo.py for run {cfg.run_name!r}")


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
        raise SystemExit(f"no benchmarks: run 01_prepare_data.py for {cfg.run_name!r} or pass --benchmarks")
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
        self.rows = []
        if self.path.exists():
            text = self.path.read_text()
            for line in text.splitlines():
                try:
                    self.rows.append(json.loads(line))
                except ValueError:
                    pass   # a line cut by a crash: that sample is redone
            if len(self.rows) != len(text.splitlines()) or (text and not text.endswith("\n")):
                # drop the cut line before appending, or the next record would be glued onto it
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


def sample_row(bench, mode, row, k, rnd, prompt, text, verdict_or_none, n_tokens) -> dict:
    v = verdict_or_none
    return {"statement_id": row["statement_id"], "benchmark": bench, "mode": mode, "sample_idx": k,
            "round": rnd, "prompt": prompt, "completion": text, "lean_code": v.code if v else "",
            "status": v.status if v else "no_proof", "ok": bool(v and v.ok),
            "feedback": formats.lean_feedback(v, "kimina") if v and not v.ok else "", "n_tokens": n_tokens}


# ---------------------------------------------------------------------------------------------
# Metrics
# ---------------------------------------------------------------------------------------------

def pass_at_k_table(successes: dict[str, list[bool]], ks: list[int], n_boot: int, seed: int) -> list[dict]:
    """Per k: mean unbiased pass@k over problems and a bootstrap 95% interval (problems resampled)."""
    ids = sorted(successes)
    rng = np.random.default_rng(seed)
    out = []
    for k in ks:
        per = np.array([common.pass_at_k(len(successes[i]), sum(successes[i]), k) for i in ids])
        boots = per[rng.integers(0, len(per), size=(n_boot, len(per)))].mean(1) if n_boot else per[None]
        out.append({"k": k, "pass": float(per.mean()), "ci_low": float(np.percentile(boots, 2.5)),
                    "ci_high": float(np.percentile(boots, 97.5)), "problems": len(ids),
                    "solved": int(sum(any(successes[i]) for i in ids))})
    return out


def default_ks(n: int) -> list[int]:
    return [2 ** i for i in range(int(math.log2(n)) + 1)] + ([n] if n & (n - 1) else [])


def write_tables(results_dir: Path, tag: str, bench: str, mode: str, table: list[dict], extra: dict,
                 caption: str) -> list[Path]:
    results_dir.mkdir(parents=True, exist_ok=True)
    stem = results_dir / f"{bench}_{mode}"
    with open(f"{stem}.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(table[0]))
        w.writeheader()
        w.writerows(table)
    lines = [f"**{tag} on {bench}, mode {mode}.** {caption}", "",
             "| k | pass@k (%) | 95% CI | solved / problems |", "|---:|---:|---:|---:|"]
    lines += [f"| {r['k']} | {100 * r['pass']:.2f} | {100 * r['ci_low']:.1f}-{100 * r['ci_high']:.1f} | "
              f"{r['solved']} / {r['problems']} |" for r in table]
    lines += [""] + [f"- {k}: {v}" for k, v in extra.items()]
    Path(f"{stem}.md").write_text("\n".join(lines) + "\n")
    return [Path(f"{stem}.csv"), Path(f"{stem}.md")]


def plot_pass_at_k(path: Path, curves: dict[str, list[dict]], title: str, anchors: bool) -> Path:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(6, 4), dpi=110)
    for label, table in curves.items():
        ks = [r["k"] for r in table]
        ax.plot(ks, [100 * r["pass"] for r in table], marker="o", label=label)
        ax.fill_between(ks, [100 * r["ci_low"] for r in table], [100 * r["ci_high"] for r in table], alpha=0.15)
    if anchors:
        for name, (k, v) in ANCHORS_MINIF2F.items():
            ax.scatter([k], [v], marker="x", color="gray")
            ax.annotate(name, (k, v), fontsize=6, color="gray", xytext=(3, 0), textcoords="offset points")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("k (samples)")
    ax.set_ylabel("pass@k (%)")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


# ---------------------------------------------------------------------------------------------
# Loop: the sampling modes
# ---------------------------------------------------------------------------------------------

class Evaluator:
    def __init__(self, cfg: Settings, model_path: str, client: LeanClient):
        self.cfg, self.client = cfg, client
        self.tok = generation.load_tokenizer(model_path)
        if cfg.backend == "vllm":
            self.gen = generation.VLLMGenerator(model_path, tensor_parallel_size=cfg.vllm_tp)
        else:
            self.gen = generation.HFGenerator(generation.load_model(model_path), self.tok, batch_size=cfg.gen_batch_size)
        self.tokens = 0

    def messages(self, row, retrieved=(), attempt="", feedback="") -> list[dict]:
        msgs = formats.prompt_messages({**row, "prev_attempt": attempt, "lean_feedback": feedback})
        if self.cfg.mode == "tool":
            msgs[0] = {"role": "system", "content": msgs[0]["content"] + TOOL_SYSTEM}
        if retrieved:
            block = "\n\n".join(f"```lean4\n{r['formal_statement']}{r['proof']}\n```" for r in retrieved)
            msgs[1] = {"role": "user", "content": msgs[1]["content"] +
                       f"\n# Verified proofs of similar statements:\n{block}\n"}
        return msgs

    def sample(self, prompts: list[str], seeds: list[int], stop=()) -> list[generation.Generation]:
        gens = self.gen.generate(prompts, seeds, self.cfg.max_new_tokens, self.cfg.temperature, self.cfg.top_p, stop)
        self.tokens += sum(len(g.token_ids) for g in gens)
        return gens

    def verify(self, rows, texts) -> list:
        """Extract, gate and verify; None where the completion holds no proof of the statement."""
        return formats.verify_completions(self.client, rows, texts)

    def tool_generate(self, prompts, seeds) -> list[tuple[str, int]]:
        """StepFun loop: stop at </sketch>, check, append <REPL>, continue; budget in tokens."""
        texts, used, checks = [""] * len(prompts), [0] * len(prompts), [0] * len(prompts)
        active = list(range(len(prompts)))
        while active:
            # one call for all active samples: cap it at the smallest remaining budget, so that no
            # sample ever goes past tool_budget tokens in total
            room = min(self.cfg.tool_budget - used[i] for i in active)
            gens = self.gen.generate([prompts[i] + texts[i] for i in active], [seeds[i] + checks[i] for i in active],
                                     min(self.cfg.max_new_tokens, room), self.cfg.temperature,
                                     self.cfg.top_p, stop=("</sketch>",))
            nxt, sketches = [], []
            for i, g in zip(active, gens):
                texts[i] += g.text
                used[i] += len(g.token_ids)
                self.tokens += len(g.token_ids)
                if used[i] >= self.cfg.tool_budget:
                    continue                              # the budget is spent: this sample is done
                if g.finish == "stop" and checks[i] < self.cfg.tool_max_checks:
                    code = texts[i][texts[i].rfind("<sketch>") + len("<sketch>"):texts[i].rfind("</sketch>")]
                    sketches.append((i, code.strip()))    # check it, then continue after <REPL>
                elif g.finish == "length":
                    nxt.append(i)                         # cut by this call's cap, not the budget
            if sketches:
                verdicts = self.client.verify([{"id": str(i), "code": c} for i, c in sketches])
                for (i, _), v in zip(sketches, verdicts):
                    repl = {"status": v.status, "messages": [{"severity": m.severity, "line": m.line,
                            "column": m.column, "data": m.text} for m in v.messages],
                            "sorries": [s.get("goal", "") for s in v.sorries]}
                    texts[i] += f"\n<REPL>\n{json.dumps(repl, ensure_ascii=False)}\n</REPL>\n"
                    checks[i] += 1
                    nxt.append(i)
            active = nxt
        return list(zip(texts, used))

    def run_problems(self, bench: str, rows: list[dict], log: SampleLog, bank: ProofBank | None,
                     repair_rows: list[dict]) -> None:
        cfg = self.cfg
        width = cfg.repair_width if cfg.mode == "repair" else cfg.n_samples
        from tqdm import tqdm
        bar = tqdm(total=len(rows), desc=f"{bench}/{cfg.mode}")
        with cf.ThreadPoolExecutor(1) as pool:
            pending = None
            for c in range(0, len(rows), cfg.problems_per_chunk):
                chunk = rows[c:c + cfg.problems_per_chunk]
                todo = [(r, k) for r in chunk for k in range(width) if (r["statement_id"], k, 1) not in log.done]
                if not todo:
                    bar.update(len(chunk))
                    continue
                if cfg.mode == "repair":
                    if pending:
                        pending.result()
                    self.repair(bench, todo, log, bank, repair_rows)
                else:
                    prompts = [formats.render_prompt(self.tok, self.messages(r)) for r, _ in todo]
                    # a sample's seed depends on (problem, index) only: a resumed run draws the same
                    seeds = [generation.rollout_seed(cfg.seed, r["statement_id"], k) for r, k in todo]
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

    def finish_chunk(self, bench, todo, prompts, outs, log: SampleLog) -> None:
        rows = [r for r, _ in todo]
        verdicts = self.verify(rows, [t for t, _ in outs])
        records = [sample_row(bench, self.cfg.mode, r, k, 1, p, t, v, n)
                   for (r, k), p, (t, n), v in zip(todo, prompts, outs, verdicts)]
        if self.cfg.mode == "correction":
            failed = [i for i, rec in enumerate(records) if not rec["ok"] and rec["feedback"]
                      and len(rec["feedback"]) <= 3000]
            msgs = [self.messages(rows[i], attempt=records[i]["completion"], feedback=records[i]["feedback"])
                    for i in failed]
            p2 = [formats.render_prompt(self.tok, m) for m in msgs]
            gens = self.sample(p2, [generation.rollout_seed(self.cfg.seed, 2, rows[i]["statement_id"], todo[i][1])
                                    for i in failed])
            v2 = self.verify([rows[i] for i in failed], [g.text for g in gens])
            records += [sample_row(bench, "correction", rows[i], todo[i][1], 2, p, g.text, v, len(g.token_ids))
                        for i, p, g, v in zip(failed, p2, gens, v2)]
        log.append(records)

    def repair(self, bench, todo, log: SampleLog, bank: ProofBank, repair_rows: list[dict]) -> None:
        """Trajectories (row, k): round t sees retrieved proofs, the last attempt and its feedback."""
        cfg = self.cfg
        state = {i: {"attempt": "", "feedback": ""} for i in range(len(todo))}
        active = list(range(len(todo)))
        for rnd in range(1, cfg.repair_depth + 1):
            if not active:
                break
            prompts = []
            for i in active:
                row = todo[i][0]
                retrieved = bank.retrieve(row["formal_statement"], cfg.retrieve_k, row["statement_id"])
                prompts.append(formats.render_prompt(self.tok, self.messages(
                    row, retrieved, state[i]["attempt"], state[i]["feedback"])))
            gens = self.sample(prompts, [generation.rollout_seed(cfg.seed, rnd, todo[i][0]["statement_id"], todo[i][1])
                                         for i in active])
            verdicts = self.verify([todo[i][0] for i in active], [g.text for g in gens])
            records, nxt = [], []
            for i, p, g, v in zip(active, prompts, gens, verdicts):
                row, k = todo[i]
                rec = sample_row(bench, "repair", row, k, rnd, p, g.text, v, len(g.token_ids))
                if v is not None and not v.ok and cfg.feedback_style == "goedel":
                    rec["feedback"] = formats.lean_feedback(v, "goedel", round_idx=rnd)
                records.append(rec)
                if rec["ok"]:
                    proof = formats.extract_proof(g.text, row["formal_statement"])
                    bank.add({"statement_id": row["statement_id"], "formal_statement": row["formal_statement"],
                              "header": row["header"], "proof": proof, "source": bench, "run": cfg.run_name})
                    if rnd > 1:   # a fix: attempt + feedback -> verified proof, in the SFT schema
                        repair_rows.append({**{c: row.get(c, "") for c in common.STATEMENT_COLUMNS},
                                            "split": "train", "formal_proof": proof, "completion": g.text,
                                            "prev_attempt": state[i]["attempt"], "lean_feedback": state[i]["feedback"]})
                else:
                    state[i] = {"attempt": g.text, "feedback": rec["feedback"] or
                                "The answer holds no lean4 block with the unchanged statement."}
                    nxt.append(i)
            log.append(records)
            active = nxt


# ---------------------------------------------------------------------------------------------
# Recompute from recorded verdicts
# ---------------------------------------------------------------------------------------------

def recorded_successes(path: Path) -> dict[str, dict[str, list[bool]]]:
    """model_or_benchmark -> statement_id -> per-sample successes."""
    out: dict[str, dict[str, list[bool]]] = {}
    if path.suffix == ".zip":   # InternLM-Math miniF2F proof search: output/<model>/results__*.json
        with zipfile.ZipFile(path) as zf:
            for name in zf.namelist():
                if not name.endswith(".json"):
                    continue
                model = name.split("/")[1].removesuffix("_minif2f_test")
                for r in json.loads(zf.read(name))["results"]:
                    out.setdefault(model, {}).setdefault(r["example"]["full_name"], []).append(bool(r["success"]))
        return out
    for lineno, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            r = json.loads(line)
            out.setdefault(r["benchmark"], {})[r["statement_id"]] = [bool(x) for x in r["successes"]]
        except (ValueError, KeyError, TypeError) as exc:
            raise SystemExit(f"{path}:{lineno}: expected {{statement_id, benchmark, successes: [..]}} ({exc})")
    return out


# ---------------------------------------------------------------------------------------------
# Save
# ---------------------------------------------------------------------------------------------

def main(argv=None):
    cfg = common.parse_settings(Settings, argv, description=__doc__)
    if cfg.mode not in ("single", "correction", "repair", "tool", "recompute"):
        raise SystemExit(f"--mode must be single, correction, repair, tool or recompute, got {cfg.mode!r}")
    shown = " ".join(argv if argv is not None else sys.argv[1:]).replace(str(common.PROJECT_ROOT) + "/", "")
    caption = f"`python 04_eval.py {shown}`, {os.cpu_count()} CPU cores"
    if cfg.mode == "recompute":
        if not cfg.verdicts:
            raise SystemExit("--mode recompute needs --verdicts FILE")
        tag = cfg.tag or Path(cfg.verdicts).stem
        results = common.PROJECT_ROOT / "results" / tag
        curves, summary = {}, {}
        for name, succ in sorted(recorded_successes(Path(cfg.verdicts)).items()):
            n = min(len(v) for v in succ.values())
            table = pass_at_k_table(succ, default_ks(n), cfg.bootstrap, cfg.seed)
            write_tables(results, name, name, "recompute", table, {"samples per problem": n}, caption)
            curves[name], summary[name] = table, table[0]["solved"]
        plot_pass_at_k(results / "pass_at_k.png", curves, f"recomputed from {Path(cfg.verdicts).name}", anchors=False)
        print(json.dumps({"solved": summary}, indent=1))
        return summary
    model_path = resolve_model(cfg)
    tag = cfg.tag or model_tag(model_path)
    benches = load_benchmarks(cfg)
    out = common.stage_dir(cfg.run_name, "04_eval") / tag
    common.save_config(cfg, out, extra={"resolved_model": model_path})
    client = LeanClient(timeout=cfg.lean_timeout, batch_size=cfg.lean_batch_size, check_axioms=cfg.check_axioms,
                        reject_native_decide=cfg.reject_native_decide,
                        cache_path=common.stage_dir(cfg.run_name, "04_eval") / "verdicts.sqlite")
    client.require_healthy()
    ev = Evaluator(cfg, model_path, client)
    results = common.PROJECT_ROOT / "results" / cfg.run_name / tag
    written, curves, overall = [], {}, {}
    for bench, rows in benches.items():
        folder = out / bench / cfg.mode
        log = SampleLog(folder)
        bank, repair_rows = None, []
        if cfg.mode == "repair":
            bank = ProofBank(common.stage_dir(cfg.run_name, "04_eval") / "proof_bank.parquet",
                             [r for rs in benches.values() for r in rs])
            seeds = shipped_proofs()
            if cfg.bank_from_sft:
                seeds += sft_proofs_that_verify(cfg, client)
            bank.seed(seeds)
        ev.run_problems(bench, rows, log, bank, repair_rows)
        common.write_parquet(log.rows, folder / "samples.parquet", "samples")
        if repair_rows:
            common.write_parquet(repair_rows, folder / "repair_sft.parquet", "sft")
        succ, attempts = {}, {}
        for r in rows:
            recs = [x for x in log.rows if x["statement_id"] == r["statement_id"]]
            n = cfg.repair_width if cfg.mode == "repair" else cfg.n_samples
            per = [[x for x in recs if x["sample_idx"] == k] for k in range(n)]
            succ[r["statement_id"]] = [any(x["ok"] for x in p) for p in per]   # any round of the trajectory
            attempts[r["statement_id"]] = sum(len(p) for p in per)
        n = cfg.repair_width if cfg.mode == "repair" else cfg.n_samples
        table = pass_at_k_table(succ, default_ks(n), cfg.bootstrap, cfg.seed)
        overall.update({f"{bench}/{sid}": v for sid, v in succ.items()})
        extra = {"model": model_path.replace(str(common.PROJECT_ROOT) + "/", ""),
                 "benchmark source": rows[0].get("eval_source") or "(not recorded by 01)",
                 "samples (trajectories) per problem": n,
                 "attempts": sum(attempts.values()), "generated tokens": sum(x["n_tokens"] for x in log.rows),
                 "verifier": "stand-in server (NOT Lean)" if "standin" in (client.identity or "") else "Lean server"}
        if cfg.mode == "correction":
            first = {sid: [any(x["ok"] for x in log.rows if x["statement_id"] == sid and x["sample_idx"] == k and x["round"] == 1)
                           for k in range(n)] for sid in succ}
            extra["pass@1 before correction"] = f"{100 * pass_at_k_table(first, [1], 0, 0)[0]['pass']:.2f}%"
            extra["pass@1 after correction"] = f"{100 * table[0]['pass']:.2f}%"
        written += write_tables(results, tag, bench, cfg.mode, table, extra, caption)
        curves[f"{tag} {bench} ({cfg.mode})"] = table
        if cfg.mode == "repair":
            written.append(plot_budget(results / f"{bench}_repair_budget.png", log.rows, rows, cfg))
    if len(benches) > 1:   # every problem of every benchmark, one pool
        n = cfg.repair_width if cfg.mode == "repair" else cfg.n_samples
        written += write_tables(results, tag, "overall", cfg.mode, pass_at_k_table(overall, default_ks(n), cfg.bootstrap,
                                cfg.seed), {"benchmarks": ", ".join(benches)}, caption)
    written.append(plot_pass_at_k(results / f"pass_at_k_{cfg.mode}.png", curves, f"{tag}: pass@k ({cfg.mode})",
                                  anchors=any("minif2f" in b for b in benches)))
    common.write_manifest(out, [out / "config.json"] + written, extra={"stage": "04_eval", "mode": cfg.mode,
                          "lean_client": dict(client.stats), "generated_tokens": ev.tokens})
    for p in written:
        if p.suffix == ".md":
            print(p.read_text())
    return written


def plot_budget(path: Path, samples: list[dict], rows: list[dict], cfg: Settings) -> Path:
    """Repair budget: pass rate with w trajectories of at most d rounds, for every (w, d)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    grid = np.zeros((cfg.repair_width, cfg.repair_depth))
    for w in range(1, cfg.repair_width + 1):
        for d in range(1, cfg.repair_depth + 1):
            solved = {x["statement_id"] for x in samples if x["ok"] and x["sample_idx"] < w and x["round"] <= d}
            grid[w - 1, d - 1] = 100 * len(solved) / max(1, len(rows))
    fig, ax = plt.subplots(figsize=(5, 4), dpi=110)
    im = ax.imshow(grid, origin="lower", aspect="auto", extent=(0.5, cfg.repair_depth + 0.5, 0.5, cfg.repair_width + 0.5))
    fig.colorbar(im, label="solved (%)")
    ax.set_xlabel("depth (rounds per trajectory)")
    ax.set_ylabel("width (trajectories)")
    ax.set_title("repair budget")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def sft_proofs_that_verify(cfg: Settings, client: LeanClient) -> list[dict]:
    path = common.stage_dir(cfg.run_name, "01_data") / "sft.parquet"
    rows = common.read_rows(path, "sft")
    verdicts = client.verify([{"id": r["statement_id"], "statement": r["formal_statement"],
                               "code": formats.build_lean_code(r["header"], r["formal_statement"], r["formal_proof"])}
                              for r in rows])
    return [{"statement_id": r["statement_id"], "formal_statement": r["formal_statement"], "header": r["header"],
             "proof": r["formal_proof"], "source": "sft", "run": cfg.run_name} for r, v in zip(rows, verdicts) if v.ok]


if __name__ == "__main__":
    main(sys.argv[1:])
