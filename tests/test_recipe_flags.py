"""Every stage command in recipes/*.sh (GPU recipes are not run here) passes only flags the
stage's Settings define, including the flags 05_iterate.py forwards to 02/03/04 (--*_extra)."""
import dataclasses
import importlib.util
import re
import shlex

import pytest

from conftest import ROOT

STAGES = ["01_prepare_data.py", "02_sft.py", "03_rl_grpo.py", "04_eval.py", "05_iterate.py"]
FORWARDED = {"--sft_extra": "02_sft.py", "--rl_extra": "03_rl_grpo.py",
             "--eval_extra": "04_eval.py"}


def settings_fields(script: str) -> set[str]:
    spec = importlib.util.spec_from_file_location(script[:-3].replace("_", ""), ROOT / script)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return {f.name for f in dataclasses.fields(mod.Settings)}


def stage_commands(text: str):
    """(script, argv) for each stage invocation; shell variables become placeholders."""
    joined = re.sub(r"\\\n\s*", " ", text)
    for line in joined.splitlines():
        line = line.split(" #")[0]
        for script in STAGES:
            if re.search(rf"(^|\s){re.escape(script)}(\s|$)",
                         line) and not line.lstrip().startswith("#"):
                tail = line.split(script, 1)[1]
                tail = re.sub(r"\$\{[^}]*\}|\$\(\([^)]*\)\)|\$\([^)]*\)|\$\w+", "X", tail)
                yield script, shlex.split(tail.replace("|", " ").replace("&&", " "))


@pytest.mark.parametrize("recipe", sorted(p.name for p in (ROOT / "recipes").glob("*.sh")))
def test_recipe_flags_exist(recipe):
    fields = {s: settings_fields(s) for s in STAGES}
    found = 0
    for script, argv in stage_commands((ROOT / "recipes" / recipe).read_text()):
        found += 1
        for k, tok in enumerate(argv):
            if tok.startswith("--") and not (k and argv[k - 1] in FORWARDED):
                assert tok[2:] in fields[script], f"{recipe}: {script} has no --{tok[2:]}"
                if tok in FORWARDED and script == "05_iterate.py":
                    target = FORWARDED[tok]
                    for inner in shlex.split(argv[k + 1]):
                        if inner.startswith("--"):
                            assert inner[2:] in fields[target], f"{recipe}: {tok} passes --{inner[2:]}, unknown to {target}"
    if recipe in ("oprover_iterate.sh", "stepfun_tool_rl.sh"):
        assert found >= 2


@pytest.mark.parametrize("settings",
                         sorted(p.name for p in (ROOT / "recipes").glob("*_settings.txt")))
def test_sweep_settings_files_pass_only_03_flags(settings):
    """recipes/smoke_sweep.sh appends each `name|flags` line's flags to 03_rl_grpo.py."""
    fields = settings_fields("03_rl_grpo.py")
    lines = [l for l in (ROOT / "recipes" / settings).read_text().splitlines() if l.strip()]
    assert lines
    for line in lines:
        name, flags = line.split("|", 1)
        assert name and " " not in name, f"{settings}: run name {name!r}"
        argv = shlex.split(flags.split("#")[0])
        assert argv, f"{settings}: {name} has no flags"
        for tok in argv:
            if tok.startswith("--"):   # --key value, or --key=value (argparse's form for an empty
                                       # value)
                key = tok[2:].split("=", 1)[0]
                assert key in fields, f"{settings}: {name} passes --{key}, unknown to 03_rl_grpo.py"
