"""What the benchmark scripts share: loading a stage script and a toy run in a temp folder."""
import importlib.util
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
import common  # noqa: E402
import formats  # noqa: E402
import generation  # noqa: E402


def load_stage(name: str, file: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / file)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def toy_run(prefix: str, run_name: str = "b", args=()) -> Path:
    """A temp runs folder holding stage 01's toy task (more 01 flags in `args`);
    common.RUNS_ROOT points at it."""
    work = Path(tempfile.mkdtemp(prefix=prefix))
    os.environ["PROVER_RUNS_DIR"] = str(work / "runs")
    common.RUNS_ROOT = work / "runs"
    subprocess.run([sys.executable, str(ROOT / "01_prepare_data.py"), "--task", "toy", "--run_name",
                    run_name, *args],
                   check=True, capture_output=True, env=os.environ)
    return work
