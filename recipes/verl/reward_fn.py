"""verl reward for Kimina-Prover-RL: proof x format, verified through lean_client (as 03 does).

verl 0.9.x's reward loop calls a reward function once per sample from each reward worker
(`reward.reward_manager.name=naive`), awaiting it when it is a coroutine. `compute_score` is
one: every call parks its sample in a per-process batcher that sends what has gathered (up to
LEAN_BATCH_MAX samples, or whatever arrived within LEAN_BATCH_WINDOW seconds) to the Lean
server in one concurrent LeanClient.verify, so a worker's concurrent samples share requests
instead of each making its own.

    reward.custom_reward_function.path=recipes/verl/reward_fn.py
    reward.custom_reward_function.name=compute_score
    reward.reward_manager.name=naive

It returns {"score": proof x format, "acc": proof (Kimina's validation accuracy), "format_ok",
"turn", "tool_feedback"}. A failed first turn with Lean feedback (at most 3,000 characters) is
appended to the error-correction cache file (KIMINA_EC_CACHE) that recipes/verl/ec_dataset.py
samples second turns from, as Kimina's dataset class does.

Environment: LEAN_SERVER_API_URL (comma-separated for several servers), LEAN_SERVER_API_KEY,
REQUIRE_TACTIC_BLOCKS=0 to drop Kimina's ```tactics checks, KIMINA_EC_CACHE (a file path
shared by the reward workers and the trainer; unset: no error correction).
"""
import asyncio
import json
import os
import sys
import threading
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
import formats  # noqa: E402
from lean_client import LeanClient  # noqa: E402

MAX_FEEDBACK_CHARS = 3000      # Kimina: longer feedback gives no second turn
_client = None
_batcher = None
_ec_lock = threading.Lock()


def _get_client() -> LeanClient:
    global _client
    if _client is None:
        _client = LeanClient(timeout=int(os.environ.get("LEAN_TIMEOUT", "60")))
        _client.probe_line_numbering()
    return _client


def score_batch(rows: list[dict], texts: list[str]) -> list[dict]:
    """Proof x format for each (row, completion); rows carry header and formal_statement."""
    tactic_blocks = os.environ.get("REQUIRE_TACTIC_BLOCKS", "1") != "0"
    verdicts = formats.verify_completions(_get_client(), rows, texts)
    out = []
    for row, text, v in zip(rows, texts, verdicts):
        format_ok = float(not formats.format_errors(text, row["formal_statement"],
                                                    require_tactic_blocks=tactic_blocks))
        proof_ok = float(bool(v and v.ok))
        feedback = formats.lean_feedback(v, "kimina") if v is not None and not v.ok else ""
        out.append({"score": proof_ok * format_ok, "acc": proof_ok, "format_ok": format_ok,
                    "turn": int(row.get("turn") or 1), "tool_feedback": feedback})
    return out


class _Batcher:
    """Gathers concurrent per-sample calls of one event loop into one verification call."""

    def __init__(self, window: float, max_items: int):
        self.window, self.max_items = window, max_items
        self.pending: list[tuple[dict, str, asyncio.Future]] = []
        self.flusher = None

    async def submit(self, row: dict, text: str) -> dict:
        loop = asyncio.get_running_loop()
        fut = loop.create_future()
        self.pending.append((row, text, fut))
        if len(self.pending) >= self.max_items:
            await self._flush()
        elif self.flusher is None:
            self.flusher = loop.create_task(self._flush_later())
        return await fut

    async def _flush_later(self):
        await asyncio.sleep(self.window)
        self.flusher = None
        await self._flush()

    async def _flush(self):
        batch, self.pending = self.pending, []
        if not batch:
            return
        try:
            results = await asyncio.get_running_loop().run_in_executor(
                None, score_batch, [b[0] for b in batch], [b[1] for b in batch])
        except Exception as exc:   # a verifier failure is a zero reward, never a pass, never a
                                   # crash
            results = [{"score": 0.0, "acc": 0.0, "format_ok": 0.0, "turn": 1,
                        "tool_feedback": f"# System Error:\n{exc}"}
                       for _ in batch]
        for (_, _, fut), res in zip(batch, results):
            if not fut.done():
                fut.set_result(res)


def _row(ground_truth: str, extra_info: dict | None) -> dict:
    info = dict(extra_info or {})
    return {**info, "formal_statement": ground_truth, "header": info.get("header", "")}


def remember_second_turn(row: dict, completion: str, result: dict) -> None:
    """A failed first turn with usable Lean feedback becomes a cached second-turn prompt."""
    path = os.environ.get("KIMINA_EC_CACHE")
    fb = result["tool_feedback"]
    if not path or result["acc"] or result["turn"] != 1 or not fb or len(fb) > MAX_FEEDBACK_CHARS:
        return
    entry = {"statement_id": row.get("statement_id", ""), "prev_attempt": completion,
             "lean_feedback": fb,
             "row": {k: row.get(k, "")
                     for k in ("statement_id", "header", "formal_statement", "informal_problem")}}
    with _ec_lock, open(path, "a") as fh:
        fh.write(json.dumps(entry, ensure_ascii=False) + "\n")


async def compute_score(data_source, solution_str, ground_truth, extra_info=None, **kwargs):
    global _batcher
    if _batcher is None:
        _batcher = _Batcher(float(os.environ.get("LEAN_BATCH_WINDOW", "0.05")),
                            int(os.environ.get("LEAN_BATCH_MAX", "64")))
    row = _row(ground_truth, extra_info)
    result = await _batcher.submit(row, solution_str)
    remember_second_turn(row, solution_str, result)
    return result
