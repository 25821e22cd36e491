"""Tool-integrated RL against single-turn RL at the same number of generated tokens (issue #17's
CPU check of StepFun's claim), from two finished runs of the toy task:
  --single_run  03 --rollout single (the CPU smoke, `bash smoke.sh`), 04 evaluations tagged sft,
  grpo
  --tool_run    03 --rollout tool with --max_generated_tokens set to the single run's total (the
                number `--budget` prints), 04 --mode tool evaluations tagged sft, grpo, within a
                fixed interaction budget (--tool_max_checks)
The four evaluations must hold the same problems (the same eval file and prefix): pass@1 is
compared per problem, paired. Writes results/<tool_run>/tool_vs_single.md and .png (training pass
rate against generated tokens, both runs). recipes/toy_tool_rl.sh runs everything.

    .venv/bin/python recipes/tool_vs_single.py --single_run smoke --budget     # prints the token
    budget
    .venv/bin/python recipes/tool_vs_single.py --single_run smoke --tool_run toy_tool
"""
import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import common  # noqa: E402
import eval_tables  # noqa: E402


def rl_tokens(run: Path) -> list[tuple[int, int, float]]:
    """Per RL step: (step, generated tokens so far, training pass rate), from 03's rollout files
    (runs older than the generated_tokens metric count the same way)."""
    out, total = [], 0
    metrics = {m["step"]: m
               for m in map(json.loads, (run / "03_grpo/metrics.jsonl").read_text().splitlines())}
    for f in sorted((run / "03_grpo/rollouts").glob("step_*.parquet")):
        step = int(f.stem.split("_")[1])
        if step not in metrics:
            continue   # a crashed step's rollouts that the resumed run redid
        total += sum(r["n_tokens"] for r in common.read_rows(f, "rollouts"))
        out.append((step, total, metrics[step]["pass_rate"]))
    if not out:
        raise SystemExit(f"{run / '03_grpo'}: no rollouts: run 03 first")
    return out


def eval_samples(run: Path, tag: str, mode: str) -> tuple[Path, list[dict]]:
    found = sorted((run / "04_eval" / tag).glob(f"*/{mode}/*/samples.parquet"))
    if len(found) != 1:
        raise SystemExit(f"{run / '04_eval' / tag}: expected one {mode} "
                         f"evaluation, found {len(found)}")
    return found[0], common.read_rows(found[0], "samples")


def describe(name: str, run: Path, tag: str, mode: str, rl) -> dict:
    folder, samples = eval_samples(run, tag, mode)
    width = 1 + max(x["sample_idx"] for x in samples)
    succ = eval_tables.trajectory_successes(samples, width)
    table = {r["k"]: r for r in eval_tables.pass_at_k_table(succ, [1, width], 1000, 0)}
    checks = [x["completion"].count("\n<REPL>\n") for x in samples] if mode == "tool" else []
    return {"name": name, "folder": folder, "succ": succ, "width": width, "pass@1": table[1],
            f"pass@{width}": table[width], "checks": sum(checks) / len(checks) if checks else None,
            "tokens_eval": sum(x["n_tokens"] for x in samples) / len(samples),
            "rl_steps": rl[-1][0] if rl else 0, "rl_tokens": rl[-1][1] if rl else 0}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--single_run", default="smoke")
    ap.add_argument("--tool_run", default="toy_tool")
    ap.add_argument("--budget", action="store_true",
                    help="print the single run's RL generated tokens and exit")
    ap.add_argument("--results_dir", default="")
    args = ap.parse_args(argv)
    single, tool = common.RUNS_ROOT / args.single_run, common.RUNS_ROOT / args.tool_run
    single_rl = rl_tokens(single)
    if args.budget:
        print(single_rl[-1][1])
        return
    tool_rl = rl_tokens(tool)
    rows = [describe("single-turn SFT", single, "sft", "single", None),
            describe("single-turn RL", single, "grpo", "single", single_rl),
            describe("tool SFT", tool, "sft", "tool", None),
            describe("tool RL", tool, "grpo", "tool", tool_rl)]
    ids = [set(r["succ"]) for r in rows]
    if any(i != ids[0] for i in ids):
        raise SystemExit("the four evaluations hold different problems: evaluate on the "
                         "same eval file and prefix")
    # 04's resolved settings: the budget
    cfg = json.loads((tool / "04_eval/grpo/config.json").read_text())
    pairs = [(3, 1, "tool RL - single-turn RL"), (2, 0, "tool SFT - single-turn SFT"),
             (1, 0, "single-turn RL - its SFT"), (3, 2, "tool RL - its SFT")]
    changes = [(label, eval_tables.paired_pass1_change(rows[a]["succ"], rows[b]["succ"]))
               for a, b, label in pairs]
    w = rows[0]["width"]
    out = Path(args.results_dir) if args.results_dir else common.RESULTS_ROOT / args.tool_run
    out.mkdir(parents=True, exist_ok=True)
    lines = [f"# Tool-integrated RL against single-turn RL at equal generated tokens (toy "
             f"task, stand-in: NOT Lean)", "",
             f"`python recipes/tool_vs_single.py --single_run {args.single_run} "
             f"--tool_run {args.tool_run}` "
             f"(runs by `bash recipes/toy_tool_rl.sh`). {len(ids[0])} eval problems, "
             f"{w} samples each, the same "
             f"problems for every row; tool evaluations within "
             f"{cfg['tool_max_checks'] or 'unlimited'} REPL checks and "
             f"{cfg['tool_budget']:,} context tokens.", "",
             f"| model | RL steps | RL generated tokens | pass@1 % (95% CI) | pass@{w} % | eval "
             f"tokens / sample | REPL checks / sample |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        p1, checks = r["pass@1"], "" if r["checks"] is None else f"{r['checks']:.2f}"
        lines.append(f"| {r['name']} | {r['rl_steps']} | {r['rl_tokens']:,} "
                     f"| {100 * p1['pass']:.1f} "
                     f"({100 * p1['ci_low']:.1f}-{100 * p1['ci_high']:.1f}) | "
                     f"{100 * r[f'pass@{w}']['pass']:.1f} | "
                     f"{r['tokens_eval']:.0f} | {checks} |")
    lines += ["", "| paired change in pass@1 | points (95% CI) |", "|---|---:|"]
    lines += [f"| {label} | {c[0]:+.1f} ({c[1]:+.1f} to {c[2]:+.1f}) |" for label, c in changes]
    lines += ["",
              "Eval tokens count what the model wrote (the REPL's answers are not "
              "generated). The stand-in "
              "decides an invented fragment: no figure here is a Lean result."]
    md = out / "tool_vs_single.md"
    md.write_text("\n".join(lines) + "\n")
    curves = [{"generated_tokens": t, f"{name} pass_rate": p}
              for name, rl in (("single-turn", single_rl), ("tool", tool_rl))
              for _, t, p in rl]
    png = common.plot_curves(curves, out / "tool_vs_single.png",
                             ["single-turn pass_rate", "tool pass_rate"],
                             "training pass rate against generated tokens", x="generated_tokens")
    (out / "tool_vs_single.json").write_text(json.dumps(
        {"rows": [{k: (str(v) if isinstance(v, Path) else v) for k, v in r.items() if k != "succ"}
                  for r in rows],
         "changes": {label: c for label, c in changes}}, indent=1) + "\n")
    print(md.read_text())
    print(f"wrote {md}, {png}")


if __name__ == "__main__":
    main()
