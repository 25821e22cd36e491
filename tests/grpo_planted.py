"""03_rl_grpo.py with proofs planted by the rollout's own first sampled token, for the test that
runs it under torchrun (tests/test_grpo.py::test_two_processes_match_one).

An untrained tiny model proves nothing, so every group would have one reward and no gradient.
Here, before scoring, each rollout whose first token id is even gets the statement's right
tactic and each odd one a wrong tactic (a Lean error with feedback: it feeds the error-correction
cache). The choice depends only on the rollout itself, never on which process made it, so one
process and several processes must produce the same rollouts, rewards and weights.
Usage: same arguments as 03_rl_grpo.py."""
import importlib.util
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
import common  # noqa: E402
import generation  # noqa: E402
from toy_task import TACTIC_RULES  # noqa: E402

spec = importlib.util.spec_from_file_location("grpo", ROOT / "03_rl_grpo.py")
grpo = importlib.util.module_from_spec(spec)
sys.modules["grpo"] = grpo   # rollouts are pickled between processes: their classes must import
spec.loader.exec_module(grpo)
import rollouts  # noqa: E402  (where rollout_step looks score up)
real_score = rollouts.score


def planted_score(rollouts, client, cfg):
    for r in rollouts:
        stmt = r.item.row["formal_statement"]
        right = next(t for t, rels in TACTIC_RULES.items()
                     if any(f" {rel} " in stmt for rel in rels))
        tactic = right if r.gen.token_ids[0] % 2 == 0 else next(t for t in TACTIC_RULES
                                                                if t != right)
        text = f"<think>\nplanted\n</think>\n```lean4\n{r.item.row['header']}{stmt}\n  {tactic}\n```"
        r.gen = generation.Generation(text, r.gen.token_ids, r.gen.logprobs, r.gen.finish)
    return real_score(rollouts, client, cfg)


if __name__ == "__main__":
    rollouts.score = planted_score
    grpo.train(common.parse_settings(grpo.Settings, sys.argv[1:]))
