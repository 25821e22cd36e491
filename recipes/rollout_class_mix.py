"""How many first-turn rollouts of each toy class a 03 run drew, per step and in total, and the
share of them that wrote the class's right tactic (first / second half of the run). Reads
runs/<run>/03_grpo/rollouts/; the class is the relation's tactic (toy_task.TACTIC_RULES).

    .venv/bin/python recipes/rollout_class_mix.py runs/smoke_smollm2_sweep_bal-20_s0 [more runs]
"""
import re
import sys
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from toy_task import TACTIC_RULES, relation_of  # noqa: E402

RIGHT = {rel: tac for tac, rels in TACTIC_RULES.items() for rel in rels}


def class_mix(run: Path) -> pd.DataFrame:
    files = sorted((run / "03_grpo" / "rollouts").glob("step_*.parquet"))
    if not files:
        raise SystemExit(f"{run}: no 03_grpo/rollouts/step_*.parquet")
    df = pd.concat(pd.read_parquet(f) for f in files)
    df = df[df.turn == 1]
    # the class from the statement the prompt holds, parsed by the checker's own relation_of
    rel = df.prompt.map(lambda p: relation_of(re.search(r"theorem toy_\d+ : [^\n]*:= by",
                                                        p).group(0)))
    tactic = df.completion.map(lambda c: (re.findall(r":= by\s+(\w+)", c) or ["?"])[-1])
    return pd.DataFrame({"step": df.step.values, "cls": rel.map(RIGHT).values,
                         "right": (tactic == rel.map(RIGHT)).values})


if __name__ == "__main__":
    for arg in sys.argv[1:]:
        d = class_mix(Path(arg))
        half = (d.step > d.step.max() / 2).map({False: "first half", True: "second half"})
        print(f"## {arg}\n\nfirst-turn rollouts per class and step:\n")
        print(pd.crosstab(d.cls, d.step, margins=True, margins_name="all").to_string())
        print("\nshare with the right tactic:\n")
        print(d.groupby(["cls", half]).right.mean().unstack().round(2).to_string(), "\n")
