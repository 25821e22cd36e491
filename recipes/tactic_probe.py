"""What does a model believe the rule is? On the toy eval set, the model's probability of each
of the four tactics at the token that decides, teacher-forced on the SFT answer shape (the
statement copied, `:= by`, then the tactic): per class, the mean probability of the right
tactic and of each tactic. No sampling, so two checkpoints compare without sampling noise and
without the copying of the statement in the way: it separates learning the rule (the right
tactic's probability rises in every class) from sharpening a preference (one tactic rises in
every class). docs/RESULTS.md's smollm2 smoke reads its SFT and RL models with it.

    .venv/bin/python recipes/tactic_probe.py --model runs/smoke_smollm2/02_sft/final/model \
        --data runs/smoke_smollm2/01_data/eval_toy.parquet --problems 200
    .venv/bin/python recipes/tactic_probe.py --model A --model B ...    # several models, one table

Scores: for each tactic t, log p(the answer's tail from the first token where the four answers'
token ids differ | prompt and the common head), so a tokenizer that merges the indent into the
tactic's token is handled; the four are normalised to sum to one (`mass` is how much of the
model's probability the four hold at all: near 1 once the format is learnt).
"""
import argparse
import json
import sys
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import torch  # noqa: E402

import common  # noqa: E402
import formats  # noqa: E402
import generation  # noqa: E402
from toy_task import TACTIC_RULES, relation_of, toy_completion  # noqa: E402

TACTICS = sorted(TACTIC_RULES)
RIGHT = {rel: t for t, rels in TACTIC_RULES.items() for rel in rels}


def answer_scores(model, tok, row: dict, fmt: str) -> list[float]:
    """log p of each tactic's answer tail (TACTICS order) given the prompt and the common head."""
    return batch_scores(model, tok, [row], fmt)[0]


def batch_scores(model, tok, rows: list[dict], fmt: str) -> list[list[float]]:
    """answer_scores for several rows in one forward pass (4 sequences per row, right-padded:
    padding after a sequence cannot change a causal model's log-probs before it)."""
    seqs, spans = [], []
    for row in rows:
        prompt = tok(formats.render(tok, formats.prompt_messages(row, fmt), fmt),
                     add_special_tokens=False).input_ids
        answers = [tok(toy_completion(row["formal_statement"], t),
                       add_special_tokens=False).input_ids for t in TACTICS]
        head = 0
        while all(len(a) > head for a in answers) and len({a[head] for a in answers}) == 1:
            head += 1
        for a in answers:
            seqs.append(prompt + a)
            spans.append((len(prompt) + head, len(prompt) + len(a)))
    width = max(map(len, seqs))
    ids = torch.full((len(seqs), width), tok.pad_token_id or 0, dtype=torch.long)
    attn = torch.zeros_like(ids)
    for b, s in enumerate(seqs):
        ids[b, :len(s)] = torch.tensor(s)
        attn[b, :len(s)] = 1
    with torch.no_grad():
        lsm = torch.log_softmax(model(input_ids=ids, attention_mask=attn).logits.float(), -1)
    scores = []
    for b, (lo, hi) in enumerate(spans):
        cols = torch.arange(lo, hi)
        scores.append(float(lsm[b, cols - 1, ids[b, cols]].sum()))
    return [scores[i:i + len(TACTICS)] for i in range(0, len(scores), len(TACTICS))]


def probe(model_path: str, data: Path, problems: int, fmt: str = "kimina", batch: int = 8) -> dict:
    tok, model = generation.load_tokenizer(model_path), generation.load_model(model_path).eval()
    rows = common.read_rows(data, "statements")[:problems]   # 01 writes eval files stratified: a
                                                             # prefix is balanced
    per_class: dict[str, list[list[float]]] = defaultdict(list)
    mass: list[float] = []
    for n, row in enumerate(rows):   # a non-toy file fails here, naming the row, before any model
                                     # work
        try:
            RIGHT[relation_of(row["formal_statement"])]
        except Exception as e:
            raise ValueError(f"{data}: row {n} is not a toy statement "
                             f"({row.get('formal_statement')!r:.80}): {e}") from None
    for i in range(0, len(rows), batch):
        for row, sc in zip(rows[i:i + batch], batch_scores(model, tok, rows[i:i + batch], fmt)):
            s = torch.tensor(sc)
            per_class[RIGHT[relation_of(row["formal_statement"])]].append(torch.softmax(s, 0).tolist())
            mass.append(float(s.exp().sum()))
    out = {"model": model_path, "problems": len(rows), "mass": sum(mass) / len(mass), "classes": {}}
    for cls in TACTICS:
        probs = per_class.get(cls, [])
        if probs:
            mean = [sum(p[k] for p in probs) / len(probs) for k in range(len(TACTICS))]
            out["classes"][cls] = {"problems": len(probs), "p_right": mean[TACTICS.index(cls)],
                                   "p": dict(zip(TACTICS, mean))}
    out["p_right_min"] = min(c["p_right"] for c in out["classes"].values())
    return out


def table(results: list[dict]) -> str:
    lines = ["| model | mass | " + " | ".join(f"p(right) {c}"
                                              for c in TACTICS) + " | min | p(decide, "
             "norm_num, omega, rfl) over all |",
             "|---|---:|" + "---:|" * len(TACTICS) + "---:|---|"]
    for r in results:
        cls = r["classes"]
        overall = [sum(c["p"][t] * c["problems"] for c in cls.values()) / r["problems"]
                   for t in TACTICS]
        lines.append(f"| {r['model']} | {r['mass']:.2f} | " + " | ".join(
            f"{cls[c]['p_right']:.3f}" if c in cls else "" for c in TACTICS)
            + f" | {r['p_right_min']:.3f} | " + ", ".join(f"{p:.2f}" for p in overall) + " |")
    return "\n".join(lines)


def main(argv: list[str]) -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", action="append", required=True,
                    help="a model folder (repeat for several)")
    ap.add_argument("--data", required=True, type=Path,
                    help="a toy eval file (01's eval_toy.parquet)")
    ap.add_argument("--problems", type=int, default=200)
    ap.add_argument("--prompt_format", default="kimina")
    ap.add_argument("--json", type=Path, help="also write the results here")
    args = ap.parse_args(argv)
    torch.set_grad_enabled(False)
    results = [probe(m, args.data, args.problems, args.prompt_format) for m in args.model]
    print(table(results))
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main(sys.argv[1:])
