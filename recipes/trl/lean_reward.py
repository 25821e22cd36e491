"""Our Lean reward for TRL's GRPOTrainer, and 01's prompts in TRL's conversational format.

    from lean_reward import LeanReward, export_prompts
    dataset = export_prompts("runs/kimina/01_data/rl_prompts.parquet")      # a datasets.Dataset
    trainer = GRPOTrainer(model=..., reward_funcs=[LeanReward()], train_dataset=dataset, ...)

`LeanReward()(prompts, completions, **columns)` is TRL's reward-function signature: the
dataset's extra columns (statement_id, formal_statement, header, ...) arrive as keyword lists,
one entry per completion. It scores exactly as 03_rl_grpo.py does, by calling 03's own scoring
(`rollouts.score`): the same extraction, format checks, soundness gate and one batched
`LeanClient.verify` per call, reward = proof x format. A verdict that is an error (timeout,
server error, rejected) scores 0; the client never raises because of the server, so a dead
server costs zeros, not the run. The parts of the last call (Lean status, format errors by type)
are in `.parts`, and are logged to TRL's metrics when it passes `log_metric` (TRL >= 1.x).
Launch script with Kimina's settings: recipes/trl/grpo_kimina.py.
"""
from __future__ import annotations

import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
import common  # noqa: E402
import formats  # noqa: E402
import generation  # noqa: E402
from lean_client import LeanClient  # noqa: E402
from rollouts import PromptItem, Rollout, score  # noqa: E402

# the statement columns the reward needs, carried by every exported row
ROW_COLUMNS = tuple(common.STATEMENT_COLUMNS)


@dataclass
class RewardSettings:
    """What 03's scoring reads from its Settings (the same names and defaults)."""
    prompt_format: str = "kimina"
    require_tactic_blocks: bool = True   # Kimina's ```tactics checks (off for the toy task)
    overlong_buffer: int = 0             # >0: 03's linear length penalty over the last N tokens
    max_new_tokens: int = 24576


class LeanReward:
    """proof x format per completion, as 03 scores it; `client` defaults to LeanClient() (the
    LEAN_SERVER_API_URL / LEAN_SERVER_API_KEY variables)."""
    __name__ = "lean_proof_x_format"    # TRL names a reward's metrics after it

    def __init__(self, client: LeanClient | None = None,
                 settings: RewardSettings | None = None, **settings_kw):
        self.client = client or LeanClient()
        self.settings = settings or RewardSettings(**settings_kw)
        self.parts: list[dict] = []

    def __call__(self, prompts, completions, **columns) -> list[float]:
        missing = [c for c in ("statement_id", "formal_statement") if c not in columns]
        if missing:
            raise ValueError(f"LeanReward needs the dataset columns {missing} (export_prompts "
                             "writes them); got " + ", ".join(sorted(columns)))
        texts = [completion_text(c) for c in completions]
        rows = [{col: columns[col][i] if col in columns else "" for col in ROW_COLUMNS}
                for i in range(len(texts))]
        rollouts = [Rollout(PromptItem(row), [], generation.Generation(text, [], [], "eos"),
                            n_tokens=len(ids) if ids is not None else 0)
                    for row, text, ids in zip(rows, texts,
                                              columns.get("completion_ids") or [None] * len(texts))]
        score(rollouts, self.client, self.settings)   # 03's scoring, one batched verify
        self.parts = [{"status": r.status, "proof": float(r.status == "valid"),
                       "format_errors": list(r.format_errors), "reward": r.reward}
                      for r in rollouts]
        log = columns.get("log_metric")
        if callable(log) and rollouts:
            n = len(rollouts)
            log("lean/proof_rate", sum(p["proof"] for p in self.parts) / n)
            log("lean/format_error_rate", sum(bool(p["format_errors"]) for p in self.parts) / n)
            for key, count in sorted(Counter(e for p in self.parts
                                             for e in p["format_errors"]).items()):
                log(f"format/{key}", count / n)
            for status, count in sorted(Counter(p["status"] for p in self.parts).items()):
                log(f"lean/{status}", count / n)
        return [r.reward for r in rollouts]


def completion_text(completion) -> str:
    """A completion as TRL passes it: text (standard format) or a list of messages
    (conversational), of which the assistant's content is the answer."""
    if isinstance(completion, str):
        return completion
    return "".join(m.get("content") or "" for m in completion if m.get("role") == "assistant")


def export_prompts(path: str | Path, prompt_format: str = "kimina", train_only: bool = True):
    """01's rl_prompts.parquet (or an eval_*.parquet) as TRL's conversational dataset: a
    `prompt` column of chat messages (formats.prompt_messages, the prompt 03 renders) and the
    statement columns the reward reads. A row's `weight` (Kimina's deliberate duplicates)
    becomes that many rows, as 03 samples it; train_only drops the held-out rows as 03 does."""
    from datasets import Dataset
    rows = common.read_rows(Path(path), "statements")
    keep = ([r for r in rows if r["split"] != "valid"] or rows) if train_only else rows
    out = []
    for r in keep:
        record = {"prompt": formats.prompt_messages(r, prompt_format),
                  **{c: r.get(c) or "" for c in ROW_COLUMNS}}
        out += [record] * int(r.get("weight") or 1)
    if not out:
        raise SystemExit(f"{path}: no training rows to export")
    return Dataset.from_list(out)
