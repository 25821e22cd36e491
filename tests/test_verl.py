"""The verl path against real verl 0.9.1 code on CPU (slow): builds .venv-verl (setup_verl.sh), then
runs tests/verl_checks.py there: verl's dataset classes on our export (03's prompt ids), our reward
through verl's reward loop against the stand-in, verl's config validation of the recipe's
overrides, and core_algos against rl_objective."""
import os
import subprocess
import sys

import pytest

from conftest import ROOT
import common
import formats
import generation


@pytest.mark.slow
def test_real_verl_code_accepts_our_export_reward_config_and_loss(tmp_path, standin):
    setup = subprocess.run(["bash", str(ROOT / "setup_verl.sh")], capture_output=True, text=True,
                           timeout=1800)
    # pip prints a warning per package for this machine's empty extra indexes; keep the rest
    said = [ln for ln in (setup.stdout + setup.stderr).splitlines()
            if "is ignored: it is neither" not in ln]
    assert setup.returncode == 0, "setup_verl.sh failed:\n" + "\n".join(said[-60:])
    env = {**os.environ, "PROVER_RUNS_DIR": str(tmp_path / "runs"), "LEAN_SERVER_API_URL": standin}
    subprocess.run([sys.executable, str(ROOT / "01_prepare_data.py"), "--task", "toy", "--run_name",
                    "v",
                    "--toy_n_statements", "200"], check=True, capture_output=True, env=env)
    subprocess.run([sys.executable, str(ROOT / "recipes/verl/export_verl.py"), "--run_name", "v",
                    "--out",
                    str(tmp_path / "export")], check=True, capture_output=True, env=env)
    rl = tmp_path / "runs/v/01_data/rl_prompts.parquet"
    rows = common.read_rows(rl, "statements")
    tiny = generation.build_tiny_model([formats.render_prompt_text(r) for r in rows],
                                       tmp_path / "tiny")
    proc = subprocess.run([str(ROOT / ".venv-verl/bin/python"), str(ROOT / "tests/verl_checks.py"),
                           str(tmp_path / "export"), str(rl), str(tiny)], capture_output=True,
                          text=True,
                          env=env, timeout=900)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    for line in ("losses: ", "config: ", "dataset: ", "reward: ", "verl checks: all passed"):
        assert line in proc.stdout, line
