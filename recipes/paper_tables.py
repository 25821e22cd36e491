"""Paper-shaped tables from 04_eval.py's outputs, each written as results/<run>/<name>.md (the
command in the caption) and .png. Used by the recipes beside it; rerun any time on a finished run.

    python recipes/paper_tables.py benchmarks --run R --tag T --label n32-t24576 \\
        --benchmarks minif2f_test,proofnet_test,putnambench,mobench --name deepseek_v2_table
    python recipes/paper_tables.py sweep --run R --tag T --bench minif2f_test --mode tool \\
        --labels n32-b4096-c0-t16384,n32-b8192-c0-t16384 --x "max length" --name stepfun_length
    python recipes/paper_tables.py budget --run R --tag T --bench minif2f_test \\
        --labels w64-d4-k3-t16384,w64-d4-k3-t16384-nofb,w64-d4-k0-t16384 --name oprover_budget

benchmarks: pass@k with 95% intervals per benchmark, side by side (DeepSeek-Prover-V2's table).
sweep:      pass@1 (the mean over all samples) for each run of a sweep (StepFun's Table 2).
budget:     OProver's budget curve: for every width x depth split of a total attempt budget B
            (1 ... 256), the unbiased pass@width over trajectories cut at that depth, estimated
            from one run with the largest width and depth; one curve per depth, and the same at
            each ablation label (no feedback, no retrieval).
"""
import argparse
import csv
import json
import math
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
import common  # noqa: E402


def read_table(run: str, tag: str, bench: str, mode: str, label: str) -> list[dict]:
    path = common.RESULTS_ROOT / run / tag / f"{bench}_{mode}_{label}.csv"
    if not path.exists():
        raise SystemExit(f"{path}: no such table (did 04_eval.py run with that budget?)")
    with open(path) as fh:
        return [{k: float(v) for k, v in r.items()} for r in csv.DictReader(fh)]


def unbiased(n: int, c: int, k: int) -> float:
    return 1.0 if n - c < k else 1.0 - math.comb(n - c, k) / math.comb(n, k)


def budget_grid(samples: list[dict], width: int, depth: int) -> dict[tuple[int, int], float]:
    """(w, d) -> mean over problems of pass@w over trajectories cut at depth d."""
    first_ok: dict[str, dict[int, int]] = {}   # problem -> trajectory -> first verified round
    problems = set()
    for s in samples:
        problems.add(s["statement_id"])
        if s["ok"]:
            t = first_ok.setdefault(s["statement_id"], {})
            t[s["sample_idx"]] = min(t.get(s["sample_idx"], 10 ** 9), s["round"])
    grid = {}
    for d in range(1, depth + 1):
        c = {p: sum(r <= d for r in first_ok.get(p, {}).values()) for p in problems}
        for w in range(1, width + 1):
            grid[(w, d)] = sum(unbiased(width, c[p], w) for p in problems) / max(1, len(problems))
    return grid


def plot(path: Path, curves: dict[str, tuple[list, list]], xlabel: str, title: str,
         logx: bool = False) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(6, 4), dpi=110)
    for label, (xs, ys) in curves.items():
        ax.plot(xs, ys, marker="o", label=label)
    if logx:
        ax.set_xscale("log", base=2)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("%")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("kind", choices=("benchmarks", "sweep", "budget"))
    ap.add_argument("--run", required=True)
    ap.add_argument("--tag", required=True)
    ap.add_argument("--name", required=True)
    ap.add_argument("--mode", default="single")
    ap.add_argument("--label", default="")
    ap.add_argument("--labels", default="")
    ap.add_argument("--benchmarks", default="")
    ap.add_argument("--bench", default="")
    ap.add_argument("--x", default="setting")
    args = ap.parse_args(argv)
    out = common.RESULTS_ROOT / args.run
    out.mkdir(parents=True, exist_ok=True)
    command = " ".join(argv if argv is not None else sys.argv[1:])
    lines = [f"**{args.name}** (`python recipes/paper_tables.py {command}`, from "
             f"04_eval.py's outputs of run "
             f"{args.run}, model tag {args.tag})", ""]
    curves = {}
    if args.kind == "benchmarks":
        benches = [b for b in args.benchmarks.split(",") if b]
        tables = {b: read_table(args.run, args.tag, b, args.mode, args.label) for b in benches}
        ks = sorted({int(r["k"]) for t in tables.values() for r in t})
        lines += ["| benchmark | problems | " + " | ".join(f"pass@{k} (95% CI)" for k in ks) + " |",
                  "|---|---:|" + "---:|" * len(ks)]
        for b, t in tables.items():
            by_k = {int(r["k"]): r for r in t}
            cells = [f"{100 * by_k[k]['pass']:.1f} "
                     f"({100 * by_k[k]['ci_low']:.1f}-{100 * by_k[k]['ci_high']:.1f})"
                     if k in by_k else "-" for k in ks]
            lines.append(f"| {b} | {int(t[0]['problems'])} | " + " | ".join(cells) + " |")
            curves[b] = ([int(r["k"]) for r in t], [100 * r["pass"] for r in t])
        plot(out / f"{args.name}.png", curves, "k", args.name, logx=True)
    elif args.kind == "sweep":
        labels = [x for x in args.labels.split(",") if x]
        lines += [f"| {args.x} ({args.mode} budget label) | pass@1 (%) | 95% CI | problems |",
                  "|---|---:|---:|---:|"]
        xs, ys = [], []
        for lab in labels:
            r = read_table(args.run, args.tag, args.bench, args.mode, lab)[0]
            lines.append(f"| {lab} | {100 * r['pass']:.2f} | "
                         f"{100 * r['ci_low']:.1f}-{100 * r['ci_high']:.1f} | "
                         f"{int(r['problems'])} |")
            xs.append(lab)
            ys.append(100 * r["pass"])
        curves[args.bench] = (xs, ys)
        plot(out / f"{args.name}.png", curves, args.x, args.name)
    else:
        labels = [x for x in args.labels.split(",") if x]
        budgets = [2 ** i for i in range(9)]   # 1 ... 256 attempts
        for lab in labels:
            folder = common.RUNS_ROOT / args.run / "04_eval" / args.tag / args.bench / "repair" / lab
            settings = json.loads((folder / "sample_settings.json").read_text()) if (folder / "sample_settings.json").exists() else {}
            samples = [json.loads(x) for x in (folder / "samples.jsonl").read_text().splitlines()
                       if x.strip()]
            width = int(lab.split("w")[1].split("-")[0])
            depth = int(lab.split("-d")[1].split("-")[0])
            grid = budget_grid(samples, width, depth)
            lines += [f"### {lab} (memory: {settings.get('memory', '?')})", "",
                      "| attempt budget | " + " | ".join(f"depth {d}"
                                                         for d in range(1, depth + 1)) + " |",
                      "|---:|" + "---:|" * depth]
            for b in budgets:
                cells = [f"{100 * grid[(b // d, d)]:.1f} (w{b // d})" if b % d == 0
                         and 1 <= b // d <= width else "-"
                         for d in range(1, depth + 1)]
                if any(c != "-" for c in cells):
                    lines.append(f"| {b} | " + " | ".join(cells) + " |")
            for d in range(1, depth + 1):
                pts = [(b, 100 * grid[(b // d, d)]) for b in budgets if b % d == 0
                       and 1 <= b // d <= width]
                if pts:
                    curves[f"{lab} depth {d}"] = ([p[0] for p in pts], [p[1] for p in pts])
            lines.append("")
        lines.append("Each cell: pass@w over trajectories cut at that depth "
                     "(unbiased, from the run's width), "
                     "w = budget / depth.")
        plot(out / f"{args.name}.png", curves, "total attempt budget (width x depth)", args.name,
             logx=True)
    (out / f"{args.name}.md").write_text("\n".join(lines) + "\n")
    print((out / f"{args.name}.md").read_text())


if __name__ == "__main__":
    main()
