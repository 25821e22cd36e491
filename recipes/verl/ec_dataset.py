"""verl dataset class with Kimina-Prover-RL's error-correction turns (data.custom_cls).

Kimina's own dataset class (its verl fork, docs/RECIPES.md) keeps up to 5,000 second-turn
prompts built from failed attempts with Lean feedback and serves one with probability 0.5 in
place of a fresh prompt. Here the reward workers (recipes/verl/reward_fn.py) append failed first
turns to a cache file (KIMINA_EC_CACHE, shared on one node; on several nodes put it on a shared
file system), and this class reads its newest 5,000 entries and serves a second turn, built
exactly as 03 builds it (formats.prompt_messages: the first turn, the attempt as assistant
turn, the feedback as user turn), with probability 0.5. Second-turn prompts longer than
data.max_prompt_length tokens are skipped, as Kimina drops those over 8,192.

    data.custom_cls.path=recipes/verl/ec_dataset.py
    data.custom_cls.name=KiminaErrorCorrectionDataset
    +data.multiturn_sampling_rate=0.5 +data.multiturn_n_samples_in_cache=5000

Departure: the draw is seeded per item index and epoch of reading, not by a global RNG.
"""
import json
import os
import random
import sys
from collections import deque
from pathlib import Path

import torch
from verl.utils.dataset.rl_dataset import RLHFDataset

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
import formats  # noqa: E402


class KiminaErrorCorrectionDataset(RLHFDataset):
    def __init__(self, data_files, tokenizer, config, processor=None, max_samples: int = -1):
        super().__init__(data_files, tokenizer, config, processor=processor,
                         max_samples=max_samples)
        self.ec_rate = float(config.get("multiturn_sampling_rate", 0.5))
        self.ec_size = int(config.get("multiturn_n_samples_in_cache", 5000))
        self.cache_path = os.environ.get("KIMINA_EC_CACHE", "")
        self.cache: deque = deque(maxlen=self.ec_size)
        self._read_upto = 0
        self.draws = 0

    def refresh(self) -> None:
        """Read the entries appended since the last look (the newest ec_size stay)."""
        if not self.cache_path or not os.path.exists(self.cache_path):
            return
        with open(self.cache_path) as fh:
            fh.seek(self._read_upto)
            for line in fh:
                if line.endswith("\n"):
                    self.cache.append(json.loads(line))
                    self._read_upto += len(line.encode())

    def __getitem__(self, item):
        self.refresh()
        rng = random.Random(f"{item}/{self.draws}")
        self.draws += 1
        if self.cache and rng.random() < self.ec_rate:
            entry = self.cache[rng.randrange(len(self.cache))]
            messages = formats.prompt_messages({**entry["row"],
                                                "prev_attempt": entry["prev_attempt"],
                                                "lean_feedback": entry["lean_feedback"]})
            n_tokens = len(self.tokenizer.apply_chat_template(messages, add_generation_prompt=True,
                                                              tokenize=True))
            if n_tokens <= self.max_prompt_length:
                row = super().__getitem__(item)   # the verl fields (index, tools_kwargs, ...)
                row["raw_prompt"] = messages
                row["reward_model"] = {"style": "rule",
                                       "ground_truth": entry["row"]["formal_statement"]}
                row["extra_info"] = {**entry["row"], "turn": 2, "index": row.get("index", 0)}
                row["dummy_tensor"] = torch.tensor([0], dtype=torch.uint8)
                return row
        return super().__getitem__(item)
