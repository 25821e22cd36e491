"""Benchmark: lean_client throughput against the stand-in server, in one run.

The stand-in runs W workers that each take L ms per proof, so no client can verify more than
W / L unique proofs per second (the physical limit). We report:
  - the client's unique-proof throughput as a fraction of that limit (goal >= 0.9 at W=16,
    L=50 ms, 2,000 proofs with 25% duplicates);
  - its item throughput (duplicates included) against a plain sequential loop of
    `requests.post`, one snippet per request, measured on a prefix of the same items.

    python bench/bench_lean_client.py                      # the README's benchmark numbers
    python bench/bench_lean_client.py --proofs 400 --baseline 100   # quicker
The stand-in is not Lean: these are numbers about the client and the protocol, not about Lean.
"""
import argparse
import json
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import requests  # noqa: E402

from lean_client import LeanClient  # noqa: E402
from lean_standin_server import StandinProcess  # noqa: E402

HEADER = "import Mathlib\nimport Aesop\n\nset_option maxHeartbeats 400000\n\n"


def make_items(n: int, dup_fraction: float, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    n_unique = round(n * (1 - dup_fraction))
    unique = []
    for i in range(n_unique):
        a, b = rng.randint(0, 999), rng.randint(0, 999)
        unique.append(f"{HEADER}theorem bench_{i} : {a} + {b} = {a + b} := by\n  rfl")
    codes = unique + [rng.choice(unique) for _ in range(n - n_unique)]
    rng.shuffle(codes)
    return [{"id": str(i), "code": c} for i, c in enumerate(codes)]


def main():
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workers", type=int, default=16)
    p.add_argument("--latency-ms", type=float, default=50)
    p.add_argument("--proofs", type=int, default=2000)
    p.add_argument("--duplicates", type=float, default=0.25)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--max-workers", type=int, default=8,
                   help="client concurrency (requests in flight)")
    p.add_argument("--baseline", type=int, default=200, help="items for the sequential baseline")
    args = p.parse_args()

    items = make_items(args.proofs, args.duplicates)
    n_unique = len({it["code"] for it in items})
    limit = args.workers / (args.latency_ms / 1000)
    with StandinProcess(workers=args.workers, latency_ms=args.latency_ms) as url:
        # warm up the connection and the server's threads
        LeanClient(url, batch_size=args.batch_size).verify(make_items(32, 0, seed=1))
        client = LeanClient(url, batch_size=args.batch_size, max_workers=args.max_workers)
        t0 = time.perf_counter()
        verdicts = client.verify(items)
        t_client = time.perf_counter() - t0
        assert all(v.ok for v in verdicts), "benchmark proofs must all verify"

        session = requests.Session()
        t0 = time.perf_counter()
        for it in items[:args.baseline]:
            r = session.post(url + "/api/check",
                             json={"snippets": [{"id": it["id"], "code": it["code"]}],
                                                        "timeout": 60})
            r.raise_for_status()
        t_seq = time.perf_counter() - t0

    unique_rate = n_unique / t_client
    item_rate = len(items) / t_client
    seq_rate = args.baseline / t_seq
    result = {
        "workers": args.workers, "latency_ms": args.latency_ms, "proofs": len(items),
        "unique_proofs": n_unique, "physical_limit_proofs_per_s": round(limit, 1),
        "client_seconds": round(t_client, 2), "client_unique_proofs_per_s": round(unique_rate, 1),
        "fraction_of_limit": round(unique_rate / limit, 3),
        "client_items_per_s": round(item_rate, 1),
        "sequential_items_per_s": round(seq_rate, 1),
        "speedup_vs_sequential": round(item_rate / seq_rate, 1),
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
