"""The paper-table recipes, each run as a user would (CPU=1: the toy task, a tiny model, the
stand-in server): each writes its tables and plots, and what they hold is a pass@k table (slow)."""
import os
import re
import subprocess

import pytest

from conftest import ROOT


def tables(md: str) -> list[list[dict]]:
    """Every Markdown table in md, as rows of {header: cell}."""
    out, lines = [], md.splitlines()
    for i, line in enumerate(lines):
        is_rule = i + 1 < len(lines) and lines[i + 1].startswith("|") and set(lines[i + 1]) <= set("|-: ")
        if line.startswith("|") and is_rule:
            header = [c.strip() for c in line.strip("|").split("|")]
            body = []
            for row in lines[i + 2:]:
                if not row.startswith("|"):
                    break
                body.append(dict(zip(header, (c.strip() for c in row.strip("|").split("|")))))
            out.append(body)
    return out


def rate(cell: str) -> float | None:
    """The leading number of a cell (a rate, or a rate with its CI); None for '-'."""
    m = re.match(r"-?\d+(\.\d+)?", cell)
    return float(m.group(0)) if m else None


def rates(row: dict) -> list[float]:
    """The row's pass rates: the cells of the pass@k / pass@1 / depth columns."""
    return [v for k, c in row.items() if k.startswith(("pass", "depth"))
            and (v := rate(c)) is not None]


def check_plot(path) -> None:
    import matplotlib.image
    img = matplotlib.image.imread(path)                 # a PNG that decodes
    assert img.shape[0] >= 300 and img.shape[1] >= 400, (path, img.shape)
    assert img[..., :3].std() > 0.01, path               # something is drawn on it


@pytest.mark.slow
def test_paper_table_recipes_cpu_variants(tmp_path):
    results = tmp_path / "results"   # never the checkout's results/
    env = {**os.environ, "CPU": "1", "PROVER_RUNS_DIR": str(tmp_path / "runs"),
           "PROVER_RESULTS_DIR": str(results), "RUN": "paper_test", "SFT_STEPS": "200"}
    env.pop("LEAN_SERVER_API_URL", None)
    res = results / "paper_test"
    for script, names in (("kimina_minif2f_pass32.sh", ["kimina_row"]),
                           ("deepseek_v2_table.sh", ["deepseek_v2_table"]),
                           ("stepfun_table2.sh", ["stepfun_table2_length",
                                                  "stepfun_table2_interactions"]),
                           ("oprover_budget.sh", ["oprover_budget"])):
        proc = subprocess.run(["bash", str(ROOT / "recipes" / script)], env=env,
                              capture_output=True, text=True, timeout=1500, cwd=ROOT)
        assert proc.returncode == 0, (script, proc.stderr[-3000:])
        for name in names:
            md = (res / f"{name}.md").read_text()
            assert "python recipes/paper_tables.py" in md, name     # the command in the caption
            rows = [r for t in tables(md) for r in t]
            assert rows and all(rates(r) for r in rows), name     # every row has its rates
            for row in rows:                                        # rates are percentages
                assert all(0.0 <= v <= 100.0 for v in rates(row)), (name, row)
            check_plot(res / f"{name}.png")
        assert not (ROOT / "results" / "paper_test").exists()
    # Kimina's row: pass@k on the 24 toy problems, non-decreasing in k (a pass@k table, not noise)
    row = next(r for t in tables((res / "kimina_row.md").read_text()) for r in t
               if r["benchmark"] == "toy")
    assert row["problems"] == "24"
    assert rates(row) == sorted(rates(row)), row
    budget = (res / "oprover_budget.md").read_text()
    assert "-nofb" in budget and "k0" in budget and "memory: memory_" in budget
    assert budget.count("| 8 |") == 3                          # one row per budget and ablation
    # a larger attempt budget never solves less, in every depth column
    for table in tables(budget):
        for column in [k for k in table[0] if k.startswith("depth")]:
            col = [v for r in table if (v := rate(r[column])) is not None]
            assert col == sorted(col), (column, table)
    assert "n4-b200-c0-t48" in (res / "stepfun_table2_length.md").read_text()
