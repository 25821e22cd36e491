"""Stage 05: OProver's iterative post-training (--loop repair), or StepFun's RL-SFT cycle (--loop
tool), for N iterations from a run folder, in one command.

Iteration k (k = 1..N) starts from the model of iteration k-1 (iteration 1: --model, default this
run's 02_sft final model) and runs the stage scripts as subprocesses:
  prove   04_eval.py on the training question bank (01's rl_prompts, train split): --mode repair,
          retrieving from memory v(k-1) (OProver's agentic proving), or --mode tool (StepFun)
  memory  memory_v{k}.parquet = memory v(k-1) + the proofs just verified, decontaminated against
          every eval set (proof_memory.ProofMemory); the memory grows only between iterations
  sft     02_sft.py on the iteration's verified rounds: OProver's round-level samples (retrieved
          proofs, and for a fix the attempt and diagnostics it repaired, exactly as deployed), or
          StepFun's verified tool traces (the REPL's answers carry no loss)
  rl      03_rl_grpo.py --rollout repair (GSPO, memory v{k}) or --rollout tool, on the bank
          problems that no trajectory solved
  eval    04_eval.py in the same mode on the held-out sets (01's eval_*.parquet), memory v{k}
Writes runs/<run>/05_iterate/: config.json, memory_v*.parquet, <run>_itNN/ (an ordinary run folder
per iteration: 02_sft, 03_grpo, 04_eval/{prove,eval}, data/, manifest.json written last),
iterations.jsonl and manifest.json; results/<run>/iterations.md and iterations.png (held-out
pass@k by iteration with the paired 95% CI of the change in pass@1, memory size, solved and
unsolved counts), each stage's own tables under results/<run>/05_iterate/. A crash resumes at
the stage it was in: a stage whose manifest exists is skipped, and the stage scripts resume
themselves (02/03 checkpoints, 04 sample logs). The SFT rows of an iteration are its distinct
verified rounds (several trajectories verifying the same answer count once; --distinct_rows false
keeps every copy).

Departures: OProver samples several rollouts per round and trains 8B/32B models on a 1.76M-
statement bank; the SFT of an iteration starts from the previous iteration's model on that
iteration's new samples only (OProver does not publish its data mixing); the stand-in verifier
of the CPU run is NOT Lean. The CPU toy runs with --retrieve_k 0: the smoke's 0.85M-parameter
SFT model never saw retrieved proofs in a prompt and, shown them, wrote no proof at all on 48 of
48 problems (README); OProver's models are trained with retrieval from the start. The memory
still grows, versioned, between iterations.

Commands:
    python 05_iterate.py --run_name smoke_iter_epoch --data_run smoke --iterations 2 \\
        --model runs/smoke/02_sft/final/model --prompt_format kimina --retrieve_k 0 \\
        --bank_max_problems 512 --eval_max_problems 200 --width 4 --depth 2 --max_new_tokens 64 \\
        --sft_lr 3e-4 --rl_steps 20 --rl_lr 3e-4 --prompts_per_step 8 --mini_batch_prompts 4 \\
        --rl_extra "--require_tactic_blocks false --kl_coef 0.05"         # CPU toy (README)
    python 05_iterate.py --run_name op --iterations 3 --backend vllm                 # one GPU
Several GPUs: --launcher "accelerate launch --num_processes 8" runs 02 and 03 under it.
recipes/oprover_iterate.sh and recipes/stepfun_tool_rl.sh hold the GPU recipes.
"""
import json
import os
import shlex
import subprocess
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path


import common
from eval_tables import default_ks, paired_pass1_change, pass_at_k_table, trajectory_successes
from proof_memory import ProofMemory, read_proof_file

ROOT = Path(__file__).resolve().parent

# ---------------------------------------------------------------------------------------------
# Settings
# ---------------------------------------------------------------------------------------------


@dataclass
class Settings:
    run_name: str = "default"
    iterations: int = 2
    loop: str = "repair"                 # repair (OProver) | tool (StepFun's RL-SFT cycle)
    model: str = ""                      # iteration 1's model (default: the data run's 02_sft final model)
    data_run: str = ""                   # the run whose 01_data holds the bank and eval sets (default: run_name)
    memory: str = ""                     # memory v0: a proof file, or empty (OProver grows it from the bank)
    bank_max_problems: int = 0           # 0: the whole question bank
    eval_max_problems: int = 0           # 0: every held-out problem
    prompt_format: str = "auto"          # passed to every stage (auto: oprover / stepfun by the loop)
    # proving and evaluation (04); OProver: 64 rollouts of up to T rounds, top-k retrieval
    width: int = 8                       # trajectories (repair) or samples (tool) per problem
    depth: int = 3                       # repair rounds
    retrieve_k: int = 3
    tool_budget: int = 20480
    max_new_tokens: int = 24576
    temperature: float = 1.0
    backend: str = "hf"
    # SFT (02) and RL (03) of each iteration
    sft_steps: int = 0                   # 0: one epoch over the iteration's samples
    sft_lr: float = 1e-5
    sft_batch_size: int = 8
    rl_steps: int = 20
    rl_lr: float = 2e-6
    prompts_per_step: int = 32
    group_size: int = 8
    mini_batch_prompts: int = 8
    launcher: str = ""                   # e.g. "accelerate launch --num_processes 8" for 02 and 03
    distinct_rows: bool = True           # SFT on distinct verified rounds (false: every trajectory's copy)
    sft_extra: str = ""                  # more flags for 02 / 03 / 04, as on their command lines
    rl_extra: str = ""
    eval_extra: str = ""
    seed: int = 0


# ---------------------------------------------------------------------------------------------
# Setup: paths, and the stage scripts as subprocesses
# ---------------------------------------------------------------------------------------------

def check(cfg: Settings) -> None:
    if cfg.loop not in ("repair", "tool"):
        raise SystemExit(f"--loop must be repair or tool, got {cfg.loop!r}")
    if cfg.iterations < 1:
        raise SystemExit("--iterations must be >= 1")


def run_stage(script: str, args: list, runs_root: Path, launcher: str = "") -> None:
    """One stage script in its own process (as a user runs it), its runs/ under runs_root."""
    cmd = shlex.split(launcher) + [str(ROOT / script)] if launcher else [sys.executable, str(ROOT / script)]
    cmd += [str(a) for a in args]
    print(f"[05] {' '.join(cmd[1:] if not launcher else cmd)}", flush=True)
    # the stages' own tables go under results/<run>/05_iterate/, as their folders under runs/<run>/05_iterate/
    results_root = common.RESULTS_ROOT / runs_root.parent.name / runs_root.name
    done = subprocess.run(cmd, env={**os.environ, "PROVER_RUNS_DIR": str(runs_root),
                                    "PROVER_RESULTS_DIR": str(results_root)})
    if done.returncode:
        raise SystemExit(f"{script} failed (exit {done.returncode}); rerun 05_iterate.py to resume at this stage")


def rl_shape(cfg: Settings, n_problems: int) -> list:
    """Fewer unsolved problems than a step's prompts: one mini-batch of all of them."""
    if n_problems >= cfg.prompts_per_step:
        return ["--prompts_per_step", cfg.prompts_per_step, "--mini_batch_prompts", cfg.mini_batch_prompts]
    return ["--prompts_per_step", n_problems, "--mini_batch_prompts", n_problems]


def finished(folder: Path) -> bool:
    return (folder / "manifest.json").exists()


# ---------------------------------------------------------------------------------------------
# Data: the bank, the held-out sets, what an iteration's proving produced
# ---------------------------------------------------------------------------------------------

def load_sets(cfg: Settings) -> tuple[list[dict], list[Path]]:
    data = common.stage_dir(cfg.data_run or cfg.run_name, "01_data")
    bank = [r for r in common.read_rows(data / "rl_prompts.parquet", "statements") if r["split"] != "valid"]
    evals = sorted(data.glob("eval_*.parquet"))
    if not evals:
        raise SystemExit(f"{data}: no eval_*.parquet: the loop evaluates every iteration on held-out sets")
    return bank[:cfg.bank_max_problems] if cfg.bank_max_problems else bank, evals


def successes(folder: Path, width: int) -> dict[str, list[bool]]:
    """Per problem, per trajectory (repair) or sample (tool): verified in any round."""
    return trajectory_successes(common.read_rows(folder / "samples.parquet", "samples"), width)


def tool_sft_rows(folder: Path, bank: list[dict]) -> list[dict]:
    """StepFun's SFT data of a cycle: the verified tool-integrated traces, one per problem and
    sample, REPL answers inside (02 masks them)."""
    by_id = {r["statement_id"]: r for r in bank}
    return [{**{c: by_id[x["statement_id"]][c] for c in common.STATEMENT_COLUMNS}, "split": "train",
             "formal_proof": "", "completion": x["completion"], "prev_attempt": None, "lean_feedback": None}
            for x in common.read_rows(folder / "samples.parquet", "samples") if x["ok"] and x["statement_id"] in by_id]


def verdicts_by_round(folder: Path) -> dict[str, int]:
    """How an evaluation's attempts ended, per round: what failed (a Lean error, no proof) says
    what the next iteration can still learn."""
    counts = Counter(f"round {x['round']} {x['status']}" for x in common.read_rows(folder / "samples.parquet", "samples"))
    return dict(sorted(counts.items()))


def distinct(rows: list[dict]) -> list[dict]:
    """One row per distinct (statement, what the round was shown, answer): several trajectories
    that verified the same answer add weight, not information (on a short proof they often do)."""
    seen, out = set(), []
    for r in rows:
        key = (r["statement_id"], r.get("retrieved") or "", r.get("prev_attempt") or "", r.get("lean_feedback") or "",
               r["completion"])
        if key not in seen:
            seen.add(key)
            out.append(r)
    return out


def stage_folder(it_dir: Path, tag: str) -> Path:
    """04's <benchmark>/<mode>/<budget>/ folder of a tag (one benchmark per call here)."""
    found = sorted(p.parent for p in (it_dir / "04_eval" / tag).glob("*/*/*/samples.parquet"))
    if len(found) != 1:
        raise SystemExit(f"{it_dir / '04_eval' / tag}: expected one samples.parquet, found {len(found)}")
    return found[0]


# ---------------------------------------------------------------------------------------------
# Metrics: held-out pass@k per iteration, the paired change against the previous one
# ---------------------------------------------------------------------------------------------

def write_results(cfg: Settings, records: list[dict], results: Path) -> list[Path]:
    results.mkdir(parents=True, exist_ok=True)
    ks = sorted({int(k.split("@")[1]) for r in records for k in r if k.startswith("pass@") and k.split("@")[1].isdigit()})
    lines = [f"# Iterations of `{cfg.run_name}` (--loop {cfg.loop})", "",
             "Held-out pass@k counts trajectories (any round verified); the change is pass@1 against the "
             "previous iteration (iteration 1: against its starting model), paired over problems.", "",
             "| iteration | " + " | ".join(f"pass@{k}" for k in ks) + " | change in pass@1 (95% CI) | memory | "
             "bank solved | bank unsolved | SFT rows |",
             "|" + "---|" * (len(ks) + 6)]
    for r in records:
        ch = r.get("pass@1_change")
        lines.append(f"| {r['iteration']} | " + " | ".join(f"{100 * r[f'pass@{k}']:.1f}" for k in ks) +
                     (f" | {ch[0]:+.1f} ({ch[1]:+.1f} to {ch[2]:+.1f})" if ch else " | ") +
                     f" | {r['memory_size']} | {r['bank_solved']} | {r['bank_unsolved']} | {r['sft_rows']} |")
    rows = ([("start", records[0]["start_verdicts"])] if records and "start_verdicts" in records[0] else []) + \
        [(str(r["iteration"]), r["eval_verdicts"]) for r in records]
    keys = sorted({key for _, v in rows for key in v})
    lines += ["", "Held-out attempts by round and verdict (no_proof: no lean4 block with the unchanged statement):", "",
              "| iteration | " + " | ".join(keys) + " |", "|---|" + "---:|" * len(keys)]
    lines += [f"| {name} | " + " | ".join(str(v.get(key, 0)) for key in keys) + " |" for name, v in rows]
    lines += ["", f"Verifier: {os.environ.get('LEAN_SERVER_API_URL', '?')}. CPU runs use lean_standin_server.py, "
              "which is NOT Lean: no figure from it is a Lean result."]
    md = results / "iterations.md"
    md.write_text("\n".join(lines) + "\n")
    plot = common.plot_curves(records, results / "iterations.png", [f"pass@{k}" for k in ks] + ["bank_solved_share"],
                              f"held-out pass@k by iteration ({cfg.run_name})", x="iteration")
    return [md, plot]


# ---------------------------------------------------------------------------------------------
# Loop
# ---------------------------------------------------------------------------------------------

def iterate(cfg: Settings) -> Path:
    check(cfg)
    top = common.stage_dir(cfg.run_name, "05_iterate")
    top.mkdir(parents=True, exist_ok=True)
    (top / "manifest.json").unlink(missing_ok=True)
    common.save_config(cfg, top)
    bank, evals = load_sets(cfg)
    scored = [r for p in evals for r in common.read_rows(p, "statements")]
    fmt = cfg.prompt_format if cfg.prompt_format != "auto" else {"repair": "oprover", "tool": "stepfun"}[cfg.loop]
    mode = cfg.loop
    model = cfg.model or str(common.stage_dir(cfg.data_run or cfg.run_name, "02_sft") / "final" / "model")
    memory_path = top / "memory_v0.parquet"
    if not memory_path.exists():   # decontaminated like every later version
        v0 = ProofMemory(read_proof_file(Path(cfg.memory)) if cfg.memory else [], scored)
        common.write_parquet([{c: r[c] for c in common.SCHEMAS["proof_bank"]} for r in v0.rows], memory_path, "proof_bank")
    budget = (["--mode", "repair", "--repair_width", cfg.width, "--repair_depth", cfg.depth, "--retrieve_k", cfg.retrieve_k]
              if mode == "repair" else ["--mode", "tool", "--n_samples", cfg.width, "--tool_budget", cfg.tool_budget])
    common_04 = ["--prompt_format", fmt, "--max_new_tokens", cfg.max_new_tokens, "--temperature", cfg.temperature,
                 "--backend", cfg.backend, "--seed", cfg.seed, *shlex.split(cfg.eval_extra)]
    records, before = [], None
    for k in range(1, cfg.iterations + 1):
        name = f"{cfg.run_name}_it{k:02d}"
        it_dir = top / name
        data = it_dir / "data"
        data.mkdir(parents=True, exist_ok=True)
        common.write_parquet(bank, data / "bank.parquet", "statements")
        mem_args = ["--memory", memory_path] if mode == "repair" else []
        # the starting model, evaluated once: iteration 1's change is measured against it
        if k == 1 and not finished(it_dir / "04_eval" / "start"):
            run_stage("04_eval.py", ["--run_name", name, "--model", model, "--tag", "start", "--benchmarks",
                                     evals[0], "--max_problems", cfg.eval_max_problems, *budget, *mem_args, *common_04], top)
        if k == 1:
            before = successes(stage_folder(it_dir, "start"), cfg.width)
        # prove: agentic proving on the question bank with the current model and memory v(k-1)
        if not finished(it_dir / "04_eval" / "prove"):
            # on the bank, a problem never retrieves its own proof, but may retrieve its neighbours'
            run_stage("04_eval.py", ["--run_name", name, "--model", model, "--tag", "prove", "--benchmarks",
                                     data / "bank.parquet", *budget, *mem_args, *common_04]
                      + (["--memory_exclude", "self"] if mode == "repair" else []), top)
        proved = stage_folder(it_dir, "prove")
        solved = successes(proved, cfg.width)
        # memory v(k): the new verified proofs join, decontaminated against every eval set
        new_memory = top / f"memory_v{k}.parquet"
        if not new_memory.exists():
            found = read_proof_file(proved / "found_proofs.parquet") if (proved / "found_proofs.parquet").exists() else []
            mem = ProofMemory(read_proof_file(memory_path) + found, scored)
            common.write_parquet([{c: r[c] for c in common.SCHEMAS["proof_bank"]} for r in mem.rows], new_memory,
                                 "proof_bank")
        memory_path = new_memory
        mem_args = ["--memory", memory_path] if mode == "repair" else []
        # sft: the iteration's verified rounds (repair) or traces (tool), as deployed
        sampled = (common.read_rows(proved / "repair_sft.parquet", "sft") if (proved / "repair_sft.parquet").exists()
                   else []) if mode == "repair" else tool_sft_rows(proved, bank)
        sft_rows = distinct(sampled) if cfg.distinct_rows else sampled
        if sft_rows:
            common.write_parquet(sft_rows, data / "sft.parquet", "sft")
            (data / "config.json").write_text(json.dumps({"prompt_format": fmt}) + "\n")   # 02 checks it
            if not finished(it_dir / "02_sft"):
                steps = cfg.sft_steps or max(1, len(sft_rows) // cfg.sft_batch_size)
                run_stage("02_sft.py", ["--run_name", name, "--model", model, "--data", data / "sft.parquet",
                                        "--prompt_format", fmt, "--max_steps", steps, "--lr", cfg.sft_lr,
                                        "--batch_size", cfg.sft_batch_size, "--seed", cfg.seed,
                                        "--eval_every", 0, *shlex.split(cfg.sft_extra)], top, cfg.launcher)
            model = str(it_dir / "02_sft" / "final" / "model")
        # rl: on the bank problems no trajectory solved
        unsolved = [r for r in bank if not any(solved.get(r["statement_id"], []))]
        if unsolved and cfg.rl_steps:
            common.write_parquet(unsolved, data / "unsolved.parquet", "statements")
            if not finished(it_dir / "03_grpo"):
                run_stage("03_rl_grpo.py", ["--run_name", name, "--model", model, "--data", data / "unsolved.parquet",
                                            "--rollout", mode, *mem_args, "--prompt_format", fmt,
                                            "--max_steps", cfg.rl_steps, "--lr", cfg.rl_lr,
                                            *rl_shape(cfg, len(unsolved)),
                                            "--group_size", cfg.group_size, "--max_new_tokens", cfg.max_new_tokens,
                                            "--repair_depth", cfg.depth, "--retrieve_k", cfg.retrieve_k,
                                            "--tool_budget", cfg.tool_budget, "--error_correction", "false",
                                            "--eval_every", 0, "--save_every", 5, "--seed", cfg.seed,
                                            "--backend", cfg.backend, *shlex.split(cfg.rl_extra)], top, cfg.launcher)
            model = str(it_dir / "03_grpo" / "final" / "model")
        # eval: held-out, same loop, memory v(k)
        if not finished(it_dir / "04_eval" / "eval"):
            run_stage("04_eval.py", ["--run_name", name, "--model", model, "--tag", "eval", "--benchmarks", evals[0],
                                     "--max_problems", cfg.eval_max_problems, *budget, *mem_args, *common_04], top)
        held = successes(stage_folder(it_dir, "eval"), cfg.width)
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
               "eval_verdicts": verdicts_by_round(stage_folder(it_dir, "eval")),
               **({"start_verdicts": verdicts_by_round(stage_folder(it_dir, "start"))} if k == 1 else {})}
        before = held
        records.append(rec)
        (it_dir / "iteration.json").write_text(json.dumps(rec, indent=1) + "\n")
        common.write_manifest(it_dir, [it_dir / "iteration.json", data / "bank.parquet", memory_path],
                              extra={"stage": "05_iterate", "iteration": k})

    # -----------------------------------------------------------------------------------------
    # Save
    # -----------------------------------------------------------------------------------------
    (top / "iterations.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    written = write_results(cfg, records, common.RESULTS_ROOT / cfg.run_name)
    common.write_manifest(top, [top / "iterations.jsonl", top / "config.json", *written,
                                *sorted(top.glob("memory_v*.parquet"))],
                          extra={"stage": "05_iterate", "iterations": cfg.iterations, "loop": cfg.loop})
    print(f"wrote {written[0]}")
    return top


if __name__ == "__main__":
    iterate(common.parse_settings(Settings, sys.argv[1:], description=__doc__))
