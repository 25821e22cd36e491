"""01_prepare_data.py, run as a real subprocess on real and planted files."""
import json
import os
import subprocess
import sys

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from conftest import ROOT
import common
import formats

MINIF2F = [json.loads(l) for l in (ROOT / "data/minif2f/deepseek_v15_minif2f.jsonl").open()]
TEST_478 = next(r for r in MINIF2F if r["name"] == "mathd_algebra_478")


def run_stage(tmp_path, *args, expect_ok=True):
    env = {**os.environ, "PROVER_RUNS_DIR": str(tmp_path / "runs"), "HF_DATASETS_OFFLINE": "1",
           "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")}
    proc = subprocess.run([sys.executable, str(ROOT / "01_prepare_data.py"), *args], env=env,
                          capture_output=True, text=True, timeout=300)
    if expect_ok:
        assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def out_dir(tmp_path, run):
    return tmp_path / "runs" / run / "01_data"


def write_jsonl(path, rows, extra_lines=()):
    with open(path, "wb") as fh:
        for r in rows:
            fh.write((json.dumps(r, ensure_ascii=False) + "\n").encode())
        for raw in extra_lines:
            fh.write(raw)
    return path


def test_toy_task_is_deterministic_and_consistent(tmp_path, standin):
    run_stage(tmp_path, "--task", "toy", "--run_name", "a", "--toy_n_statements", "400", "--toy_sft_repair", "0.3")
    run_stage(tmp_path, "--task", "toy", "--run_name", "b", "--toy_n_statements", "400", "--toy_sft_repair", "0.3")
    a, b = out_dir(tmp_path, "a"), out_dir(tmp_path, "b")
    for f in ("rl_prompts.parquet", "sft.parquet", "eval_toy.parquet", "rejects.parquet"):
        assert (a / f).read_bytes() == (b / f).read_bytes(), f
    rl = common.read_parquet(a / "rl_prompts.parquet", "statements")
    sft = common.read_parquet(a / "sft.parquet", "sft")
    ev = common.read_parquet(a / "eval_toy.parquet", "statements")
    assert len(rl) + len(set(sft.statement_id)) + len(ev) == 400
    assert not set(ev.formal_statement) & (set(rl.formal_statement) | set(sft.formal_statement))
    # SFT proofs are right only part of the time: check them on the stand-in's toy fragment
    from lean_client import LeanClient
    client = LeanClient(standin)

    def verify(codes_and_rows):
        return client.verify([{"id": f"{k}", "code": code, "statement": r.formal_statement}
                              for k, (code, r) in enumerate(codes_and_rows)])

    first = sft[sft.prev_attempt.isna()]
    repair = sft[sft.prev_attempt.notna()]
    assert 0.2 < len(repair) / len(first) < 0.4
    verdicts = verify([(r.header + r.formal_statement + r.formal_proof, r) for r in first.itertuples()])
    rate = sum(v.ok for v in verdicts) / len(verdicts)
    assert 0.15 < rate < 0.40, rate
    assert not any(v.status in ("rejected", "server_error") for v in verdicts)
    # repair rows: the first attempt fails, its feedback is what a live verification returns,
    # and the correction tries another tactic (right about one time in three)
    attempts = [(formats.build_lean_code(r.header, r.formal_statement,
                                        formats.extract_proof(r.prev_attempt, r.formal_statement)), r)
                for r in repair.itertuples()]
    live = verify(attempts)
    assert not any(v.ok for v in live)
    assert [formats.lean_feedback(v, "kimina") for v in live] == list(repair.lean_feedback)
    assert all(r.formal_proof.strip() not in r.prev_attempt.split("```lean4")[-1] for r in repair.itertuples())
    fixed = verify([(r.header + r.formal_statement + r.formal_proof, r) for r in repair.itertuples()])
    assert 0.15 < sum(v.ok for v in fixed) / len(fixed) < 0.55
    # every completion is in the Kimina format and holds the statement
    assert all(formats.format_errors(c, s, require_tactic_blocks=False) == []
               for c, s in zip(sft.completion, sft.formal_statement))
    manifest = json.loads((a / "manifest.json").read_text())
    assert manifest["files"]["sft.parquet"]["sha256"] == common.sha256_file(a / "sft.parquet")
    assert manifest["rows"]["eval_toy.parquet"] == len(ev)


def test_cleaning_steps_on_planted_rows(tmp_path):
    renamed = (TEST_478["formal_statement"].replace("mathd_algebra_478", "planted_copy")
               .replace("(b h v : ℝ)", "(x y z : ℝ)").replace("b * h", "x * y").replace("v = 1", "z = 1")
               .replace("b = 30", "x = 30").replace("h = 13", "y = 13").replace(": v = 65", ": z = 65")
               .replace("0 < b ∧ 0 < h ∧ 0 < v", "0 < x ∧ 0 < y ∧ 0 < z").replace("h₀", "hpos"))
    assert "b" not in renamed.split(":")[0].split("(")[1]          # really renamed
    same_binders = ("theorem shares_binders (b h v : ℝ) (h₀ : 0 < b ∧ 0 < h ∧ 0 < v) :\n"
                    "    b * h * v > 0 := by")
    rows = [
        {"name": "planted_copy", "formal_statement": renamed},
        {"name": "shares_binders", "formal_statement": same_binders},
        {"name": "mathd_algebra_478", "formal_statement": "theorem mathd_algebra_478 : 1 = 1 := by"},
        {"name": "multi", "formal_statement": "theorem multi (a : ℕ)\n    (h : a = 1) :\n  a + 0 = 1   :=  by\n  sorry"},
        {"name": "dup", "formal_statement": "theorem multi2 (a : ℕ)  (h : a = 1) : a + 0 = 1 := by"},
        {"name": "dup", "formal_statement": "theorem multi2 (a : ℕ) (h : a = 1) :\n a + 0 = 1 := by"},
        {"name": "bad", "formal_statement": "lemma_without_keyword (a : ℕ) : a = a"},
    ]
    src = write_jsonl(tmp_path / "planted.jsonl", rows, [b'{"name": "latin1", "formal_statement": "\xe9"}\n'])
    run_stage(tmp_path, "--run_name", "p", "--rl_sources", str(src), "--sft_sources", "",
              "--eval_sets", "minif2f_test")
    out = out_dir(tmp_path, "p")
    rl = common.read_parquet(out / "rl_prompts.parquet", "statements")
    rej = common.read_parquet(out / "rejects.parquet", "rejects")
    kept = set(rl.statement_id)
    assert kept == {"planted/shares_binders", "planted/multi", "planted/dup"}
    by_reason = {(r.step, r.statement_id): r.reason for r in rej.itertuples()}
    assert "minif2f_test/mathd_algebra_478" in by_reason[("decontaminate", "planted/planted_copy")]
    assert "same theorem name" in by_reason[("decontaminate", "planted/mathd_algebra_478")]
    assert ("dedup", "planted/dup") in by_reason
    assert ("parse", "planted/6") in by_reason
    assert any(step == "load" and "non-UTF-8" in reason for (step, _), reason in by_reason.items())
    multi = rl[rl.statement_id == "planted/multi"].formal_statement.item()
    assert multi.endswith("a + 0 = 1 := by") and "sorry" not in multi
    counts = json.loads((out / "manifest.json").read_text())["counts"]["rl/planted"]
    assert counts == {"loaded": 7, "parsed": 6, "deduplicated": 5, "decontaminated": 3,
                      "length_filtered": 3, "final": 3}


def test_training_proofs_that_collide_with_an_eval_set_are_rejected(tmp_path):
    proc = run_stage(tmp_path, "--run_name", "b", "--rl_sources", "leanworkbook_6k", "--sft_sources",
                     "minif2f_valid_proofs", "--eval_sets", "minif2f_valid,proofnet_test", expect_ok=False)
    assert "no sft rows left after cleaning (minif2f_valid_proofs)" in proc.stderr
    rej = common.read_parquet(out_dir(tmp_path, "b") / "rejects.parquet", "rejects")
    # the 67 valid proofs are miniF2F-valid problems: all go to rejects, each naming its hit
    hits = rej[(rej.source == "minif2f_valid_proofs") & (rej.step == "decontaminate")]
    assert len(hits) == 67 and hits.reason.str.contains("minif2f_valid:").all()
    # without that eval set they are kept; miniF2F test still guards (and is not written)
    run_stage(tmp_path, "--run_name", "c", "--rl_sources", "leanworkbook_6k", "--sft_sources",
              "minif2f_valid_proofs", "--eval_sets", "proofnet_test")
    out = out_dir(tmp_path, "c")
    assert len(common.read_parquet(out / "sft.parquet", "sft")) == 67
    assert not (out / "eval_minif2f_test.parquet").exists()
    rej = common.read_parquet(out / "rejects.parquet", "rejects")
    assert "minif2f_test:minif2f_test/aime_1990_p15" in " ".join(rej.reason)   # Lean-Workbook copy


@pytest.mark.parametrize("args,message", [
    (["--rl_sources", "no_such_source"], "unknown source 'no_such_source'"),
    (["--rl_sources", "lean_workbook=/nonexistent/x.jsonl"], "no such file /nonexistent/x.jsonl"),
    (["--task", "chess"], "--task must be 'lean' or 'toy'"),
    (["--rl_sources", "", "--sft_sources", "leanworkbook_6k"], "has no proofs; it cannot be an SFT source"),
    (["--learning_rate", "3"], "unrecognized arguments: --learning_rate"),
])
def test_bad_input_is_a_clear_error(tmp_path, args, message):
    proc = run_stage(tmp_path, "--run_name", "x", "--sft_sources", "", *args, expect_ok=False)
    assert proc.returncode != 0 and message in proc.stderr


def test_wrong_columns_and_empty_result(tmp_path):
    bad = write_jsonl(tmp_path / "cols.jsonl", [{"name": "a", "statement": "theorem a : 1 = 1 := by"}])
    proc = run_stage(tmp_path, "--run_name", "x", "--rl_sources", f"lean_workbook={bad}",
                     "--sft_sources", "", expect_ok=False)
    assert "cols.jsonl: source lean_workbook needs column 'formal_statement'" in proc.stderr
    only = write_jsonl(tmp_path / "only.jsonl", [{"name": "x", "formal_statement":
                                                    TEST_478["formal_statement"]}])
    proc = run_stage(tmp_path, "--run_name", "x", "--rl_sources", str(only), "--sft_sources", "",
                     expect_ok=False)
    assert "no rl rows left after cleaning" in proc.stderr
    rejects = common.read_parquet(out_dir(tmp_path, "x") / "rejects.parquet", "rejects")
    assert list(rejects.step) == ["decontaminate"]     # the reason survives the failed run


HEADER = "import Mathlib\nimport Aesop\n\nset_option maxHeartbeats 400000\n\nopen Real\n\n"
ONLINE = {   # source -> (hub id, a row with that dataset's columns)
    "numina_lean": ("AI-MO/NuminaMath-LEAN", {
        "uuid": "u-1", "problem": "Show 2+2=4.", "question_type": "proof", "answer": "", "author": "human",
        "formal_statement": HEADER + "theorem numina_1 : (2 : ℕ) + 2 = 4 := by sorry",
        "formal_ground_truth": "", "ground_truth_type": "complete",
        "formal_proof": HEADER + "theorem numina_1 : (2 : ℕ) + 2 = 4 := by\n  norm_num",
        "rl_data": {"n_correct_proofs": 3, "n_proofs": 8, "win_rate": 0.375},
        "source": "olympiads", "problem_type": "Algebra", "exam": ""}),
    "kimina_promptset": ("AI-MO/Kimina-Prover-Promptset", {
        "id": "k-1", "problem": "Show 3+3=6.", "formal_statement": "theorem kim_1 : (3 : ℕ) + 3 = 6 := by sorry"}),
    "lean_workbook": ("internlm/Lean-Workbook", {
        "id": "lean_workbook_1", "natural_language_statement": "Prove 1 < 2.", "answer": "",
        "tags": ["x"], "formal_statement": "theorem lean_workbook_1 : (1 : ℕ) < 2  :=  by", "split": "lean_workbook",
        "proof": ["norm_num"], "status": "proved"}),
    "goedel_pset": ("Goedel-LM/Goedel-Pset-v1", {
        "problem_id": "g-1", "informal_statement": "Show 4 ≠ 5.",
        "formal_statement": HEADER + "/-- Show 4 ≠ 5. -/\ntheorem goedel_1 : (4 : ℕ) ≠ 5 := by sorry"}),
    "minif2f_test_kimina": ("AI-MO/minif2f_test", {
        "name": "mathd_fake_1", "informal_prefix": "/-- Show 5 ≤ 6.-/\n",
        "formal_statement": HEADER + "theorem mathd_fake_1 : (5 : ℕ) ≤ 6 := by\n  sorry"}),
}


def test_online_sources_through_datasets_on_a_local_mirror(tmp_path):
    mirror = tmp_path / "mirror"
    for name, (hub, row) in ONLINE.items():
        folder = mirror / hub / "data"
        folder.mkdir(parents=True)
        rows = [row] + ([{**row, "uuid": "u-2", "rl_data": {**row["rl_data"], "win_rate": 0.95},
                          "formal_statement": row["formal_statement"].replace("numina_1", "numina_2")}]
                        if name == "numina_lean" else [])
        pq.write_table(pa.Table.from_pylist(rows), folder / "train-00000-of-00001.parquet")
    run_stage(tmp_path, "--run_name", "o", "--hf_mirror", str(mirror), "--max_win_rate", "0.9",
              "--rl_sources", "kimina_promptset,lean_workbook,goedel_pset", "--sft_sources", "numina_lean",
              "--eval_sets", "minif2f_test_kimina")
    out = out_dir(tmp_path, "o")
    rl = common.read_parquet(out / "rl_prompts.parquet", "statements").set_index("statement_id")
    assert set(rl.index) == {"kimina_promptset/k-1", "lean_workbook/lean_workbook_1", "goedel_pset/g-1"}
    assert rl.loc["goedel_pset/g-1"].formal_statement == "theorem goedel_1 : (4 : ℕ) ≠ 5 := by"
    assert rl.loc["goedel_pset/g-1"].header == HEADER
    assert rl.loc["lean_workbook/lean_workbook_1"].informal_problem == "Prove 1 < 2."
    sft = common.read_parquet(out / "sft.parquet", "sft")
    assert list(sft.statement_id) == ["numina_lean/u-1"]              # win_rate 0.95 filtered out
    assert sft.formal_proof[0] == "\n  norm_num"
    assert formats.extract_proof(sft.completion[0], sft.formal_statement[0]) == "\n  norm_num"
    ev = common.read_parquet(out / "eval_minif2f_test_kimina.parquet", "statements")
    assert ev.informal_problem[0] == "Show 5 ≤ 6."
    # the same columns from a local file, NAME=PATH, without the Hub code path
    local = tmp_path / "kim.parquet"
    pq.write_table(pa.Table.from_pylist([ONLINE["kimina_promptset"][1]]), local)
    run_stage(tmp_path, "--run_name", "l", "--rl_sources", f"kimina_promptset={local}", "--sft_sources", "")
    assert len(common.read_parquet(out_dir(tmp_path, "l") / "rl_prompts.parquet", "statements")) == 1


def test_hub_unreachable_names_the_way_out(tmp_path):
    proc = run_stage(tmp_path, "--run_name", "h", "--rl_sources", "kimina_promptset", "--sft_sources", "",
                     expect_ok=False)
    assert "cannot load AI-MO/Kimina-Prover-Promptset" in proc.stderr and "--hf_mirror" in proc.stderr
