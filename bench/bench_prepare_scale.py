"""Stage 01 at Goedel-Pset scale: a generated 1.7M-row local Parquet in Goedel-Pset-v1's columns
(problem_id, informal_statement, formal_statement with a header and a docstring), cleaned by
01_prepare_data.py in a subprocess. Prints peak memory (ru_maxrss of the child) and rows/s, for
the whole file and for --limit_per_source, against the baseline of the same rows held as a
Python list (what 01 did before it streamed), measured in this process on a 100k-row slice and
scaled.

    python bench/bench_prepare_scale.py                  # 1.7M rows (about 15 min on 2 cores)
    python bench/bench_prepare_scale.py --rows 200000    # quicker
"""
import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parents[1]
HEADER = "import Mathlib\nimport Aesop\nset_option maxHeartbeats 400000\nopen BigOperators Real Nat Topology Rat\n\n"


def goedel_row(i: int) -> dict:
    return {"problem_id": f"g_{i:07d}",
            "informal_statement": f"Show that x * {i} + {i % 97} is at least "
            f"{i % 13} for positive x.",
            "formal_statement": f"{HEADER}/-- Show that x * {i} + {i % 97} ≥ {i % 13}. -/\n"
                                f"theorem goedel_{i} (x : ℝ) (h : 0 < x) : x * {i} + "
            f"{i % 97} ≥ {i % 13} := by sorry"}


def write_source(path: Path, rows: int) -> None:
    schema = pa.schema([("problem_id", pa.string()), ("informal_statement", pa.string()),
                        ("formal_statement", pa.string())])
    with pq.ParquetWriter(path, schema, compression="zstd") as w:
        for start in range(0, rows, 50_000):
            w.write_table(pa.Table.from_pylist([goedel_row(i)
                                                for i in range(start, min(rows, start + 50_000))],
                                               schema=schema))


def run_01(src: Path, work: Path, run: str, *extra: str) -> tuple[float, float]:
    env = {**os.environ, "PROVER_RUNS_DIR": str(work / "runs")}
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    t0 = time.perf_counter()
    subprocess.run([sys.executable, str(ROOT / "01_prepare_data.py"), "--run_name", run,
                    "--rl_sources",
                    f"goedel_pset={src}", "--sft_sources", "", "--eval_sets", "minif2f_test",
                    *extra],
                   check=True, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    if peak <= before:
        print("  (peak not above an earlier child's: ru_maxrss keeps the maximum over children)")
    return time.perf_counter() - t0, peak / 1024   # KiB -> MiB


def list_baseline_mib(src: Path, rows: int) -> float:
    """Memory of the rows as a Python list of dicts (the pre-streaming read), from a 100k slice."""
    import tracemalloc
    n = min(rows, 100_000)
    table = pq.read_table(src).slice(0, n)
    tracemalloc.start()
    listed = table.to_pylist()
    size = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    del listed
    return size / n * rows / 2 ** 20


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=1_732_590)   # Goedel-Pset-v1's row count
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench01_"))
    src = work / "goedel_pset.parquet"
    t0 = time.perf_counter()
    write_source(src, args.rows)
    print(f"generated {args.rows:,} rows ({src.stat().st_size / 2**20:.0f} MiB Parquet) in "
          f"{time.perf_counter() - t0:.0f} s")
    secs, peak = run_01(src, work, "limit", "--limit_per_source", "20000")
    print(f"01 --limit_per_source 20000: {secs:.1f} s, peak RSS {peak:.0f} MiB")
    secs, peak = run_01(src, work, "full")
    out = pq.read_metadata(work / "runs/full/01_data/rl_prompts.parquet").num_rows
    baseline = list_baseline_mib(src, args.rows)
    print(f"01 on all {args.rows:,} rows: {secs:.0f} s "
          f"({args.rows / secs:,.0f} rows/s), {out:,} kept, "
          f"peak RSS {peak:.0f} MiB")
    print(f"baseline, the rows as a Python list alone: {baseline:.0f} MiB; streamed peak / "
          f"list = {peak / baseline:.2f}")


if __name__ == "__main__":
    main()
