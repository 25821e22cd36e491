"""The paper-table recipes, each run as a user would (CPU=1: the toy task, a tiny model, the
stand-in server), must write their table and plot (slow)."""
import os
import shutil
import subprocess

import pytest

from conftest import ROOT


@pytest.mark.slow
def test_paper_table_recipes_cpu_variants(tmp_path):
    env = {**os.environ, "CPU": "1", "PROVER_RUNS_DIR": str(tmp_path / "runs"), "RUN": "paper_test", "SFT_STEPS": "200"}
    env.pop("LEAN_SERVER_API_URL", None)
    res = ROOT / "results/paper_test"
    try:
        for script, tables in (("kimina_minif2f_pass32.sh", ["kimina_row"]),
                               ("deepseek_v2_table.sh", ["deepseek_v2_table"]),
                               ("stepfun_table2.sh", ["stepfun_table2_length", "stepfun_table2_interactions"]),
                               ("oprover_budget.sh", ["oprover_budget"])):
            proc = subprocess.run(["bash", str(ROOT / "recipes" / script)], env=env, capture_output=True, text=True,
                                  timeout=1500, cwd=ROOT)
            assert proc.returncode == 0, (script, proc.stderr[-3000:])
            for name in tables:
                md = (res / f"{name}.md").read_text()
                assert "python recipes/paper_tables.py" in md and "|" in md, name
                assert (res / f"{name}.png").stat().st_size > 3000, name
        assert "| toy | 24 |" in (res / "kimina_row.md").read_text()
        budget = (res / "oprover_budget.md").read_text()
        assert "-nofb" in budget and "k0" in budget and "memory: memory_" in budget
        assert budget.count("| 8 |") == 3                          # one row per budget and ablation
        assert "n4-b200-c0-t48" in (res / "stepfun_table2_length.md").read_text()
    finally:
        shutil.rmtree(res, ignore_errors=True)
