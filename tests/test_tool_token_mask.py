"""Tool tokens in a tool-integrated rollout (StepFun: the REPL's answer spliced into the model's
generation) condition what follows but are not the policy's actions: rl_objective masks them out
of the loss, the importance ratio and the entropy. Checked on a real (tiny, random) Qwen3."""
from types import SimpleNamespace

import pytest
import torch
from transformers import Qwen3Config, Qwen3ForCausalLM

from rl_objective import policy_loss, sequence_logprobs


class CaptureLogits(torch.nn.Module):
    """The model, with its output logits kept so the test can read their gradient."""
    def __init__(self, model):
        super().__init__()
        self.model, self.logits = model, None

    def forward(self, **kw):
        out = self.model(**kw)
        out.logits.retain_grad()
        self.logits = out.logits
        return out


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    cfg = Qwen3Config(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=2, num_key_value_heads=1, head_dim=16,
                      max_position_embeddings=128)
    return Qwen3ForCausalLM(cfg).eval()


def cfg(**kw):
    base = dict(ratio_level="token", clip_low=0.2, clip_high=0.3, clip_ratio_c=3.0, kl_coef=0.0,
                loss_agg="token_mean")
    return SimpleNamespace(**{**base, **kw})


PROMPT = [5, 6, 7]
#            model  model  | tool answer |  model  model
COMPLETION = [10, 11, 40, 41, 42, 12, 13]
KEEP = [1, 1, 0, 0, 0, 1, 1]


@pytest.mark.parametrize("ratio_level,agg", [("token", "token_mean"), ("token", "seq_sum_norm"),
                                             ("sequence", "seq_mean")])
def test_tool_tokens_get_no_gradient(model, ratio_level, agg):
    wrapped = CaptureLogits(model)
    logp, ent, mask = sequence_logprobs(wrapped, [(PROMPT, COMPLETION, KEEP)], 1.0, "cpu")
    loss, _ = policy_loss(logp, logp.detach() - 0.05, torch.tensor([1.0]), mask,
                          cfg(ratio_level=ratio_level, loss_agg=agg), max_len=8)
    loss.backward()
    # logits column p_max - 1 + t predicts completion token t
    grad = wrapped.logits.grad[0, :len(COMPLETION)]
    per_token = grad.abs().sum(-1)
    for t, keep in enumerate(KEEP):
        assert (per_token[t] > 0) if keep else (per_token[t] == 0), (t, per_token.tolist())
    ent = ent.detach()
    assert float(ent[0, 2:5].abs().sum()) == 0 and float(ent[0, :2].sum()) > 0


def test_the_loss_ignores_what_the_model_would_have_said_at_tool_positions(model):
    # The same rollout scored against a different "old policy" at the tool positions only: with
    # the mask, neither the loss nor the GSPO sequence ratio moves; without it, both do.
    for ratio_level in ("token", "sequence"):
        logp, _, mask = sequence_logprobs(model, [(PROMPT, COMPLETION, KEEP)], 1.0, "cpu")
        old = logp.detach() - 0.05
        shifted = old.clone()
        shifted[0, 2:5] += 3.0
        c = cfg(ratio_level=ratio_level)
        a, _ = policy_loss(logp, old, torch.tensor([1.0]), mask, c, max_len=8)
        b, _ = policy_loss(logp, shifted, torch.tensor([1.0]), mask, c, max_len=8)
        assert torch.equal(a, b)
        full = torch.ones_like(mask)
        logp_full, _, _ = sequence_logprobs(model, [(PROMPT, COMPLETION)], 1.0, "cpu")
        a, _ = policy_loss(logp_full, old, torch.tensor([1.0]), full, c, max_len=8)
        b, _ = policy_loss(logp_full, shifted, torch.tensor([1.0]), full, c, max_len=8)
        assert not torch.equal(a, b)


def test_a_mask_of_the_wrong_length_is_an_error(model):
    with pytest.raises(ValueError, match="rollout 0: keep mask has 3 entries for 7"):
        sequence_logprobs(model, [(PROMPT, COMPLETION, [1, 0, 1])], 1.0, "cpu")
