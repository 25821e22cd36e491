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
