"""The layout rules: lean_client.py stands alone, no stage imports a stage or the stand-in, shared
modules import no stage, no file over 700 lines."""
import ast
import shutil
import subprocess
import sys

from conftest import ROOT

STAGES = sorted(p.name for p in ROOT.glob("0[0-9]_*.py"))
SHARED = sorted(p.name for p in ROOT.glob("*.py") if p.name not in STAGES)


def imported_modules(path) -> set[str]:
    """Every module a file imports, at the top or inside functions."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.add(node.module.split(".")[0])
    return names


def test_lean_client_runs_copied_alone(tmp_path):
    # a user copies one file into an empty folder: it must import and verify-gate without the project
    shutil.copy(ROOT / "lean_client.py", tmp_path / "lean_client.py")
    code = ("import lean_client as lc\n"
            "assert lc.theorem_name('theorem t : 1 = 1 := by') == 't'\n"
            "assert lc.soundness_gate('import Mathlib\\ntheorem t : 1 = 1 := by\\n  sorry', "
            "'theorem t : 1 = 1') == 'uses sorry'\n"
            "print('ok')")
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True,
                          text=True,
                          env={"PATH": "/usr/bin:/bin", "PYTHONPATH": ""})
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr


def test_lean_client_imports_nothing_from_the_project():
    project = {p[:-3] for p in STAGES + SHARED}
    assert not imported_modules(ROOT / "lean_client.py") & project


def test_no_stage_imports_a_stage_or_the_standin():
    stage_modules = {s[:-3] for s in STAGES}
    for stage in STAGES:
        found = imported_modules(ROOT / stage)
        assert "lean_standin_server" not in found, stage
        assert not found & stage_modules, stage
    for shared in SHARED:
        assert not imported_modules(ROOT / shared) & stage_modules, shared


def test_toy_task_defined_once():
    # the checker and the tactic rule live in toy_task.py only; the stand-in and 01 import them
    for name in SHARED + STAGES:
        text = (ROOT / name).read_text()
        if name != "toy_task.py":
            assert "TACTIC_RULES = " not in text and "class Checker" not in text, name
    assert "toy_task" in imported_modules(ROOT / "lean_standin_server.py")
    assert "toy_task" in imported_modules(ROOT / "01_prepare_data.py")


def test_no_python_file_over_700_lines():
    for path in list(ROOT.glob("*.py")) + list(ROOT.glob("tests/*.py")) + list(ROOT.glob("recipes/**/*.py")):
        n = len(path.read_text().splitlines())
        assert n <= 700, f"{path.name}: {n} lines"
