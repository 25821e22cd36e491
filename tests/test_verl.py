"""The verl path against real verl 0.9.1 code on CPU (slow): builds .venv-verl (setup_verl.sh), then
runs tests/verl_checks.py there: verl's dataset classes on our export (03's prompt ids), our reward
through verl's reward loop against the stand-in, verl's config validation of the recipe's
overrides, and core_algos against rl_objective."""
import re
import os
import subprocess
import sys

import pytest

from conftest import ROOT
import common
import formats
import generation


@pytest.mark.slow
def test_real_verl_code_accepts_our_export_reward_config_and_loss(tmp_path, standin):
    setup = subprocess.run(["bash", str(ROOT / "setup_verl.sh")], capture_output=True, text=True,
                           timeout=1800)
    # pip prints a warning per package for this machine's empty extra indexes; keep the rest
    said = [ln for ln in (setup.stdout + setup.stderr).splitlines()
            if "is ignored: it is neither" not in ln]
    assert setup.returncode == 0, "setup_verl.sh failed:\n" + "\n".join(said[-60:])
    env = {**os.environ, "PROVER_RUNS_DIR": str(tmp_path / "runs"), "LEAN_SERVER_API_URL": standin}
    subprocess.run([sys.executable, str(ROOT / "01_prepare_data.py"), "--task", "toy", "--run_name",
                    "v",
                    "--toy_n_statements", "200"], check=True, capture_output=True, env=env)
    subprocess.run([sys.executable, str(ROOT / "recipes/verl/export_verl.py"), "--run_name", "v",
                    "--out",
                    str(tmp_path / "export")], check=True, capture_output=True, env=env)
    rl = tmp_path / "runs/v/01_data/rl_prompts.parquet"
    rows = common.read_rows(rl, "statements")
    tiny = generation.build_tiny_model([formats.render_prompt_text(r) for r in rows],
                                       tmp_path / "tiny")
    proc = subprocess.run([str(ROOT / ".venv-verl/bin/python"), str(ROOT / "tests/verl_checks.py"),
                           str(tmp_path / "export"), str(rl), str(tiny)], capture_output=True,
                          text=True,
                          env=env, timeout=900)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    for line in ("losses: ", "config: ", "dataset: ", "reward: ", "verl checks: all passed"):
        assert line in proc.stdout, line


# Every key that Kimina's verl launch sets: project-numina/kimina-prover-rl, commit
# e16b605e8186614c685875c9b57eb19e841b521a, recipe/kimina_prover_rl/kimina_prover_1.7B.sh
# (its `key=value` arguments to verl.trainer.main_ppo, read from the file).
KIMINA_1_7B_KEYS = """
+custom_reward_function.reward_kwargs.return_dict +data.multiturn +data.multiturn_n_samples_in_cache
+data.multiturn_sampling_rate +data.return_extra_info actor_rollout_ref.actor.clip_ratio_high
actor_rollout_ref.actor.clip_ratio_low actor_rollout_ref.actor.entropy_coeff
actor_rollout_ref.actor.fsdp_config.optimizer_offload actor_rollout_ref.actor.fsdp_config.param_offload
actor_rollout_ref.actor.kl_loss_coef actor_rollout_ref.actor.loss_agg_mode actor_rollout_ref.actor.optim.lr
actor_rollout_ref.actor.ppo_max_token_len_per_gpu actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu
actor_rollout_ref.actor.ppo_mini_batch_size actor_rollout_ref.actor.use_kl_loss
actor_rollout_ref.model.enable_gradient_checkpointing actor_rollout_ref.model.path
actor_rollout_ref.model.use_remove_padding actor_rollout_ref.ref.fsdp_config.param_offload
actor_rollout_ref.ref.log_prob_max_token_len_per_gpu actor_rollout_ref.ref.log_prob_micro_batch_size_per_gpu
actor_rollout_ref.rollout.gpu_memory_utilization actor_rollout_ref.rollout.log_prob_micro_batch_size_per_gpu
actor_rollout_ref.rollout.max_num_batched_tokens actor_rollout_ref.rollout.n actor_rollout_ref.rollout.name
actor_rollout_ref.rollout.tensor_model_parallel_size actor_rollout_ref.rollout.val_kwargs.do_sample
actor_rollout_ref.rollout.val_kwargs.n actor_rollout_ref.rollout.val_kwargs.temperature
actor_rollout_ref.rollout.val_kwargs.top_p algorithm.adv_estimator algorithm.norm_adv_by_std_in_grpo
algorithm.use_kl_in_reward custom_reward_function.name custom_reward_function.path data.custom_cls.name
data.custom_cls.path data.dataloader_num_workers data.filter_overlong_prompts data.max_prompt_length
data.max_response_length data.return_raw_chat data.train_batch_size data.train_files data.truncation
data.val_files reward_model.launch_reward_fn_async reward_model.reward_manager trainer.critic_warmup
trainer.experiment_name trainer.logger trainer.n_gpus_per_node trainer.nnodes trainer.project_name
trainer.save_freq trainer.test_freq trainer.total_epochs
""".split()
# the values its memory and speed keys take, where verl 0.9.1's own defaults differ
KIMINA_MEMORY_VALUES = {"actor_rollout_ref.actor.ppo_max_token_len_per_gpu": "32768",
                        "actor_rollout_ref.ref.log_prob_max_token_len_per_gpu": "32768",
                        "actor_rollout_ref.rollout.max_num_batched_tokens": "32768",
                        "actor_rollout_ref.rollout.tensor_model_parallel_size": "1",
                        "actor_rollout_ref.ref.fsdp_config.param_offload": "True",
                        "actor_rollout_ref.model.use_remove_padding": "True"}


def test_every_key_of_kiminas_launch_is_kept_or_its_absence_explained():
    text = (ROOT / "recipes/verl/kimina_grpo.overrides").read_text()
    ours = dict(line.split("=", 1) for line in text.splitlines()
                if line and not line.startswith("#"))
    explained = set()
    for block in re.findall(r"^# left out: (.+?):", text, re.M | re.S):
        explained |= {k.strip() for k in block.replace("#", " ").split(",")}
    missing = [k for k in KIMINA_1_7B_KEYS if k not in ours and k not in explained]
    assert not missing, f"Kimina sets these, the overrides neither keep nor explain them: {missing}"
    assert {k: ours.get(k) for k in KIMINA_MEMORY_VALUES} == KIMINA_MEMORY_VALUES
