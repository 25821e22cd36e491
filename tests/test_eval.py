"""04_eval.py: metrics, recompute on recorded verdicts, proof bank, repair and tool loops,
resume."""
import importlib.util
import itertools
import json
import os
import subprocess
import sys

import pytest

from conftest import ROOT
import common
import agent_loops
import generation
import formats
import proof_memory
from lean_client import LeanClient

spec = importlib.util.spec_from_file_location("ev", ROOT / "04_eval.py")
ev = importlib.util.module_from_spec(spec)
spec.loader.exec_module(ev)

INTERNLM = ROOT / "data/proofs/internlm_math_minif2f_test_proofsearch_output.zip"


def test_recompute_internlm_verdicts(tmp_path, monkeypatch):
    monkeypatch.setattr(common, "PROJECT_ROOT", tmp_path)   # results/ go to tmp
    monkeypatch.setattr(common, "RESULTS_ROOT", tmp_path / "results")
    monkeypatch.setattr(common, "RUNS_ROOT", tmp_path / "runs")
    solved = ev.main(["--mode", "recompute", "--verdicts", str(INTERNLM), "--bootstrap", "100"])
    assert solved == {"internLM2-7b": 74, "internLM2-20b": 72, "internLM2-plus-7b": 106,
                      "internLM2-plus-20b": 102}
    # like every stage: its settings and a manifest (written last) naming every table it wrote
    out = tmp_path / "runs/default/04_eval/recompute/internlm_math_minif2f_test_proofsearch_output"
    assert json.loads((out / "config.json").read_text())["mode"] == "recompute"
    listed = json.loads((out / "manifest.json").read_text())["files"]
    assert "internLM2-7b_recompute.md" in listed and "pass_at_k.png" in listed
    table = (tmp_path / "results/internlm_math_minif2f_test_proofsearch_output/internLM2-7b_recompute.md").read_text()
    assert "| 1 | 30.33 |" in table and "74 / 244" in table      # 74 / 244 = 30.33%


def brute(n, c, k):
    s = [1] * c + [0] * (n - c)
    sub = list(itertools.combinations(range(n), k))
    return sum(any(s[i] for i in x) for x in sub) / len(sub)


def test_recompute_per_sample_arrays(tmp_path, monkeypatch):
    monkeypatch.setattr(common, "PROJECT_ROOT", tmp_path)
    monkeypatch.setattr(common, "RESULTS_ROOT", tmp_path / "results")
    rows = [{"statement_id": "a", "benchmark": "b", "successes": [1, 0, 0, 0]},
            {"statement_id": "c", "benchmark": "b", "successes": [0, 0, 1, 1]},
            {"statement_id": "d", "benchmark": "b", "successes": [0, 0, 0, 0]}]
    f = tmp_path / "v.jsonl"
    f.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    ev.main(["--mode", "recompute", "--verdicts", str(f), "--bootstrap", "0"])
    with open(tmp_path / "results/v/b_recompute.csv") as fh:
        got = {int(r["k"]): float(r["pass"]) for r in __import__("csv").DictReader(fh)}
    for k in (1, 2, 4):
        assert got[k] == pytest.approx((brute(4, 1, k) + brute(4, 2, k) + 0) / 3)
    f.write_text('{"statement_id": "a", "benchmark": "b"}\n')
    with pytest.raises(SystemExit, match=r"v.jsonl:1: expected"):
        ev.main(["--mode", "recompute", "--verdicts", str(f)])


def test_pass_at_k_table_and_ks():
    table = ev.pass_at_k_table({"a": [True, False], "b": [False, False]}, [1, 2], 200, 0)
    assert [r["pass"] for r in table] == [0.25, 0.5]
    assert all(r["ci_low"] <= r["pass"] <= r["ci_high"] for r in table)
    assert ev.default_ks(32) == [1, 2, 4, 8, 16, 32] and ev.default_ks(6) == [1, 2, 4, 6]
    assert ev.pass_at_k_table({"a": [True]}, [2], 0, 0) == []   # no problem has 2 samples


# ---------------------------------------------------------------- proof memory

def minif2f(split):
    return [json.loads(l) for l in (ROOT / "data/minif2f/deepseek_v15_minif2f.jsonl").open()
            if json.loads(l)["split"] == split]


def test_memory_never_holds_the_scored_problems():
    shipped = proof_memory.shipped_proofs()
    assert len(shipped) == 67 + 197
    mem = proof_memory.ProofMemory(shipped, minif2f("test"))
    assert len(mem.rows) == 67 and mem.left_out == 197        # every Kimina miniF2F-test proof is
                                                              # left out
    assert {r["source"] for r in mem.rows} == {"deepseek_v15_minif2f_valid_few_shot"}
    # scoring only miniF2F-valid instead: the valid proofs are left out, the test proofs go in
    assert len(proof_memory.ProofMemory(shipped, minif2f("valid")).rows) == 197


def entry(i, st):
    return {"statement_id": f"s{i}", "formal_statement": st, "header": "", "proof": " norm_num",
            "source": "t", "run": "t"}


def test_bm25_retrieves_similar_statements_and_never_the_problem_itself():
    mem = proof_memory.ProofMemory([entry(i, st) for i, st in enumerate([
        "theorem a : 2 + 3 = 5 := by", "theorem b (x : ℝ) (h : "
                                       "0 < x) : 0 < x ^ 2 := by", "theorem c : 7 ∣ 21 := by"])],
                                   [])
    got = mem.retrieve("theorem q (y : ℝ) (hy : 0 < y) : 0 < y ^ 2 + y := by", 1, "q")
    assert got[0]["statement_id"] == "s1"
    assert all(r["statement_id"] != "s1"
               for r in mem.retrieve(mem.rows[1]["formal_statement"], 3, "s1"))


def test_retrieval_excludes_the_problem_under_another_id_name_or_binders():
    # before: only the same id or the identical statement text was excluded
    mem = proof_memory.ProofMemory([entry(0,
                                          "theorem mathd_1 (x : ℝ) (h : 0 < x) : 0 < x ^ 2 := by"),
                                    entry(1, "theorem other (a : ℕ) : a + 0 = a := by")], [])
    # alpha-equivalent, new name
    renamed = "theorem copy_1 (y : ℝ) (hy : 0 < y) : 0 < y ^ 2 := by"
    same_name = "theorem mathd_1 (z : ℝ) : 0 ≤ z ^ 2 := by"                  # same theorem name
    for stmt in (renamed, same_name):
        assert all(r["statement_id"] != "s0" for r in mem.retrieve(stmt, 2, "bench/other_id")), stmt


def test_memory_is_frozen_keyed_and_saved(tmp_path):
    rows = [entry(0, "theorem a : 2 + 3 = 5 := by")]
    mem = proof_memory.ProofMemory(rows, [])
    with pytest.raises(RuntimeError, match="frozen"):
        mem.add_found(entry(1, "theorem b : 1 = 1 := by"))
    other = proof_memory.ProofMemory(rows + [entry(1, "theorem b : 1 = 1 := by")], [])
    assert mem.key != other.key                                # built from other proofs: another
                                                               # artifact
    assert mem.save(tmp_path).name == f"memory_{mem.key}.parquet"
    assert common.read_rows(tmp_path / f"memory_{mem.key}.parquet",
                            "proof_bank")[0]["statement_id"] == "s0"
    online = proof_memory.ProofMemory(rows, [], online=True)
    assert online.add_found(entry(1, "theorem b : 1 = 1 := by")) and "+online" in online.name


# ---------------------------------------------------------------- repair and tool loops (scripted model)

HEADER = "import Mathlib\n\n"


class Scripted:
    """Stands in for the model in loop tests: answers from a function of the prompt."""

    def __init__(self, answer, tok=None):
        self.answer, self.prompts, self.tok = answer, [], tok

    def generate(self, prompts, seeds, max_new_tokens, temperature=1.0, top_p=1.0, stop=(),
                 greedy=False):
        out = []
        for p in prompts:
            if not isinstance(p, str):   # the tool loop continues from token ids
                p = self.tok.decode(p)
            self.prompts.append(p)
            text, finish = self.answer(p)
            ids = self.tok(text, add_special_tokens=False).input_ids if self.tok else [1] * 5
            out.append(generation.Generation(text, ids, [0.0] * len(ids), finish))
        return out


def answer_block(stmt, tactic):
    return f"<think>\nx\n</think>\n```lean4\n{HEADER}{stmt}\n  {tactic}\n```"


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    return str(generation.build_tiny_model(["hello <think> lean4 theorem"] * 10,
                                           tmp_path_factory.mktemp("m") / "tiny"))


def make_evaluator(cfg, tiny_model, url, answer):
    e = ev.Evaluator(cfg, tiny_model, LeanClient(url))
    e.gen = Scripted(answer, e.tok)
    return e


def toy_rows(n):
    return [{"statement_id": f"toy/{i}", "source": "toy", "split": "test", "header": HEADER,
             "formal_statement": f"theorem t{i} : {i} + 1 = {i + 1} := by", "informal_problem": ""}
            for i in range(n)]


def test_repair_loop_stops_feeds_back_and_keeps_the_memory_frozen(tmp_path, tiny_model, standin):
    cfg = ev.Settings(mode="repair", repair_width=2, repair_depth=3, retrieve_k=2, run_name="r")
    rows = toy_rows(3)

    def answer(prompt):
        stmt = next(r["formal_statement"] for r in rows if r["formal_statement"] in prompt)
        if "toy/2" in prompt or "t2 :" in prompt:
            return answer_block(stmt, "omega"), "eos"          # never fixed: runs all rounds
        # round 1 is wrong; a round that sees Lean's feedback gets it right
        return answer_block(stmt, "rfl" if "The rfl tactic failed" in prompt
                            or "omega could not" in prompt
                            else "omega"), "eos"
    e = make_evaluator(cfg, tiny_model, standin, answer)
    memory = proof_memory.ProofMemory([{"statement_id": "seed/1",
                                        "formal_statement": "theorem s : 5 + 5 = 10 := by",
                                        "header": HEADER, "proof": "\n  rfl", "source": "seed",
                                        "run": "x"}], rows)
    log, repair_rows, found = ev.SampleLog(tmp_path / "s"), [], []
    e.run_problems("toy", rows, log, memory, repair_rows, found)
    by = {(r["statement_id"], r["sample_idx"]): [x for x in log.rows
                                                 if x["statement_id"] == r["statement_id"]
                                                 and x["sample_idx"] == r["sample_idx"]]
          for r in log.rows}
    for (sid, k), recs in by.items():
        rounds = [x["round"] for x in recs]
        if sid == "toy/2":
            assert rounds == [1, 2, 3] and not any(x["ok"] for x in recs)    # depth is the budget
        else:
            # stops at the first proof
            assert rounds == [1, 2] and [x["ok"] for x in recs] == [False, True]
            assert "omega could not prove the goal" in recs[1]["prompt"]   # feedback inserted
            assert "# Verified proofs of similar statements" in recs[1]["prompt"]
    # the proofs found go to their own list, never into the memory the evaluation reads
    assert {r["statement_id"] for r in memory.rows} == {"seed/1"}
    assert sorted({r["statement_id"] for r in found}) == ["toy/0", "toy/1"] and len(found) == 4
    for p in e.gen.prompts:
        own = next(r for r in rows if r["formal_statement"] in p.split("# Verified proofs")[0])
        retrieved = p.split("# Verified proofs of similar statements:")[1].split("<|im_end|>")[0]
        assert own["formal_statement"] not in retrieved
    assert len(repair_rows) == 4 and all(r["prev_attempt"] and r["lean_feedback"]
                                         for r in repair_rows)
    common.write_parquet(repair_rows, tmp_path / "repair_sft.parquet", "sft")   # the SFT schema
    # 02 trains a repair row on the very prompt the round was deployed with (retrieved proofs included)
    sft_spec = importlib.util.spec_from_file_location("sft", ROOT / "02_sft.py")
    sft = importlib.util.module_from_spec(sft_spec)
    sft_spec.loader.exec_module(sft)
    back = common.read_rows(tmp_path / "repair_sft.parquet", "sft")
    examples, _ = sft.tokenize_rows(back, e.tok, sft.Settings(prompt_format=e.fmt))
    fixes = [x for x in log.rows if x["ok"] and x["round"] > 1]
    assert len(examples) == len(fixes) == 4
    for ex, fix in zip(examples, fixes):
        n_prompt = next(i for i, t in enumerate(ex["labels"]) if t != -100)
        assert e.tok.decode(ex["input_ids"][:n_prompt]) == fix["prompt"]


def test_tool_loop_is_stepfuns(tmp_path, tiny_model, standin):
    # StepFun-Prover-Preview demo/interact_with_lean4repl.py: its system prompt, the problem as a
    # fenced lean4 user turn, the REPL's JSON appended as "\n<REPL>\n{json}\n</REPL>"
    cfg = ev.Settings(mode="tool", n_samples=1, run_name="t")
    rows = toy_rows(2)

    def answer(prompt):
        stmt = next(r["formal_statement"] for r in rows if r["formal_statement"] in prompt)
        if prompt.endswith("</REPL>") and '"severity": "error"' not in prompt.split("<REPL>")[-1]:
            return answer_block(stmt, "rfl"), "eos"
        checks = prompt.count("\n<REPL>\n")      # the system prompt names the tags too
        if stmt.startswith("theorem t1") and checks >= 3:
            return "I give up.", "eos"
        tactic = "rfl" if checks and not stmt.startswith("theorem t1") else "omega"
        return f"<think>\ntry\n<sketch>\nimport Mathlib\n{stmt}\n  {tactic}\n</sketch>", "stop"
    e = make_evaluator(cfg, tiny_model, standin, answer)
    # tool mode: StepFun's format by default
    assert e.fmt == "stepfun"
    log = ev.SampleLog(tmp_path / "s")
    e.run_problems("toy", rows, log, None, [])
    rec = {r["statement_id"]: r for r in log.rows}
    assert rec["toy/0"]["ok"] and rec["toy/0"]["completion"].count("\n<REPL>\n") == 2
    first_repl = json.loads(rec["toy/0"]["completion"].split("\n<REPL>\n")[1].split("\n</REPL>")[0])
    assert first_repl["messages"][0]["severity"] == "error"
    # counted in the sketch, Mathlib preloaded
    assert first_repl["messages"][0]["pos"]["line"] == 2
    assert "omega could not prove the goal" in first_repl["messages"][0]["data"]
    # no fixed cap
    assert not rec["toy/1"]["ok"] and rec["toy/1"]["completion"].count("\n<REPL>\n") == 3
    first_prompt = e.gen.prompts[0]
    assert formats.STEPFUN_SYSTEM in first_prompt
    assert f"<|im_start|>user\n```lean4\n{HEADER}{rows[0]['formal_statement']}\n```<|im_end|>" in first_prompt
    assert all(p.endswith("</REPL>") for p in e.gen.prompts if "\n<REPL>\n" in p)
    # as the demo's run_sketch passes it: no `env` key (a clean sketch would show {})
    assert all('"env"' not in p.split("<REPL>")[-1] for p in e.gen.prompts if "</REPL>" in p)


def test_the_sketch_run_is_the_one_stepfuns_demo_takes():
    # demo/interact_with_lean4repl.py (stepfun-ai/StepFun-Prover-Preview 78ac29e): the text
    # between response_text.find('<sketch>') and response_text.find('</sketch>'), with
    # `import Mathlib` removed and stripped
    seg = "a <sketch>\nimport Mathlib\nfirst\n more <sketch>\nsecond\n</sketch>"
    assert agent_loops.sketch_of(seg) == "first\n more <sketch>\nsecond"
    assert agent_loops.sketch_of("no sketch </sketch>") is None


def test_tool_loop_ends_at_the_context_budget(tmp_path, tiny_model, standin):
    # the budget is the whole context: prompt + generated + REPL tokens (StepFun's max_seq_len)
    rows = toy_rows(1)
    e = make_evaluator(ev.Settings(mode="tool", n_samples=1, run_name="b"), tiny_model, standin,
                       None)
    prompt = e.prompt(rows[0])
    n_prompt = len(e.tok(prompt, add_special_tokens=False).input_ids)

    class Sketcher(Scripted):   # always a sketch: only the budget can stop it
        def generate(self, prompts, seeds, max_new_tokens, *a, **k):
            self.prompts += prompts
            self.caps = getattr(self, "caps", []) + [max_new_tokens]
            return [generation.Generation("<sketch>\ntheorem t0 : 0 + 1 = 1 "
                                          ":= by\n  omega\n</sketch>", [1] * 5,
                                          [0.0] * 5, "stop") for _ in prompts]
    e.gen = Sketcher(None)
    e.cfg.tool_budget = n_prompt + 1000
    (text, generated), = e.tool_generate([prompt], [0])
    trace, = agent_loops.tool_rollouts(e.gen, e.tok, e.client, [prompt], [0],
                                       max_new_tokens=e.cfg.max_new_tokens,
                                       budget=e.cfg.tool_budget)
    assert (trace.text, trace.generated) == (text, generated)
    n_final = n_prompt + len(trace.token_ids)            # the context in tokens, as the model saw
                                                         # it
    calls = generated // 5
    # the last call may cross it
    assert calls >= 2 and text.count("\n<REPL>\n") in (calls - 1, calls)
    # it ran until the context was full
    assert n_final >= e.cfg.tool_budget and trace.finish == "budget"
    # where the last segment began
    last_start = len(trace.loss_mask) - trace.loss_mask[::-1].index(1 - trace.loss_mask[-1])
    # ... and not a segment longer
    assert n_prompt + last_start < e.cfg.tool_budget
    assert all(c <= e.cfg.tool_budget - n_prompt for c in e.gen.caps)  # no call may pass the budget
    assert sum(trace.loss_mask) == generated and trace.logprobs.count(0.0) >= len(trace.loss_mask) - sum(trace.loss_mask)
    e.cfg.tool_max_checks = 1                                          # the cap, as a setting
    (text, _), = e.tool_generate([prompt], [0])
    assert text.count("\n<REPL>\n") == 1


# ---------------------------------------------------------------- whole stage: resume, outputs

def test_single_mode_resumes_and_writes_tables_and_plots(tmp_path, tiny_model, standin,
                                                         monkeypatch):
    monkeypatch.setattr(common, "RUNS_ROOT", tmp_path / "runs")
    monkeypatch.setattr(common, "PROJECT_ROOT", tmp_path)
    monkeypatch.setattr(common, "RESULTS_ROOT", tmp_path / "results")
    monkeypatch.setenv("LEAN_SERVER_API_URL", standin)
    subprocess.run([sys.executable, str(ROOT / "01_prepare_data.py"), "--task", "toy", "--run_name",
                    "e",
                    "--toy_n_statements", "100"], check=True, capture_output=True,
                   env={**os.environ, "PROVER_RUNS_DIR": str(tmp_path / "runs")})
    args = ["--run_name", "e", "--model", tiny_model, "--tag", "tiny", "--n_samples", "4",
            "--max_new_tokens", "8",
            "--max_problems", "5", "--problems_per_chunk", "2", "--bootstrap", "50"]
    ev.main(args)
    log = tmp_path / "runs/e/04_eval/tiny/toy/single/n4-t8/samples.jsonl"
    lines = log.read_text().splitlines()
    assert len(lines) == 20
    first = {(json.loads(l)["statement_id"],
              json.loads(l)["sample_idx"]): json.loads(l)["completion"] for l in lines}
    # a crash: half the samples lost, the last line cut in the middle
    log.write_text("\n".join(lines[:9]) + "\n" + lines[9][:20])
    calls = []
    real = generation.HFGenerator.generate
    monkeypatch.setattr(generation.HFGenerator, "generate", lambda self, p, *a,
                        **k: calls.append(len(p)) or real(self, p, *a, **k))
    ev.main(args)
    rows = [json.loads(l) for l in log.read_text().splitlines()]   # every line whole again
    assert sum(calls) == 11                                    # only the lost samples were drawn
                                                               # again
    done = {(r["statement_id"], r["sample_idx"]): r["completion"] for r in rows}
    assert done == first                                       # same seeds, same samples
    res = tmp_path / "results/e/tiny"
    assert "| 4 |" in (res / "toy_single_n4-t8.md").read_text()
    assert (res / "pass_at_k_single_n4-t8.png").stat().st_size > 5000
    assert common.read_parquet(tmp_path / "runs/e/04_eval/tiny/toy/single/n4-t8/samples.parquet",
                               "samples").shape[0] == 20
    # another budget: its own samples and its own table (before: nothing new, old samples relabelled)
    calls.clear()
    ev.main([a if a != "8" else "6" for a in args])
    assert sum(calls) == 20 and (res / "toy_single_n4-t6.md").exists() and (res / "toy_single_n4-t8.md").exists()
    # other sample settings under the same budget: refused, naming the setting
    with pytest.raises(SystemExit, match="temperature was 1.0, now 0.5"):
        ev.main(args + ["--temperature", "0.5"])


def test_correction_mode_reports_before_and_after(tmp_path, tiny_model, standin):
    cfg = ev.Settings(mode="correction", n_samples=2, run_name="c")
    rows = toy_rows(2)

    def answer(prompt):   # wrong first; right once Lean's feedback is in the conversation
        stmt = next(r["formal_statement"] for r in rows if r["formal_statement"] in prompt)
        return answer_block(stmt, "rfl" if "# Error 1:" in prompt else "omega"), "eos"
    e = make_evaluator(cfg, tiny_model, standin, answer)
    log = ev.SampleLog(tmp_path / "s")
    e.run_problems("toy", rows, log, None, [])
    first = [r for r in log.rows if r["round"] == 1]
    second = [r for r in log.rows if r["round"] == 2]
    assert len(first) == 4 and not any(r["ok"] for r in first)
    assert len(second) == 4 and all(r["ok"] for r in second)
    assert all("omega could not prove the goal" in r["prompt"] for r in second)


def test_goedel_correction_rounds_carry_the_history_and_skip_solved_problems(
        tmp_path, tiny_model, standin):
    # Goedel-Prover-V2 2e9036e scripts/pipeline.sh (MAX_CORRECTION_ROUNDS=2,
    # NUM_SAMPLES_CORRECTION=2) and src/utils.py load_data_for_correction: every failed attempt of
    # an unsolved problem gets 2 new attempts per round, each prompt the whole conversation so
    # far; a problem any attempt proved gets no further round (Kimina style corrects per sample)
    rows = toy_rows(2)
    first_calls = []

    def answer(prompt):
        stmt = next(r["formal_statement"] for r in rows if r["formal_statement"] in prompt)
        if "(Round" not in prompt:                     # a first attempt
            first_calls.append(stmt)
            right = stmt == rows[0]["formal_statement"] and first_calls.count(stmt) == 1
            return answer_block(stmt, "rfl" if right else "omega"), "eos"
        # wrong until the prompt holds two rounds of feedback (the third attempt)
        return answer_block(stmt, "rfl" if "(Round 1)" in prompt else "omega"), "eos"

    cfg = ev.Settings(mode="correction", n_samples=2, run_name="g", prompt_format="goedel_v2",
                      correction_rounds=2, correction_samples=2)
    e = make_evaluator(cfg, tiny_model, standin, answer)
    assert e.style == "goedel"
    log = ev.SampleLog(tmp_path / "g")
    e.run_problems("toy", rows, log, None, [])
    by_round = {rnd: [r for r in log.rows if r["round"] == rnd] for rnd in (1, 2, 3)}
    # t0 was proved by its first sample: no corrections for it, its failed sample included
    assert [r["ok"] for r in by_round[1] if r["statement_id"] == "toy/0"] == [True, False]
    assert all(r["statement_id"] == "toy/1" for r in by_round[2] + by_round[3])
    assert len(by_round[2]) == 4 and not any(r["ok"] for r in by_round[2])      # 2 failed x 2
    assert len(by_round[3]) == 8 and all(r["ok"] for r in by_round[3])          # 4 failed x 2
    assert sorted(r["branch"] for r in by_round[3]) == ["0.0", "0.0", "0.1", "0.1", "1.0",
                                                        "1.0", "1.1", "1.1"]
    assert {r["sample_idx"] for r in by_round[3]} == {0, 1}                    # their roots
    third = by_round[3][0]["prompt"]     # both earlier attempts and both feedback turns in it
    assert third.count("<|im_start|>assistant") == 3
    assert third.index("(Round 0)") < third.index("(Round 1)")
    # Kimina style, one round of one: every failed first attempt gets its second turn
    first_calls.clear()
    cfg = ev.Settings(mode="correction", n_samples=2, run_name="k")
    e = make_evaluator(cfg, tiny_model, standin, answer)
    log = ev.SampleLog(tmp_path / "k")
    e.run_problems("toy", rows, log, None, [])
    assert len([r for r in log.rows if r["round"] == 2]) == 3
    assert ev.budget_label(cfg) == "n2-t24576" and "r2-s2" in ev.budget_label(
        ev.Settings(mode="correction", correction_rounds=2, correction_samples=2))


def test_a_server_error_in_a_correction_round_redoes_its_whole_tree(tmp_path):
    # a resumed correction run starts from first attempts only: a correction that got a server
    # error takes its first attempt (and its siblings) with it, so the tree is redone, not lost
    rec = dict(statement_id="toy/0", benchmark="toy", mode="correction", prompt="p",
               completion="c", lean_code="", feedback="f", n_tokens=1)
    rows = [dict(rec, sample_idx=0, round=1, status="lean_error", ok=False),
            dict(rec, sample_idx=0, round=2, status="server_error", ok=False, branch="0"),
            dict(rec, sample_idx=0, round=2, status="lean_error", ok=False, branch="1"),
            dict(rec, sample_idx=1, round=1, status="valid", ok=True)]
    (tmp_path / "samples.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    log = ev.SampleLog(tmp_path)
    assert [(r["sample_idx"], r["round"]) for r in log.rows] == [(1, 1)] and log.redone == 3
    assert ("toy/0", 0, 1) not in log.done          # so run_problems samples it again


def test_verl_export_and_batched_reward(tmp_path, standin, monkeypatch):
    # concurrent per-sample calls (verl's reward loop awaits one coroutine per sample) share requests
    import asyncio
    import pyarrow.parquet as pq
    import requests
    monkeypatch.setenv("LEAN_SERVER_API_URL", standin)
    monkeypatch.setenv("REQUIRE_TACTIC_BLOCKS", "0")
    monkeypatch.setenv("KIMINA_EC_CACHE", str(tmp_path / "ec.jsonl"))
    env = {**os.environ, "PROVER_RUNS_DIR": str(tmp_path / "runs")}
    subprocess.run([sys.executable, str(ROOT / "01_prepare_data.py"), "--task", "toy", "--run_name",
                    "v",
                    "--toy_n_statements", "50"], check=True, capture_output=True, env=env)
    subprocess.run([sys.executable, str(ROOT / "recipes/verl/export_verl.py"), "--run_name", "v",
                    "--out",
                    str(tmp_path / "verl")], check=True, capture_output=True, env=env)
    train = pq.read_table(tmp_path / "verl/train.parquet").to_pylist()
    assert {"data_source", "prompt", "ability", "reward_model", "extra_info"} <= set(train[0])
    assert train[0]["prompt"][0]["role"] == "system" and train[0]["extra_info"]["index"] == 0
    spec = importlib.util.spec_from_file_location("reward_fn", ROOT / "recipes/verl/reward_fn.py")
    rf = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(rf)
    rf._get_client().stats["requests"] = 0
    exs = [r for r in train if " = " in r["reward_model"]["ground_truth"]][:8]

    async def score_all():
        calls = []
        for ex in exs:
            stmt, info = ex["reward_model"]["ground_truth"], ex["extra_info"]
            for tactic in ("rfl", "omega"):
                text = answer_block(stmt, tactic).replace(HEADER, info["header"])
                calls.append(rf.compute_score(ex["data_source"], text, stmt, info))
        return await asyncio.gather(*calls)
    results = asyncio.run(score_all())
    assert [r["score"] for r in results] == [1.0, 0.0] * len(exs)
    sent = rf._get_client().stats["requests"]
    # one batch, not a request each
    assert sent == -(-2 * len(exs) // rf._get_client().batch_size), sent
    cached = [json.loads(line) for line in (tmp_path / "ec.jsonl").read_text().splitlines()]
    assert len(cached) == len(exs) and all("# Error 1:" in c["lean_feedback"] for c in cached)


def test_recompute_refuses_duplicates_and_handles_empty_and_mixed_counts(tmp_path, monkeypatch):
    monkeypatch.setattr(common, "PROJECT_ROOT", tmp_path)
    monkeypatch.setattr(common, "RESULTS_ROOT", tmp_path / "results")
    f = tmp_path / "v.jsonl"
    dup = [{"statement_id": "a", "benchmark": "b", "successes": [1, 0]},
           {"statement_id": "a", "benchmark": "b", "successes": [0, 0]}]
    f.write_text("\n".join(json.dumps(r) for r in dup) + "\n")
    # was: last one won
    with pytest.raises(SystemExit, match=r"v.jsonl:2: a of b already has a row \(line 1\)"):
        ev.main(["--mode", "recompute", "--verdicts", str(f)])
    rows = [{"statement_id": "a", "benchmark": "b", "successes": [1, 0, 0, 0]},
            {"statement_id": "c", "benchmark": "b", "successes": [1, 1]},
            # was: math domain error
            {"statement_id": "e", "benchmark": "b", "successes": []}]
    f.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    ev.main(["--mode", "recompute", "--verdicts", str(f), "--bootstrap", "0"])
    with open(tmp_path / "results/v/b_recompute.csv") as fh:
        got = {int(r["k"]): r for r in __import__("csv").DictReader(fh)}
    # was: every k cut to the smallest n (2); now pass@4 over the one problem with 4 samples
    assert sorted(got) == [1, 2, 4] and got[4]["problems"] == "1" and got[2]["problems"] == "2"
    assert float(got[4]["pass"]) == pytest.approx(1.0) and float(got[1]["pass"]) == pytest.approx((0.25 + 1) / 2)
    md = (tmp_path / "results/v/b_recompute.md").read_text()
    # was: percentiles as a CI
    assert "95% CI" not in md and "CI (bootstrap off)" in md
    assert "benchmark: b" in md and "search budget (recorded samples per problem): 2 to 4" in md
    assert "problems with no recorded sample (left out): 1: e" in md


def test_best_at_k_is_kimina_bootstrap_beside_pass_at_k():
    succ = {"a": [True] + [False] * 7, "b": [True, True] + [False] * 6}
    table = ev.pass_at_k_table(succ, [1, 8], 0, 0)
    expect = [(1 - (1 - 1 / 8) ** k + 1 - (1 - 2 / 8) ** k) / 2 for k in (1, 8)]   # its expectation
    assert [r["best"] for r in table] == pytest.approx(expect, abs=0.03)
    # below plain pass@8
    assert table[1]["best"] < table[1]["pass"] == 1.0


def test_repair_stage_memory_is_built_from_training_proofs_only(tmp_path, tiny_model, standin,
                                                                monkeypatch):
    # before: the bank was per run name, grew during the evaluation and across benchmarks and models
    monkeypatch.setattr(common, "RUNS_ROOT", tmp_path / "runs")
    monkeypatch.setattr(common, "PROJECT_ROOT", tmp_path)
    monkeypatch.setattr(common, "RESULTS_ROOT", tmp_path / "results")
    monkeypatch.setenv("LEAN_SERVER_API_URL", standin)
    subprocess.run([sys.executable, str(ROOT / "01_prepare_data.py"), "--task", "toy", "--run_name",
                    "m",
                    "--toy_n_statements", "80"], check=True, capture_output=True,
                   env={**os.environ, "PROVER_RUNS_DIR": str(tmp_path / "runs")})
    bench = common.read_rows(tmp_path / "runs/m/01_data/eval_toy.parquet", "statements")
    second = common.write_parquet(bench[:2], tmp_path / "eval_second.parquet", "statements")
    leak = bench[0]["formal_statement"].replace(bench[0]["theorem_name"], "renamed_copy")
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("\n".join(json.dumps(r) for r in [
        {"statement_id": "c/leak", "formal_statement": leak, "proof": "\n  rfl"},
        {"statement_id": "c/ok", "formal_statement": "theorem corpus_1 : 3 ∣ 9 := by",
         "proof": "\n  norm_num"}]) + "\n")
    args = ["--run_name", "m", "--model", tiny_model, "--tag", "tiny", "--mode", "repair",
            "--repair_width", "2",
            "--repair_depth", "2", "--max_new_tokens", "4", "--max_problems", "3", "--bootstrap",
            "0",
            "--memory", f"shipped,{corpus}", "--benchmarks", f"toy,{second}"]
    ev.main(args)
    [mem_file] = (tmp_path / "runs/m/04_eval/memory").glob("memory_*.parquet")
    mem = common.read_rows(mem_file, "proof_bank")
    assert {r["statement_id"]
            for r in mem} >= {"c/ok"} and "c/leak" not in {r["statement_id"] for r in mem}
    table = (tmp_path / "results/m/tiny/toy_repair_w2-d2-k3-t4.md").read_text()
    assert f"proof memory: {mem_file.stem} (" in table and "frozen during this evaluation" in table
    folder = tmp_path / "runs/m/04_eval/tiny/toy/repair/w2-d2-k3-t4"
    assert (folder / "found_proofs.parquet").exists()
    assert json.loads((folder / "sample_settings.json").read_text())["memory"] == mem_file.stem
    # the same evaluation with a memory built from other proofs does not reuse these samples
    with pytest.raises(SystemExit, match="memory was 'memory_"):
        ev.main([a if a != f"shipped,{corpus}" else "shipped" for a in args])


def test_repair_resumes_a_trajectory_cut_between_rounds(tmp_path, tiny_model, standin):
    """A crash after round 1: the rerun goes on at round 2 with round 1's attempt and feedback,
    and the fix becomes a repair row, as if nothing had happened."""
    cfg = ev.Settings(mode="repair", repair_width=1, repair_depth=3, retrieve_k=0, run_name="r")
    rows = toy_rows(2)

    def answer(prompt):
        stmt = next(r["formal_statement"] for r in rows if r["formal_statement"] in prompt)
        return answer_block(stmt, "rfl" if "omega could not" in prompt else "omega"), "eos"
    memory = proof_memory.ProofMemory([], rows)
    e = make_evaluator(cfg, tiny_model, standin, answer)
    whole = ev.SampleLog(tmp_path / "whole")
    e.run_problems("toy", rows, whole, memory, [])
    assert [(x["statement_id"], x["round"], x["ok"]) for x in whole.rows] == [
        ("toy/0", 1, False), ("toy/1", 1, False), ("toy/0", 2, True), ("toy/1", 2, True)]
    cut = tmp_path / "cut"
    cut.mkdir()
    (cut / "samples.jsonl").write_text("".join(json.dumps(x) + "\n" for x in whole.rows
                                               if x["round"] == 1))
    e = make_evaluator(cfg, tiny_model, standin, answer)
    log, repair_rows = ev.SampleLog(cut), []
    e.run_problems("toy", rows, log, memory, repair_rows)
    # round 2 only
    assert len(e.gen.prompts) == 2 and all("omega could not" in p for p in e.gen.prompts)
    strip = lambda xs: sorted((x["statement_id"], x["round"], x["ok"], x["prompt"], x["completion"])
                              for x in xs)  # noqa: E731
    assert strip(log.rows) == strip(whole.rows)
    assert [r["statement_id"] for r in repair_rows] == ["toy/0", "toy/1"]
    assert all("omega" in r["prev_attempt"] and "omega could not" in r["lean_feedback"]
               for r in repair_rows)


def test_server_errors_are_counted_fail_loudly_and_are_redone(tmp_path, tiny_model, make_standin,
                                                              monkeypatch):
    """Issue #34: a wrong API key made every verdict a server error and 04 reported pass@1 0.00
    with exit 0, and a rerun with the right key kept the failures as done. Now the share of
    server errors stops 04 (samples kept), a rerun redoes exactly those, and the table and the
    manifest count every verdict."""
    url, _ = make_standin(api_key="k1")
    monkeypatch.setattr(common, "RUNS_ROOT", tmp_path / "runs")
    monkeypatch.setattr(common, "PROJECT_ROOT", tmp_path)
    monkeypatch.setattr(common, "RESULTS_ROOT", tmp_path / "results")
    monkeypatch.setenv("LEAN_SERVER_API_URL", url)
    monkeypatch.setenv("LEAN_SERVER_API_KEY", "wrong")
    subprocess.run([sys.executable, str(ROOT / "01_prepare_data.py"), "--task", "toy",
                    "--run_name", "k", "--toy_n_statements", "100"], check=True,
                   capture_output=True,
                   env={**os.environ, "PROVER_RUNS_DIR": str(tmp_path / "runs")})
    import re
    statement = re.compile(r"theorem toy_\d+ : [^\n]*:= by")

    def scripted(self, prompts, seeds, *a, **k):   # every answer a proof that reaches the server
        out = []
        for p in prompts:
            text = answer_block(statement.search(p).group(0), "rfl").replace(HEADER,
                                                                             "import Mathlib\n\n")
            out.append(generation.Generation(text, [1] * 5, [0.0] * 5, "eos"))
        return out
    monkeypatch.setattr(generation.HFGenerator, "generate", scripted)
    args = ["--run_name", "k", "--model", tiny_model, "--tag", "t", "--n_samples", "2",
            "--max_new_tokens", "8", "--max_problems", "4", "--bootstrap", "0", "--lean_retries",
            "0"]
    with pytest.raises(SystemExit, match=r"toy: 8 of 8 verifications were server errors .*"
                                         r"LEAN_SERVER_API_KEY"):
        ev.main(args)
    folder = tmp_path / "runs/k/04_eval/t/toy/single/n2-t8"
    assert {json.loads(x)["status"] for x in (folder / "samples.jsonl").read_text().splitlines()} \
        == {"server_error"}
    assert not (tmp_path / "results/k/t/toy_single_n2-t8.md").exists()   # no table of failures
    monkeypatch.setenv("LEAN_SERVER_API_KEY", "k1")
    ev.main(args)                                            # the same command, the right key
    rows = [json.loads(x) for x in (folder / "samples.jsonl").read_text().splitlines()]
    assert len(rows) == 8 and "server_error" not in {r["status"] for r in rows}
    counts = json.loads((tmp_path / "runs/k/04_eval/t/manifest.json").read_text())["verdicts"]
    assert sum(counts["toy"].values()) == 8 and "server_error" not in counts["toy"]
    table = (tmp_path / "results/k/t/toy_single_n2-t8.md").read_text()
    assert "verdicts" in table and any(f"{k} {v}" in table for k, v in counts["toy"].items())
