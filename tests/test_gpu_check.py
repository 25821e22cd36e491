"""recipes/gpu_check.sh's CPU dry run (CPU=1, slow): the same script a GPU machine runs, at toy
sizes on the CPU, must run every part and write a summary whose figures it measured."""
import json
import os
import subprocess

import pytest

from conftest import ROOT


@pytest.mark.slow
def test_gpu_check_cpu_dry_run_writes_every_figure(tmp_path):
    out = tmp_path / "gpu_check"
    env = {**os.environ, "CPU": "1", "OUT": str(out)}
    env.pop("LEAN_SERVER_API_URL", None)
    proc = subprocess.run(["bash", str(ROOT / "recipes/gpu_check.sh")], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, (proc.stdout[-3000:], proc.stderr[-3000:])
    summary = json.loads((out / "summary.json").read_text())
    assert summary["return_codes"] == {"tests_rc": 0, "pipeline_rc": 0, "throughput_rc": 0}
    assert "passed" in summary["tests"] and "failed" not in summary["tests"]
    assert summary["pipeline"]["rl_steps"] == 3 and summary["pipeline"]["rl_loss_finite"]
    assert summary["pipeline"]["pass@1_sft"] is not None
    t = summary["throughput"]
    assert not t["errors"], t["errors"]
    for part in ("sft", "trl_sft", "update", "generate"):
        assert t[part]["tokens_per_s"] > 0, part
    assert t["matmul_tflops_bf16"] > 0 and t["sft_ours_over_trl"] > 0
    md = (out / "summary.md").read_text()
    assert "CPU=1 bash recipes/gpu_check.sh" in md and "CPU dry run" in md
    assert f"{t['sft']['tokens_per_s']:,}" in md          # the figure in the table is measured
    assert not (ROOT / "results/gpu_check").exists() or \
        "CPU dry run" not in (ROOT / "results/gpu_check/summary.md").read_text()
