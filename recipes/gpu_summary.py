"""recipes/gpu_check.sh's last step: summary.md (and summary.json) in its output folder, from
what the check wrote there: the card, the versions, the tests' result, the tiny pipeline's stage
times and pass@1 before and after RL (stand-in verifier: NOT Lean), and every throughput
figure, with the command that made them."""
import argparse
import csv
import importlib.metadata
import json
import platform
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def version(name: str) -> str:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def pass_at_1(results: Path, tag: str) -> float | None:
    """pass@1 (%) from 04's table of the tiny pipeline's evaluation `tag`."""
    tables = sorted((results / "gpu" / tag).glob("toy_single_*.csv"))
    if not tables:
        return None
    with open(tables[0]) as fh:
        row = next(r for r in csv.DictReader(fh) if int(float(r["k"])) == 1)
    return round(100 * float(row["pass"]), 1)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--out", required=True)
    p.add_argument("--runs", required=True)
    p.add_argument("--results", required=True)
    p.add_argument("--command", required=True)
    args = p.parse_args()
    out, runs = Path(args.out), Path(args.runs)
    import torch
    card = torch.cuda.get_device_name() if torch.cuda.is_available() else "no GPU (CPU dry run)"
    times, codes = {}, {}
    for line in (out / "times.txt").read_text().splitlines():
        key, value = line.split()
        (codes if key.endswith("_rc") else times)[key] = int(value)
    tests = (out / "tests.log").read_text().strip().splitlines()
    throughput = json.loads((out / "throughput.json").read_text()) \
        if (out / "throughput.json").exists() else {"errors": {"all": "no throughput.json"}}
    rl = runs / "gpu/03_grpo/metrics.jsonl"
    rl_rows = [json.loads(x) for x in rl.read_text().splitlines()] if rl.exists() else []
    summary = {
        "command": args.command, "card": card, "python": platform.python_version(),
        "versions": {n: version(n) for n in ("torch", "transformers", "peft", "accelerate",
                                             "trl", "datasets")},
        "cuda": torch.version.cuda, "tests": tests[-1] if tests else "no output",
        "return_codes": codes, "seconds_at_end_of": times,
        "pipeline": {"pass@1_sft": pass_at_1(Path(args.results), "sft"),
                     "pass@1_grpo": pass_at_1(Path(args.results), "grpo"),
                     "rl_steps": len(rl_rows),
                     "rl_loss_finite": all(r.get("loss", 0.0) == r.get("loss", 0.0)
                                           for r in rl_rows)},
        "throughput": throughput}
    (out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    t, pl = throughput, summary["pipeline"]
    def fig(part, key, unit=""):
        value = t.get(part, {}).get(key) if isinstance(t.get(part), dict) else None
        return "failed (see throughput.log)" if value is None and part in t.get("errors", {}) \
            else ("-" if value is None else f"{value:,}{unit}" if isinstance(value, int) else
                  f"{value}{unit}")
    lines = [
        f"# GPU check: {card}", "",
        f"Made by `{args.command}` ({'CPU dry run at toy sizes: no GPU figure' if not torch.cuda.is_available() else 'one GPU'}).",
        f"Python {summary['python']}, CUDA {summary['cuda']}, " + ", ".join(
            f"{k} {v}" for k, v in summary["versions"].items()) + ".", "",
        "## Tests (gpu marker and the bf16 dtype lane)", "", f"`{summary['tests']}`", "",
        "## The tiny pipeline 01 -> 02 -> 04 -> 03 -> 04 (stand-in verifier, NOT Lean)", "",
        "| stage | finished at (s from start) |", "|---|---:|"]
    lines += [f"| {k} | {v} |" for k, v in times.items() if k != "throughput" and k != "tests"]
    lines += ["", f"pass@1 on the toy's held-out problems: SFT {pl['pass@1_sft']}% -> GRPO "
              f"{pl['pass@1_grpo']}% ({pl['rl_steps']} RL steps; losses finite: "
              f"{pl['rl_loss_finite']}). Exit codes: {codes}.", "",
              f"## Throughput at Kimina's shape ({t.get('shape')}, {t.get('params', 0):,} "
              f"parameters, {t.get('dtype')})", "",
              f"Measured bf16 matrix rate: {t.get('matmul_tflops_bf16', '-')} TFLOP/s (the MFU "
              "denominator; MFU = 6 x parameters x tokens/s / rate).", "",
              "| what | tokens/s | MFU | peak memory (GiB) | shape |", "|---|---:|---:|---:|---|"]
    rows = [("02 SFT step", "sft",
             f"batch {fig('sft', 'batch')} x {fig('sft', 'seq_tokens')} tokens, grad checkpointing"),
            ("TRL SFTTrainer, same model and batch", "trl_sft",
             f"TRL {fig('trl_sft', 'trl_version')}"),
            ("03 update", "update", "8 x 4,096 tokens, micro-batches of 2, grad checkpointing"
             if t.get("shape") == "qwen3-1.7b" else f"8 x {fig('update', 'seq_tokens')} tokens"),
            ("HF generation (03/04 hf backend)", "generate",
             f"batch {fig('generate', 'batch')}, {fig('generate', 'prompt_tokens')} prompt + "
             f"{fig('generate', 'new_tokens_each')} new tokens")]
    for name, part, shape in rows:
        lines.append(f"| {name} | {fig(part, 'tokens_per_s')} | {fig(part, 'mfu')} | "
                     f"{fig(part, 'peak_memory_gib')} | {shape} |")
    lines += ["", f"02 / TRL tokens/s: {t.get('sft_ours_over_trl', '-')}.",
              f"Errors: {', '.join(t.get('errors', {})) or 'none'}"
              f"{' (throughput.log holds the tracebacks)' if t.get('errors') else ''}.", ""]
    (out / "summary.md").write_text("\n".join(lines))
    print("\n".join(lines))
    sys.exit(0 if not any(codes.values()) else 1)


if __name__ == "__main__":
    main()
