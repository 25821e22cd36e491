"""verl custom reward: Kimina's proof x format, verified through lean_client (same code as 03).

verl config (single-sample reward manager):
    custom_reward_function.path=recipes/verl/reward_fn.py custom_reward_function.name=compute_score
Batched (one Lean request per batch, much faster):
    reward_model.reward_manager=batch custom_reward_function.name=compute_score_batch
Environment: LEAN_SERVER_API_URL (comma-separated for several servers), LEAN_SERVER_API_KEY,
REQUIRE_TACTIC_BLOCKS=0 to drop Kimina's ```tactics checks.
"""
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
import formats  # noqa: E402
from lean_client import LeanClient  # noqa: E402

_client = None


def _get_client() -> LeanClient:
    global _client
    if _client is None:
        _client = LeanClient(timeout=int(os.environ.get("LEAN_TIMEOUT", "60")))
    return _client


def compute_score_batch(data_sources, solution_strs, ground_truths, extra_infos, **kwargs):
    tactic_blocks = os.environ.get("REQUIRE_TACTIC_BLOCKS", "1") != "0"
    rows = [{"header": info["header"], "formal_statement": stmt} for stmt, info in zip(ground_truths, extra_infos)]
    verdicts = formats.verify_completions(_get_client(), rows, solution_strs)
    results = []
    for text, stmt, v in zip(solution_strs, ground_truths, verdicts):
        format_ok = float(not formats.format_errors(text, stmt, require_tactic_blocks=tactic_blocks))
        proof_ok = float(bool(v and v.ok))
        results.append({"score": proof_ok * format_ok, "format_ok": format_ok, "proof_ok": proof_ok})
    return results


def compute_score(data_source, solution_str, ground_truth, extra_info=None, **kwargs):
    return compute_score_batch([data_source], [solution_str], [ground_truth], [extra_info])[0]
