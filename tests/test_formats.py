"""Each prover family's prompt, byte for byte against what its public code or README builds, and
proof extraction from each family's answer shape."""
import json

import pytest

from conftest import ROOT
import formats
from canonical import split_header

DSV2_HEADER = "import Mathlib\nimport Aesop\n\nset_option maxHeartbeats 0\n\nopen BigOperators Real Nat Topology Rat\n\n"
MATHD_10 = "theorem mathd_algebra_10 : abs ((120 : ℝ) / 100 * 30 - 130 / 100 * 20) = 10 := by"
PLAN = ("Before producing the Lean 4 code to formally prove the given theorem, provide a "
        "detailed proof plan outlining "
        "the main proof steps and strategies.\nThe plan should highlight key ideas, "
        "intermediate lemmas, and proof "
        "structures that will guide the construction of the final formal proof.")


def test_deepseek_v2_matches_its_readme_example():
    # deepseek-ai/DeepSeek-Prover-V2 README.md, section "Quick Start": formal_statement (stripped) and
    # prompt.format(formal_statement), the template "Complete the following Lean 4 code:\n\n```lean4\n{}\n```\n\n..."
    readme_formal = (DSV2_HEADER + "/-- What is the positive difference between $120\\%$ "
                     "of 30 and $130\\%$ of 20? "
                     "Show that it is 10.-/\n" + MATHD_10 + "\n  sorry")
    expected = f"Complete the following Lean 4 code:\n\n```lean4\n{readme_formal}\n```\n\n{PLAN}"
    row = {"header": DSV2_HEADER, "formal_statement": MATHD_10,
           "informal_problem": "What is the positive difference between $120\\%$ of 30 and "
           "$130\\%$ of 20? Show that it is 10."}
    assert formats.first_turn(row, "deepseek_v2") == [{"role": "user", "content": expected}]


def goedel_rows():
    rows = [json.loads(l) for l in (ROOT / "data/minif2f/goedel_v2_minif2f_test.jsonl").open()]
    for r in rows:   # all 244: docstrings and comments byte for byte
        header, rest = split_header(r["formal_statement"])
        # as 01 stores it (01_prepare_data.to_record calls formats.docstring_body)
        informal = formats.docstring_body(r["informal_prefix"])
        yield r["formal_statement"], {"header": header, "informal_problem": informal,
                                      "formal_statement": rest[rest.index("theorem"):]}


def test_goedel_v2_matches_its_handler_on_its_own_data():
    # Goedel-Prover-V2 src/utils.py, DeepSeekCoTHandler.prover_inference: the dataset's lean4 code cut
    # at ':= by', then ':= by sorry' with the fence closed right after it; DeepSeekNonCoTHandler: ':= by', raw
    for lean4_code, row in goedel_rows():
        cot = f"Complete the following Lean 4 code:\n\n```lean4\n{lean4_code.split(':= by')[0]}:= by sorry```\n\n{PLAN}"
        assert formats.first_turn(row,
                                  "goedel_v2")[0]["content"] == cot, row["formal_statement"][:40]
        raw = f"Complete the following Lean 4 code:\n\n```lean4\n{lean4_code.split(':= by')[0]}:= by"
        assert formats.render(None, formats.prompt_messages(row, "deepseek_v2_noncot"),
                              "deepseek_v2_noncot") == raw


def test_goedel_v2_correction_turn_is_history_plus_feedback():
    _, row = next(goedel_rows())
    fb = formats.GOEDEL_HEAD.format(r=0) + "\nError 1:\n..." + formats.GOEDEL_TAIL
    msgs = formats.prompt_messages({**row, "prev_attempt": "answer 1", "lean_feedback": fb},
                                   "goedel_v2")
    assert [m["role"] for m in msgs] == ["user", "assistant", "user"]
    assert msgs[1]["content"] == "answer 1" and msgs[2]["content"].startswith("The proof (Round 0) is not correct.")
    # Goedel-Prover-V2 2e9036e src/utils.py generate_correction_prompt: round 2's prompt is the
    # previous prompt's messages + its assistant answer + the new feedback (the whole history)
    fb2 = formats.GOEDEL_HEAD.format(r=1) + "\nError 1:\n,,," + formats.GOEDEL_TAIL
    msgs2 = formats.prompt_messages({**row, "prev_attempt": "answer 2", "lean_feedback": fb2},
                                    "goedel_v2", earlier=[("answer 1", fb)])
    assert msgs2 == msgs + [{"role": "assistant", "content": "answer 2"},
                            {"role": "user", "content": fb2}]


def test_goedel_noncot_correction_prompt_is_its_handlers():
    # Goedel-Prover-V2 2e9036e src/utils.py DeepSeekNonCoTHandler.generate_correction_prompt,
    # run on this error string for correction rounds 1 and 2: only the error string is
    # commented out (not the CoT prompt's head and tail), with the failed attempt's round
    err = ("\nError 1:\n\nCorresponding Code:\n```lean4\n\ntheorem t (x : ℕ) (h : x = 2) : "
           "x + x = 5 := by \n  subst h\n  <error>norm_num</error>\n\n```\n\n"
           "Error Message: unsolved goals\n⊢ False\n\n")
    theirs = ("-- The previous proof attempt (Round {r}) resulted in compilation errors:\n"
              "-- Error 1:\n-- Corresponding Code:\n-- ```lean4\n-- theorem t (x : ℕ) "
              "(h : x = 2) : x + x = 5 := by \n--   subst h\n--   <error>norm_num</error>\n"
              "-- ```\n-- Error Message: unsolved goals\n-- ⊢ False\n-- Please provide a "
              "corrected version. Wrap the proof in ```lean4 and ```.")
    _, row = next(goedel_rows())
    for failed_round, earlier in ((1, []), (2, [("answer 1", "feedback 1")])):
        fb = formats.GOEDEL_HEAD.format(r=failed_round - 1) + err + formats.GOEDEL_TAIL
        msgs = formats.prompt_messages({**row, "prev_attempt": "answer", "lean_feedback": fb},
                                       "deepseek_v2_noncot", earlier=earlier)
        assert formats.render(None, msgs, "deepseek_v2_noncot") == theirs.format(
            r=failed_round - 1)


def test_stepfun_matches_its_demo():
    # stepfun-ai/StepFun-Prover-Preview demo/interact_with_lean4repl.py: system_prompt, and
    # user_prompt = f"```lean4\n{formal_problem}\n```" with formal_problem stripped
    demo_system = ("You will be given an unsolved Lean 4 problem. Think carefully and work "
                   "towards a solution. At any "
                   "point, you may use the Lean 4 REPL to check your progress by enclosing your "
                   "partial solution between "
                   "<sketch> and </sketch>. The REPL feedback will be provided between <REPL> "
                   "and </REPL>. Continue this "
                   "process as needed until you arrive at a complete and correct solution.")
    stmt = ("theorem test_theorem (x y z : ℝ) (hx : 0 < x) (hy : 0 < y) (hz : 0 < z) :\n"
            "    (x^2 - z^2) / (y + z) + (y^2 - x^2) / (z + x) + (z^2 - y^2) / (x + y) ≥ 0 := by")
    demo_problem = "\nimport Mathlib\n\n" + stmt + "\n"
    row = {"header": "import Mathlib\n\n", "formal_statement": stmt,
           "informal_problem": "ignored by StepFun"}
    assert formats.first_turn(row, "stepfun") == [{"role": "system", "content": demo_system},
                                                  {"role": "user",
                                                   "content": f"```lean4\n{demo_problem.strip()}\n```"}]


def test_kimina_matches_the_recipe_template():
    # docs/RECIPES.md (kimina-prover-rl prepare_data / prompt)
    row = {"header": "import Mathlib\n\n", "formal_statement": "theorem t : 1 = 1 := by",
           "informal_problem": "Show 1 = 1."}
    assert formats.first_turn(row, "kimina") == [
        {"role": "system",
         "content": "You are an expert in mathematics and proving theorems in Lean 4."},
        {"role": "user",
         "content": "Think about and solve the following problems step by step "
         "in Lean 4.\n\n# Problem:\n"
                                    "Show 1 = 1.\n\n# Formal Statement:\n```lean4\nimport "
         "Mathlib\n\ntheorem t : 1 = 1 := by\n```\n"}]


def test_oprover_round_is_one_compact_turn():
    row = {"header": "import Mathlib\n\n", "formal_statement": "theorem t : 2 + 2 = 4 := by",
           "informal_problem": ""}
    retrieved = [{"formal_statement": "theorem s : 1 + 1 = 2 := by", "proof": "\n  norm_num"}]
    first = formats.prompt_messages(row, "oprover", retrieved)
    again = formats.prompt_messages({**row,
                                     "prev_attempt": "```lean4\nimport Mathlib\n\ntheorem t : 2 + "
                                     "2 = 4 := by\n  omega\n```",
                                     "lean_feedback": "# Error 1:\nomega failed"}, "oprover",
                                    retrieved)
    assert len(first) == len(again) == 1 and first[0]["role"] == "user"
    text = again[0]["content"]
    for part in ("# Formal Statement:", "theorem s : 1 + 1 = 2 := by\n  norm_num",
                 "# Previous attempt:",
                 "  omega", "# Lean diagnostics:\n# Error 1:\nomega failed"):
        assert part in text
    assert "# Previous attempt" not in first[0]["content"]


@pytest.mark.parametrize("fmt,answer", [
    ("kimina", "<think>\nplan\n</think>\n```lean4\nimport Mathlib\n\n{stmt}\n  norm_num\n```"),
    ("deepseek_v2",
     "### Proof plan\n1. compute\n\n```lean4\nimport Mathlib\nimport Aesop\n\n/-- doc "
     "-/\n{stmt}\n  norm_num\n```"),
    ("goedel_v2", "analysis...\n```lean4\n{stmt}\n  norm_num\n```\n"),
    ("stepfun",
     "<think>\n<sketch>\n{stmt}\n  "
     "simp\n</sketch>\n<REPL>\n{{}}\n</REPL>\n</think>\n```lean4\nimport "
     "Mathlib\n\n{stmt}\n  norm_num\n```"),
])
def test_extraction_from_each_familys_answer_shape(fmt, answer):
    text = answer.format(stmt=MATHD_10)
    assert formats.extract_proof(text, MATHD_10) == "\n  norm_num"
    assert formats.format_errors(text, MATHD_10, require_tactic_blocks=False, fmt=fmt) == []


def test_format_chosen_from_the_model_name():
    assert formats.format_for("AI-MO/Kimina-Prover-RL-1.7B") == "kimina"
    assert formats.format_for("deepseek-ai/DeepSeek-Prover-V2-7B") == "deepseek_v2"
    assert formats.format_for("Goedel-LM/Goedel-Prover-V2-8B") == "goedel_v2"
    assert formats.format_for("stepfun-ai/StepFun-Prover-Preview-7B") == "stepfun"
    assert formats.format_for("runs/x/02_sft/final/model") == "kimina"
    assert formats.format_for("runs/x/02_sft/final/model", mode="tool") == "stepfun"
    # overridable
    assert formats.format_for("AI-MO/Kimina-Prover-RL-1.7B", "goedel_v2") == "goedel_v2"
    with pytest.raises(ValueError, match="unknown prompt format"):
        formats.format_for("x", "llama")


def test_sft_targets_take_the_formats_answer_shape(tmp_path):
    # 01 --prompt_format X builds SFT targets in X's answer shape; 02 refuses to train another format on them
    import os
    import subprocess
    import sys
    import common
    env = {**os.environ, "PROVER_RUNS_DIR": str(tmp_path / "runs")}
    subprocess.run([sys.executable, str(ROOT / "01_prepare_data.py"), "--run_name", "f",
                    "--rl_sources", "",
                    "--sft_sources", "minif2f_valid_proofs", "--eval_sets", "proofnet_test",
                    "--prompt_format", "deepseek_v2"], check=True, capture_output=True, env=env)
    rows = common.read_rows(tmp_path / "runs/f/01_data/sft.parquet", "sft")
    for r in rows:
        assert not r["completion"].startswith("<think>") and r["completion"].rstrip().endswith("```")
        assert formats.extract_proof(r["completion"], r["formal_statement"]) == r["formal_proof"]
        assert formats.format_errors(r["completion"], r["formal_statement"],
                                     fmt="deepseek_v2") == []
    proc = subprocess.run([sys.executable, str(ROOT / "02_sft.py"), "--run_name", "f", "--preset",
                           "tiny",
                           "--max_steps", "1", "--prompt_format", "kimina"], capture_output=True,
                          text=True,
                          env=env)
    assert proc.returncode != 0 and "SFT targets for prompt format 'deepseek_v2'" in proc.stderr
    # auto (the default) trains in the format 01 wrote the targets in, and says so in config.json
    proc = subprocess.run([sys.executable, str(ROOT / "02_sft.py"), "--run_name", "f", "--preset",
                           "tiny",
                           "--max_steps", "1", "--save_every", "0", "--eval_every", "0"],
                          capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    import json
    assert json.loads((tmp_path / "runs/f/02_sft/config.json").read_text())["prompt_format"] == "deepseek_v2"


def test_decision_index_is_the_proofs_first_token():
    import generation
    from pathlib import Path
    import tempfile
    folder = generation.build_tiny_model(["theorem t : 2 + 2 = 4 := by\n  omega rfl decide"] * 20,
                                         Path(tempfile.mkdtemp()) / "tiny")
    tok = generation.load_tokenizer(str(folder))
    stmt = "theorem t : 2 + 2 = 4 := by"
    text = f"<think>\nplan: {stmt}\n</think>\n```lean4\nimport Mathlib\n\n{stmt}\n  omega\n```"
    ids = tok(text, add_special_tokens=False).input_ids
    at = formats.decision_index(tok, text, ids, stmt)
    # the last copy, not the plan's
    assert tok.decode(ids[at:]).lstrip().startswith("omega")
    assert not tok.decode(ids[:at]).rstrip().endswith("omega")
    assert formats.decision_index(tok, "no statement here", [1, 2], stmt) is None


def test_benchmark_docstrings_are_written_back_byte_for_byte(tmp_path):
    # DeepSeek-Prover-V1.5's miniF2F (data/minif2f/deepseek_v15_minif2f.jsonl): header +
    # informal_prefix + formal_statement is the whole file DeepSeek-/Goedel-style prompts show.
    # Through 01 as a user runs it, every row comes back as written; imo_1964_p1_2's docstring
    # ends "\n-/", which rebuilding it from stripped text lost.
    import os
    import subprocess
    import sys
    import common
    from lean_client import normalize_statement
    env = {**os.environ, "PROVER_RUNS_DIR": str(tmp_path / "runs")}
    subprocess.run([sys.executable, str(ROOT / "01_prepare_data.py"), "--run_name", "d",
                    "--rl_sources", "", "--sft_sources", "",
                    "--eval_sets", "minif2f_test,minif2f_valid"], check=True, capture_output=True,
                   env=env)
    source = {r["name"]: r for r in map(json.loads,
                                        (ROOT / "data/minif2f/deepseek_v15_minif2f.jsonl").open())}
    seen = 0
    for split in ("test", "valid"):
        for row in common.read_rows(tmp_path / f"runs/d/01_data/eval_minif2f_{split}.parquet",
                                    "statements"):
            raw = source[row["theorem_name"]]
            want = raw["header"] + raw["informal_prefix"] + normalize_statement(raw["formal_statement"])
            assert formats.lean_file(row) == want, row["theorem_name"]
            seen += 1
    assert seen == len(source) == 488 and "\n-/" in source["imo_1964_p1_2"]["informal_prefix"]


def test_deepseek_noncot_continuations_are_checked_as_deepseek_does(standin):
    """DeepSeek-Prover-V1.5 (deepseek-ai/DeepSeek-Prover-V1.5 2c4ba91, prover/utils.py
    post_process_output and prover/workers/search.py _post_process): the model continues the
    file after `:= by`; the proof is its output up to the first ```, and Lean checks
    header + formal_statement + that proof. Before, nothing was extracted: every answer scored 0."""
    from conftest import HEADER
    from lean_client import LeanClient
    row = {"statement_id": "s", "header": HEADER, "formal_statement": "theorem t : 1 + 1 = 2 := by",
           "informal_problem": ""}
    prompt = formats.render(None, formats.prompt_messages(row, "deepseek_v2_noncot"),
                            "deepseek_v2_noncot")
    assert prompt.endswith(":= by")
    right, wrong = "\n  rfl\n```\nextra text after the fence", "\n  omega\n```"
    assert formats.extract_proof(right, row["formal_statement"], "deepseek_v2_noncot") == "\n  rfl"
    assert formats.extract_proof("```", row["formal_statement"], "deepseek_v2_noncot") is None
    assert formats.format_errors(right, row["formal_statement"], fmt="deepseek_v2_noncot") == []
    verdicts = formats.verify_completions(LeanClient(standin), [row] * 3,
                                          [right, wrong, "```"], "deepseek_v2_noncot")
    assert verdicts[0].ok and verdicts[0].code == HEADER + "theorem t : 1 + 1 = 2 := by\n  rfl"
    assert verdicts[1].status == "lean_error" and verdicts[2] is None
    # the SFT target of the format is the same shape: a continuation closed by a fence
    target = formats.target_completion("deepseek_v2_noncot", HEADER, row["formal_statement"],
                                       "\n  rfl", "")
    assert formats.extract_proof(target, row["formal_statement"], "deepseek_v2_noncot") == "\n  rfl"


def test_kimina_preview_distill_is_prompted_as_its_card_and_picked_by_name():
    # Goedel-LM/Goedel-Prover-V2 2e9036e, src/utils.py, KiminaCoTHandler.prover_inference (its
    # comment points at the AI-MO/Kimina-Prover-Preview-Distill-7B card): the whole file cut at
    # ':= by'; "# Problem:" + its lines that are not import/set_option/open or blank; the system
    # text "You are an expert in mathematics and Lean 4."
    for lean4_code, row in list(goedel_rows())[:30]:
        stmt = lean4_code.split(":= by")[0] + ":= by"
        problem = "\n".join(line for line in stmt.splitlines()
                            if not (line.startswith("import") or line.startswith("set_option")
                                    or line.startswith("open") or line.strip() == ""))
        user = "Think about and solve the following problem step by step in Lean 4."
        user += f"\n# Problem:{problem}"
        user += f"\n# Formal statement:\n```lean4\n{stmt}\n```\n"
        assert formats.first_turn(row, "kimina_preview") == [
            {"role": "system", "content": "You are an expert in mathematics and Lean 4."},
            {"role": "user", "content": user}], row["formal_statement"][:40]
    # auto picks by model name: the Preview family is not the RL recipe's
    assert formats.format_for("AI-MO/Kimina-Prover-Preview-Distill-7B") == "kimina_preview"
    assert formats.format_for("AI-MO/Kimina-Prover-Distill-1.7B") == "kimina"
    assert formats.format_for("AI-MO/Kimina-Prover-RL-1.7B") == "kimina"
    assert formats.FEEDBACK_STYLE["kimina_preview"] == "goedel"   # Goedel's correction turn


def test_a_reflowed_statement_is_checked_as_each_family_does(standin):
    """Goedel-Prover-V2 (2e9036e, src/utils.py replace_statement_in_proof, used by its handlers'
    problem_check): the last lean4 block, comments removed, the text after its first
    `theorem ... := by`, under the ORIGINAL statement. A model that writes a two-line statement
    on one line is then checked, not dropped. Kimina's recipe stays strict (the block must hold
    the statement verbatim)."""
    from conftest import HEADER
    from lean_client import LeanClient
    stmt = "theorem t (x : ℕ)\n    (h : x = 2) : x + 1 = 3 := by"
    row = {"statement_id": "r", "header": HEADER, "formal_statement": stmt, "informal_problem": ""}
    reflowed = (f"plan\n\n```lean4\n{HEADER}/-- doc -/\ntheorem t (x : ℕ) (h : x = 2) : x + 1 = 3 "
                ":= by -- the statement on one line\n  subst h\n  rfl\n```")
    want = " \n  subst h\n  rfl"   # after `:= by`, Goedel's comment removal leaving the space
    for fmt in ("goedel_v2", "deepseek_v2", "kimina_preview"):
        assert formats.extract_proof(reflowed, stmt, fmt) == want, fmt
        assert formats.format_errors(reflowed, stmt, fmt=fmt) == [], fmt
    assert formats.extract_proof(reflowed, stmt, "kimina") is None
    [v] = formats.verify_completions(LeanClient(standin), [row], [reflowed], "goedel_v2")
    assert v.code == HEADER + stmt + want                      # the original statement is checked
    # no theorem in the block, or no block: nothing to check
    assert formats.extract_proof("```lean4\nexample : 1 = 1 := by rfl\n```", stmt, "goedel_v2") is None
    assert formats.extract_proof("no code", stmt, "goedel_v2") is None


def test_goedel_gives_no_correction_turn_to_an_attempt_without_a_result():
    # Goedel-Prover-V2 2e9036e, src/utils.py load_data_for_correction: `if "errors" not in
    # comp_data["result"]: continue` - a timed-out compile gets no correction prompt at all
    from lean_client import Verdict
    timeout = Verdict("x", "timeout", "theorem t : 1 = 1 := by\n  rfl", error="timed out")
    assert formats.lean_feedback(timeout, "goedel") == ""
    assert formats.lean_feedback(timeout, "kimina").startswith("# System Error:")   # Kimina's own
