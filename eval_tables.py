"""pass@k tables as 04_eval.py reports them: the unbiased estimator per problem (Chen et al.),
averaged over the problems with at least k samples, a bootstrap 95% interval over problems,
Kimina's best@k beside it; Markdown and CSV tables with the command in the caption; pass@k
plots with the published miniF2F anchors (docs/RECIPES.md).
"""
from __future__ import annotations

import csv
import json
import math
import zipfile
from pathlib import Path

import numpy as np

import common

ANCHORS_MINIF2F = {  # docs/RECIPES.md: (k, pass rate %) published on miniF2F-test
    "Kimina-Prover-RL-1.7B": (32, 76.63), "Kimina-Prover-RL-0.6B": (32, 71.30),
    "DeepSeek-Prover-V2-7B": (32, 75.6), "Goedel-Prover-V2-8B": (32, 84.6),
                   "OProver-32B": (32, 93.3)}



def pass_at_k_table(successes: dict[str, list[bool]], ks: list[int], n_boot: int,
                    seed: int) -> list[dict]:
    """Per k: mean unbiased pass@k over the problems with at least k samples (their count is in
    `problems`), a bootstrap 95% interval (problems resampled; none when n_boot is 0), and Kimina's
    best@k (per problem, the max over k samples drawn with replacement, 1000 resamples)."""
    rng = np.random.default_rng(seed)
    out = []
    for k in ks:
        ids = sorted(i for i in successes if len(successes[i]) >= k)
        if not ids:
            continue
        per = np.array([common.pass_at_k(len(successes[i]), sum(successes[i]), k) for i in ids])
        boots = per[rng.integers(0, len(per), size=(n_boot, len(per)))].mean(1) if n_boot else None
        best = np.mean([common.best_at_n_bootstrap(successes[i], k, seed=seed) for i in ids])
        out.append({"k": k, "pass": float(per.mean()),
                    "ci_low": float(np.percentile(boots, 2.5)) if n_boot else float("nan"),
                    "ci_high": float(np.percentile(boots, 97.5)) if n_boot else float("nan"),
                    "best": float(best), "problems": len(ids),
                    "solved": int(sum(any(successes[i]) for i in ids))})
    return out


def trajectory_successes(samples: list[dict], width: int) -> dict[str, list[bool]]:
    """Per problem, per sample (single/tool) or trajectory (repair): verified in any round."""
    out: dict[str, list[bool]] = {}
    for x in samples:
        out.setdefault(x["statement_id"], [False] * width)[x["sample_idx"]] |= bool(x["ok"])
    return out


def paired_pass1_change(now: dict[str, list[bool]], before: dict[str, list[bool]],
                        n_boot: int = 2000,
                        seed: int = 0) -> tuple[float, float, float]:
    """Mean per-problem change in pass@1 (share of samples verified), in points, with a paired
    bootstrap 95% interval over the problems both hold (models compared on the same problems)."""
    ids = sorted(set(now) & set(before))
    d = np.array([np.mean(now[i]) - np.mean(before[i]) for i in ids]) * 100
    boots = d[np.random.default_rng(seed).integers(0, len(d), size=(n_boot, len(d)))].mean(1)
    return float(d.mean()), float(np.percentile(boots, 2.5)), float(np.percentile(boots, 97.5))


def default_ks(n: int) -> list[int]:
    if n < 1:
        return []
    return [2 ** i for i in range(int(math.log2(n)) + 1)] + ([n] if n & (n - 1) else [])


def write_tables(results_dir: Path, tag: str, bench: str, mode: str, table: list[dict], extra: dict,
                 caption: str) -> list[Path]:
    results_dir.mkdir(parents=True, exist_ok=True)
    stem = results_dir / f"{bench}_{mode}"
    with open(f"{stem}.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(table[0]))
        w.writeheader()
        w.writerows(table)
    boot = table and table[0]["ci_low"] == table[0]["ci_low"]   # NaN: bootstrap off
    lines = [f"**{tag} on {bench}, mode {mode}.** {caption}", "",
             f"| k | pass@k (%) | {'95% CI' if boot else 'CI (bootstrap off)'} | best@k (%) | "
             f"solved / problems with n >= k |",
             "|---:|---:|---:|---:|---:|"]
    for r in table:
        ci = f"{100 * r['ci_low']:.1f}-{100 * r['ci_high']:.1f}" if boot else "-"
        lines.append(f"| {r['k']} | {100 * r['pass']:.2f} | {ci} | {100 * r['best']:.2f} | "
                     f"{r['solved']} / {r['problems']} |")
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
        ax.fill_between(ks, [100 * r["ci_low"] for r in table], [100 * r["ci_high"] for r in table],
                        alpha=0.15)
    if anchors:
        for name, (k, v) in ANCHORS_MINIF2F.items():
            ax.scatter([k], [v], marker="x", color="gray")
            ax.annotate(name, (k, v), fontsize=6, color="gray", xytext=(3, 0),
                        textcoords="offset points")
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
# Recompute from recorded verdicts
# ---------------------------------------------------------------------------------------------

def recorded_successes(path: Path) -> dict[str, dict[str, list[bool]]]:
    """benchmark_or_model -> statement_id -> per-sample successes. In a JSONL file one row is one
    problem: a second row for the same (benchmark, statement_id) is refused, naming both lines."""
    out: dict[str, dict[str, list[bool]]] = {}
    if path.suffix == ".zip":   # InternLM-Math miniF2F proof search: output/<model>/results__*.json
        with zipfile.ZipFile(path) as zf:   # one result per proof-search attempt: samples of a
                                            # problem
            for name in zf.namelist():
                if not name.endswith(".json"):
                    continue
                model = name.split("/")[1].removesuffix("_minif2f_test")
                for r in json.loads(zf.read(name))["results"]:
                    out.setdefault(model, {}).setdefault(r["example"]["full_name"],
                                                         []).append(bool(r["success"]))
        return out
    where: dict[tuple[str, str], int] = {}
    for lineno, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            r = json.loads(line)
            key = (str(r["benchmark"]), str(r["statement_id"]))
            successes = [bool(x) for x in r["successes"]]
        except (ValueError, KeyError, TypeError) as exc:
            raise SystemExit(f"{path}:{lineno}: expected {{statement_id, benchmark, "
                             f"successes: [..]}} ({exc})")
        if key in where:
            raise SystemExit(f"{path}:{lineno}: {key[1]} of {key[0]} already has a "
                             f"row (line {where[key]}); "
                             "one row per problem, with all its samples in `successes`")
        where[key] = lineno
        out.setdefault(key[0], {})[key[1]] = successes
    return out


def recompute_tables(verdicts: Path, tag: str, n_boot: int, seed: int, caption: str
                     ) -> tuple[dict, list[Path]]:
    """04 --mode recompute: one table per benchmark (or model) of a recorded verdict file; returns
    the problems solved per name and the files written."""
    tag = tag or verdicts.stem
    results = common.RESULTS_ROOT / tag
    curves, summary, written = {}, {}, []
    for name, succ in sorted(recorded_successes(verdicts).items()):
        empty = sorted(i for i, s in succ.items() if not s)
        sizes = [len(s) for s in succ.values() if s]
        table = pass_at_k_table({i: s for i, s in succ.items() if s},
                                default_ks(max(sizes, default=0)),
                                n_boot, seed)
        if not table:
            raise SystemExit(f"{verdicts}: {name} has no samples at all")
        extra = {"benchmark": name, "verdicts": verdicts.name,
                 "search budget (recorded samples per problem)": f"{min(sizes)}"
                 if min(sizes) == max(sizes)
                 else f"{min(sizes)} to {max(sizes)}: pass@k counts the problems with at least k"}
        if empty:
            extra["problems with no "
                  "recorded sample (left out)"] = f"{len(empty)}: {', '.join(empty[:5])}"
        written += write_tables(results, name, name, "recompute", table, extra, caption)
        curves[name], summary[name] = table, table[0]["solved"]
    written.append(plot_pass_at_k(results / "pass_at_k.png", curves,
                                  f"recomputed from {verdicts.name}", anchors=False))
    print(json.dumps({"solved": summary}, indent=1))
    return summary, written
