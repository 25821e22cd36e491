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
    run_stage(tmp_path, "--task", "toy", "--run_name", "a", "--toy_n_statements", "400",
              "--toy_sft_repair", "0.3")
    run_stage(tmp_path, "--task", "toy", "--run_name", "b", "--toy_n_statements", "400",
              "--toy_sft_repair", "0.3")
    a, b = out_dir(tmp_path, "a"), out_dir(tmp_path, "b")
    for f in ("rl_prompts.parquet", "sft.parquet", "eval_toy.parquet", "rejects.parquet"):
        assert (a / f).read_bytes() == (b / f).read_bytes(), f
    rl = common.read_parquet(a / "rl_prompts.parquet", "statements")
    sft = common.read_parquet(a / "sft.parquet", "sft")
    ev = common.read_parquet(a / "eval_toy.parquet", "statements")
    assert len(rl) + len(set(sft.theorem_name)) + len(ev) == 400
    for df in (rl, sft, ev):
        assert df.statement_id.is_unique
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
    verdicts = verify([(r.header + r.formal_statement + r.formal_proof, r)
                       for r in first.itertuples()])
    rate = sum(v.ok for v in verdicts) / len(verdicts)
    assert 0.15 < rate < 0.40, rate
    assert not any(v.status in ("rejected", "server_error") for v in verdicts)
    # repair rows: the first attempt fails, its feedback is what a live verification returns,
    # and the correction tries another tactic (right about one time in three)
    attempts = [(formats.build_lean_code(r.header, r.formal_statement,
                                        formats.extract_proof(r.prev_attempt, r.formal_statement)),
                 r)
                for r in repair.itertuples()]
    live = verify(attempts)
    assert not any(v.ok for v in live)
    assert [formats.lean_feedback(v, "kimina") for v in live] == list(repair.lean_feedback)
    assert all(r.formal_proof.strip() not in r.prev_attempt.split("```lean4")[-1]
               for r in repair.itertuples())
    fixed = verify([(r.header + r.formal_statement + r.formal_proof, r)
                    for r in repair.itertuples()])
    assert 0.15 < sum(v.ok for v in fixed) / len(fixed) < 0.55
    # every completion is in the Kimina format and holds the statement
    assert all(formats.format_errors(c, s, require_tactic_blocks=False) == []
               for c, s in zip(sft.completion, sft.formal_statement))
    manifest = json.loads((a / "manifest.json").read_text())
    assert manifest["files"]["sft.parquet"]["sha256"] == common.sha256_file(a / "sft.parquet")
    assert manifest["rows"]["eval_toy.parquet"] == len(ev)


def test_toy_tool_traces_for_the_stepfun_format(tmp_path, standin):
    """01 --task toy --prompt_format stepfun: SFT rows are verified tool traces (sketches until
    one passes, then the final proof); the first sketch is right about --toy_sft_correct of the
    time; the RL and eval rows are those of the Kimina run with the same settings. The REPL answers
    are checked against the
    live loop in tests/test_agentic_rl.py."""
    import re
    from lean_client import LeanClient
    from toy_task import TACTIC_RULES, relation_of
    right = {rel: tac for tac, rels in TACTIC_RULES.items() for rel in rels}
    run_stage(tmp_path, "--task", "toy", "--run_name", "sf", "--toy_n_statements", "400",
              "--prompt_format", "stepfun",
              "--toy_sft_correct", "0.4")
    run_stage(tmp_path, "--task", "toy", "--run_name", "k", "--toy_n_statements", "400",
              "--toy_sft_correct", "0.4")
    sf, k = out_dir(tmp_path, "sf"), out_dir(tmp_path, "k")
    for f in ("rl_prompts.parquet", "eval_toy.parquet"):
        assert (sf / f).read_bytes() == (k / f).read_bytes(), f
    sft = common.read_rows(sf / "sft.parquet", "sft")
    assert len(sft) == len(common.read_rows(k / "sft.parquet", "sft"))
    sketched = [re.findall(r"<sketch>\n.*\n  (\S+)\n</sketch>", r["completion"]) for r in sft]
    assert all(s and s[-1] == right[relation_of(r["formal_statement"])] and len(set(s)) == len(s)
               for s, r in zip(sketched, sft))
    # first sketch right ~40%
    assert 0.3 < sum(len(s) == 1 for s in sketched) / len(sft) < 0.5
    assert max(len(s) for s in sketched) == 4
    assert json.loads((sf / "config.json").read_text())["prompt_format"] == "stepfun"
    verdicts = LeanClient(standin).verify([{"id": r["statement_id"],
                                            "code": r["header"] + r["formal_statement"] +
                                            formats.extract_proof(r["completion"],
                                                                  r["formal_statement"])}
                                           for r in sft])
    assert all(v.ok for v in verdicts)
    proc = run_stage(tmp_path, "--task", "toy", "--run_name", "x", "--prompt_format", "stepfun",
                     "--toy_sft_repair", "0.5", expect_ok=False)
    assert proc.returncode != 0 and "--toy_sft_repair" in proc.stderr


def test_toy_classes_are_balanced_and_the_eval_order_is_stratified(tmp_path):
    # the docstring's promise: every tactic is right equally often, in every file and every prefix
    from toy_task import TACTIC_RULES, relation_of
    right = {rel: tac for tac, rels in TACTIC_RULES.items() for rel in rels}
    run_stage(tmp_path, "--task", "toy", "--run_name", "bal")
    out = out_dir(tmp_path, "bal")
    for f in ("rl_prompts.parquet", "sft.parquet", "eval_toy.parquet"):
        rows = common.read_rows(out / f, "statements")
        shares = {t: sum(right[relation_of(r["formal_statement"])] == t for r in rows) / len(rows)
                  for t in TACTIC_RULES}
        assert all(abs(v - 0.25) < 0.02 for v in shares.values()), (f, shares)
        # each row names its class (03 --balance_by toy_tactic), the tactic the checker accepts
        assert all(r["toy_tactic"] == right[relation_of(r["formal_statement"])] for r in rows), f
    ev = common.read_rows(out / "eval_toy.parquet", "statements")
    for n in (8, 40, 200):   # any prefix, as 04 --max_problems takes it, is balanced
        classes = [right[relation_of(r["formal_statement"])] for r in ev[:n]]
        assert {classes.count(t) for t in TACTIC_RULES} == {n // 4}


def test_cleaning_steps_on_planted_rows(tmp_path):
    renamed = (TEST_478["formal_statement"].replace("mathd_algebra_478", "planted_copy")
               .replace("(b h v : ℝ)", "(x y z : ℝ)").replace("b * h",
                                                              "x * y").replace("v = 1", "z = 1")
               .replace("b = 30", "x = 30").replace("h = 13",
                                                    "y = 13").replace(": v = 65", ": z = 65")
               .replace("0 < b ∧ 0 < h ∧ 0 < v", "0 < x ∧ 0 < y ∧ 0 < z").replace("h₀", "hpos"))
    assert "b" not in renamed.split(":")[0].split("(")[1]          # really renamed
    same_binders = ("theorem shares_binders (b h v : ℝ) (h₀ : 0 < b ∧ 0 < h ∧ 0 < v) :\n"
                    "    b * h * v > 0 := by")
    rows = [
        {"name": "planted_copy", "formal_statement": renamed},
        {"name": "shares_binders", "formal_statement": same_binders},
        {"name": "mathd_algebra_478",
         "formal_statement": "theorem mathd_algebra_478 : 1 = 1 := by"},
        {"name": "multi",
         "formal_statement": "theorem multi (a : ℕ)\n    (h : a = 1) :\n  a "
         "+ 0 = 1   :=  by\n  sorry"},
        {"name": "dup",
         "formal_statement": "theorem multi2 (a : ℕ)  (h : a = 1) : a + 0 = 1 := by"},
        {"name": "dup",
         "formal_statement": "theorem multi2 (a : ℕ) (h : a = 1) :\n a + 0 = 1 := by"},
        {"name": "bad", "formal_statement": "lemma_without_keyword (a : ℕ) : a = a"},
    ]
    src = write_jsonl(tmp_path / "planted.jsonl", rows,
                      [b'{"name": "latin1", "formal_statement": "\xe9"}\n'])
    run_stage(tmp_path, "--run_name", "p", "--rl_sources", str(src), "--sft_sources", "",
              "--eval_sets", "minif2f_test")
    out = out_dir(tmp_path, "p")
    rl = common.read_parquet(out / "rl_prompts.parquet", "statements")
    rej = common.read_parquet(out / "rejects.parquet", "rejects")
    kept = set(rl.statement_id)
    # `dup` (twice) is `multi` under another theorem name: one statement, kept once
    assert kept == {"planted/shares_binders", "planted/multi"}
    by_reason = {(r.step, r.statement_id): r.reason for r in rej.itertuples()}
    assert "minif2f_test/mathd_algebra_478" in by_reason[("decontaminate", "planted/planted_copy")]
    assert "same theorem name" in by_reason[("decontaminate", "planted/mathd_algebra_478")]
    assert ("dedup", "planted/dup") in by_reason
    assert ("parse", "planted/6") in by_reason
    assert any(step == "load" and "non-UTF-8" in reason for (step, _), reason in by_reason.items())
    multi = rl[rl.statement_id == "planted/multi"].formal_statement.item()
    assert multi.endswith("a + 0 = 1 := by") and "sorry" not in multi
    counts = json.loads((out / "manifest.json").read_text())["counts"]["rl/planted"]
    assert counts == {"loaded": 7, "parsed": 6, "true": 6, "deduplicated": 4, "decontaminated": 2,
                      "length_filtered": 2, "final": 2}


def test_training_proofs_that_collide_with_an_eval_set_are_rejected(tmp_path):
    proc = run_stage(tmp_path, "--run_name", "b", "--rl_sources", "leanworkbook_6k",
                     "--sft_sources",
                     "minif2f_valid_proofs", "--eval_sets", "minif2f_valid,proofnet_test",
                     expect_ok=False)
    assert "no sft rows left after cleaning (minif2f_valid_proofs)" in proc.stderr
    # a failed 01 publishes nothing; its rejects, with their reasons, are in its staging folder
    assert not (out_dir(tmp_path, "b") / "rejects.parquet").exists()
    rej = common.read_parquet(out_dir(tmp_path, "b") / ".partial/rejects.parquet", "rejects")
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
    (["--rl_sources", "leanworkbook_6k=/nonexistent/x.jsonl"], "no such file /nonexistent/x.jsonl"),
    (["--rl_sources", "lean_workbook=/nonexistent/lean_workbook.json"],
     "wkbk_1009.parquet not found"),
    (["--task", "chess"], "--task must be one of lean, toy; got 'chess'"),
    (["--rl_sources", "", "--sft_sources", "leanworkbook_6k"],
     "has no proofs; it cannot be an SFT source"),
    (["--learning_rate", "3"], "unrecognized arguments: --learning_rate"),
])
def test_bad_input_is_a_clear_error(tmp_path, args, message):
    proc = run_stage(tmp_path, "--run_name", "x", "--sft_sources", "", *args, expect_ok=False)
    assert proc.returncode != 0 and message in proc.stderr


def test_wrong_columns_and_empty_result(tmp_path):
    bad = write_jsonl(tmp_path / "cols.jsonl",
                      [{"name": "a", "statement": "theorem a : 1 = 1 := by"}])
    proc = run_stage(tmp_path, "--run_name", "x", "--rl_sources", f"goedel_pset={bad}",
                     "--sft_sources", "", expect_ok=False)
    assert "cols.jsonl: source goedel_pset needs column 'formal_statement'" in proc.stderr
    only = write_jsonl(tmp_path / "only.jsonl", [{"name": "x", "formal_statement":
                                                    TEST_478["formal_statement"]}])
    proc = run_stage(tmp_path, "--run_name", "x", "--rl_sources", str(only), "--sft_sources", "",
                     expect_ok=False)
    assert "no rl rows left after cleaning" in proc.stderr
    assert "rejects with their reasons are in" in proc.stderr
    rejects = common.read_parquet(out_dir(tmp_path, "x") / ".partial/rejects.parquet", "rejects")
    assert list(rejects.step) == ["decontaminate"]     # the reason survives the failed run


# ---------------------------------------------------------------- the Hub sources, in their real layouts
# Mirrors built from the facts in docs/DATASETS.md (file names, columns, types, row shapes),
# each with the shapes that broke the guessed mirror: a multi-paragraph `/- -/` problem comment
# between header and theorem, `:=\nsorry` endings, deliberate duplicates, disproved statements,
# whole-file proofs with and without helper lemmas.

NUMINA_STMT = ("import Mathlib\n\n/- Prove that for positive reals a, b, c, d:\n\n"
               "a/b + b/c + c/d + d/a ≥ 4\n\ntheorem of the means gives it at once. -/\n"
               "theorem inequalities_126634 (a b c d : ℝ) (ha : 0 < a) (hb : 0 < b) (hc "
               ": 0 < c) (hd : 0 < d) :\n"
               "    a / b + b / c + c / d + d / a ≥ 4 := by sorry")
NUMINA_PROOF_FILE = NUMINA_STMT.replace(":= by sorry",
                                        ":= by\n  have := ha\n  nlinarith [sq_nonneg (a - b)]")


def numina_row(uuid, statement, proof=None, ground_truth="", gt_type="statement", win_rate=0.25):
    return {"uuid": uuid, "problem": f"Problem {uuid}: prove it.", "question_type": "proof",
            "answer": "",
            "author": "human" if ground_truth else "autoformalizer", "formal_statement": statement,
            "formal_ground_truth": ground_truth, "ground_truth_type": gt_type,
            "formal_proof": proof,
            "rl_data": {"n_correct_proofs": 2, "n_proofs": 8, "win_rate": win_rate},
            "source": "olympiads", "problem_type": "Inequalities", "exam": ""}


def numina_rows():
    other = NUMINA_STMT.replace("inequalities_126634", "inequalities_2").replace("≥ 4", "≥ 3")
    helper = ("import Mathlib\n\nlemma aux (x : ℝ) : 0 ≤ x ^ 2 := sq_nonneg x\n\n"
              + other.split("-/\n", 1)[1].replace(":= by sorry", ":= by\n  nlinarith [aux a]"))
    third = NUMINA_STMT.replace("inequalities_126634", "algebra_3").replace("≥ 4", "≥ 2")
    fourth = NUMINA_STMT.replace("inequalities_126634", "algebra_4").replace("≥ 4", "≥ 1")
    return [
        numina_row("n-1", NUMINA_STMT, NUMINA_PROOF_FILE),                            # whole file
        # helper lemma
        numina_row("n-2", other, helper),
        # tactics only
        numina_row("n-3", third, "  nlinarith [sq_nonneg (a - b)]"),
        numina_row("n-4", fourth, None,
                   ground_truth=fourth.replace(":= by sorry", ":= by\n  positivity"),
                   gt_type="complete"),                                                # human proof
        numina_row("n-5", fourth.replace("algebra_4", "algebra_5").replace("≥ 1", "≥ 0"), None,
                   ground_truth=fourth.replace("algebra_4", "algebra_5"), gt_type="with_sorry"),
        numina_row("n-6", third.replace("algebra_3", "algebra_6"), "  linarith", win_rate=0.95),
    ]


def promptset_rows():
    base = [("0e9c7c0a-1", "algebra_181457_v0005", "synthetic", "Show that 2 + 2 = 4.",
             "import Mathlib\n\ntheorem algebra_181457_v0005 : (2 : ℕ) + 2 = 4 := by sorry", 3),
            ("0e9c7c0a-2", "number_theory_1", "autoformalizer", "",
             "import Mathlib\nopen Real\n\n/- Let x be real.\n\nShow x^2 ≥ 0. -/\n"
             "theorem number_theory_1 (x : ℝ) : x ^ 2 ≥ 0 :=\nsorry", 1),
            ("0e9c7c0a-3", "algebra_9", "human", "Show 1 ≤ 2.",
             "import Mathlib\n\ntheorem algebra_9 : (1 : ℕ) ≤ 2 := by", 2)]
    return [{"statement_id": sid, "name": name, "source": src, "natural_language": nl,
             "formal_statement": fs}
            for sid, name, src, nl, fs, copies in base for _ in range(copies)]


def workbook_problems():
    return [{"natural_language_statement": f"Problem {k}", "answer": "", "tags": ["inequality"],
             "formal_statement": f"theorem lean_workbook_plus_{k} (x : ℝ) (h : 0 < x) "
             f": x + {k} > 0 := by sorry",
             "split": "lean_workbook_plus", "proof": []} for k in (1, 2, 3)] + [
            {"natural_language_statement": "Problem false", "answer": "", "tags": [],
             "formal_statement": "theorem lean_workbook_99 (x : ℝ) : x ^ 2 < 0 := by sorry",
             "split": "lean_workbook", "proof": []}]


def workbook_steps():
    rows = []
    for pid, status, stmt in (("lean_workbook_plus_1", "proved",
                               workbook_problems()[0]["formal_statement"]),
                              ("lean_workbook_99", "disproved",
                               workbook_problems()[3]["formal_statement"])):
        for step in range(3):   # one row per tactic step
            rows.append({"id": pid, "status": status, "tactic": "nlinarith", "state_before": "⊢ x",
                         "state_after": "",
                         "natural_language_statement": "", "answer": "", "formal_statement": stmt})
    return rows


def goedel_rows():
    return [{"problem_id": "goedel_1", "informal_statement": "Show 4 ≠ 5.",
             "formal_statement": "import Mathlib\nimport Aesop\nset_option maxHeartbeats "
             "400000\nopen BigOperators Real Nat Topology Rat\n\n"
                                 "/-- Show 4 ≠ 5. -/\ntheorem goedel_1 : (4 : ℕ) ≠ 5 := by sorry"},
            {"problem_id": "goedel_2", "informal_statement": "Show 6 ≤ 7.",
             "formal_statement": "theorem goedel_2 : (6 : ℕ) ≤ 7 := by sorry"}]


def kimina_minif2f_rows():
    head = "import Mathlib\nimport Aesop\n\nset_option maxHeartbeats 400000\n\nopen BigOperators Real Nat Topology Rat\n\n"
    return [{"name": "mathd_fake_1", "informal_prefix": "/-- Show that $5 \\leq 6$.-/\n",
             "formal_statement": head + "theorem mathd_fake_1 : (5 : ℕ) ≤ 6 := by\n"}]


def build_hub_mirror(root):
    """<root>/<org>/<name>/ in the layout of each real repository."""
    def parquet(path, rows):
        path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.Table.from_pylist(rows), path)
    parquet(root / "AI-MO/NuminaMath-LEAN/data/train-00000-of-00001.parquet", numina_rows())
    parquet(root / "AI-MO/Kimina-Prover-Promptset/data/train-00000-of-00001.parquet",
            promptset_rows())
    wb = root / "internlm/Lean-Workbook"
    wb.mkdir(parents=True)
    (wb / "README.md").write_text("# Lean Workbook\nno configs in this card\n")
    (wb / "lean_workbook.json").write_text(json.dumps(workbook_problems(), ensure_ascii=False))
    parquet(wb / "wkbk_1009.parquet", workbook_steps())
    g = goedel_rows()
    parquet(root / "Goedel-LM/Goedel-Pset-v1/data/train-00000-of-00002.parquet", g[:1])
    parquet(root / "Goedel-LM/Goedel-Pset-v1/data/train-00001-of-00002.parquet", g[1:])
    parquet(root / "AI-MO/minif2f_test/data/train-00000-of-00001.parquet", kimina_minif2f_rows())
    return root


def test_lean_workbook_default_load_is_the_proof_steps_not_the_problems(tmp_path):
    # the trap docs/DATASETS.md describes, reproduced with datasets itself on the real layout
    from datasets import load_dataset
    wb = build_hub_mirror(tmp_path / "mirror") / "internlm/Lean-Workbook"
    default = load_dataset(str(wb), split="train")
    assert "status" in default.column_names and len(default) == len(workbook_steps())


def test_online_sources_in_their_real_hub_layouts(tmp_path):
    mirror = build_hub_mirror(tmp_path / "mirror")
    run_stage(tmp_path, "--run_name", "o", "--hf_mirror", str(mirror), "--max_win_rate", "0.9",
              "--rl_sources", "kimina_promptset,lean_workbook,goedel_pset", "--sft_sources",
              "numina_lean",
              "--eval_sets", "minif2f_test_kimina")
    out = out_dir(tmp_path, "o")
    rl = common.read_rows(out / "rl_prompts.parquet", "statements")
    sft = common.read_rows(out / "sft.parquet", "sft")
    ev = common.read_rows(out / "eval_minif2f_test_kimina.parquet", "statements")
    from lean_client import strip_lean_comments
    for r in rl + sft + ev:
        # headers parse: only header commands, no comment cut in half; the theorem intact
        assert all(l.split()[0] in ("import", "open", "set_option") for l in r["header"].split("\n")
                   if l.strip()), r
        assert r["header"].count("/-") == r["header"].count("-/") == 0
        assert r["formal_statement"].startswith(f"theorem {r['theorem_name']} ") and r["formal_statement"].endswith(":= by")
        assert strip_lean_comments(r["formal_statement"]) == r["formal_statement"]
    for rows in (rl, sft, ev):
        assert len({r["statement_id"] for r in rows}) == len(rows)
    by_id = {r["statement_id"]: r for r in rl}
    # the Promptset: its informal column is natural_language; duplicates became weights
    promo = by_id["kimina_promptset/0e9c7c0a-1"]
    assert promo["informal_problem"] == "Show that 2 + 2 = 4." and promo["weight"] == 3
    assert by_id["kimina_promptset/0e9c7c0a-3"]["weight"] == 2
    assert by_id["kimina_promptset/0e9c7c0a-2"]["formal_statement"] == "theorem number_theory_1 (x : ℝ) : x ^ 2 ≥ 0 := by"
    # Lean-Workbook: the problem file, never a disproved statement
    wb = sorted(k for k in by_id if k.startswith("lean_workbook/"))
    assert len(wb) == 3 and not any("lean_workbook_99" in by_id[k]["formal_statement"] for k in wb)
    assert by_id[wb[0]]["informal_problem"].startswith("Problem ")
    assert by_id["goedel_pset/goedel_2"]["informal_problem"] == "Show 6 ≤ 7."
    # Numina SFT: whole-file and tactic-only proofs and complete human proofs kept; helper lemmas,
    # with_sorry ground truths and win rates above the bar are not
    proofs = {r["statement_id"]: r["formal_proof"] for r in sft}
    assert set(proofs) == {"numina_lean/n-1", "numina_lean/n-3", "numina_lean/n-4"}
    assert proofs["numina_lean/n-1"] == "\n  have := ha\n  nlinarith [sq_nonneg (a - b)]"
    assert proofs["numina_lean/n-4"] == "\n  positivity"
    for r in sft:
        assert formats.extract_proof(r["completion"], r["formal_statement"]) == r["formal_proof"]
        assert r["informal_problem"].startswith("Problem ")
    # Kimina's miniF2F keeps informal_prefix in Kimina's form (the docstring as written)
    assert ev[0]["informal_problem"] == "/-- Show that $5 \\leq 6$.-/"
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["multiplicity"]["kimina_promptset"] == {"rows": 6, "unique": 3, "max_weight": 3}
    assert manifest["rejects_by_step"]["disproved"] == 1
    assert manifest["counts"]["rl/lean_workbook"]["true"] == 3
    assert manifest["eval_sources"]["minif2f_test_kimina"] == "AI-MO/minif2f_test"
    rej = common.read_rows(out / "rejects.parquet", "rejects")
    reasons = {r["statement_id"]: r["reason"] for r in rej}
    assert "aux before the theorem" in reasons["numina_lean/1"]
    assert "no proof" in reasons["numina_lean/4"]
    # --keep_duplicates keeps each deliberate copy as its own row, ids still unique
    run_stage(tmp_path, "--run_name", "k", "--hf_mirror", str(mirror), "--rl_sources",
              "kimina_promptset",
              "--sft_sources", "", "--keep_duplicates", "true")
    kept = common.read_rows(out_dir(tmp_path, "k") / "rl_prompts.parquet", "statements")
    assert len(kept) == 6 and len({r["statement_id"] for r in kept}) == 6


def test_deduplication_is_name_free_on_the_bundled_workbook_sample(tmp_path):
    # 441 rows of the 6k sample repeat an earlier row's statement under another theorem name
    run_stage(tmp_path, "--run_name", "w", "--rl_sources", "leanworkbook_6k", "--sft_sources", "",
              "--eval_sets", "proofnet_test")
    manifest = json.loads((out_dir(tmp_path, "w") / "manifest.json").read_text())
    c = manifest["counts"]["rl/leanworkbook_6k"]
    # 441 differ from an earlier row only in the theorem name; 89 more also rename bound variables
    assert c["true"] - c["deduplicated"] == 441 + 89, c
    rej = common.read_rows(out_dir(tmp_path, "w") / "rejects.parquet", "rejects")
    assert sum(r["step"] == "dedup" for r in rej) == 530


def test_proofnet_ids_are_unique_and_04_refuses_duplicates(tmp_path):
    run_stage(tmp_path, "--run_name", "pn", "--rl_sources", "", "--sft_sources", "", "--eval_sets",
              "proofnet_test")
    out = out_dir(tmp_path, "pn")
    rows = common.read_rows(out / "eval_proofnet_test.parquet", "statements")
    assert len(rows) == 186 and len({r["statement_id"] for r in rows}) == 186
    assert sum(r["theorem_name"] == "exercise_5_1" for r in rows) == 3
    # an eval file whose ids repeat is refused by 04, naming them
    bad = [{**r, "statement_id": "proofnet_test/exercise_5_1"}
           if r["theorem_name"] == "exercise_5_1" else r for r in rows]
    common.write_parquet(bad, tmp_path / "bad.parquet", "statements")
    proc = subprocess.run([sys.executable, str(ROOT / "04_eval.py"), "--run_name", "pn", "--model",
                           str(tmp_path),
                           "--benchmarks", str(tmp_path / "bad.parquet")], capture_output=True,
                          text=True,
                          env={**os.environ, "PROVER_RUNS_DIR": str(tmp_path / "runs"),
                               "LEAN_SERVER_API_URL": "http://127.0.0.1:9"})
    assert proc.returncode != 0 and "duplicate statement_id proofnet_test/exercise_5_1" in proc.stderr, proc.stderr[-800:]


def test_hub_unreachable_names_the_way_out(tmp_path):
    proc = run_stage(tmp_path, "--run_name", "h", "--rl_sources", "kimina_promptset",
                     "--sft_sources", "",
                     expect_ok=False)
    assert "cannot load AI-MO/Kimina-Prover-Promptset" in proc.stderr and "--hf_mirror" in proc.stderr


def test_a_killed_rerun_leaves_the_last_finished_outputs_as_they_were(tmp_path):
    """Issue #34: a crashed 01 rerun replaced good outputs with partial ones (sft.parquet went
    from 67 rows to 0) and later stages used them. Now 01 publishes only when it finishes; a
    kill -9 mid-run leaves the last outputs and their manifest; a folder whose manifest is
    missing, or older than its files, is refused by the stages that read it."""
    import signal
    import time
    args = ["--run_name", "k", "--rl_sources", "leanworkbook_6k", "--sft_sources",
            "minif2f_valid_proofs", "--eval_sets", "proofnet_test"]
    run_stage(tmp_path, *args)
    out = out_dir(tmp_path, "k")
    def outputs():   # the published files (the lock file holds whoever ran last)
        return {p.name: p.read_bytes() for p in out.iterdir()
                if p.is_file() and not p.name.startswith(".")}
    before = outputs()
    env = {**os.environ, "PROVER_RUNS_DIR": str(tmp_path / "runs")}
    proc = subprocess.Popen([sys.executable, str(ROOT / "01_prepare_data.py"), *args,
                             "--sft_sources", "minif2f_valid_proofs,leanworkbook_6k"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    staged = out / ".partial"
    deadline = time.monotonic() + 60
    part = staged / "rl_prompts.parquet.tmp"
    while time.monotonic() < deadline and not part.exists():
        time.sleep(0.005)   # kill it while it writes its replacements (a few seconds of it)
    assert part.exists()
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert staged.exists()
    assert outputs() == before and "manifest.json" in before
    assert len(common.read_rows(out / "sft.parquet", "sft")) == 67      # still readable, whole
    # a folder without its manifest, or with a file newer than it, is refused by name
    time.sleep(0.01)
    (out / "sft.parquet").touch()
    with pytest.raises(SystemExit, match="sft.parquet changed after .*manifest.json"):
        common.read_rows(out / "sft.parquet", "sft")
    (out / "manifest.json").unlink()
    with pytest.raises(SystemExit, match="01_data: no manifest.json"):
        common.read_rows(out / "rl_prompts.parquet", "statements")


def test_bad_files_and_rows_are_named_errors_or_rejects_never_tracebacks(tmp_path):
    """Issue #34: a JSONL line that is not an object, a .json that is not a list of objects, a
    non-UTF-8 .json, a cut Parquet file, an integer statement, a 1 MB statement."""
    good = {"name": "g", "formal_statement": "theorem g (x : ℕ) : x + 0 = x := by sorry"}
    jl = write_jsonl(tmp_path / "mixed.jsonl", [good, {"name": "i", "formal_statement": 7},
                                                {"name": "big", "formal_statement":
                                                 "theorem big : " + "1 + " * 300_000 + "1 = 1 := by"}],
                     extra_lines=[b"[1, 2]\n", b'"just a string"\n'])
    run_stage(tmp_path, "--run_name", "m", "--rl_sources", str(jl), "--sft_sources", "",
              "--eval_sets", "proofnet_test")
    rej = common.read_parquet(out_dir(tmp_path, "m") / "rejects.parquet", "rejects")
    reasons = " | ".join(rej.statement_id + ": " + rej.reason)
    assert "mixed.jsonl:4: line 4 is a JSON list, not an object" in reasons
    assert "mixed.jsonl:5: line 5 is a JSON str, not an object" in reasons
    assert "formal_statement is a int, not text" in reasons and "empty or missing" not in reasons
    assert "characters > --max_statement_chars 32768" in reasons
    assert len(common.read_rows(out_dir(tmp_path, "m") / "rl_prompts.parquet", "statements")) == 1
    for name, content, message in (
            ("top.json", json.dumps({"a": 1}).encode(), "holds a JSON dict, expected a list"),
            ("latin.json", '[{"formal_statement": "théorème"}]'.encode("latin-1"),
             "latin.json is not UTF-8 text"),
            ("broken.json", b'[{"formal_statement": ', "broken.json is not JSON (line 1"),
            ("cut.parquet", None, "cut.parquet is not a readable Parquet file")):
        path = tmp_path / name
        if content is None:   # a Parquet file cut in the middle of a write
            full = tmp_path / "full.parquet"
            pq.write_table(pa.table({"formal_statement": [good["formal_statement"]] * 50}), full)
            path.write_bytes(full.read_bytes()[:200])
        else:
            path.write_bytes(content)
        proc = run_stage(tmp_path, "--run_name", "b", "--rl_sources", str(path),
                         "--sft_sources", "", "--eval_sets", "proofnet_test", expect_ok=False)
        assert message in proc.stderr and "Traceback" not in proc.stderr, (name, proc.stderr[-800:])
    items = tmp_path / "items.json"
    items.write_text(json.dumps([good, 3, ["x"]]))
    run_stage(tmp_path, "--run_name", "j", "--rl_sources", str(items), "--sft_sources", "",
              "--eval_sets", "proofnet_test")
    rej = common.read_parquet(out_dir(tmp_path, "j") / "rejects.parquet", "rejects")
    assert list(rej.statement_id) == ["items.json:[1]", "items.json:[2]"]
