"""03 --rollout repair | tool (issue #17): trajectory rewards and advantages by hand, the rounds'
prompts as 04 deploys them, tool tokens kept out of the loss, and a real update through both.
The verifier is the stand-in (NOT Lean): `omega` fails on an equation there, `rfl` proves it."""
import importlib.util

import pytest
import torch

from conftest import ROOT
import generation
import rl_objective
import rollouts
from lean_client import LeanClient

spec = importlib.util.spec_from_file_location("grpo", ROOT / "03_rl_grpo.py")
grpo = importlib.util.module_from_spec(spec)
spec.loader.exec_module(grpo)

HEADER = "import Mathlib\n\n"


def cfg(**kw):
    base = dict(run_name="t", prompts_per_step=2, group_size=2, max_new_tokens=64,
                mini_batch_prompts=2,
                micro_batch_size=8, lr=1e-2, require_tactic_blocks=False, max_steps=1, eval_every=0,
                save_every=0, lean_timeout=5, prompt_format="kimina")
    return grpo.Settings(**{**base, **kw})


class Traj:
    """A round with a reward (what trajectory_advantages reads and writes)."""
    def __init__(self, reward):
        self.reward, self.advantage = reward, None


# ---------------------------------------------------------------- advantages by hand

def test_trajectory_advantages_by_hand():
    # one statement, three trajectories: fixed in round 2; never; proved in round 1
    group = [[Traj(0), Traj(1)], [Traj(0), Traj(0), Traj(0)], [Traj(1)]]
    kept, zero = rl_objective.trajectory_advantages(group, 3, "trajectory")
    # trajectory credit: R = (1, 0, 1), mean 2/3; every round carries its trajectory's advantage
    assert [r.advantage for t in group
            for r in t] == pytest.approx([1 / 3] * 2 + [-2 / 3] * 3 + [1 / 3])
    assert len(kept) == 6 and zero == 0
    kept, _ = rl_objective.trajectory_advantages(group, 3, "round")
    # round credit: round 1 rewards (0, 0, 1) -> mean 1/3; round 2 (1, 0) -> 1/2; round 3 alone (0) -> 0
    assert [r.advantage for t in group
            for r in t] == pytest.approx([-1 / 3, 0.5, -1 / 3, -0.5, 0.0, 2 / 3])
    failed = [[Traj(0), Traj(0)], [Traj(0)]]
    kept, zero = rl_objective.trajectory_advantages(group + failed, 3, "trajectory")
    assert zero == 1 and len(kept) == 9           # a group of 3, then a group of 2, both failed:
                                                  # counted
    kept, zero = rl_objective.trajectory_advantages(group[:1] + failed, 3, "trajectory",
                                                    skip_zero_variance=True)
    assert zero == 0 and len(kept) == 5           # one group with a solved trajectory in it: kept
    kept, zero = rl_objective.trajectory_advantages(failed, 2, "trajectory",
                                                    skip_zero_variance=True)
    assert zero == 1 and kept == []
    with pytest.raises(ValueError, match="credit"):
        rl_objective.trajectory_advantages(group, 3, "rounds")


# ---------------------------------------------------------------- rollouts through 03

class Scripted:
    """The model in loop tests: answers from a function of the prompt text, real token ids."""
    def __init__(self, tok, answer):
        self.tok, self.answer, self.prompts = tok, answer, []

    def generate(self, prompts, seeds, max_new_tokens, temperature=1.0, top_p=1.0, stop=(),
                 greedy=False):
        out = []
        for p in prompts:
            p = p if isinstance(p, str) else self.tok.decode(p)
            self.prompts.append(p)
            text, finish = self.answer(p)
            ids = self.tok(text, add_special_tokens=False).input_ids
            out.append(generation.Generation(text, ids, [-0.5] * len(ids), finish))
        return out


@pytest.fixture(scope="module")
def tiny():
    import tempfile
    from pathlib import Path
    texts = ["<|im_start|>user\ntheorem t0 : 0 + 1 = 1 := by omega rfl <sketch> "
             "</sketch> <REPL> </REPL>"] * 30
    folder = generation.build_tiny_model(texts, Path(tempfile.mkdtemp()) / "tiny")
    return generation.load_tokenizer(str(folder)), generation.load_model(str(folder))


def rows(n):
    return [{"statement_id": f"toy/{i}", "source": "toy", "split": "train", "header": HEADER,
             "informal_problem": "",
             "formal_statement": f"theorem t{i} : {i} + 1 = {i + 1} := by"} for i in range(n)]


def answer(stmt, tactic):
    return f"<think>\nx\n</think>\n```lean4\n{HEADER}{stmt}\n  {tactic}\n```"


def test_repair_rollouts_feed_back_stop_at_the_fix_and_share_the_trajectory_advantage(tiny, standin):
    tok, _ = tiny
    items = [grpo.PromptItem(r) for r in rows(2)]

    def model(prompt):   # t0: omega, then rfl once Lean's diagnostics are shown; t1: omega forever
        stmt = next(r["formal_statement"] for r in rows(2) if r["formal_statement"] in prompt)
        fixed = "omega could not prove the goal" in prompt and stmt.startswith("theorem t0")
        return answer(stmt, "rfl" if fixed else "omega"), "eos"
    gen = Scripted(tok, model)
    c = cfg(rollout="repair", repair_depth=3)
    client = LeanClient(standin)
    out, timings = rollouts.agent_rollout_step(items, 1, gen, tok, client, c, None, [0, 1])
    # t0's two trajectories: round 1 fails, round 2 is the fix; t1's: three failed rounds each
    assert [(r.item.row["statement_id"], r.item.turn, r.status) for r in out] == \
        [("toy/0", 1, "lean_error"), ("toy/0", 2, "valid")] * 2 + \
        [("toy/1", 1, "lean_error"), ("toy/1", 2, "lean_error"), ("toy/1", 3, "lean_error")] * 2
    assert [r.trajectory for r in out] == [0, 0, 1, 1, 2, 2, 2, 3, 3, 3]
    second = out[1]
    assert second.item.prev_attempt == out[0].gen.text and "omega could not prove the goal" in second.item.feedback
    # round 2 of trajectory 0: trained on its prompt
    assert tok.decode(second.prompt_ids) == gen.prompts[4]
    assert out[0].gen.text in gen.prompts[4] and second.item.feedback in gen.prompts[4]
    assert [r.reward for r in out] == [0, 1, 0, 1, 0, 0, 0, 0, 0, 0]
    trajs = [[r for r in out if r.trajectory == k] for k in range(4)]
    kept, zero = rl_objective.trajectory_advantages(trajs, c.group_size)
    # each statement: all solved / none
    assert [r.advantage for r in out] == [0.0] * 10 and zero == 2
    trajs[3] = trajs[3][:1]                                         # ... unless a group differs
    trajs[3][0].reward = 1.0
    rl_objective.trajectory_advantages(trajs, c.group_size)
    assert [r.advantage for t in trajs for r in t] == [0, 0, 0, 0, -0.5, -0.5, -0.5, 0.5]
    assert timings["time_generate"] > 0 and timings["time_verify_wait"] > 0


def test_tool_rollouts_keep_the_repl_out_of_the_loss_and_update(tiny, standin):
    tok, model = tiny
    items = [grpo.PromptItem(r) for r in rows(1)]
    stmt = items[0].row["formal_statement"]

    def scripted(prompt):   # a sketch with omega; after the REPL's error, the answer with rfl
        if prompt.rstrip().endswith("</REPL>"):
            return answer(stmt, "rfl"), "eos"
        return f"<sketch>\nimport Mathlib\n{stmt}\n  omega\n</sketch>", "stop"
    gen = Scripted(tok, scripted)
    c = cfg(rollout="tool", group_size=2, prompts_per_step=1, mini_batch_prompts=1)
    out, _ = rollouts.agent_rollout_step(items, 1, gen, tok, LeanClient(standin), c, None, [0])
    assert [r.status for r in out] == ["valid", "valid"] and [r.reward for r in out] == [1.0, 1.0]
    r = out[0]
    assert len(r.loss_mask) == len(r.gen.token_ids) == len(r.gen.logprobs)
    tool = tok.decode([t for t, k in zip(r.gen.token_ids, r.loss_mask) if k == 0])
    assert tool.startswith("\n<REPL>\n") and tool.endswith("</REPL>") and "omega could not prove" in tool
    assert "<REPL>" not in tok.decode([t for t, k in zip(r.gen.token_ids, r.loss_mask) if k == 1])
    # tokens the model wrote
    assert r.n_tokens == sum(r.loss_mask) < len(r.loss_mask)
    assert r.gen.text.count("\n<REPL>\n") == 1
    # an update: the REPL's tokens get no gradient and do not enter the ratio (rl_objective,
    # tests/test_tool_token_mask.py); here, that update() passes the mask through
    r.reward, out[1].reward = 1.0, 0.0
    rl_objective.group_advantages(out, c)
    seen = []
    real = grpo.sequence_logprobs

    def spy(m, batch, *a):
        seen.extend(batch)
        return real(m, batch, *a)
    grpo.sequence_logprobs = spy
    try:
        stats = grpo.update(model, None, torch.optim.SGD(model.parameters(), lr=0.0), out, c, 1,
                            "cpu")
    finally:
        grpo.sequence_logprobs = real
    assert [len(b) for b in seen] == [3, 3] and seen[0][2] == r.loss_mask
    assert stats["updates"] == 1


@pytest.mark.parametrize("mode", ["repair", "tool"])
def test_training_runs_with_agentic_rollouts(mode, tmp_path, tiny, standin, monkeypatch):
    """The whole loop with --rollout repair | tool on toy data (stage 01) and a tiny model."""
    import json
    import os
    import subprocess
    import sys
    import common
    monkeypatch.setattr(common, "RUNS_ROOT", tmp_path / "runs")
    monkeypatch.setenv("LEAN_SERVER_API_URL", standin)
    subprocess.run([sys.executable, str(ROOT / "01_prepare_data.py"), "--task", "toy", "--run_name",
                    "t",
                    "--toy_n_statements", "100"], check=True, capture_output=True,
                   env={**os.environ, "PROVER_RUNS_DIR": str(tmp_path / "runs")})
    model_dir = tmp_path / "model"
    tiny[1].save_pretrained(model_dir)
    tiny[0].save_pretrained(model_dir)
    grpo.train(cfg(model=str(model_dir), rollout=mode, repair_depth=2, max_new_tokens=16,
                   max_steps=2))
    out = tmp_path / "runs/t/03_grpo"
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2]
    assert all("pass_rate_trajectory" in r and "pass_rate_turn1" in r for r in rows)
    import pandas as pd
    ro = pd.read_parquet(out / "rollouts/step_000001.parquet")
    if mode == "repair":   # a random model proves nothing: every trajectory runs both rounds
        assert sorted(ro.turn.unique()) == [1, 2] and rows[0]["rounds_per_trajectory"] == 2.0
        assert (ro[ro.turn == 2].prompt.str.len() > 0).all()
    else:
        assert set(ro.turn) == {1} and rows[0]["rounds_per_trajectory"] == 1.0
    saved = json.loads((out / "config.json").read_text())
    assert saved["rollout"] == mode
    # GSPO where OProver uses it
    assert saved["ratio_level"] == {"repair": "sequence", "tool": "token"}[mode]
    assert (out / "final/model").exists()


# ---------------------------------------------------------------- the toy's tool traces (01 --prompt_format stepfun)

def test_toy_tool_traces_are_what_the_live_tool_loop_produces(tiny, standin):
    """An SFT trace of the toy (toy_task.toy_tool_trace) replayed through the tool loop that 03
    and 04 run, against the live stand-in server: a model that writes the trace's own words gets
    back, from the REPL, exactly the answers the trace holds, so the trace trained on is the trace
    deployed; its final proof verifies. The stand-in is NOT Lean."""
    import re
    import agent_loops
    import formats
    from toy_task import TOY_HEADER, Checker, toy_tool_trace
    tok, _ = tiny
    stmt = "theorem toy_00007 : 6 ∣ 42 := by"
    trace = toy_tool_trace(stmt, ["omega", "rfl", "norm_num"])
    written = re.split(r"\n<REPL>\n.*?\n</REPL>", trace, flags=re.S)   # the model's parts
    assert len(written) == 4 and all(w.endswith("</sketch>") for w in written[:3])
    said = iter(written)
    gen = Scripted(tok,
                   lambda prompt: (w := next(said), "stop" if w.endswith("</sketch>") else "eos"))
    client = LeanClient(standin)
    out = agent_loops.tool_rollouts(gen, tok, client, ["<|im_start|>user\nx<|im_end|>\n"], [0],
                                    max_new_tokens=512, budget=100_000)[0]
    assert out.text == trace and out.checks == 3 and out.finish == "eos"
    # the goal shown, as Lean would
    assert trace.count('"severity": "error"') == 2 and "⊢ 6 ∣ 42" in trace
    proof = formats.extract_proof(trace, stmt)
    assert proof == "\n  norm_num"
    assert client.verify([{"id": "x", "code": TOY_HEADER + stmt + proof}])[0].ok
    with pytest.raises(ValueError, match="passing sketch"):
        toy_tool_trace(stmt, ["omega", "rfl"])
    # a sketch whose tactic fails reports the error where the sketch has it (line 2, the tactic)
    assert Checker(f"{stmt}\n  omega",
                   "snippet").run()["messages"][0]["pos"] == {"line": 2, "column": 2}
