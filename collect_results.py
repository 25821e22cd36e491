"""Collect one run's outputs into results/<run>/: the stage plots, pass@k before and after RL in
one figure, and summary.md with every number and where it came from.

    python collect_results.py --run_name smoke
"""
import argparse
import csv
import json
import os
import platform
import shutil
import sys
from pathlib import Path

import common
import eval_tables


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(l) for l in path.read_text().splitlines() if l.strip()] if path.exists() else []


def toy_tactic_table(rollouts: Path, steps: range) -> list[str]:
    """Toy task only: which tactic the policy wrote for each relation symbol (first turns that hold
    a proof), as shares over `steps`. Shows whether RL learnt the rule or a marginal preference."""
    import re
    import pandas as pd
    from toy_task import TACTIC_RULES
    frames = [pd.read_parquet(f) for s in steps if (f := rollouts / f"step_{s:06d}.parquet").exists()]
    if not frames:
        return []
    df = pd.concat(frames)
    df = df[(df.turn == 1) & (df.status != "no_proof") & df.prompt_id.str.startswith("toy/")]
    rel = df.prompt.str.extract(r"theorem toy_\d+ : \S+(?: [+*] \S+)? (\S+) \S+ := by")[0]
    tac = df.completion.map(lambda c: (re.findall(r":= by\s+(\w+)", c) or ["?"])[-1])
    table = pd.crosstab(rel, tac, normalize="index")
    right = {r: t for t, rels in TACTIC_RULES.items() for r in rels}
    cols = sorted(TACTIC_RULES)
    lines = [f"| relation (right tactic) | " + " | ".join(cols) + " | attempts |", "|---|" + "---:|" * (len(cols) + 1)]
    for r in table.index:
        shares = [f"**{table.loc[r].get(c, 0):.2f}**" if right.get(r) == c else f"{table.loc[r].get(c, 0):.2f}"
                  for c in cols]
        lines.append(f"| `{r}` ({right.get(r, '?')}) | " + " | ".join(shares) + f" | {int((rel == r).sum())} |")
    return lines


def toy_class_table(run: Path) -> list[str]:
    """Toy task only: pass@1 and pass@8 per tactic class, SFT model vs GRPO model, from 04's
    samples (the classes RL may trade against each other show here, not in the overall rate)."""
    from toy_task import TACTIC_RULES, relation_of
    right = {r: t for t, rels in TACTIC_RULES.items() for r in rels}
    stmts = {r["statement_id"]: r["formal_statement"] for r in common.read_rows(run / "01_data/eval_toy.parquet", "statements")}
    per: dict[str, dict[str, dict[str, list[bool]]]] = {}
    for tag in ("sft", "grpo"):
        for f in sorted((run / "04_eval" / tag / "toy" / "single").glob("*/samples.jsonl"))[-1:]:
            for s in read_jsonl(f):
                cls = right[relation_of(stmts[s["statement_id"]])]
                per.setdefault(cls, {}).setdefault(tag, {}).setdefault(s["statement_id"], []).append(bool(s["ok"]))
    if not per:
        return []
    lines = ["| class (right tactic) | problems | SFT pass@1 | GRPO pass@1 | SFT pass@8 | GRPO pass@8 |",
             "|---|---:|---:|---:|---:|---:|"]
    for cls in sorted(per):
        cells = []
        for k in (1, 8):
            for tag in ("sft", "grpo"):
                probs = per[cls].get(tag, {})
                ok = [common.pass_at_k(len(v), sum(v), k) for v in probs.values() if len(v) >= k]
                cells.append(f"{100 * sum(ok) / len(ok):.1f}" if ok else "-")
        n = len(per[cls].get("sft", {}) or per[cls].get("grpo", {}))
        lines.append(f"| {cls} | {n} | " + " | ".join(cells) + " |")
    return lines


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--run_name", required=True)
    args = p.parse_args(argv)
    run = common.RUNS_ROOT / args.run_name
    res = common.PROJECT_ROOT / "results" / args.run_name
    res.mkdir(parents=True, exist_ok=True)
    for src, dst in [("02_sft/loss.png", "sft_loss.png"), ("03_grpo/reward.png", "rl_reward_pass_rate.png"),
                     ("03_grpo/format_errors.png", "rl_format_errors.png"),
                     ("03_grpo/response_length.png", "rl_response_length.png"),
                     ("03_grpo/validation.png", "rl_validation.png")]:
        if (run / src).exists():
            shutil.copy(run / src, res / dst)
    # pass@k before (SFT) and after (GRPO) RL, from 04_eval's tables
    curves = {}
    for tag in ("sft", "grpo"):
        for f in sorted((res / tag).glob("*_single_*.csv")):
            with open(f) as fh:
                curves[f"{tag}: {f.stem.split('_single_')[0]}"] = [
                    {k: float(v) for k, v in r.items()} for r in csv.DictReader(fh)]
    if curves:
        for t in curves.values():
            for r in t:
                r["k"] = int(r["k"])
        eval_tables.plot_pass_at_k(res / "pass_at_k_before_after_rl.png", curves, f"{args.run_name}: pass@k, SFT vs GRPO",
                          anchors=any("minif2f" in k for k in curves))
    sft = json.loads((run / "02_sft/manifest.json").read_text()) if (run / "02_sft/manifest.json").exists() else {}
    rl = read_jsonl(run / "03_grpo/metrics.jsonl")
    val = read_jsonl(run / "03_grpo/validation.jsonl")
    eval_cfg = json.loads((run / "04_eval/grpo/manifest.json").read_text()) if (run / "04_eval/grpo/manifest.json").exists() else {}
    standin = "standin" in json.dumps(eval_cfg.get("lean_client", {})) or os.environ.get("LEAN_SERVER_API_URL", "") == ""
    lines = [f"# Results of run `{args.run_name}`", "",
             f"Machine: {platform.machine()}, {os.cpu_count()} CPU cores, no GPU; Python {platform.python_version()}.",
             "Produced by `bash smoke.sh` (then `python collect_results.py --run_name " + args.run_name + "`).", ""]
    if (run / "01_data/manifest.json").exists():
        data = json.loads((run / "01_data/manifest.json").read_text())
        lines += ["## 01 data", "", "| file | rows |", "|---|---:|"] + [
            f"| {k} | {v} |" for k, v in sorted(data["rows"].items())] + [""]
    if sft:
        lines += ["## 02 SFT", "", f"- steps: {sft['steps']}, final train loss {sft['final_loss']:.4f}, "
                  f"held-out loss {sft['final_heldout_loss']:.4f} (`sft_loss.png`)", ""]
    if rl:
        first, last = rl[:10], rl[-10:]
        mean = lambda rows, k: sum(r[k] for r in rows if k in r) / max(1, sum(k in r for r in rows))
        lines += ["## 03 GRPO", "",
                  f"- {len(rl)} steps of {rl[0].get('updates', 1)} update(s); mean over the first / last 10 steps:",
                  f"  - reward {mean(first, 'reward_mean'):.3f} -> {mean(last, 'reward_mean'):.3f}",
                  f"  - verified pass rate {mean(first, 'pass_rate'):.3f} -> {mean(last, 'pass_rate'):.3f}",
                  f"  - first turns only (second turns are error corrections): pass rate "
                  f"{mean(first, 'pass_rate_turn1'):.3f} -> {mean(last, 'pass_rate_turn1'):.3f}",
                  f"  - format error rate {mean(first, 'format_error_rate'):.3f} -> {mean(last, 'format_error_rate'):.3f}",
                  f"  - mean response length {mean(first, 'response_length'):.1f} -> {mean(last, 'response_length'):.1f} tokens",
                  f"  - seconds per step {mean(rl, 'time_step'):.2f} (generation {mean(rl, 'time_generate'):.2f}, "
                  f"waiting on the verifier {mean(rl, 'time_verify_wait'):.3f}, update {mean(rl, 'time_update'):.2f})", ""]
    if rl and (run / "03_grpo/rollouts/step_000001.parquet").exists():
        n = len(rl)
        for name, steps in (("first", range(1, min(n, 10) + 1)), ("last", range(max(1, n - 9), n + 1))):
            table = toy_tactic_table(run / "03_grpo/rollouts", steps)
            if table:
                lines += [f"Tactic written per relation, first turns with a proof, {name} 10 steps "
                          "(share of attempts; the right tactic in bold):", ""] + table + [""]
    if (run / "01_data/eval_toy.parquet").exists():
        table = toy_class_table(run)
        if table:
            lines += ["pass@k per tactic class (04 samples of the eval set, SFT vs GRPO model):", ""] + table + [""]
    if val:
        keys = [k for k in val[0] if k.startswith(("pass@1", "best@"))]
        lines += ["Validation (held-out eval set, 8 samples per problem; best@8 is Kimina's bootstrap):", "",
                  "| step | " + " | ".join(keys) + " |", "|---:|" + "---:|" * len(keys)]
        lines += [f"| {v['step']} | " + " | ".join(f"{100 * v[k]:.1f}" for k in keys) + " |" for v in val] + [""]
    for tag in ("sft", "grpo"):
        for f in sorted((res / tag).glob("*.md")):
            lines += [f"## 04 eval: {tag} ({f.stem})", "", f.read_text(), ""]
    if standin:
        lines += ["**Verifier: the stand-in server (`lean_standin_server.py`), NOT Lean.** It decides a toy "
                  "fragment of closed ℕ arithmetic; these numbers show that the pipeline trains and measures, "
                  "not how well anything proves Lean theorems.", ""]
    (res / "summary.md").write_text("\n".join(lines))
    print((res / "summary.md").read_text())


if __name__ == "__main__":
    main(sys.argv[1:])
