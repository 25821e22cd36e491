"""Does an SFT model copy the statement at the first turn and in the correction (second) turn?
On a run's SFT rows (toy task): greedy answers that contain the row's statement verbatim, and
the teacher-forced completion loss per token, for first-turn rows and correction rows apart.
docs/RESULTS.md's figures on the cost of correction rows (issue #16) come from this.

    .venv/bin/python recipes/copy_probe.py --model runs/smoke/02_sft/final/model --data
    runs/smoke/01_data/sft.parquet

With --samples (04's samples.jsonl of the toy eval set) it reads what a model wrote instead:
the share of samples that copied the theorem's name and its proposition, per relation and per
length of the proposition (docs/RESULTS.md's account of why the `norm_num` class earns no reward).

    .venv/bin/python recipes/copy_probe.py --samples
    runs/smoke/04_eval/sft/toy/single/n8-t64/samples.jsonl \
        --data runs/smoke/01_data/eval_toy.parquet
"""
import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import torch  # noqa: E402

import common  # noqa: E402
import formats  # noqa: E402
import generation  # noqa: E402


def probe(model_path: str, data: Path, n: int = 24, seed: int = 1, fmt: str = "kimina") -> dict:
    tok, model = generation.load_tokenizer(model_path), generation.load_model(model_path).eval()
    rows = common.read_rows(data, "sft")
    out = {}
    for kind in ("first", "correction"):
        pick = [r for r in rows if bool(r.get("prev_attempt")) == (kind == "correction")]
        pick = [pick[i]
                for i in torch.randperm(len(pick),
                                        generator=torch.Generator().manual_seed(seed))[:n].tolist()]
        if not pick:
            continue
        copied, loss, tokens = 0, 0.0, 0
        for r in pick:
            p = tok(formats.render(tok, formats.prompt_messages(r, fmt), fmt),
                    add_special_tokens=False).input_ids
            c = tok(r["completion"], add_special_tokens=False).input_ids
            with torch.no_grad():
                logits = model(torch.tensor([p + c])).logits[0, len(p) - 1:-1]
                loss += float(torch.nn.functional.cross_entropy(logits, torch.tensor(c),
                                                                reduction="sum"))
                tokens += len(c)
                g = model.generate(torch.tensor([p]), max_new_tokens=len(c) + 8, do_sample=False)
            copied += r["formal_statement"] in tok.decode(g[0, len(p):], skip_special_tokens=True)
        out[kind] = {"rows": len(pick), "greedy_copies_statement": copied,
                     "loss_per_token": loss / tokens}
    return out


def copies_by_shape(samples: Path, data: Path) -> dict[str, dict[str, list[float]]]:
    """Per relation and per proposition length (characters, in bands): [samples, name copied,
    proposition copied] as shares, from the first `theorem NAME : PROP :=` each sample wrote."""
    import json
    import re
    from toy_task import relation_of
    stmts = {r["statement_id"]: r["formal_statement"] for r in common.read_rows(data, "statements")}
    shape = re.compile(r"theorem (\S+) : (.*?) :=")
    bands = ("<= 8", "9-12", ">= 13")
    groups: dict[str, dict[str, list]] = {"relation": {},
                                          "proposition length": {b: [] for b in bands}}
    for line in samples.read_text().splitlines():
        s = json.loads(line)
        want, got = shape.search(stmts[s["statement_id"]]), shape.search(s["completion"])
        hit = [got is not None and got.group(1) == want.group(1), got is not None
               and got.group(2) == want.group(2)]
        n = len(want.group(2))
        band = "<= 8" if n <= 8 else "9-12" if n <= 12 else ">= 13"
        for kind, key in (("relation", relation_of(stmts[s["statement_id"]])),
                          ("proposition length", band)):
            groups[kind].setdefault(key, []).append(hit)
    return {kind: {key: [len(v), 100 * sum(h[0] for h in v) / len(v),
                         100 * sum(h[1] for h in v) / len(v)]
                   for key, v in (g.items() if kind != "relation" else sorted(g.items())) if v}
            for kind, g in groups.items()}


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", help="probe this SFT model on --data's SFT rows")
    ap.add_argument("--samples", type=Path, help="or read 04's samples of --data's eval statements")
    ap.add_argument("--data", required=True, type=Path)
    ap.add_argument("--n", type=int, default=24)
    ap.add_argument("--seed", type=int, default=1)
    a = ap.parse_args()
    if a.samples:
        for kind, table in copies_by_shape(a.samples, a.data).items():
            print(f"| {kind} | samples | theorem name copied (%) | proposition copied "
                  f"(%) |\n|---|---:|---:|---:|")
            print("\n".join(f"| `{k}` | {v[0]} | {v[1]:.1f} | {v[2]:.1f} |"
                            for k, v in table.items()) + "\n")
        raise SystemExit(0)
    if not a.model:
        ap.error("--model or --samples is required")
    for kind, res in probe(a.model, a.data, a.n, a.seed).items():
        print(f"{kind:10s} copies the statement (greedy): "
              f"{res['greedy_copies_statement']} / {res['rows']}; "
              f"completion loss {res['loss_per_token']:.3f} per token")
