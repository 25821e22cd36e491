"""Issue #16's acceptance criteria as collect_results.toy_criteria applies them to a run folder:
built here from 04-shaped samples (the toy's own completions and tactic rule), so each criterion
is checked against a run that meets it and one that does not."""
import json
import random

import pytest

import collect_results
import common
from toy_task import TACTIC_RULES, toy_completion, toy_statement

TACTICS = sorted(TACTIC_RULES)


def make_run(tmp_path, grpo_right_share: dict[str, float], turn2_pass: float, n_per_class=30,
             seed=0,
             miscopied: str = ""):
    """SFT picks one of the four tactics at random (the toy SFT data's 25%); GRPO picks the
    right one with the given share per class. A sample passes iff its tactic is right, except in
    the `miscopied` class, whose samples all write the theorem under another name."""
    rng = random.Random(seed)
    rows, samples = [], {"sft": [], "grpo": []}
    for k in range(n_per_class * len(TACTICS)):
        right = TACTICS[k % len(TACTICS)]
        stmt = f"theorem toy_{k:05d} : {toy_statement(rng, right)} := by"
        rows.append({"statement_id": f"toy/{k:05d}", "source": "toy", "split": "test",
                     "header": "import Mathlib\n\n",
                     "formal_statement": stmt, "informal_problem": "",
                     "theorem_name": f"toy_{k:05d}"})
        for tag in ("sft", "grpo"):
            for j in range(8):
                tac = (right if rng.random() < grpo_right_share[right]
                       else rng.choice([t for t in TACTICS if t != right])) \
                    if tag == "grpo" else rng.choice(TACTICS)
                text = toy_completion(stmt, tac)
                if right == miscopied:   # what the tiny model does: the name's last digits changed
                    text = text.replace(f"toy_{k:05d}", f"toy_{k + 1:05d}")
                samples[tag].append({"statement_id": f"toy/{k:05d}", "sample_idx": j,
                                     "ok": tac == right and right != miscopied,
                                     "completion": text})
    run = tmp_path / "run"
    common.write_parquet(rows, run / "01_data/eval_toy.parquet", "statements")
    common.write_manifest(run / "01_data", [run / "01_data/eval_toy.parquet"])   # 01 finished
    for tag, ss in samples.items():
        d = run / "04_eval" / tag / "toy" / "single" / "n8-t64"
        d.mkdir(parents=True)
        (d / "samples.jsonl").write_text("".join(json.dumps(s) + "\n" for s in ss))
    (run / "03_grpo").mkdir()
    (run / "03_grpo/metrics.jsonl").write_text(
        json.dumps({"step": 1, "second_turn_fraction": 0.25, "pass_rate_turn2": turn2_pass}) + "\n")
    return run


def test_a_run_that_learns_the_rule_meets_every_criterion(tmp_path):
    crit = collect_results.toy_criteria(make_run(tmp_path, {t: 0.8 for t in TACTICS},
                                                 turn2_pass=0.1))
    assert crit["all_met"], crit["criteria"]
    assert crit["pass@1_delta_ci"][0] > 0 and 20 < crit["pass@1_sft"] < 32 and crit["pass@1_grpo"] > 70
    assert set(crit["classes"]) == set(TACTICS) and all(c["problems"] == 30
                                                        for c in crit["classes"].values())


def test_a_collapse_onto_one_tactic_fails_the_class_criteria(tmp_path):
    # `omega` always, the others never: pass@1 may still look fine overall, the classes do not
    crit = collect_results.toy_criteria(make_run(tmp_path,
                                                 {"omega": 1.0, "rfl": 0.0, "decide": 0.0,
                                                  "norm_num": 0.0},
                                                 turn2_pass=0.1))
    c = crit["criteria"]
    assert not crit["all_met"]
    assert not c["no class's pass@8 falls by > 10 points"]
    assert not c["right-tactic share rises in every class"]
    assert crit["classes"]["rfl"]["right_tactic"][1] == 0 and crit["classes"]["omega"]["pass@8"][1] == 100


def test_the_statement_copied_share_is_per_class_and_needs_the_exact_statement(tmp_path):
    crit = collect_results.toy_criteria(make_run(tmp_path, {t: 0.8 for t in TACTICS},
                                                 turn2_pass=0.1,
                                                 miscopied="norm_num"))
    copied = {cls: c["statement_copied"] for cls, c in crit["classes"].items()}
    assert copied["norm_num"] == [0.0, 0.0] and all(copied[t] == [100.0, 100.0] for t in TACTICS
                                                    if t != "norm_num")
    assert crit["classes"]["norm_num"]["pass@8"] == [0.0, 0.0]
    assert "| norm_num | 30 | 0.0 -> 0.0 | 0.0 -> 0.0 |" in "\n".join(collect_results.toy_criteria_lines(crit))


def test_second_turns_that_never_pass_fail_their_criterion(tmp_path):
    crit = collect_results.toy_criteria(make_run(tmp_path, {t: 0.8 for t in TACTICS},
                                                 turn2_pass=0.0))
    assert not crit["criteria"]["second-turn pass rate > 0 (RL)"]
    assert sum(crit["criteria"].values()) == 4


def test_the_sweep_table_counts_seeds_per_setting(tmp_path):
    out = tmp_path / "sweep"
    for seed, share in ((0, 0.8), (1, 0.0)):
        run = make_run(tmp_path / f"s{seed}", {t: share for t in TACTICS}, turn2_pass=0.1,
                       seed=seed)
        (out / f"smoke_sweep_lr1e-4_s{seed}").mkdir(parents=True)
        (out / f"smoke_sweep_lr1e-4_s{seed}/criteria.json").write_text(json.dumps(collect_results.toy_criteria(run)))
    text = collect_results.sweep_summary(out)
    assert "| lr1e-4 | 1 / 2 |" in text and (out / "sweep.md").exists()
    assert "| lr1e-4 | 1 |" in text and "5/5" in text
    n = json.loads((out / "smoke_sweep_lr1e-4_s0/criteria.json").read_text())["problems"]
    assert f"first {n} held-out problems" in text   # the eval set's size as the runs had it


def test_copy_probe_counts_copies_and_loss(tmp_path):
    """recipes/copy_probe.py on toy SFT rows and a tiny random model: both row kinds probed,
    counts within range, a finite loss (a random model copies nothing)."""
    import importlib.util
    import os
    import subprocess
    import sys
    import generation
    from conftest import ROOT
    subprocess.run([sys.executable, str(ROOT / "01_prepare_data.py"), "--task", "toy", "--run_name",
                    "p",
                    "--toy_n_statements", "80", "--toy_sft_repair", "1.0"], check=True,
                   capture_output=True,
                   env={**os.environ, "PROVER_RUNS_DIR": str(tmp_path / "runs")})
    model = generation.build_tiny_model(["theorem toy : 1 = 1 := by rfl"] * 10, tmp_path / "tiny")
    spec = importlib.util.spec_from_file_location("copy_probe", ROOT / "recipes/copy_probe.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    res = mod.probe(str(model), tmp_path / "runs/p/01_data/sft.parquet", n=3)
    assert set(res) == {"first", "correction"}
    assert all(r["rows"] == 3 and r["greedy_copies_statement"] == 0 and 0 < r["loss_per_token"] < 50
               for r in res.values())


def test_copy_probe_reads_name_and_proposition_copies_from_samples(tmp_path):
    """recipes/copy_probe.py --samples: the `∣` class renamed (make_run's miscopied), every
    other relation copied whole; the proposition counts as copied either way."""
    import importlib.util
    from conftest import ROOT
    run = make_run(tmp_path, {t: 0.8 for t in TACTICS}, turn2_pass=0.1, miscopied="norm_num")
    spec = importlib.util.spec_from_file_location("copy_probe", ROOT / "recipes/copy_probe.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    table = mod.copies_by_shape(run / "04_eval/sft/toy/single/n8-t64/samples.jsonl",
                                run / "01_data/eval_toy.parquet")
    assert table["relation"]["∣"] == [240, 0.0, 100.0]
    assert all(v[1:] == [100.0, 100.0] for rel, v in table["relation"].items() if rel != "∣")
    assert sum(v[0] for v in table["proposition length"].values()) == 30 * 4 * 8


def test_tactic_probe_equals_whole_answer_scores(tmp_path):
    """recipes/tactic_probe.py: the batched tail scores (right-padded, from the first token where
    the four answers differ) give the same tactic distribution as scoring each whole answer in a
    forward of its own, several rows batched give each row's own scores, and the per-class table
    covers the four classes of a balanced prefix."""
    import importlib.util
    import os
    import subprocess
    import sys
    import torch
    import common
    import formats
    import generation
    from conftest import ROOT
    from toy_task import toy_completion
    subprocess.run([sys.executable, str(ROOT / "01_prepare_data.py"), "--task", "toy", "--run_name",
                    "p",
                    "--toy_n_statements", "200"], check=True, capture_output=True,
                   env={**os.environ, "PROVER_RUNS_DIR": str(tmp_path / "runs")})
    data = tmp_path / "runs/p/01_data/eval_toy.parquet"
    rows = common.read_rows(data, "statements")
    model_dir = generation.build_tiny_model([toy_completion(r["formal_statement"], "rfl")
                                             for r in rows] * 3, tmp_path / "tiny")
    spec = importlib.util.spec_from_file_location("tactic_probe", ROOT / "recipes/tactic_probe.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    tok, model = generation.load_tokenizer(str(model_dir)), generation.load_model(str(model_dir)).eval()
    for row in rows[:3]:
        tails = torch.softmax(torch.tensor(mod.answer_scores(model, tok, row, "kimina")), 0)
        prompt = tok(formats.render(tok, formats.prompt_messages(row, "kimina"), "kimina"),
                     add_special_tokens=False).input_ids
        whole = []
        for t in mod.TACTICS:
            ans = tok(toy_completion(row["formal_statement"], t),
                      add_special_tokens=False).input_ids
            with torch.no_grad():
                lsm = torch.log_softmax(model(torch.tensor([prompt + ans])).logits[0].float(), -1)
            whole.append(float(sum(lsm[len(prompt) + i - 1, a] for i, a in enumerate(ans))))
        assert torch.allclose(tails, torch.softmax(torch.tensor(whole), 0),
                              atol=1e-4), (tails, whole)
    # rows of other lengths padded together
    batched = mod.batch_scores(model, tok, rows[:3], "kimina")
    singles = [mod.answer_scores(model, tok, r, "kimina") for r in rows[:3]]
    assert torch.allclose(torch.tensor(batched), torch.tensor(singles), atol=1e-4)
    res = mod.probe(str(model_dir), data, problems=8)
    assert set(res["classes"]) == set(mod.TACTICS) and all(c["problems"] == 2
                                                           for c in res["classes"].values())
    assert all(abs(sum(c["p"].values()) - 1) < 1e-6 for c in res["classes"].values())
    assert res["p_right_min"] == min(c["p_right"] for c in res["classes"].values())
    import pandas as pd   # a file that is not the toy's: the error names the file and the row
    bad = tmp_path / "bad.parquet"
    frame = pd.read_parquet(data).head(3)
    # a valid row, not the toy's
    frame.loc[0, "formal_statement"] = "theorem a (x : ℕ) : x + 1 = 2 := by sorry"
    frame.to_parquet(bad)
    import pytest
    with pytest.raises(ValueError, match=r"bad.parquet: row 0 is not a toy statement"):
        mod.probe(str(model_dir), bad, problems=8)
