"""Stage 05: OProver's iterative post-training (--loop repair) or StepFun's RL-SFT cycle (--loop
tool), N iterations in one command.

Iteration k starts from iteration k-1's model and runs the stages as subprocesses: prove (04 on
01's training bank, repair or tool mode, memory v(k-1)) -> memory v(k) (+ the proofs just
verified, decontaminated against every eval set) -> sft (02 on the verified rounds as deployed,
or StepFun's verified traces) -> rl (03 --rollout repair|tool on the unsolved bank problems) ->
eval (04 on the held-out sets). Each stage's settings are built and checked (an unknown key or a
bad value names the stage and the key) before anything starts. A crash resumes at its stage.
Writes runs/<run>/05_iterate/: config.json, memory_v*.parquet, <run>_itNN/ (a run folder per
iteration), iterations.jsonl, manifest.json (last); results/<run>/iterations.{md,png}.

    python 05_iterate.py --run_name op --iterations 3 --backend vllm               # one GPU
    python 05_iterate.py --run_name sf --loop tool --prompt_format stepfun --backend vllm
    python 05_iterate.py --run_name op --launcher "accelerate launch --num_processes 8"
CPU toy: the commands at the end of docs/RESULTS.md. GPU recipes: recipes/oprover_iterate.sh,
recipes/stepfun_tool_rl.sh. Departures from OProver and StepFun: docs/DESIGN.md.
"""
from dataclasses import dataclass

import common


@dataclass
class Settings(common.RunSettings, common.DeviceSettings, common.FormatSettings,
               common.SamplingSettings, common.RepairSettings, common.ToolSettings):
    iterations: int = 2
    loop: str = "repair"                 # repair (OProver) | tool (StepFun's RL-SFT cycle)
    # proving and evaluation (04): OProver samples 64 trajectories of up to T rounds
    width: int = 8                       # trajectories (repair) or samples (tool) per problem
    top_p: float = 0.95                  # 04's evaluation sampling; 03 keeps its own (1.0)
    # SFT (02) and RL (03) of each iteration
    sft_steps: int = 0                   # 0: one epoch over the iteration's samples
    sft_lr: float = 1e-5
    sft_batch_size: int = 8
    rl_steps: int = 20
    rl_lr: float = 2e-6
    prompts_per_step: int = 32
    group_size: int = 8
    mini_batch_prompts: int = 8
    distinct_rows: bool = True           # SFT on distinct verified rounds (false: every copy)
    # inputs
    model: str = ""                      # iteration 1's model (default: data run's 02_sft model)
    data_run: str = ""                   # the run whose 01_data holds bank and eval sets
    memory: str = ""                     # memory v0: a proof file, or empty (grown from the bank)
    bank_max_problems: int = 0           # 0: the whole question bank
    eval_max_problems: int = 0           # 0: every held-out problem
    launcher: str = ""                   # e.g. "accelerate launch --num_processes 8" (02 and 03)
    # more settings of a stage, as on its command line ("--kl_coef 0.05"); checked before start
    sft_extra: str = ""
    rl_extra: str = ""
    eval_extra: str = ""

    CHOICES = {"loop": ("repair", "tool")}


# imports below the settings, so that the settings are the first screen
import importlib.util  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import shlex  # noqa: E402
import signal  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
from collections import Counter  # noqa: E402
from pathlib import Path  # noqa: E402

from eval_tables import (default_ks, paired_pass1_change, pass_at_k_table,  # noqa: E402
                         trajectory_successes)
from proof_memory import ProofMemory, read_proof_file  # noqa: E402

ROOT = Path(__file__).resolve().parent


# ---------------------------------------------------------------------------------------------
# Setup: each stage's typed settings, and the stages as subprocesses
# ---------------------------------------------------------------------------------------------

def check(cfg: Settings) -> None:
    common.check_choices(cfg)
    if cfg.iterations < 1:
        raise SystemExit("--iterations must be >= 1")


def stage_settings_class(script: str):
    """A stage's Settings, read from its file (a stage is a script, `import 02_sft` is not
    Python); its main guard keeps it from running."""
    spec = importlib.util.spec_from_file_location(f"_stage_{script[:2]}", ROOT / script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.Settings


class StageCalls:
    """The settings of every stage call 05 makes, built in one place from 05's settings: 04's
    proving and evaluation, 02's SFT, 03's RL. Building one checks it (common.build_settings)."""

    def __init__(self, cfg: Settings, fmt: str):
        self.cfg, self.fmt = cfg, fmt
        self.classes = {s: stage_settings_class(s) for s in ("02_sft.py", "03_rl_grpo.py",
                                                              "04_eval.py")}
        self.extra = {"02_sft.py": cfg.sft_extra, "03_rl_grpo.py": cfg.rl_extra,
                      "04_eval.py": cfg.eval_extra}

    def build(self, script: str, values: dict):
        cfg = self.cfg
        values = {"seed": cfg.seed, "prompt_format": self.fmt, "device": cfg.device,
                  "dtype": cfg.dtype, "threads": cfg.threads, **values}
        values = {k: str(v) if isinstance(v, Path) else v for k, v in values.items()}
        return common.build_settings(self.classes[script], script, values,
                                     shlex.split(self.extra[script]))

    def sampling(self) -> dict:
        c = self.cfg
        return {"temperature": c.temperature, "max_new_tokens": c.max_new_tokens,
                "max_prompt_tokens": c.max_prompt_tokens, "backend": c.backend,
                "gen_batch_size": c.gen_batch_size}

    def evaluate(self, name: str, model: str, tag: str, benchmarks, memory, **more):
        c = self.cfg
        budget = ({"mode": "repair", "repair_width": c.width, "repair_depth": c.repair_depth,
                   "retrieve_k": c.retrieve_k, "memory": memory} if c.loop == "repair" else
                  {"mode": "tool", "n_samples": c.width, "tool_budget": c.tool_budget,
                   "tool_max_checks": c.tool_max_checks})
        return self.build("04_eval.py", {"run_name": name, "model": model, "tag": tag,
                                         "benchmarks": benchmarks, "top_p": c.top_p, **budget,
                                         **self.sampling(), **more})

    def sft(self, name: str, model: str, data, n_rows: int):
        c = self.cfg
        steps = c.sft_steps or max(1, n_rows // c.sft_batch_size)
        return self.build("02_sft.py", {"run_name": name, "model": model, "data": data,
                                        "max_steps": steps, "lr": c.sft_lr,
                                        "batch_size": c.sft_batch_size, "eval_every": 0})

    def rl(self, name: str, model: str, data, memory, n_problems: int):
        c = self.cfg
        # fewer unsolved problems than a step's prompts: one mini-batch of all of them
        prompts = min(c.prompts_per_step, n_problems)
        mini = c.mini_batch_prompts if n_problems >= c.prompts_per_step else n_problems
        return self.build("03_rl_grpo.py", {
            "run_name": name, "model": model, "data": data, "rollout": c.loop,
            "memory": memory if c.loop == "repair" else "", "max_steps": c.rl_steps,
            "lr": c.rl_lr, "prompts_per_step": prompts, "mini_batch_prompts": mini,
            "group_size": c.group_size, "repair_depth": c.repair_depth,
            "retrieve_k": c.retrieve_k, "tool_budget": c.tool_budget,
            "tool_max_checks": c.tool_max_checks, "error_correction": False, "eval_every": 0,
            "save_every": 5, **self.sampling()})

    def check_all(self) -> None:
        """Every call once with stand-in paths, before any work: a misspelled key in an *_extra
        stops here, naming the stage and the key, not minutes later inside a subprocess."""
        self.evaluate("check", "model", "start", "eval.parquet", "memory.parquet",
                      max_problems=self.cfg.eval_max_problems)
        self.sft("check", "model", "sft.parquet", 1)
        self.rl("check", "model", "unsolved.parquet", "memory.parquet", 1)


def _die_with_parent() -> None:
    """In the stage's process, before it runs: SIGTERM when 05 dies (Linux's PR_SET_PDEATHSIG)."""
    import ctypes
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)
    except OSError:
        pass   # not Linux: 05's own handler still stops the stage on an ordinary exit


def run_stage(script: str, settings, runs_root: Path, launcher: str = "") -> None:
    """One stage script in its own process (as a user runs it), its runs/ under runs_root, its
    command line made from its typed settings (common.settings_argv)."""
    python = shlex.split(launcher) if launcher else [sys.executable]
    cmd = python + [str(ROOT / script)] + common.settings_argv(settings)
    print(f"[05] {' '.join(cmd[1:] if not launcher else cmd)}", flush=True)
    # the stages' own tables go under results/<run>/05_iterate/, their folders under
    # runs/<run>/05_iterate/
    results_root = common.RESULTS_ROOT / runs_root.parent.name / runs_root.name
    # the stage runs in a process group of its own, stopped with 05: on 05's exit or error
    # here, and by the kernel when 05 is killed outright (PR_SET_PDEATHSIG), so a rerun of 05
    # never races a stage left running
    proc = subprocess.Popen(cmd, env={**os.environ, "PROVER_RUNS_DIR": str(runs_root),
                                      "PROVER_RESULTS_DIR": str(results_root)},
                            start_new_session=True, preexec_fn=_die_with_parent)
    try:
        returncode = proc.wait()
    except BaseException:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait()
        raise
    if returncode:
        raise SystemExit(f"{script} failed (exit {returncode}); rerun 05_iterate.py to "
                         "resume at this stage")


def finished(folder: Path) -> bool:
    return (folder / "manifest.json").exists()


# ---------------------------------------------------------------------------------------------
# Data: the bank, the held-out sets, what an iteration's proving produced
# ---------------------------------------------------------------------------------------------

def load_sets(cfg: Settings) -> tuple[list[dict], list[Path]]:
    data = common.stage_dir(cfg.data_run or cfg.run_name, "01_data")
    bank = [r for r in common.read_rows(data / "rl_prompts.parquet", "statements")
            if r["split"] != "valid"]
    evals = sorted(data.glob("eval_*.parquet"))
    if not evals:
        raise SystemExit(f"{data}: no eval_*.parquet: the loop evaluates every "
                         f"iteration on held-out sets")
    return bank[:cfg.bank_max_problems] if cfg.bank_max_problems else bank, evals


def successes(folder: Path, width: int) -> dict[str, list[bool]]:
    """Per problem, per trajectory (repair) or sample (tool): verified in any round."""
    return trajectory_successes(common.read_rows(folder / "samples.parquet", "samples"), width)


def tool_sft_rows(folder: Path, bank: list[dict]) -> list[dict]:
    """StepFun's SFT data of a cycle: the verified tool-integrated traces, one per problem and
    sample, REPL answers inside (02 masks them)."""
    by_id = {r["statement_id"]: r for r in bank}
    return [{**{c: by_id[x["statement_id"]][c] for c in common.STATEMENT_COLUMNS}, "split": "train",
             "formal_proof": "", "completion": x["completion"], "prev_attempt": None,
             "lean_feedback": None}
            for x in common.read_rows(folder / "samples.parquet", "samples") if x["ok"]
            and x["statement_id"] in by_id]


def verdicts_by_round(folder: Path) -> dict[str, int]:
    """How an evaluation's attempts ended, per round: what failed (a Lean error, no proof) says
    what the next iteration can still learn."""
    counts = Counter(f"round {x['round']} {x['status']}"
                     for x in common.read_rows(folder / "samples.parquet", "samples"))
    return dict(sorted(counts.items()))


def distinct(rows: list[dict]) -> list[dict]:
    """One row per distinct (statement, what the round was shown, answer): several trajectories
    that verified the same answer add weight, not information (on a short proof they often do)."""
    seen, out = set(), []
    for r in rows:
        key = (r["statement_id"], r.get("retrieved") or "", r.get("prev_attempt") or "",
               r.get("lean_feedback") or "",
               r["completion"])
        if key not in seen:
            seen.add(key)
            out.append(r)
    return out


def samples_dir(it_dir: Path, tag: str) -> Path:
    """The folder of 04's samples for a tag, <benchmark>/<mode>/<budget>/ (one benchmark per
    call here)."""
    found = sorted(p.parent for p in (it_dir / "04_eval" / tag).glob("*/*/*/samples.parquet"))
    if len(found) != 1:
        raise SystemExit(f"{it_dir / '04_eval' / tag}: expected one "
                         f"samples.parquet, found {len(found)}")
    return found[0]


def write_memory(memory: ProofMemory, path: Path) -> None:
    rows = [{c: r[c] for c in common.SCHEMAS["proof_bank"]} for r in memory.rows]
    common.write_parquet(rows, path, "proof_bank")


# ---------------------------------------------------------------------------------------------
# Metrics: held-out pass@k per iteration, the paired change against the previous one
# ---------------------------------------------------------------------------------------------

def write_results(cfg: Settings, records: list[dict], results: Path) -> list[Path]:
    results.mkdir(parents=True, exist_ok=True)
    ks = sorted({int(k.split("@")[1]) for r in records for k in r if k.startswith("pass@")
                 and k.split("@")[1].isdigit()})
    lines = [f"# Iterations of `{cfg.run_name}` (--loop {cfg.loop})", "",
             "Held-out pass@k counts trajectories (any round verified); the "
             "change is pass@1 against the "
             "previous iteration (iteration 1: against its starting model), paired over problems.",
             "",
             "| iteration | " + " | ".join(f"pass@{k}"
                                           for k in ks) + " | change in pass@1 (95% CI) | memory | "
             "bank solved | bank unsolved | SFT rows |",
             "|" + "---|" * (len(ks) + 6)]
    for r in records:
        ch = r.get("pass@1_change")
        lines.append(f"| {r['iteration']} | " + " | ".join(f"{100 * r[f'pass@{k}']:.1f}"
                                                           for k in ks) +
                     (f" | {ch[0]:+.1f} ({ch[1]:+.1f} to {ch[2]:+.1f})" if ch else " | ") +
                     f" | {r['memory_size']} | {r['bank_solved']} | "
                     f"{r['bank_unsolved']} | {r['sft_rows']} |")
    rows = ([("start", records[0]["start_verdicts"])] if records and "start_verdicts" in records[0]
            else []) + \
        [(str(r["iteration"]), r["eval_verdicts"]) for r in records]
    keys = sorted({key for _, v in rows for key in v})
    lines += ["",
              "Held-out attempts by round and verdict (no_proof: no lean4 block with "
              "the unchanged statement):", "",
              "| iteration | " + " | ".join(keys) + " |", "|---|" + "---:|" * len(keys)]
    lines += [f"| {name} | " + " | ".join(str(v.get(key, 0)) for key in keys) + " |"
              for name, v in rows]
    lines += ["",
              f"Verifier: {os.environ.get('LEAN_SERVER_API_URL', '?')}. CPU runs use "
              f"lean_standin_server.py, "
              "which is NOT Lean: no figure from it is a Lean result."]
    md = results / "iterations.md"
    md.write_text("\n".join(lines) + "\n")
    plot = common.plot_curves(records, results / "iterations.png",
                              [f"pass@{k}" for k in ks] + ["bank_solved_share"],
                              f"held-out pass@k by iteration ({cfg.run_name})", x="iteration")
    return [md, plot]


# ---------------------------------------------------------------------------------------------
# Loop
# ---------------------------------------------------------------------------------------------

def iterate(cfg: Settings) -> Path:
    check(cfg)
    fmt = cfg.prompt_format if cfg.prompt_format != "auto" else {"repair": "oprover",
                                                                 "tool": "stepfun"}[cfg.loop]
    calls = StageCalls(cfg, fmt)
    calls.check_all()
    top = common.stage_dir(cfg.run_name, "05_iterate")
    common.lock_folder(top)
    (top / "manifest.json").unlink(missing_ok=True)
    common.save_config(cfg, top)
    bank, evals = load_sets(cfg)
    scored = [r for p in evals for r in common.read_rows(p, "statements")]
    repair = cfg.loop == "repair"
    data_run = cfg.data_run or cfg.run_name
    model = cfg.model or str(common.stage_dir(data_run, "02_sft") / "final" / "model")
    memory_path = top / "memory_v0.parquet"
    if not memory_path.exists():   # decontaminated like every later version
        v0 = ProofMemory(read_proof_file(Path(cfg.memory)) if cfg.memory else [], scored)
        write_memory(v0, memory_path)
    records, before = [], None
    for k in range(1, cfg.iterations + 1):
        name = f"{cfg.run_name}_it{k:02d}"
        it_dir = top / name
        data = it_dir / "data"
        data.mkdir(parents=True, exist_ok=True)
        common.write_parquet(bank, data / "bank.parquet", "statements")
        # the starting model, evaluated once: iteration 1's change is measured against it
        if k == 1 and not finished(it_dir / "04_eval" / "start"):
            run_stage("04_eval.py", calls.evaluate(name, model, "start", evals[0], memory_path,
                                                   max_problems=cfg.eval_max_problems), top)
        if k == 1:
            before = successes(samples_dir(it_dir, "start"), cfg.width)
        # prove: agentic proving on the question bank with the current model and memory v(k-1);
        # on the bank a problem never retrieves its own proof, but may retrieve its neighbours'
        if not finished(it_dir / "04_eval" / "prove"):
            more = {"memory_exclude": "self"} if repair else {}
            run_stage("04_eval.py", calls.evaluate(name, model, "prove", data / "bank.parquet",
                                                   memory_path, **more), top)
        proved = samples_dir(it_dir, "prove")
        solved = successes(proved, cfg.width)
        # memory v(k): the new verified proofs join, decontaminated against every eval set
        new_memory = top / f"memory_v{k}.parquet"
        if not new_memory.exists():
            found_file = proved / "found_proofs.parquet"
            found = read_proof_file(found_file) if found_file.exists() else []
            write_memory(ProofMemory(read_proof_file(memory_path) + found, scored), new_memory)
        memory_path = new_memory
        # sft: the iteration's verified rounds (repair) or traces (tool), as deployed
        rounds_file = proved / "repair_sft.parquet"
        sampled = ((common.read_rows(rounds_file, "sft") if rounds_file.exists() else [])
                   if repair else tool_sft_rows(proved, bank))
        sft_rows = distinct(sampled) if cfg.distinct_rows else sampled
        if sft_rows:
            common.write_parquet(sft_rows, data / "sft.parquet", "sft")
            # 02 checks the SFT targets' format against this
            (data / "config.json").write_text(json.dumps({"prompt_format": fmt}) + "\n")
            if not finished(it_dir / "02_sft"):
                run_stage("02_sft.py", calls.sft(name, model, data / "sft.parquet", len(sft_rows)),
                          top, cfg.launcher)
            model = str(it_dir / "02_sft" / "final" / "model")
        # rl: on the bank problems no trajectory solved
        unsolved = [r for r in bank if not any(solved.get(r["statement_id"], []))]
        if unsolved and cfg.rl_steps:
            common.write_parquet(unsolved, data / "unsolved.parquet", "statements")
            if not finished(it_dir / "03_grpo"):
                run_stage("03_rl_grpo.py", calls.rl(name, model, data / "unsolved.parquet",
                                                    memory_path, len(unsolved)), top, cfg.launcher)
            model = str(it_dir / "03_grpo" / "final" / "model")
        # eval: held-out, same loop, memory v(k)
        if not finished(it_dir / "04_eval" / "eval"):
            run_stage("04_eval.py", calls.evaluate(name, model, "eval", evals[0], memory_path,
                                                   max_problems=cfg.eval_max_problems), top)
        held = successes(samples_dir(it_dir, "eval"), cfg.width)
        table = pass_at_k_table(held, default_ks(cfg.width), 1000, cfg.seed)
        rec = {"iteration": k, "model": model, "memory": memory_path.name,
               "memory_size": len(read_proof_file(memory_path)), "sft_rows": len(sft_rows),
               "sft_duplicates_dropped": len(sampled) - len(sft_rows),
               "bank_solved": len(bank) - len(unsolved), "bank_unsolved": len(unsolved),
               "bank_solved_share": (len(bank) - len(unsolved)) / max(1, len(bank)),
               "eval_set": evals[0].name, "eval_problems": len(held),
               **{f"pass@{row['k']}": row["pass"] for row in table},
               **{f"pass@{row['k']}_ci": [row["ci_low"], row["ci_high"]] for row in table},
               "pass@1_change": paired_pass1_change(held, before, seed=cfg.seed),
               "eval_verdicts": verdicts_by_round(samples_dir(it_dir, "eval")),
               **({"start_verdicts": verdicts_by_round(samples_dir(it_dir, "start"))} if k == 1
                  else {})}
        before = held
        records.append(rec)
        (it_dir / "iteration.json").write_text(json.dumps(rec, indent=1) + "\n")
        common.write_manifest(it_dir,
                              [it_dir / "iteration.json", data / "bank.parquet", memory_path],
                              extra={"stage": "05_iterate", "iteration": k})

    # -----------------------------------------------------------------------------------------
    # Save
    # -----------------------------------------------------------------------------------------
    (top / "iterations.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    written = write_results(cfg, records, common.RESULTS_ROOT / cfg.run_name)
    common.write_manifest(top, [top / "iterations.jsonl", top / "config.json", *written,
                                *sorted(top.glob("memory_v*.parquet"))],
                          extra={"stage": "05_iterate", "iterations": cfg.iterations,
                                 "loop": cfg.loop})
    print(f"wrote {written[0]}")
    return top


if __name__ == "__main__":
    # SIGTERM ends 05 through Python (finally blocks run), so the running stage is stopped too
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    iterate(common.parse_settings(Settings, sys.argv[1:], description=__doc__))
