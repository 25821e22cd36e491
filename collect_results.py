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
import formats


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(l) for l in path.read_text().splitlines()
            if l.strip()] if path.exists() else []


def toy_tactic_table(rollouts: Path, steps: range) -> list[str]:
    """Toy task only: which tactic the policy wrote for each relation symbol (first turns that hold
    a proof), as shares over `steps`. Shows whether RL learnt the rule or a marginal preference."""
    import re
    import pandas as pd
    from toy_task import TACTIC_RULES
    frames = [pd.read_parquet(f) for s in steps
              if (f := rollouts / f"step_{s:06d}.parquet").exists()]
    if not frames:
        return []
    df = pd.concat(frames)
    df = df[(df.turn == 1) & (df.status != "no_proof") & df.prompt_id.str.startswith("toy/")]
    rel = df.prompt.str.extract(r"theorem toy_\d+ : \S+(?: [+*] \S+)? (\S+) \S+ := by")[0]
    tac = df.completion.map(lambda c: (re.findall(r":= by\s+(\w+)", c) or ["?"])[-1])
    table = pd.crosstab(rel, tac, normalize="index")
    right = {r: t for t, rels in TACTIC_RULES.items() for r in rels}
    cols = sorted(TACTIC_RULES)
    lines = [f"| relation (right tactic) | " + " | ".join(cols) + " | attempts |",
             "|---|" + "---:|" * (len(cols) + 1)]
    for r in table.index:
        shares = [f"**{table.loc[r].get(c, 0):.2f}**" if right.get(r) == c
                  else f"{table.loc[r].get(c, 0):.2f}"
                  for c in cols]
        lines.append(f"| `{r}` ({right.get(r, '?')}) | " + " | ".join(shares) + f" | {int((rel == r).sum())} |")
    return lines


def _eval_samples(run: Path, tag: str) -> list[dict]:
    """04's first-turn samples of the toy eval set for one model tag (the newest budget label)."""
    files = sorted((run / "04_eval" / tag / "toy" / "single").glob("*/samples.jsonl"))
    return read_jsonl(files[-1]) if files else []


def toy_class_stats(run: Path) -> dict[str, dict]:
    """Toy task only, from 04's samples of the eval set: per model tag (sft, grpo) and tactic
    class, each problem's outcomes, the tactic each sample wrote (its last `:= by TACTIC`) and
    whether it wrote the statement verbatim (without that no proof is checked: a class the model
    cannot copy earns no reward, whatever tactic it picks)."""
    import re
    from toy_task import TACTIC_RULES, relation_of
    right = {r: t for t, rels in TACTIC_RULES.items() for r in rels}
    stmts = {r["statement_id"]: r["formal_statement"]
             for r in common.read_rows(run / "01_data/eval_toy.parquet", "statements")}
    stats: dict[str, dict] = {}
    for tag in ("sft", "grpo"):
        for s in _eval_samples(run, tag):
            cls = right[relation_of(stmts[s["statement_id"]])]
            per = stats.setdefault(tag, {}).setdefault(cls,
                                                       {"ok": {}, "right_tactic": [], "copied": []})
            per["ok"].setdefault(s["statement_id"], []).append(bool(s["ok"]))
            per["copied"].append(formats.extract_proof(s["completion"],
                                                       stmts[s["statement_id"]]) is not None)
            per["right_tactic"].append((re.findall(r":= by\s+(\w+)", s["completion"])
                                        or ["?"])[-1] == cls)
    return stats


def _pass_at(probs: dict[str, list[bool]], k: int) -> float:
    ok = [common.pass_at_k(len(v), sum(v), k) for v in probs.values() if len(v) >= k]
    return 100 * sum(ok) / len(ok) if ok else float("nan")


def toy_criteria(run: Path, n_boot: int = 2000, seed: int = 0) -> dict:
    """Issue #16's acceptance criteria for one smoke run (SFT model vs GRPO model on the same eval
    problems): pass@1 rises with a paired bootstrap 95% CI above zero; pass@8 falls by at most 3
    points; no class's pass@8 falls by more than 10; the share of the right tactic rises in every
    class; second turns pass sometimes in RL (03's pass_rate_turn2 over all steps > 0)."""
    import numpy as np
    stats = toy_class_stats(run)
    if set(stats) != {"sft", "grpo"}:
        return {}
    merged = {tag: {pid: v for c in stats[tag].values() for pid, v in c["ok"].items()}
              for tag in stats}
    ids = sorted(set(merged["sft"]) & set(merged["grpo"]))
    delta, lo, hi = eval_tables.paired_pass1_change(merged["grpo"], merged["sft"], n_boot, seed)
    out = {"problems": len(ids), "pass@1_sft": _pass_at(merged["sft"], 1),
           "pass@1_grpo": _pass_at(merged["grpo"], 1),
           "pass@1_delta": delta, "pass@1_delta_ci": [lo, hi],
           "pass@8_sft": _pass_at(merged["sft"], 8), "pass@8_grpo": _pass_at(merged["grpo"], 8),
           "classes": {}}
    for cls in sorted(stats["sft"]):
        a, b = stats["sft"][cls], stats["grpo"].get(cls,
                                                    {"ok": {}, "right_tactic": [], "copied": []})
        out["classes"][cls] = {"problems": len(a["ok"]),
                               "pass@1": [_pass_at(a["ok"], 1), _pass_at(b["ok"], 1)],
                               "pass@8": [_pass_at(a["ok"], 8), _pass_at(b["ok"], 8)],
                               "right_tactic": [100 * float(np.mean(a["right_tactic"])),
                                                100 * float(np.mean(b["right_tactic"]))
                                                if b["right_tactic"] else float("nan")],
                               "statement_copied": [100 * float(np.mean(a["copied"])),
                                                    100 * float(np.mean(b["copied"])) if b["copied"]
                                                    else float("nan")]}
    rl = read_jsonl(run / "03_grpo/metrics.jsonl")
    turn2 = [r["pass_rate_turn2"] for r in rl if r.get("second_turn_fraction", 0) > 0
             and "pass_rate_turn2" in r]
    out["second_turn_pass_rate"] = float(np.mean(turn2)) if turn2 else 0.0
    cls = out["classes"].values()
    out["criteria"] = {
        "pass@1 rises, paired 95% CI above 0": bool(lo > 0),
        "pass@8 falls by <= 3 points": bool(out["pass@8_grpo"] - out["pass@8_sft"] >= -3),
        "no class's pass@8 falls by > 10 points": all(c["pass@8"][1] - c["pass@8"][0] >= -10
                                                      for c in cls),
        "right-tactic share rises in every class": all(c["right_tactic"][1] > c["right_tactic"][0]
                                                       for c in cls),
        "second-turn pass rate > 0 (RL)": out["second_turn_pass_rate"] > 0}
    out["all_met"] = all(out["criteria"].values())
    return out


def toy_criteria_lines(crit: dict) -> list[str]:
    lines = ["| class (right tactic) | problems | pass@1 SFT -> GRPO | pass@8 SFT -> GRPO | right "
             "tactic (% of samples) SFT -> GRPO "
             "| statement copied (% of samples) SFT -> GRPO |", "|---|---:|---:|---:|---:|---:|"]
    for cls, c in crit["classes"].items():
        lines.append(f"| {cls} | {c['problems']} | " + " | ".join(
            f"{c[k][0]:.1f} -> {c[k][1]:.1f}" for k in ("pass@1", "pass@8", "right_tactic",
                                                        "statement_copied")) + " |")
    lo, hi = crit["pass@1_delta_ci"]
    lines += ["",
              f"All {crit['problems']} problems: pass@1 {crit['pass@1_sft']:.1f} -> "
              f"{crit['pass@1_grpo']:.1f} "
              f"(paired difference {crit['pass@1_delta']:+.1f} points, 95% CI "
              f"{lo:+.1f} to {hi:+.1f}); pass@8 "
              f"{crit['pass@8_sft']:.1f} -> {crit['pass@8_grpo']:.1f}; second-turn pass rate in RL "
              f"{crit['second_turn_pass_rate']:.3f}.", "", "Issue #16's criteria:", ""]
    lines += [f"- [{'x' if ok else ' '}] {name}" for name, ok in crit["criteria"].items()]
    return lines


def sweep_summary(out: Path) -> str:
    """recipes/smoke_sweep.sh's table: one row per (setting, seed) run from its criteria.json,
    then per setting the seeds that met all of issue #16's criteria. Writes out/sweep.md."""
    rows = []
    for f in sorted(out.glob("*/criteria.json")):
        name, seed = f.parent.name.split("_sweep_", 1)[1].rsplit("_s", 1)
        rows.append((name, int(seed), json.loads(f.read_text())))
    lines = [f"# Smoke RL sweep (`bash recipes/smoke_sweep.sh`, {len(rows)} runs)", "",
             "Each run: the same SFT model, then 04 (SFT), 03 and 04 (GRPO) with the "
             "run's seed; the eval set is "
             f"the balanced toy's first "
             f"{'/'.join(sorted({str(c['problems']) for _, _, c in rows}))} held-out "
             "problems x 8 samples. Stand-in verifier, NOT Lean.", "",
             "| setting | seed | pass@1 SFT -> GRPO | paired diff (95% CI) | pass@8 SFT -> GRPO | "
             "worst class pass@8 change "
             "| smallest right-tactic rise | turn-2 pass rate (RL) | criteria met |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for name, seed, c in rows:
        cls = c["classes"].values()
        worst = min(x["pass@8"][1] - x["pass@8"][0] for x in cls)
        rise = min(x["right_tactic"][1] - x["right_tactic"][0] for x in cls)
        lo, hi = c["pass@1_delta_ci"]
        lines.append(f"| {name} | {seed} | {c['pass@1_sft']:.1f} -> {c['pass@1_grpo']:.1f} | "
                     f"{c['pass@1_delta']:+.1f} "
                     f"({lo:+.1f}, {hi:+.1f}) | {c['pass@8_sft']:.1f} -> {c['pass@8_grpo']:.1f} | "
                     f"{worst:+.1f} | {rise:+.1f} "
                     f"| {c['second_turn_pass_rate']:.3f} | "
                     f"{sum(c['criteria'].values())}/{len(c['criteria'])} |")
    lines += ["", "| setting | seeds meeting all criteria |", "|---|---:|"]
    for name in dict.fromkeys(r[0] for r in rows):
        runs = [c for n, _, c in rows if n == name]
        lines.append(f"| {name} | {sum(c['all_met'] for c in runs)} / {len(runs)} |")
    text = "\n".join(lines) + "\n"
    (out / "sweep.md").write_text(text)
    return text


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--run_name")
    p.add_argument("--results_dir", default="results",
                   help="results/<run_name>/ goes under this folder")
    p.add_argument("--sweep", help="a recipes/smoke_sweep.sh folder: write its sweep.md instead")
    args = p.parse_args(argv)
    if args.sweep:
        print(sweep_summary(Path(args.sweep)))
        return
    if not args.run_name:
        p.error("--run_name is required (or --sweep)")
    run = common.RUNS_ROOT / args.run_name
    res = Path(args.results_dir) / args.run_name
    res = res if res.is_absolute() else common.PROJECT_ROOT / res
    res.mkdir(parents=True, exist_ok=True)
    for src, dst in [("02_sft/loss.png", "sft_loss.png"),
                     ("03_grpo/reward.png", "rl_reward_pass_rate.png"),
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
        eval_tables.plot_pass_at_k(res / "pass_at_k_before_after_rl.png", curves,
                                   f"{args.run_name}: pass@k, SFT vs GRPO",
                          anchors=any("minif2f" in k for k in curves))
    sft = json.loads((run / "02_sft/manifest.json").read_text()) if (run / "02_sft/manifest.json").exists() else {}
    rl = read_jsonl(run / "03_grpo/metrics.jsonl")
    val = read_jsonl(run / "03_grpo/validation.jsonl")
    eval_cfg = json.loads((run / "04_eval/grpo/manifest.json").read_text()) if (run / "04_eval/grpo/manifest.json").exists() else {}
    standin = "standin" in json.dumps(eval_cfg.get("lean_client",
                                                   {})) or os.environ.get("LEAN_SERVER_API_URL", "") == ""
    lines = [f"# Results of run `{args.run_name}`", "",
             f"Machine: {platform.machine()}, {os.cpu_count()} CPU cores, no GPU; Python "
             f"{platform.python_version()}.",
             "Produced by `bash smoke.sh` (then `python "
             "collect_results.py --run_name " + args.run_name + "`).", ""]
    if (run / "01_data/manifest.json").exists():
        data = json.loads((run / "01_data/manifest.json").read_text())
        lines += ["## 01 data", "", "| file | rows |", "|---|---:|"] + [
            f"| {k} | {v} |" for k, v in sorted(data["rows"].items())] + [""]
    if sft:
        lines += ["## 02 SFT", "",
                  f"- steps: {sft['steps']}, final train loss {sft['final_loss']:.4f}, "
                  f"held-out loss {sft['final_heldout_loss']:.4f} (`sft_loss.png`)", ""]
    if rl:
        first, last = rl[:10], rl[-10:]
        mean = lambda rows, k: sum(r[k] for r in rows if k in r) / max(1, sum(k in r for r in rows))
        lines += ["## 03 GRPO", "",
                  f"- {len(rl)} steps of {rl[0].get('updates', 1)} update(s); mean over "
                  f"the first / last 10 steps:",
                  f"  - reward {mean(first, 'reward_mean'):.3f} -> {mean(last, 'reward_mean'):.3f}",
                  f"  - verified pass rate {mean(first, 'pass_rate'):.3f} -> "
                  f"{mean(last, 'pass_rate'):.3f}",
                  f"  - first turns only (second turns are error corrections): pass rate "
                  f"{mean(first, 'pass_rate_turn1'):.3f} -> {mean(last, 'pass_rate_turn1'):.3f}",
                  f"  - format error rate {mean(first, 'format_error_rate'):.3f} -> "
                  f"{mean(last, 'format_error_rate'):.3f}",
                  f"  - mean response length {mean(first, 'response_length'):.1f} -> "
                  f"{mean(last, 'response_length'):.1f} tokens",
                  f"  - seconds per step {mean(rl, 'time_step'):.2f} (generation "
                  f"{mean(rl, 'time_generate'):.2f}, "
                  f"waiting on the verifier {mean(rl, 'time_verify_wait'):.3f}, update "
                  f"{mean(rl, 'time_update'):.2f})", ""]
    if rl and (run / "03_grpo/rollouts/step_000001.parquet").exists():
        n = len(rl)
        for name, steps in (("first", range(1, min(n, 10) + 1)),
                            ("last", range(max(1, n - 9), n + 1))):
            table = toy_tactic_table(run / "03_grpo/rollouts", steps)
            if table:
                lines += [f"Tactic written per relation, first turns with a proof, {name} 10 steps "
                          "(share of attempts; the right tactic in bold):", ""] + table + [""]
    if (run / "01_data/eval_toy.parquet").exists():
        crit = toy_criteria(run)
        if crit:
            (res / "criteria.json").write_text(json.dumps(crit, indent=2))
            lines += ["## Per tactic class (04 samples of the eval set, SFT vs "
                      "GRPO model; `criteria.json`)", ""] + \
                toy_criteria_lines(crit) + [""]
    if val:
        keys = [k for k in val[0] if k.startswith(("pass@1", "best@"))]
        lines += ["Validation (held-out eval set, 8 samples per problem; "
                  "best@8 is Kimina's bootstrap):", "",
                  "| step | " + " | ".join(keys) + " |", "|---:|" + "---:|" * len(keys)]
        lines += [f"| {v['step']} | " + " | ".join(f"{100 * v[k]:.1f}" for k in keys) + " |"
                  for v in val] + [""]
    for tag in ("sft", "grpo"):
        for f in sorted((res / tag).glob("*.md")):
            lines += [f"## 04 eval: {tag} ({f.stem})", "", f.read_text(), ""]
    if standin:
        lines += ["**Verifier: the stand-in server (`lean_standin_server.py`), NOT "
                  "Lean.** It decides a toy "
                  "fragment of closed ℕ arithmetic; these numbers show that the "
                  "pipeline trains and measures, "
                  "not how well anything proves Lean theorems.", ""]
    (res / "summary.md").write_text("\n".join(lines))
    print((res / "summary.md").read_text())


if __name__ == "__main__":
    main(sys.argv[1:])
