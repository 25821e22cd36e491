"""Run by tests/test_verl.py inside .venv-verl (real verl 0.9.1 code, on CPU):

    .venv-verl/bin/python tests/verl_checks.py EXPORT_DIR RL_PROMPTS_PARQUET TOKENIZER_DIR

1. verl's RLHFDataset and our error-correction class load the export, and the prompt token ids
   (verl's chat templating of raw_prompt, as its agent loop does) equal 03's, first and second turn;
2. the reward runs through verl's reward loop (NaiveRewardManager.run_single) against the Lean
   server in LEAN_SERVER_API_URL (the stand-in in the test): right proof 1, wrong 0;
3. verl's own config code composes and validates recipes/verl/kimina_grpo.overrides;
4. rl_objective's advantages and policy loss equal verl core_algos' on random tensors, for each
   aggregation mode, GRPO and GSPO.
Prints one line per check; exits non-zero on the first failure.
"""
import asyncio
import json
import os
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
import formats  # noqa: E402
import rl_objective  # noqa: E402


def check_dataset(export: Path, rl_prompts: Path, tokenizer_dir: str) -> None:
    import pyarrow.parquet as pq
    from omegaconf import OmegaConf
    from transformers import AutoTokenizer
    from verl.utils.dataset.rl_dataset import RLHFDataset
    sys.path.insert(0, str(ROOT / "recipes/verl"))
    from ec_dataset import KiminaErrorCorrectionDataset
    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    rows = pq.read_table(rl_prompts).to_pylist()
    conf = OmegaConf.create({"max_prompt_length": 4096, "prompt_key": "prompt",
                             "filter_overlong_prompts": False,
                             "cache_dir": str(export / "cache"), "multiturn_sampling_rate": 1.0})
    ds = RLHFDataset(str(export / "train.parquet"), tok, conf)
    assert len(ds) == len(rows), (len(ds), len(rows))
    for i in (0, len(rows) // 2, len(rows) - 1):
        verl_ids = tok.apply_chat_template(ds[i]["raw_prompt"], add_generation_prompt=True,
                                           tokenize=True)
        verl_ids = verl_ids["input_ids"] if isinstance(verl_ids,
                                                       dict) or hasattr(verl_ids,
                                                                        "keys") else verl_ids
        ours = tok(formats.render_prompt(tok, formats.prompt_messages(rows[i])),
                   add_special_tokens=False).input_ids
        assert list(verl_ids) == ours, (i, len(verl_ids), len(ours))
    # the error-correction class serves the cached second turn exactly as 03 builds it
    cache = export / "ec_cache.jsonl"
    row = rows[0]
    entry = {"statement_id": row["statement_id"],
             "prev_attempt": "<think>\nx\n</think>\n```lean4\nwrong\n```",
             "lean_feedback": "# Error 1:\nError message: \nboom\n\n",
             "row": {k: row[k]
                     for k in ("statement_id", "header", "formal_statement", "informal_problem")}}
    cache.write_text(json.dumps(entry) + "\n")
    os.environ["KIMINA_EC_CACHE"] = str(cache)
    ec = KiminaErrorCorrectionDataset(str(export / "train.parquet"), tok, conf)
    item = ec[3]
    second = formats.prompt_messages({**row, "prev_attempt": entry["prev_attempt"],
                                      "lean_feedback": entry["lean_feedback"]})
    assert item["raw_prompt"] == second and item["extra_info"]["turn"] == 2
    assert item["reward_model"]["ground_truth"] == row["formal_statement"]
    verl_ids = tok.apply_chat_template(item["raw_prompt"], add_generation_prompt=True,
                                       tokenize=True)
    verl_ids = verl_ids["input_ids"] if hasattr(verl_ids, "keys") else verl_ids
    assert list(verl_ids) == tok(formats.render_prompt(tok, second),
                                 add_special_tokens=False).input_ids
    print("dataset: RLHFDataset and KiminaErrorCorrectionDataset give 03's prompt "
          "ids (first and second turn)")


def check_reward(export: Path, tokenizer_dir: str) -> None:
    import pyarrow.parquet as pq
    from omegaconf import OmegaConf
    from transformers import AutoTokenizer
    from verl import DataProto
    from verl.experimental.reward_loop.reward_manager.naive import NaiveRewardManager
    sys.path.insert(0, str(ROOT / "recipes/verl"))
    import reward_fn
    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    ex = next(r for r in pq.read_table(export / "train.parquet").to_pylist()
              if " = " in r["reward_model"]["ground_truth"])
    stmt, info = ex["reward_model"]["ground_truth"], ex["extra_info"]
    answers = {"rfl": 1.0, "omega": 0.0}    # an '=' goal of the toy fragment: rfl proves it
    os.environ["REQUIRE_TACTIC_BLOCKS"] = "0"   # the toy answers carry no ```tactics blocks

    async def run():
        mgr = NaiveRewardManager(OmegaConf.create({}), tok, reward_fn.compute_score)
        out = {}
        for tactic in answers:
            text = f"<think>\nx\n</think>\n```lean4\n{info['header']}{stmt}\n  {tactic}\n```"
            resp = torch.tensor([tok(text, add_special_tokens=False).input_ids])
            prompt = torch.tensor([[1, 2, 3]])
            data = DataProto.from_dict(
                tensors={"prompts": prompt, "responses": resp,
                         "attention_mask": torch.ones(1, prompt.shape[1] + resp.shape[1],
                                                      dtype=torch.long)},
                non_tensors={"data_source": np.array([ex["data_source"]], dtype=object),
                             "reward_model": np.array([ex["reward_model"]], dtype=object),
                             "extra_info": np.array([dict(info)], dtype=object)})
            out[tactic] = await mgr.run_single(data)
        return out
    got = asyncio.run(run())
    for tactic, want in answers.items():
        assert got[tactic]["reward_score"] == want, (tactic, got[tactic])
    assert got["rfl"]["reward_extra_info"]["acc"] == 1.0 and "Error" in got["omega"]["reward_extra_info"]["tool_feedback"]
    print("reward: verl's NaiveRewardManager with reward_fn.compute_score: right proof 1, wrong 0")


def check_config() -> None:
    import verl
    from hydra import compose, initialize_config_dir
    from verl.utils.config import validate_config
    lines = [ln.strip()
             for ln in (ROOT / "recipes/verl/kimina_grpo.overrides").read_text().splitlines()
             if ln.strip() and not ln.strip().startswith("#")]
    os.environ.update({"DATA": "/data/verl", "MODEL": "AI-MO/Kimina-Prover-Distill-1.7B",
                       "NGPUS": "8", "NNODES": "1"})
    lines = [os.path.expandvars(ln) for ln in lines]   # as kimina_grpo.sh fills them
    assert not any("${" in ln for ln in lines), lines
    with initialize_config_dir(config_dir=str(Path(verl.__file__).parent / "trainer/config"),
                               version_base=None):
        cfg = compose(config_name="ppo_trainer", overrides=lines)
    validate_config(cfg, use_reference_policy=False, use_critic=False)
    actor = cfg.actor_rollout_ref.actor
    assert actor.loss_scale_factor == 24576 and actor.optim.weight_decay == 0.0 and actor.clip_ratio_c == 3.0
    assert cfg.trainer.test_freq == 5 and cfg.actor_rollout_ref.rollout.val_kwargs.n == 8
    assert cfg.reward.reward_manager.name == "naive" and cfg.reward.custom_reward_function.name == "compute_score"
    # without the micro-batch sizes verl's validation refuses the command
    bare = [ln for ln in lines if "micro_batch_size_per_gpu" not in ln]
    with initialize_config_dir(config_dir=str(Path(verl.__file__).parent / "trainer/config"),
                               version_base=None):
        cfg2 = compose(config_name="ppo_trainer", overrides=bare)
    try:
        validate_config(cfg2, use_reference_policy=False, use_critic=False)
    except Exception as exc:   # hydra wraps verl's AssertionError in an InstantiationException
        assert "micro_batch_size" in str(exc), exc
        print("config: verl validates kimina_grpo.overrides; without micro-batch "
              "sizes it refuses the command")
    else:
        raise AssertionError("verl accepted a command without micro-batch sizes")


def check_losses() -> None:
    from verl.trainer.ppo import core_algos
    from verl.workers.config import FSDPActorConfig
    g = torch.Generator().manual_seed(0)
    B, T, group = 8, 12, 4
    for norm in (False, True):
        rewards = torch.randint(0, 2, (B,), generator=g).float()
        mask = (torch.arange(T)[None] < torch.randint(3, T + 1, (B, 1), generator=g)).float()
        verl_adv, _ = core_algos.compute_grpo_outcome_advantage(
            rewards[:, None] * torch.nn.functional.one_hot(mask.sum(-1).long() - 1, T).float(),
                                                                mask,
            np.array([i // group for i in range(B)]), norm_adv_by_std_in_grpo=norm)
        rolls = [SimpleNamespace(reward=float(r), advantage=0.0) for r in rewards]
        rl_objective.group_advantages(rolls,
                                      SimpleNamespace(group_size=group, adv_std_norm=norm,
                                                      skip_zero_variance=False))
        assert torch.allclose(verl_adv[:, 0],
                              torch.tensor([r.advantage for r in rolls], dtype=torch.float32),
                              atol=1e-5)
    one, _ = core_algos.compute_grpo_outcome_advantage(torch.ones(1, 1), torch.ones(1, 1),
                                                       np.array([0]))
    solo = [SimpleNamespace(reward=1.0, advantage=0.0)]
    rl_objective.group_advantages(solo,
                                  SimpleNamespace(group_size=1, adv_std_norm=True,
                                                  skip_zero_variance=False))
    assert abs(float(one[0, 0]) - solo[0].advantage) < 1e-5
    modes = {"seq_sum_norm": "seq-mean-token-sum-norm", "token_mean": "token-mean",
             "seq_mean": "seq-mean-token-mean"}
    for level, loss_name in (("token", "vanilla"), ("sequence", "gspo")):
        for ours, theirs in modes.items():
            logp = -torch.rand(B, T, generator=g) * 2
            # ratios well beyond the clip range
            old = logp + (torch.rand(B, T, generator=g) - 0.5) * 1.2
            adv = torch.randn(B, generator=g) * 2
            mask = (torch.arange(T)[None] < torch.randint(2, T + 1, (B, 1), generator=g)).float()
            cfg = SimpleNamespace(ratio_level=level, clip_low=0.2, clip_high=0.3, clip_ratio_c=3.0,
                                  kl_coef=0.0, loss_agg=ours)
            a, _ = rl_objective.policy_loss(logp, old, adv, mask, cfg, max_len=T)
            conf = FSDPActorConfig(strategy="fsdp", rollout_n=1, ppo_micro_batch_size_per_gpu=1,
                                   clip_ratio_low=0.2, clip_ratio_high=0.3,
                                   clip_ratio_c=3.0, loss_agg_mode=theirs, loss_scale_factor=T)
            conf.global_batch_info["loss_scale_factor"] = T
            fn = core_algos.get_policy_loss_fn(loss_name)
            b, _ = fn(old, logp, adv[:, None].expand(B, T), mask, loss_agg_mode=theirs, config=conf)
            assert torch.allclose(a, b, atol=1e-5), (level, ours, float(a), float(b))
    print("losses: advantages (plain, std-normalised, group of one) and policy loss (3 "
          "aggregations x GRPO/GSPO) "
          "equal verl core_algos'")


if __name__ == "__main__":
    export, rl_prompts, tokenizer_dir = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
    check_losses()
    check_config()
    check_dataset(export, rl_prompts, tokenizer_dir)
    check_reward(export, tokenizer_dir)
    print("verl checks: all passed")
