"""The TRL lane (issue #35): recipes/trl/lean_reward.py scores completions exactly as 03 does,
in TRL's reward signature; a dead server costs zeros; and real TRL GRPOTrainer steps run with it
on CPU with a tiny model and the stand-in (slow; `pytest -m slow -k trl`)."""
import importlib.util
import json
import os
import subprocess
import sys

import pytest

from conftest import HEADER, ROOT
import common
import generation
from lean_client import LeanClient

sys.path.insert(0, str(ROOT / "recipes" / "trl"))
import lean_reward  # noqa: E402

spec = importlib.util.spec_from_file_location("grpo_trl", ROOT / "03_rl_grpo.py")
grpo = importlib.util.module_from_spec(spec)
spec.loader.exec_module(grpo)


def rows(n):
    rels = ["=", "≠", "<", "∣"]
    props = {"=": "{a} + 1 = {b}", "≠": "{a} ≠ {c}", "<": "{a} < {b}", "∣": "1 ∣ {a}"}
    out = []
    for i in range(n):
        prop = props[rels[i % 4]].format(a=i + 2, b=i + 3, c=i + 9)
        out.append({"statement_id": f"toy/{i}", "source": "toy", "split": "train", "header": HEADER,
                    "informal_problem": "", "formal_statement": f"theorem t{i} : {prop} := by"})
    return out


RIGHT = {"=": "rfl", "≠": "decide", "<": "omega", "∣": "norm_num"}


def completions(row):
    """One of each kind 03 must tell apart: right, wrong tactic, changed statement, no think
    block, no lean4 block, sorry, a forbidden axiom, two lean4 blocks."""
    stmt, rel = row["formal_statement"], next(r for r in RIGHT
                                              if f" {r} " in row["formal_statement"])
    good = f"<think>\nplan\n</think>\n```lean4\n{HEADER}{stmt}\n  {RIGHT[rel]}\n```"
    other = "omega" if RIGHT[rel] != "omega" else "rfl"
    return [good,
            good.replace(f"  {RIGHT[rel]}\n", f"  {other}\n"),
            good.replace(stmt, stmt.replace(":= by", "∧ True := by")),
            good.replace("<think>\nplan\n</think>\n", ""),
            "<think>\nplan\n</think>\nno code",
            good.replace(f"  {RIGHT[rel]}\n", "  sorry\n"),
            good.replace(f"{HEADER}{stmt}", f"{HEADER}axiom cheat : False\n{stmt}"),
            good + f"\n```lean4\n{stmt}\n  rfl\n```"]


def test_reward_equals_03_score_on_the_same_completions(standin):
    data = rows(8)
    prompts, texts, cols = [], [], {c: [] for c in lean_reward.ROW_COLUMNS}
    for r in data:
        for text in completions(r):
            prompts.append([{"role": "user", "content": "p"}])
            texts.append([{"role": "assistant", "content": text}])   # TRL's conversational shape
            for c in cols:
                cols[c].append(r.get(c, ""))
    logged = {}
    reward = lean_reward.LeanReward(LeanClient(standin), require_tactic_blocks=False)
    got = reward(prompts, texts, completion_ids=[[0] * 5] * len(texts),
                 log_metric=lambda k, v: logged.__setitem__(k, v), trainer_state=None, **cols)
    # 03's own scoring of the same texts
    cfg = grpo.Settings(require_tactic_blocks=False, prompt_format="kimina")
    expected = [grpo.Rollout(grpo.PromptItem({c: cols[c][i] for c in cols}), [],
                             generation.Generation(t[0]["content"], [], [], "eos"))
                for i, t in enumerate(texts)]
    grpo.score(expected, LeanClient(standin), cfg)
    assert got == [r.reward for r in expected]
    assert [p["status"] for p in reward.parts] == [r.status for r in expected]
    assert [p["format_errors"] for p in reward.parts] == [r.format_errors for r in expected]
    # the kinds differ as they should: only the right answer in the right format scores 1
    per_row = [got[k:k + 8] for k in range(0, len(got), 8)]
    assert all(r == [1.0] + [0.0] * 7 for r in per_row), per_row
    assert logged["lean/proof_rate"] == sum(p["proof"] for p in reward.parts) / len(got)
    assert any(k.startswith("format/") for k in logged)
    # TRL's plain-text shape scores the same
    assert reward(prompts[:8], [t[0]["content"] for t in texts[:8]],
                  **{c: v[:8] for c, v in cols.items()}) == got[:8]


def test_a_dead_server_costs_zeros_not_an_exception(make_standin):
    url, proc = make_standin(workers=2)
    reward = lean_reward.LeanReward(LeanClient(url, max_retries=1, backoff=0.01),
                                    require_tactic_blocks=False)
    r = rows(4)
    texts = [completions(x)[0] for x in r]
    cols = {c: [x.get(c, "") for x in r] for c in lean_reward.ROW_COLUMNS}
    assert reward(["p"] * 4, texts, **cols) == [1.0] * 4
    proc.stop()
    assert reward(["p"] * 4, texts, **cols) == [0.0] * 4
    assert {p["status"] for p in reward.parts} == {"server_error"}
    with pytest.raises(ValueError, match="formal_statement"):   # bad input names the column
        reward(["p"], ["x"], statement_id=["a"])


def test_export_is_conversational_with_the_reward_columns(tmp_path):
    data = rows(6)
    data[1]["split"] = "valid"
    data[2]["weight"] = 3
    path = common.write_parquet(data, tmp_path / "rl_prompts.parquet", "statements")
    ds = lean_reward.export_prompts(path)
    assert len(ds) == 5 - 1 + 3                   # the held-out row out, the weight as copies
    first = ds[0]
    assert [m["role"] for m in first["prompt"]] == ["system", "user"]
    assert first["formal_statement"] in first["prompt"][-1]["content"]
    assert set(lean_reward.ROW_COLUMNS) <= set(ds.column_names)


@pytest.mark.slow
def test_trl_grpo_trainer_steps_with_our_reward(tmp_path, make_standin):
    """Real GRPOTrainer steps on CPU through recipes/trl/grpo_kimina.py: a tiny model that 02
    taught the right answers to two toy prompts, the stand-in verifier; the server dies after
    step 2, and training goes on with zero rewards (server errors), not an exception."""
    pytest.importorskip("trl")
    import toy_task
    runs = tmp_path / "runs"
    env = {**os.environ, "PROVER_RUNS_DIR": str(runs)}
    subprocess.run([sys.executable, str(ROOT / "01_prepare_data.py"), "--task", "toy",
                    "--run_name", "t", "--toy_n_statements", "200"], check=True,
                   capture_output=True, env=env)
    prompts = common.read_rows(runs / "t/01_data/rl_prompts.parquet", "statements")[:2]
    right = {rel: tac for tac, rels in toy_task.TACTIC_RULES.items() for rel in rels}
    sft = [{**r, "formal_proof": "", "prev_attempt": None, "lean_feedback": None,
            "completion": "<think>\nOne tactic should close this closed ℕ goal.\n</think>\n"
                          f"```lean4\n{r['header']}{r['formal_statement']}\n"
                          f"  {right[toy_task.relation_of(r['formal_statement'])]}\n```"}
           for r in prompts] * 16
    common.write_parquet(sft, tmp_path / "sft.parquet", "sft")
    subprocess.run([sys.executable, str(ROOT / "02_sft.py"), "--run_name", "t", "--preset", "tiny",
                    "--data", str(tmp_path / "sft.parquet"), "--prompt_format", "kimina",
                    "--max_steps", "150", "--lr", "3e-3", "--warmup_steps", "10",
                    "--eval_every", "0", "--save_every", "0"], check=True, capture_output=True,
                   env=env)
    data = common.write_parquet(prompts, tmp_path / "two.parquet", "statements")
    url, proc = make_standin(workers=2)
    common.RUNS_ROOT = runs
    spec = importlib.util.spec_from_file_location("grpo_kimina",
                                                  ROOT / "recipes/trl/grpo_kimina.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    from transformers import TrainerCallback

    class KillServer(TrainerCallback):
        def on_step_end(self, args, state, control, **kw):
            if state.global_step == 2:
                proc.stop()

    os.environ["LEAN_SERVER_API_URL"] = url
    try:
        trainer = module.main(["--run_name", "t", "--model", str(runs / "t/02_sft/final/model"),
                               "--data", str(data), "--cpu", "--max_steps", "4",
                               "--prompts_per_step", "2", "--group_size", "4",
                               "--mini_batch_prompts", "2", "--micro_batch", "4",
                               "--max_completion_length", "96", "--require_tactic_blocks",
                               "false", "--lean_timeout", "5"], callbacks=[KillServer()])
    finally:
        os.environ.pop("LEAN_SERVER_API_URL", None)
    logs = [x for x in trainer.state.log_history if "reward" in x]
    assert trainer.state.global_step == 4 and len(logs) == 4
    before, after = logs[:2], logs[2:]
    assert all(x["lean/proof_rate"] > 0 and x["reward"] > 0 for x in before), before
    assert all(x["reward"] == 0.0 and x.get("lean/server_error", 0) > 0 for x in after), after
    saved = json.loads((runs / "t/03_trl_grpo/final/model/config.json").read_text())
    assert saved["model_type"] == "qwen3"
