"""The GPU lane's dtype paths, run on CPU (issue #32): bf16 runs in torch on CPU, so the device
policy, the bf16 models of every stage and the mixed-precision rules are tested without a GPU.
A GPU only adds the device; tests/test_gpu.py covers that where CUDA exists."""
import importlib.util
import json
import math
import os
import re
import subprocess
import sys

import pytest
import torch

from conftest import ROOT
import common
import generation
import rl_objective


def stage(script: str):
    spec = importlib.util.spec_from_file_location(f"stage_{script[:2]}", ROOT / script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# ---------------------------------------------------------------- the policy


def test_device_policy_resolves_auto_and_refuses_a_missing_gpu():
    assert generation.device_policy() == generation.Placement("cpu", "float32")
    assert generation.device_policy("cpu", "bfloat16") == generation.Placement("cpu", "bfloat16")
    for device, dtype, named in (("cuda", "auto", "--device cuda"),
                                 ("cuda:1", "auto", "--device cuda:1"),
                                 ("gpu", "auto", "--device must be"),
                                 ("cpu", "bf16", "--dtype must be")):
        if device.startswith("cuda") and torch.cuda.is_available():
            continue
        with pytest.raises(SystemExit, match=re.escape(named)):
            generation.device_policy(device, dtype)


@pytest.mark.skipif(torch.cuda.is_available(), reason="the error is for a machine without CUDA")
def test_device_cuda_without_a_gpu_stops_every_stage_before_any_work(tmp_path):
    env = {**os.environ, "PROVER_RUNS_DIR": str(tmp_path / "runs")}
    for script in ("02_sft.py", "03_rl_grpo.py", "04_eval.py"):
        proc = subprocess.run([sys.executable, str(ROOT / script), "--run_name", "x",
                               "--device", "cuda", "--model", str(tmp_path / "no_model")],
                              capture_output=True, text=True, env=env, timeout=120)
        assert proc.returncode != 0 and "--device cuda: no CUDA device" in proc.stderr, script
        assert not (tmp_path / "runs/x").exists() or not any((tmp_path / "runs/x").rglob("*.parquet"))


def test_no_stage_loads_or_moves_a_model_itself():
    # one place decides device and dtype: generation.load_model(path, placement)
    for script in ("02_sft.py", "03_rl_grpo.py", "04_eval.py", "05_iterate.py", "rollouts.py",
                   "agent_loops.py"):
        text = (ROOT / script).read_text()
        assert "from_pretrained" not in text, script
        assert not re.search(r"(model|policy|ref_model)\.to\(", text), script
        assert not re.search(r"load_model\([^)]*\)\s*$", "\n".join(
            line for line in text.splitlines() if "load_model(" in line
                                                                   and "placement" not in line)), script


# ---------------------------------------------------------------- mixed precision


@pytest.mark.parametrize("share_prompts", [0, 2048])
def test_rl_objective_in_bf16_matches_fp32_within_tolerance(tmp_path, share_prompts):
    """The same rollouts through a bf16 and an fp32 copy of one model: log-probs come out float32
    (computed from float32 logits) and the loss and its gradient norm agree within what bf16
    weights allow: 2% relative on the loss, 5% on the gradient norm (stated tolerances). Also
    with the group's prompt run once (share_prompts, 03's default: a block mask in bf16)."""
    texts = ["<|im_start|>user\nprove it<|im_end|>\n<|im_start|>assistant\n rfl decide omega"] * 30
    folder = generation.build_tiny_model(texts, tmp_path / "tiny")
    tok = generation.load_tokenizer(str(folder))
    prompt = tok("<|im_start|>user\nprove it<|im_end|>\n<|im_start|>assistant\n",
                 add_special_tokens=False).input_ids
    comps = [tok(w, add_special_tokens=False).input_ids
             for w in (" rfl", " decide omega", " omega")]
    batch = [(prompt, c) for c in comps]
    adv = torch.tensor([1.0, -0.5, -0.5])
    cfg = type("C", (), dict(ratio_level="token", clip_low=0.2, clip_high=0.3, clip_ratio_c=3.0,
                             kl_coef=0.05, loss_agg="seq_sum_norm"))()
    out = {}
    for dtype in ("float32", "bfloat16"):
        model = generation.load_model(str(folder), generation.Placement("cpu", dtype))
        ref = generation.load_model(str(folder), generation.Placement("cpu", dtype)).eval()
        assert next(model.parameters()).dtype == getattr(torch, dtype)
        logp, _, mask = rl_objective.sequence_logprobs(model, batch, 1.0, "cpu", share_prompts)
        with torch.no_grad():
            ref_lp, _, _ = rl_objective.sequence_logprobs(ref, batch, 1.0, "cpu", share_prompts)
        old = logp.detach() + 0.05 * mask        # a ratio away from 1, so clipping is in play
        loss, _ = rl_objective.policy_loss(logp, old, adv, mask, cfg, 8, ref_lp)
        assert logp.dtype == torch.float32 and loss.dtype == torch.float32, dtype
        loss.backward()
        grad = math.sqrt(sum(float(p.grad.float().pow(2).sum()) for p in model.parameters()
                             if p.grad is not None))
        out[dtype] = (float(loss.detach()), grad, logp.detach())
    (l32, g32, lp32), (l16, g16, lp16) = out["float32"], out["bfloat16"]
    assert abs(l16 - l32) <= 0.02 * abs(l32), (l32, l16)
    assert abs(g16 - g32) <= 0.05 * g32, (g32, g16)
    assert float((lp16 - lp32).abs().max()) < 0.1


def test_a_bf16_policy_still_learns_at_kiminas_learning_rate(tmp_path):
    """lr 2e-6 (Kimina's): an AdamW step is about 2e-6 per weight, under half a bf16 ulp for most
    weights, so a policy held in bf16 barely moves; float32 master weights (load_model's
    trainable=True under bf16) move every trained weight, and the right answer gains."""
    spec = importlib.util.spec_from_file_location("grpo_l", ROOT / "03_rl_grpo.py")
    grpo = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(grpo)
    texts = ["<|im_start|>user\nprove it<|im_end|>\n<|im_start|>assistant\n rfl omega"] * 30
    folder = generation.build_tiny_model(texts, tmp_path / "tiny")
    tok = generation.load_tokenizer(str(folder))
    prompt = tok("<|im_start|>user\nprove it<|im_end|>\n<|im_start|>assistant\n",
                 add_special_tokens=False).input_ids
    good, bad = (tok(w, add_special_tokens=False).input_ids for w in (" rfl", " omega"))
    cfg = grpo.Settings(group_size=2, prompts_per_step=1, mini_batch_prompts=1, lr=2e-6,
                        max_new_tokens=8)
    bf16 = generation.Placement("cpu", "bfloat16")
    moved = {}
    for trainable in (False, True):
        model = generation.load_model(str(folder), bf16, trainable=trainable)
        before = [p.detach().clone() for p in model.parameters()]
        with torch.no_grad():
            lp, _, mask = rl_objective.sequence_logprobs(model, [(prompt, good), (prompt, bad)],
                                                         1.0, "cpu")
        item = grpo.PromptItem({"statement_id": "p"})
        rollouts = [grpo.Rollout(item, prompt, generation.Generation("", c, lp[i, :len(c)].tolist(),
                                                                     "eos"), reward=float(i == 0))
                    for i, c in enumerate((good, bad))]
        rl_objective.group_advantages(rollouts, cfg)
        opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=0.0)
        for step in range(3):
            grpo.update(model, None, opt, rollouts, cfg, step + 1, "cpu")
        changed = sum(int((p.detach() != b).sum()) for p, b in zip(model.parameters(), before))
        moved[trainable] = changed / sum(b.numel() for b in before)
        if trainable:
            with torch.no_grad():
                after, _, _ = rl_objective.sequence_logprobs(model, [(prompt, good)], 1.0, "cpu")
            assert float(after[0].sum()) > float(lp[0].sum())   # the rewarded answer gained
    assert moved[True] > 0.5, moved        # master weights: most trained weights moved
    assert moved[False] < 0.2, moved       # pure bf16: most updates round away


# ---------------------------------------------------------------- the tiny preset end to end in bf16


def test_tiny_pipeline_in_bf16_on_cpu(tmp_path, standin, monkeypatch):
    """02 -> 04 -> 03 with a KL term -> 04, every stage at --dtype bfloat16 on CPU, in-process:
    every model each stage loaded went through the policy as bf16 on the CPU (03's reference
    model included), the saved models are bf16, and the losses are finite."""
    runs = tmp_path / "runs"
    monkeypatch.setattr(common, "RUNS_ROOT", runs)
    monkeypatch.setattr(common, "RESULTS_ROOT", tmp_path / "results")
    monkeypatch.setenv("LEAN_SERVER_API_URL", standin)
    subprocess.run([sys.executable, str(ROOT / "01_prepare_data.py"), "--task", "toy",
                    "--run_name", "bf", "--toy_n_statements", "200"], check=True,
                   capture_output=True, env={**os.environ, "PROVER_RUNS_DIR": str(runs)})
    sft, grpo, ev = stage("02_sft.py"), stage("03_rl_grpo.py"), stage("04_eval.py")
    bf16 = ["--run_name", "bf", "--device", "cpu", "--dtype", "bfloat16"]
    loads = {}

    def loaded_by(name, fn):
        start = len(generation.LOADED)
        fn()
        loads[name] = generation.LOADED[start:]

    loaded_by("02", lambda: sft.train(common.parse_settings(sft.Settings, bf16 + [
        "--preset", "tiny", "--max_steps", "20", "--lr", "3e-3", "--batch_size", "8",
        "--eval_every", "10", "--save_every", "0"])))
    eval_args = bf16 + ["--n_samples", "2", "--max_problems", "4", "--max_new_tokens", "24",
                        "--bootstrap", "0"]
    loaded_by("04 sft", lambda: ev.main(eval_args + ["--tag", "sft", "--model",
                                                     str(runs / "bf/02_sft/final/model")]))
    loaded_by("03", lambda: grpo.train(common.parse_settings(grpo.Settings, bf16 + [
        "--prompts_per_step", "2", "--group_size", "4", "--mini_batch_prompts", "2",
        "--max_new_tokens", "24", "--max_steps", "2", "--kl_coef", "0.05", "--lr", "1e-3",
        "--require_tactic_blocks", "false", "--eval_every", "0", "--save_every", "0"])))
    loaded_by("04 grpo", lambda: ev.main(eval_args + ["--tag", "grpo"]))
    for name, got in loads.items():
        assert got, name
        assert all((device, compute) == ("cpu", "bfloat16") for _, device, _, compute in got), \
            (name, got)
    # trained models keep float32 master weights; frozen ones (reference, generator) are bf16
    assert [w for _, _, w, _ in loads["02"]] == ["float32"]
    assert [w for _, _, w, _ in loads["03"]] == ["float32", "bfloat16"]   # policy, reference
    assert [w for _, _, w, _ in loads["04 sft"] + loads["04 grpo"]] == ["bfloat16"] * 2
    assert loads["04 grpo"][0][0].endswith("03_grpo/final/model")
    for folder in ("02_sft/final/model", "03_grpo/final/model"):
        saved = json.loads((runs / "bf" / folder / "config.json").read_text())
        assert saved.get("dtype", saved.get("torch_dtype")) == "bfloat16", folder
    sft_loss = [json.loads(x) for x in (runs / "bf/02_sft/metrics.jsonl").read_text().splitlines()]
    rl = [json.loads(x) for x in (runs / "bf/03_grpo/metrics.jsonl").read_text().splitlines()]
    assert all(math.isfinite(r["loss"])
               for r in sft_loss) and sft_loss[-1]["loss"] < sft_loss[0]["loss"]
    assert len(rl) == 2 and all(math.isfinite(r.get("loss", 0.0))
                                and math.isfinite(r.get("kl", 0.0))
                                for r in rl)
    assert json.loads((runs / "bf/03_grpo/config.json").read_text())["placement"] == \
        {"device": "cpu", "dtype": "bfloat16"}
    for tag in ("sft", "grpo"):
        manifest = json.loads((runs / "bf/04_eval" / tag / "manifest.json").read_text())
        assert manifest["stage"] == "04_eval", tag
