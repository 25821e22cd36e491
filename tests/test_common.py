import dataclasses
import itertools
import json
import random
import sys
import time

import pytest

from conftest import ROOT
import common
from common import pass_at_k
from formats import extract_proof, format_errors
from canonical import split_header
from lean_client import normalize_statement, strip_lean_comments, theorem_name


# ---------------------------------------------------------------- pass@k

def brute_pass_at_k(n, c, k):
    """Fraction of k-subsets of the n samples that hold at least one success."""
    samples = [1] * c + [0] * (n - c)
    subsets = list(itertools.combinations(range(n), k))
    return sum(any(samples[i] for i in s) for s in subsets) / len(subsets)


def test_pass_at_k_matches_brute_force():
    rng = random.Random(0)
    for _ in range(200):
        n = rng.randint(1, 10)
        c, k = rng.randint(0, n), rng.randint(1, n)
        assert pass_at_k(n, c, k) == pytest.approx(brute_pass_at_k(n, c, k), abs=1e-12)


def test_pass_at_k_edges():
    assert pass_at_k(8, 0, 8) == 0.0
    assert pass_at_k(8, 1, 8) == 1.0
    assert pass_at_k(10, 3, 1) == pytest.approx(0.3)
    with pytest.raises(ValueError, match="at least 9 samples"):
        pass_at_k(8, 2, 9)
    with pytest.raises(ValueError):
        pass_at_k(4, 5, 1)


# ---------------------------------------------------------------- Lean text

def test_normalize_statement_cases_from_real_files():
    rows = [json.loads(l) for l in (ROOT / "data/proofnet/deepseek_v15_proofnet.jsonl").open()]
    pn = rows[0]["formal_statement"]            # ProofNet ends in ":=" with a multi-line statement
    assert pn.rstrip().endswith(":=")
    assert normalize_statement(pn).endswith("f a = f b := by")
    put = [json.loads(l)
           for l in (ROOT / "data/putnambench/putnambench_lean4_v4.27.jsonl").open()][0]
    assert normalize_statement(put["formal_statement"]).endswith(":= by")
    mob = [json.loads(l)
           for l in (ROOT / "data/matholympiadbench/goedel_v2_MOBench.jsonl").open()][0]
    assert mob["formal_statement"].endswith(":= by sorry")     # trailing sorry
    got = normalize_statement(mob["formal_statement"])
    assert got.endswith("157^147 := by") and "sorry" not in got
    lw = json.loads((ROOT / "data/training/leanworkbook_statements_6k.jsonl").open().readline())
    assert normalize_statement(lw["formal_statement"]).endswith("Real.log y := by")  # "   :=  by"
    unicode_binders = "theorem t (x y : ℝ) (h₀ : 0 < x ∧ 0 < y) :\n    x * y > 0 := by\n"
    assert normalize_statement(unicode_binders) == unicode_binders.strip()
    assert normalize_statement("theorem t : 1 = 1 := by\n  sorry") == "theorem t : 1 = 1 := by"
    assert normalize_statement("noncomputable def f {G : Type*} "
                               "[Group G] :\n  G ≃* G :=").endswith(":= by")
    with pytest.raises(ValueError):
        normalize_statement("example : True := trivial")


def test_comments_and_names():
    code = 'theorem a : 1 = 1 := by -- sorry\n  /- nested /- sorry -/ still -/ rfl\n  exact "-- kept"'
    bare = strip_lean_comments(code)
    assert "sorry" not in bare and '"-- kept"' in bare and bare.count("\n") == 2
    cols = strip_lean_comments(code, keep_columns=True)
    assert [len(l) for l in cols.split("\n")] == [len(l) for l in code.split("\n")]
    assert theorem_name("/-- doc -/\ntheorem foo_bar (x : ℕ) : x = x := by") == "foo_bar"


def test_split_header_keeps_docstring_with_the_theorem():
    code = ("import Mathlib\nimport Aesop\n\nset_option maxHeartbeats 400000\n\nopen Real\n\n"
            "/-- doc -/\ntheorem t : 1 = 1 := by\n  rfl")
    header, body = split_header(code)
    assert header.startswith("import Mathlib") and header.rstrip().endswith("open Real")
    assert body.lstrip().startswith("/-- doc -/\ntheorem t")


# ---------------------------------------------------------------- extraction and format

STMT = "theorem t (a : ℕ) (h : a = 2) : a + a = 4 := by"
GOOD = ("<think>\nWe substitute.\n```tactics\nsubst h\n```\nthen\n```tactics\nrfl\n```\n</think>\n"
        f"```lean4\nimport Mathlib\n\n{STMT}\n  subst h\n  rfl\n```")


def test_extract_proof_takes_the_last_block_with_the_statement():
    assert extract_proof(GOOD, STMT) == "\n  subst h\n  rfl"
    changed = GOOD.replace("a + a = 4", "a + a ≥ 0")
    assert extract_proof(changed, STMT) is None
    two = GOOD + f"\n```lean4\n{STMT}\n  omega\n```"
    assert extract_proof(two, STMT) == "\n  omega"


def test_format_errors_each_type():
    assert format_errors(GOOD, STMT) == []
    assert "think_block" in format_errors(GOOD.replace("<think>", ""), STMT)
    assert "think_block" in format_errors("<think></think>" + GOOD, STMT)
    assert "no_final_lean_block" in format_errors(GOOD + "\nmore text", STMT)
    assert "multiple_lean_blocks" in format_errors(GOOD + f"\n```lean4\n{STMT}\n rfl\n```", STMT)
    rep = GOOD.replace("We substitute.",
                       "\n".join(["this is a long line with at least ten words in it"] * 6))
    assert "repeated_lines" in format_errors(rep, STMT)
    one_block = GOOD.replace("then\n```tactics\nrfl\n```\n", "")
    assert "few_tactic_blocks" in format_errors(one_block, STMT)
    assert format_errors(one_block, STMT, require_tactic_blocks=False) == []
    mismatch = GOOD.replace("subst h\n```", "nlinarith [sq_nonneg a]\n```")
    assert "tactics_mismatch" in format_errors(mismatch, STMT)
    assert "forbidden_or_changed_statement" in format_errors(GOOD.replace("a + a = 4", "True"),
                                                             STMT)
    assert "forbidden_or_changed_statement" in format_errors(
        GOOD.replace("import Mathlib", "import Mathlib\naxiom x : False"), STMT)


# ---------------------------------------------------------------- settings, schemas

@dataclasses.dataclass
class S:
    lr: float = 2e-6
    steps: int = 10
    name: str = "x"
    kl: bool = False


def test_settings_overrides_are_checked(capsys):
    s = common.parse_settings(S, ["--lr", "1e-4", "--kl", "true", "--name=y"])
    assert (s.lr, s.steps, s.name, s.kl) == (1e-4, 10, "y", True)
    with pytest.raises(SystemExit):
        common.parse_settings(S, ["--learning_rate", "1"])
    assert "unrecognized arguments: --learning_rate" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        common.parse_settings(S, ["--steps", "ten"])


def test_parquet_schema_errors_name_file_and_column(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq
    row = {c: "x" for c in common.SCHEMAS["statements"]}
    path = common.write_parquet([row], tmp_path / "ok.parquet", "statements")
    assert common.read_parquet(path, "statements").iloc[0]["statement_id"] == "x"
    bad = tmp_path / "bad.parquet"
    pq.write_table(pa.table({k: [v] for k, v in row.items() if k != "header"}), bad)
    with pytest.raises(common.SchemaError, match=r"bad\.parquet: missing column 'header'"):
        common.read_parquet(bad, "statements")
    typed = tmp_path / "typed.parquet"
    pq.write_table(pa.table({**{k: [v] for k, v in row.items()}, "split": [3]}), typed)
    with pytest.raises(common.SchemaError, match=r"typed\.parquet: column 'split' has type int64"):
        common.read_parquet(typed, "statements")
    empty = common.write_parquet([], tmp_path / "empty.parquet", "statements")
    with pytest.raises(common.SchemaError, match="no rows"):
        common.read_parquet(empty, "statements")
    with pytest.raises(FileNotFoundError, match="did the previous stage run"):
        common.read_parquet(tmp_path / "missing.parquet", "statements")
    (tmp_path / "junk.parquet").write_bytes(b"not parquet")
    with pytest.raises(common.SchemaError, match="not a readable Parquet"):
        common.read_parquet(tmp_path / "junk.parquet", "statements")


def test_write_parquet_is_byte_deterministic(tmp_path):
    rows = [{c: f"{c}{i}" for c in common.SCHEMAS["statements"]} for i in range(50)]
    a = common.write_parquet(rows, tmp_path / "a.parquet", "statements").read_bytes()
    b = common.write_parquet(rows, tmp_path / "b.parquet", "statements").read_bytes()
    assert a == b


def test_choice_settings_are_checked_at_parse_time(capsys):
    @dataclasses.dataclass
    class T(common.DeviceSettings, common.SamplingSettings):
        mode: str = "a"
        CHOICES = {"mode": ("a", "b")}
    assert common.parse_settings(T, ["--mode", "b", "--device", "cuda:1"]).mode == "b"
    for argv, named in ((["--mode", "c"], "--mode must be one of a, b"),
                        (["--backend", "vlm"], "--backend must be one of hf, vllm"),
                        (["--dtype", "bf61"], "--dtype must be one of auto, float32, bfloat16"),
                        (["--device", "gpu"], "--device must be auto, cpu, cuda or cuda:N")):
        with pytest.raises(SystemExit, match=named):
            common.parse_settings(T, argv)


def test_shared_settings_have_one_default_in_every_stage():
    # a shared setting's default is declared once (common.py); a stage that departs says so in
    # its own class, and these are the only departures
    import importlib.util
    from conftest import ROOT
    stages = {}
    for script in ("02_sft.py", "03_rl_grpo.py", "04_eval.py", "05_iterate.py"):
        spec = importlib.util.spec_from_file_location(f"s{script[:2]}", ROOT / script)
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        stages[script] = mod.Settings()
    groups = (common.RunSettings, common.DeviceSettings, common.FormatSettings,
              common.SamplingSettings, common.VerifySettings, common.RepairSettings,
              common.ToolSettings, common.LoraSettings)
    departures = {("04_eval.py", "top_p"), ("04_eval.py", "check_axioms"),
                  ("05_iterate.py", "top_p"), ("03_rl_grpo.py", "max_server_error_share")}
    for group in groups:
        for f in dataclasses.fields(group):
            for script, cfg in stages.items():
                if hasattr(cfg, f.name) and (script, f.name) not in departures:
                    assert getattr(cfg, f.name) == f.default, (script, f.name)
    assert {s: c.prompt_format for s, c in stages.items()} == dict.fromkeys(stages, "auto")


class _Payload:
    """Unpickling this runs code (it creates a marker file): what a tampered checkpoint does."""
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_a_checkpoint_cannot_run_code_when_resumed(tmp_path):
    import torch
    ckpt = tmp_path / "step_000001"
    (ckpt / "model").mkdir(parents=True)
    marker = tmp_path / "ran"
    torch.save({"step": 1, "evil": _Payload(marker)}, ckpt / "trainer_state.pt")

    class NoModel:
        def load_state_dict(self, state, strict=False):
            return [], []
    with pytest.raises(SystemExit, match="trainer_state.pt: not a plain trainer state"):
        common.load_checkpoint(ckpt, NoModel(), lora=False)
    assert not marker.exists()
    torch.save({"step": 3, "rng": [1, [2, 3], None]}, ckpt / "trainer_state.pt")   # plain: loads
    assert common.load_checkpoint(ckpt, NoModel(), lora=False)["step"] == 3


def test_every_stage_checks_its_choice_settings_at_parse_time():
    import importlib.util
    from conftest import ROOT
    for script in ("01_prepare_data.py", "02_sft.py", "03_rl_grpo.py", "04_eval.py",
                   "05_iterate.py"):
        spec = importlib.util.spec_from_file_location(f"c{script[:2]}", ROOT / script)
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        names = {f.name for f in dataclasses.fields(mod.Settings)}
        keys = (set(common.CHOICES) | set(getattr(mod.Settings, "CHOICES", {})) |
                {"prompt_format", "device"}) & names
        assert keys, script
        for key in keys:
            with pytest.raises(SystemExit, match=f"--{key} must be"):
                common.parse_settings(mod.Settings, [f"--{key}", "no_such_value"])


def test_a_second_run_on_a_locked_folder_stops_naming_the_first(tmp_path):
    import subprocess
    import sys
    import time
    from conftest import ROOT
    folder = tmp_path / "runs/r/03_grpo"
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; sys.path.insert(0, "
                               f"{str(ROOT)!r}); import common; from pathlib import Path; "
                               f"common.lock_folder(Path({str(folder)!r})); print('held', "
                               "flush=True); time.sleep(60)"], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(SystemExit, match=rf"in use by pid {holder.pid} "):
            common.lock_folder(folder)
    finally:
        holder.kill()
        holder.wait()
    time.sleep(0.1)
    common.lock_folder(folder)          # released when its holder died (kill -9 included)
    common.lock_folder(folder)          # and a process may take its own lock again


def test_cpu_threads_take_the_free_cores_or_the_setting(monkeypatch):
    import os
    import torch
    import generation
    before = torch.get_num_threads()
    try:
        monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1})
        monkeypatch.setattr(generation, "busy_cores", lambda cores: 0.1)
        assert generation.cpu_threads() == 2 and torch.get_num_threads() == 2   # idle: both
        monkeypatch.setattr(generation, "busy_cores", lambda cores: 1.2)
        assert generation.cpu_threads() == 1                                   # one busy: one
        monkeypatch.setattr(generation, "busy_cores", lambda cores: 2.0)
        assert generation.cpu_threads() == 1                                   # never zero
        assert generation.cpu_threads(2) == 2                                  # the setting wins
    finally:
        torch.set_num_threads(before)


def test_busy_cores_sees_a_spinning_process_now_not_a_minute_later():
    """The thread policy reads what the cores do now: a process spinning on one core counts as
    about one busy core within a second (the load average would take a minute to show it, and
    another to forget it)."""
    import os
    import subprocess
    import generation
    cores = set(os.sched_getaffinity(0))
    spin = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(0.3)
        assert generation.busy_cores(cores, seconds=0.5) >= 0.7
    finally:
        spin.kill()
        spin.wait()
