"""generation.HFGenerator against a plain full forward pass of the same transformers model."""
import torch

from conftest import ROOT  # noqa: F401  (puts the repo on sys.path)
import generation


def test_cached_batched_sampling_matches_an_uncached_forward_and_keeps_only_the_last_logits(tmp_path):
    texts = [f"prompt {i} says {w}" for i in range(30)
             for w in ("rfl", "decide", "omega", "norm_num")]
    folder = generation.build_tiny_model(texts, tmp_path / "m", seed=0)
    tok, model = generation.load_tokenizer(str(folder)), generation.load_model(str(folder))
    # prompts of different lengths: left padding, position ids and the mask all matter
    prompts = ["prompt 1 says", "prompt 22 says decide or", "prompt 3"]
    logits_shapes = []
    hook = model.register_forward_hook(lambda m, a,
                                       out: logits_shapes.append(tuple(out.logits.shape)))
    gens = generation.HFGenerator(model, tok).generate(prompts, [11, 12, 13], max_new_tokens=8)
    hook.remove()
    # the prefill (first call) returns one position per row, not the whole padded prompt
    width = max(len(tok(p, add_special_tokens=False).input_ids) for p in prompts)
    assert width > 1 and logits_shapes[0][:2] == (3, 1)
    for p, g in zip(prompts, gens):
        assert g.token_ids and len(g.logprobs) == len(g.token_ids)
        ids = tok(p, add_special_tokens=False).input_ids
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([ids + g.token_ids])).logits[0].float()
        ref = torch.log_softmax(logits[len(ids) - 1:-1], -1).gather(1,
                                                                    torch.tensor(g.token_ids)[:, None]).squeeze(1)
        assert torch.allclose(torch.tensor(g.logprobs), ref,
                              atol=1e-4), (p, g.logprobs, ref.tolist())


def test_rollouts_of_one_prompt_share_its_prefill_and_sample_as_if_apart(tmp_path):
    # a GRPO group: the prefill runs once per distinct prompt and its KV cache is copied per
    # rollout; every rollout's log-probs are still those of its own uncached forward, and a
    # rollout's tokens do not depend on which other rollouts share its batch
    texts = [f"prompt {i} says {w}" for i in range(30)
             for w in ("rfl", "decide", "omega", "norm_num")]
    folder = generation.build_tiny_model(texts, tmp_path / "m", seed=0)
    tok, model = generation.load_tokenizer(str(folder)), generation.load_model(str(folder))
    prompts = ["prompt 1 says"] * 3 + ["prompt 22 says decide or"] * 2
    seeds = [5, 6, 7, 8, 9]
    prefill_rows = []
    hook = model.register_forward_hook(lambda m, a, kw, out: prefill_rows.append(
        tuple(kw["input_ids"].shape)), with_kwargs=True)
    gens = generation.HFGenerator(model, tok).generate(prompts, seeds, max_new_tokens=8)
    hook.remove()
    assert prefill_rows[0][0] == 2 and all(r[0] == 5 for r in prefill_rows[1:])
    alone = generation.HFGenerator(model, tok).generate(prompts[3:4], seeds[3:4], max_new_tokens=8)
    assert alone[0].token_ids == gens[3].token_ids
    assert len({tuple(g.token_ids) for g in gens[:3]}) > 1     # own seeds: different samples
    for p, g in zip(prompts, gens):
        ids = tok(p, add_special_tokens=False).input_ids
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([ids + g.token_ids])).logits[0].float()
        ref = torch.log_softmax(logits[len(ids) - 1:-1], -1).gather(
            1, torch.tensor(g.token_ids)[:, None]).squeeze(1)
        assert torch.allclose(torch.tensor(g.logprobs), ref, atol=1e-4)
