"""Goedel-Prover-V2's self-correction as its own code does it: the error string quoted from the
code Goedel compiles (formats.goedel_view). The expected bytes come from running Goedel's own
functions (Goedel-LM/Goedel-Prover-V2 commit 2e9036e) on the same answer; docs/FORMATS.md."""
import formats
from formats import lean_feedback as feedback


def test_goedel_error_string_is_quoted_from_the_code_goedel_compiles():
    # miniF2F mathd_algebra_478 (data/minif2f/goedel_v2_minif2f_test.jsonl) and an answer with
    # comments in its proof, checked as we check it: header + statement + proof, with the
    # client's #print axioms and closing mark appended. Expected: Goedel-Prover-V2 2e9036e's own
    # functions run on the same answer (src/utils.py DeepSeekCoTHandler.extrac_code and
    # problem_check, src/compile.py handle, get_error_str) with Lean's two errors placed on the
    # lines of its compiled text: header lines gone, comments removed (blank lines stay),
    # `:= by ` with the space left by the deleted `sorry`.
    from lean_client import LeanMessage, Verdict
    header = ("import Mathlib\nimport Aesop\n\nset_option maxHeartbeats 400000\n\n"
              "open BigOperators Real Nat Topology Rat\n\n")
    stmt = ("theorem mathd_algebra_478 (b h v : ℝ) (h₀ : 0 < b ∧ 0 < h ∧ 0 < v) "
            "(h₁ : v = 1 / 3 * (b * h))\n    (h₂ : b = 30) (h₃ : h = 13 / 2) : v = 65 := by")
    answer = (f"Plan: substitute.\n```lean4\n{header}{stmt}\n"
              "  -- substitute the base and the height\n  rw [h₂, h₃] at h₁\n"
              "  /- then compute -/\n  norm_num at h₁\n  linarith [h₀.1]\n```")
    proof = formats.extract_proof(answer, stmt, "deepseek_v2")
    code = (formats.build_lean_code(header, stmt, proof) + "\n\n#print axioms mathd_algebra_478"
            '\n\n#print "lean_client checked 0123456789ab"\n')
    at = {word: k + 1 for k, line in enumerate(code.split("\n"))
          for word in ("linarith", "norm_num") if word in line}
    v = Verdict("0", "invalid", code, messages=[
        LeanMessage("error", at["linarith"], 2, at["linarith"], 17,
                    "linarith failed to find a contradiction"),
        LeanMessage("error", at["norm_num"], 2, at["linarith"], 10, "unsolved goals")])
    goedel = (
        "\nError 1:\n\nCorresponding Code:\n```lean4\n  \n  rw [h₂, h₃] at h₁\n  \n"
        "  norm_num at h₁\n  <error>linarith [h₀.1]</error>\n\n```\n\n"
        "Error Message: linarith failed to find a contradiction\n\nError 2:\n\n"
        "Corresponding Code:\n```lean4\n    (h₂ : b = 30) (h₃ : h = 13 / 2) : v = 65 := by \n"
        "  \n  rw [h₂, h₃] at h₁\n  \n  <error>norm_num at h₁\n  linarith</error> [h₀.1]\n\n"
        "```\n\nError Message: unsolved goals\n")
    assert feedback(v, "goedel", round_idx=2) == (formats.GOEDEL_HEAD.format(r=1) + goedel
                                                       + formats.GOEDEL_TAIL)
    # the same text Goedel compiles, but for the empty line its docstring leaves at the top
    compiled, _ = formats.goedel_view(code, [])
    assert compiled == ("\n\n\ntheorem mathd_algebra_478 (b h v : ℝ) (h₀ : 0 < b ∧ 0 < h ∧ 0 < v) "
                        "(h₁ : v = 1 / 3 * (b * h))\n    (h₂ : b = 30) (h₃ : h = 13 / 2) : "
                        "v = 65 := by \n  \n  rw [h₂, h₃] at h₁\n  \n  norm_num at h₁\n"
                        "  linarith [h₀.1]")
