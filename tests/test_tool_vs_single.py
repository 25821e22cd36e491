"""recipes/tool_vs_single.py (issue #17's comparison at equal generated tokens) on run folders
laid out as 03 and 04 write them: the token totals come from the rollout files, pass@1 and the
paired change from the samples, and evaluations on different problems are refused."""
import importlib.util
import json

import pytest

from conftest import ROOT
import common

spec = importlib.util.spec_from_file_location("tool_vs_single",
                                              ROOT / "recipes" / "tool_vs_single.py")
tvs = importlib.util.module_from_spec(spec)
spec.loader.exec_module(tvs)


def write_rl(run, tokens_per_step):
    (run / "03_grpo/rollouts").mkdir(parents=True)
    metrics = []
    for step, toks in enumerate(tokens_per_step, 1):
        rows = [{"step": step, "prompt_id": "toy/0", "turn": 1, "prompt": "p", "completion": "c",
                 "status": "valid",
                 "format_errors": "", "reward": 1.0, "advantage": 0.0, "n_tokens": t,
                 "finish": "eos"} for t in toks]
        common.write_parquet(rows, run / f"03_grpo/rollouts/step_{step:06d}.parquet", "rollouts")
        metrics.append({"step": step, "pass_rate": 0.5})
    (run / "03_grpo/metrics.jsonl").write_text("".join(json.dumps(m) + "\n" for m in metrics))


def write_eval(run, tag, mode, ok_by_problem):
    folder = run / "04_eval" / tag / "toy" / mode / "n2"
    folder.mkdir(parents=True)
    rows = [{"statement_id": pid, "benchmark": "toy", "mode": mode, "sample_idx": j, "round": 1,
             "prompt": "p",
             "completion": "x\n<REPL>\n{}\n</REPL>\ny" if mode == "tool" else "x", "lean_code": "",
             "status": "valid",
             "ok": ok, "feedback": "", "n_tokens": 10} for pid, oks in ok_by_problem.items()
            for j, ok in enumerate(oks)]
    common.write_parquet(rows, folder / "samples.parquet", "samples")


def test_equal_token_table(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(common, "RUNS_ROOT", tmp_path / "runs")
    monkeypatch.setattr(common, "RESULTS_ROOT", tmp_path / "results")
    single, tool = tmp_path / "runs/s", tmp_path / "runs/t"
    write_rl(single, [[10, 20], [30, 40]])          # 100 tokens in 2 steps
    write_rl(tool, [[50, 45]])                       # 95 tokens in 1 step
    (single / "03_grpo/rollouts/step_000003.parquet").write_bytes(
        # a crashed step, redone: not counted
        (single / "03_grpo/rollouts/step_000002.parquet").read_bytes())
    probs = ["a", "b", "c", "d"]
    write_eval(single, "sft", "single", {p: [False, False] for p in probs})
    write_eval(single, "grpo", "single",
               {"a": [True, False], "b": [False, False], "c": [False, False], "d": [False, False]})
    write_eval(tool, "sft", "tool", {p: [True, False] for p in probs})
    write_eval(tool, "grpo", "tool", {p: [True, True] for p in probs})
    (tool / "04_eval/grpo/config.json").write_text(json.dumps({"tool_max_checks": 2,
                                                               "tool_budget": 1024}))
    tvs.main(["--single_run", "s", "--budget"])
    assert capsys.readouterr().out.strip() == "100"
    tvs.main(["--single_run", "s", "--tool_run", "t"])
    out = json.loads((tmp_path / "results/t/tool_vs_single.json").read_text())
    rows = {r["name"]: r for r in out["rows"]}
    assert (rows["single-turn RL"]["rl_steps"], rows["single-turn RL"]["rl_tokens"]) == (2, 100)
    assert (rows["tool RL"]["rl_steps"], rows["tool RL"]["rl_tokens"]) == (1, 95)
    assert rows["single-turn RL"]["pass@1"]["pass"] == pytest.approx(1 / 8)
    assert rows["tool RL"]["pass@1"]["pass"] == 1.0 and rows["tool RL"]["checks"] == 1.0
    change = out["changes"]["tool RL - single-turn RL"]
    assert change[0] == pytest.approx(87.5) and change[1] <= 87.5 <= change[2]
    assert out["changes"]["tool SFT - single-turn SFT"][0] == pytest.approx(50.0)
    assert (tmp_path / "results/t/tool_vs_single.png").stat().st_size > 5000
    assert "within 2 REPL checks and 1,024 context tokens" in (tmp_path / "results/t/tool_vs_single.md").read_text()
    write_eval(tool, "grpo2", "tool", {"a": [True, True]})
    import shutil
    shutil.rmtree(tool / "04_eval/grpo")
    (tool / "04_eval/grpo2").rename(tool / "04_eval/grpo")
    with pytest.raises(SystemExit, match="different problems"):
        tvs.main(["--single_run", "s", "--tool_run", "t"])
