"""On a CUDA machine (`pytest -m gpu`; recipes/gpu_check.sh runs them): device placement, bf16
numerics against fp32 on the GPU, and 03's two-prompt learning test on CUDA. Skipped without
CUDA; their CPU counterparts (bf16 on CPU) are in tests/test_dtype_lane.py."""
import importlib.util

import pytest
import torch

from conftest import ROOT
import generation
import rl_objective

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]


def load(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "tests" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    texts = ["<|im_start|>user\nprove it<|im_end|>\n<|im_start|>assistant\n rfl decide omega"] * 30
    return generation.build_tiny_model(texts, tmp_path_factory.mktemp("gpu") / "tiny")


def test_auto_places_every_model_on_the_gpu_in_bf16(tiny):
    placement = generation.device_policy()
    assert placement == generation.Placement("cuda:0", "bfloat16")
    model = generation.load_model(str(tiny), placement)
    assert {p.device.type for p in model.parameters()} == {"cuda"}
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    assert generation.device_policy("cuda", "float32") == generation.Placement("cuda:0", "float32")
    with pytest.raises(SystemExit, match="CUDA device"):
        generation.device_policy(f"cuda:{torch.cuda.device_count()}")


def test_bf16_log_probs_and_loss_match_fp32_on_the_gpu(tiny):
    """As the CPU lane's test, on the GPU's kernels: float32 log-probs from bf16 logits, loss
    within 2% of fp32."""
    tok = generation.load_tokenizer(str(tiny))
    prompt = tok("<|im_start|>user\nprove it<|im_end|>\n<|im_start|>assistant\n",
                 add_special_tokens=False).input_ids
    batch = [(prompt, tok(w, add_special_tokens=False).input_ids) for w in (" rfl", " omega")]
    cfg = type("C", (), dict(ratio_level="token", clip_low=0.2, clip_high=0.3, clip_ratio_c=3.0,
                             kl_coef=0.0, loss_agg="seq_sum_norm"))()
    losses = {}
    for dtype in ("float32", "bfloat16"):
        model = generation.load_model(str(tiny), generation.Placement("cuda:0", dtype))
        logp, _, mask = rl_objective.sequence_logprobs(model, batch, 1.0, "cuda:0")
        assert logp.dtype == torch.float32 and logp.device.type == "cuda"
        loss, _ = rl_objective.policy_loss(logp, logp.detach() + 0.05 * mask,
                                           torch.tensor([1.0, -1.0], device="cuda:0"), mask, cfg, 8)
        losses[dtype] = float(loss.detach())
    assert abs(losses["bfloat16"] - losses["float32"]) <= 0.02 * abs(losses["float32"]), losses


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_grpo_learns_the_two_prompt_rule_on_cuda(tmp_path, dtype):
    test_grpo = load("test_grpo")
    before, after = test_grpo.two_prompt_run(tmp_path,
                                             placement=generation.Placement("cuda:0", dtype))
    assert all(0.1 < v < 0.45 for v in before.values()), before
    assert after["A"] > 0.8 and after["B"] > 0.8, after
