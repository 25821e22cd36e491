"""05_iterate.py (issue #17): the iteration loop through the real stage scripts as subprocesses,
on toy data with a tiny model and the stand-in (NOT Lean): folders, the versioned decontaminated
memory, a crash in the RL stage resumed at that stage, the per-iteration table."""
import importlib.util
import json
import os
import subprocess
import sys

import pytest

from conftest import ROOT
import common
import eval_tables
import generation

spec = importlib.util.spec_from_file_location("iterate", ROOT / "05_iterate.py")
iterate = importlib.util.module_from_spec(spec)
spec.loader.exec_module(iterate)


def test_paired_change_by_hand():
    now = {"a": [True, True], "b": [False, False], "c": [True, False]}
    before = {"a": [False, False], "b": [False, False], "c": [True, False], "d": [True, True]}
    mean, lo, hi = eval_tables.paired_pass1_change(now, before, n_boot=500)
    assert mean == pytest.approx(100 / 3)          # +100 on a, 0 on b and c; d is not in both
    assert 0 <= lo <= mean <= hi <= 100


def test_sft_rows_are_distinct_rounds():
    row = {"statement_id": "toy/1", "completion": "A", "prev_attempt": None, "lean_feedback": None}
    rows = [row, dict(row), {**row, "completion": "B"},
            {**row, "prev_attempt": "x", "lean_feedback": "err"},
            {**row, "prev_attempt": "x", "lean_feedback": "other err"},
            {**row, "statement_id": "toy/2"}]
    # four trajectories verifying the same first-round answer count once; a fix after different
    # feedback, another answer or another statement is another row
    assert iterate.distinct(rows) == [rows[0]] + rows[2:]


@pytest.mark.slow
def test_two_iterations_resume_after_a_crash_in_rl(tmp_path, standin, monkeypatch):
    runs = tmp_path / "runs"
    monkeypatch.setattr(common, "RUNS_ROOT", runs)
    monkeypatch.setattr(common, "PROJECT_ROOT", tmp_path)
    monkeypatch.setattr(common, "RESULTS_ROOT", tmp_path / "results")
    monkeypatch.setenv("LEAN_SERVER_API_URL", standin)
    monkeypatch.setenv("PROVER_RUNS_DIR", str(runs))
    monkeypatch.setenv("PROVER_RESULTS_DIR", str(tmp_path / "results"))
    subprocess.run([sys.executable, str(ROOT / "01_prepare_data.py"), "--task", "toy", "--run_name",
                    "it",
                    "--toy_n_statements", "120"], check=True, capture_output=True,
                   env={**os.environ})
    model = generation.build_tiny_model(["<|im_start|>user\ntheorem "
                                         "toy : 1 = 1 := by rfl omega"] * 20,
                                        tmp_path / "tiny")
    # memory v0: one proof of a held-out statement (must be dropped) and one of a bank statement
    held_out = common.read_rows(runs / "it/01_data/eval_toy.parquet", "statements")[0]
    bank_row = common.read_rows(runs / "it/01_data/rl_prompts.parquet", "statements")[0]
    seed = tmp_path / "seed.jsonl"
    seed.write_text("".join(json.dumps({"statement_id": r["statement_id"],
                                        "formal_statement": r["formal_statement"],
                                        "proof": "\n  decide", "header": r["header"]}) + "\n"
                            for r in (held_out, bank_row)))
    args = ["--run_name", "it", "--model", model, "--memory", seed, "--iterations", 2,
            "--bank_max_problems", 4,
            "--eval_max_problems", 4, "--width", 2, "--repair_depth", 2, "--retrieve_k", 1,
            "--max_new_tokens", 12,
            "--prompt_format", "kimina", "--sft_steps", 1, "--rl_steps", 1, "--prompts_per_step", 2,
            "--mini_batch_prompts", 2, "--group_size", 2, "--rl_lr", 1e-3]
    args = [str(a) for a in args]
    crash = ["--rl_extra", "--resume /no/such/checkpoint"]   # a valid key that fails at run time
    # a crash in iteration 1's RL stage
    with pytest.raises(SystemExit, match="03_rl_grpo.py failed"):
        iterate.iterate(common.parse_settings(iterate.Settings, args + crash))
    top = runs / "it" / "05_iterate"
    it1 = top / "it_it01"
    prove_log = it1 / "04_eval/prove/bank/repair/w2-d2-k1-t12/samples.jsonl"
    assert prove_log.exists() and (it1 / "04_eval/prove/manifest.json").exists()
    v0 = common.read_rows(top / "memory_v0.parquet", "proof_bank")
    assert [r["statement_id"] for r in v0] == [bank_row["statement_id"]]        # decontaminated
    stamp = prove_log.stat().st_mtime_ns, (top / "memory_v1.parquet").stat().st_mtime_ns
    assert not (it1 / "03_grpo/manifest.json").exists() and not (it1 / "manifest.json").exists()

    iterate.iterate(common.parse_settings(iterate.Settings, args))              # resumes at RL
    assert (prove_log.stat().st_mtime_ns, (top / "memory_v1.parquet").stat().st_mtime_ns) == stamp
    for k in (1, 2):
        d = top / f"it_it{k:02d}"
        assert (d / "manifest.json").exists() and (d / "03_grpo/final/model").exists()
        cfg3 = json.loads((d / "03_grpo/config.json").read_text())
        assert cfg3["rollout"] == "repair" and cfg3["ratio_level"] == "sequence"
        assert cfg3["memory"].endswith(f"memory_v{k}.parquet")
        assert json.loads((d / "04_eval/eval/config.json").read_text())["model"] == str(d / "03_grpo/final/model")
    # iteration 2 starts from iteration 1's model
    assert json.loads((top / "it_it02/04_eval/prove/config.json").read_text())["model"] == \
        str(it1 / "03_grpo/final/model")
    recs = [json.loads(line) for line in (top / "iterations.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in recs] == [1, 2]
    assert all(r["bank_solved"] + r["bank_unsolved"] == 4 and "pass@1" in r and "pass@2" in r
               for r in recs)
    table = (tmp_path / "results/it/iterations.md").read_text()
    assert "| 1 |" in table and "| 2 |" in table and "NOT Lean" in table
    # every held-out trajectory starts with a round-1 attempt, counted by how it ended
    for key in ("start_verdicts", "eval_verdicts"):
        assert sum(v for k, v in recs[0][key].items() if k.startswith("round 1 ")) == 4 * 2
    assert "| start |" in table and "round 1 " in table
    assert (tmp_path / "results/it/iterations.png").exists() and (top / "manifest.json").exists()
    # the stages' own tables sit beside it, under results/it/05_iterate/<iteration>/<tag>/
    assert list((tmp_path / "results/it/05_iterate/it_it02/eval").glob("*.md"))


# ---------------------------------------------------------------- 05 builds every stage's settings

def calls(**over):
    cfg = iterate.Settings(**{"run_name": "it", "prompt_format": "kimina", **over})
    return iterate.StageCalls(cfg, "kimina")


def test_a_misspelled_stage_key_stops_before_anything_runs(tmp_path, monkeypatch):
    monkeypatch.setattr(common, "RUNS_ROOT", tmp_path / "runs")
    for extra, stage, key in (("rl_extra", "03_rl_grpo.py", "--kl_coeff"),
                              ("sft_extra", "02_sft.py", "--learning_rate"),
                              ("eval_extra", "04_eval.py", "--n_sample")):
        cfg = iterate.Settings(run_name="it", **{extra: f"{key} 0.05"})
        with pytest.raises(SystemExit, match=f"{stage}: unknown setting {key}"):
            iterate.iterate(cfg)
        assert not (tmp_path / "runs").exists()   # nothing started, nothing written
    with pytest.raises(SystemExit, match="03_rl_grpo.py: .*--loss_agg must be one of"):
        calls(rl_extra="--loss_agg token_sum").check_all()
    with pytest.raises(SystemExit, match="04_eval.py: .*--top_p"):
        calls(eval_extra="--top_p high").check_all()


def test_stage_command_lines_come_from_typed_settings():
    c = calls(rl_extra="--kl_coef 0.05 --require_tactic_blocks false", width=4, repair_depth=2)
    rl = c.rl("it_it01", "m", "u.parquet", "mem.parquet", n_problems=3)
    assert (rl.kl_coef, rl.require_tactic_blocks, rl.prompts_per_step, rl.mini_batch_prompts) == \
        (0.05, False, 3, 3)                      # fewer problems than a step: one mini-batch of all
    assert rl.top_p == 1.0 and rl.error_correction is False and rl.ratio_level == "sequence"
    ev = c.evaluate("it_it01", "m", "eval", "e.parquet", "mem.parquet")
    assert (ev.mode, ev.repair_width, ev.repair_depth, ev.top_p) == ("repair", 4, 2, 0.95)
    # the helper's argv rebuilds exactly these settings in the stage's own parser
    for script, built in (("03_rl_grpo.py", rl), ("04_eval.py", ev)):
        argv = common.settings_argv(built)
        assert common.parse_settings(c.classes[script], argv) == built
        assert "--seed" not in argv              # a default is not repeated on the command line


def stage_processes(marker: str) -> list[int]:
    """Pids of the processes whose command line holds `marker`."""
    pids = []
    for proc in os.listdir("/proc"):
        if proc.isdigit():
            try:
                cmd = open(f"/proc/{proc}/cmdline", "rb").read().replace(b"\0", b" ").decode()
            except OSError:
                continue
            if marker in cmd and "05_iterate.py" not in cmd:
                pids.append(int(proc))
    return pids


@pytest.mark.slow
def test_killing_05_stops_its_running_stage(tmp_path, standin):
    """Issue #34: killing 05 left its child stage running, and the natural rerun raced it."""
    import signal
    import time
    runs = tmp_path / "runs"
    env = {**os.environ, "PROVER_RUNS_DIR": str(runs), "LEAN_SERVER_API_URL": standin,
           "PROVER_RESULTS_DIR": str(tmp_path / "results")}
    subprocess.run([sys.executable, str(ROOT / "01_prepare_data.py"), "--task", "toy",
                    "--run_name", "kk", "--toy_n_statements", "400"], check=True,
                   capture_output=True, env=env)
    model = generation.build_tiny_model(["<|im_start|>user\ntheorem toy : 1 = 1 := by rfl"] * 20,
                                        tmp_path / "tiny")
    marker = str(model)   # every stage 05 starts names the model
    proc = subprocess.Popen([sys.executable, str(ROOT / "05_iterate.py"), "--run_name", "kk",
                             "--model", str(model), "--prompt_format", "kimina", "--width", "8",
                             "--max_new_tokens", "64", "--retrieve_k", "0"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while not stage_processes(marker) and time.monotonic() < deadline:
        time.sleep(0.1)
    children = stage_processes(marker)
    assert children, "05 started no stage"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    deadline = time.monotonic() + 20
    while stage_processes(marker) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not stage_processes(marker), "the stage outlived 05"
