"""The README's first command (smoke.sh), end to end, with small step counts (slow)."""
import json
import os
import subprocess

import pytest

from conftest import ROOT


@pytest.mark.slow
def test_smoke_script_runs_every_stage(tmp_path):
    res = tmp_path / "results/pipetest"   # never the checkout's results/
    env = {**os.environ, "PROVER_RUNS_DIR": str(tmp_path / "runs"), "RUN": "pipetest",
           "SFT_STEPS": "60",
           "RL_STEPS": "3", "EVAL_PROBLEMS": "6", "RESULTS_DIR": str(tmp_path / "results")}
    env.pop("LEAN_SERVER_API_URL", None)
    proc = subprocess.run(["bash", str(ROOT / "smoke.sh")], env=env, capture_output=True, text=True,
                          timeout=1800)
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = tmp_path / "runs/pipetest"
    for stage in ("01_data", "02_sft", "03_grpo"):
        assert (run / stage / "manifest.json").exists(), stage
    assert len((run / "03_grpo/metrics.jsonl").read_text().splitlines()) == 3
    assert not (ROOT / "results/pipetest").exists()
    summary = (res / "summary.md").read_text()
    assert "NOT Lean" in summary and "## 03 GRPO" in summary
    assert (res / "pass_at_k_before_after_rl.png").stat().st_size > 5000
    assert list(res.glob("sft/toy_single_n8-t*.md")) and list(res.glob("grpo/toy_single_n8-t*.md"))
    crit = json.loads((res / "criteria.json").read_text())   # issue #16's criteria, per class
    assert set(crit["classes"]) == {"decide", "norm_num", "omega",
                                    "rfl"} and "Issue #16's criteria" in summary
    assert json.loads((run / "03_grpo/config.json").read_text())["kl_coef"] == 0.05
    # the sweep's way in (recipes/smoke_sweep.sh): another seed from the same SFT model,
    # 03 flags appended, results under another folder
    out = tmp_path / "sweep"
    proc = subprocess.run(["bash", str(ROOT / "smoke.sh")], capture_output=True, text=True,
                          timeout=1800,
                          env={**env, "SFT_FROM": "pipetest", "RUN": "pipetest_s1", "SEED": "1",
                               "RL_STEPS": "2",
                               "RL_EXTRA": "--kl_coef 0", "RESULTS_DIR": str(out)})
    assert proc.returncode == 0, proc.stderr[-3000:]
    other = tmp_path / "runs/pipetest_s1"
    assert (other / "02_sft").resolve() == (run / "02_sft").resolve()
    cfg = json.loads((other / "03_grpo/config.json").read_text())
    assert (cfg["seed"], cfg["kl_coef"], cfg["max_steps"]) == (1, 0.0, 2)
    assert (out / "pipetest_s1/criteria.json").exists() and not (ROOT / "results/pipetest_s1").exists()
