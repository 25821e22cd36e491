"""Does an SFT model copy the statement at the first turn and in the correction (second) turn?
On a run's SFT rows (toy task): greedy answers that contain the row's statement verbatim, and
the teacher-forced completion loss per token, for first-turn rows and correction rows apart.
The README's figures on the cost of correction rows (issue #16) come from this.

    .venv/bin/python recipes/copy_probe.py --model runs/smoke/02_sft/final/model --data runs/smoke/01_data/sft.parquet
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
        pick = [pick[i] for i in torch.randperm(len(pick), generator=torch.Generator().manual_seed(seed))[:n].tolist()]
        if not pick:
            continue
        copied, loss, tokens = 0, 0.0, 0
        for r in pick:
            p = tok(formats.render(tok, formats.prompt_messages(r, fmt), fmt), add_special_tokens=False).input_ids
            c = tok(r["completion"], add_special_tokens=False).input_ids
            with torch.no_grad():
                logits = model(torch.tensor([p + c])).logits[0, len(p) - 1:-1]
                loss += float(torch.nn.functional.cross_entropy(logits, torch.tensor(c), reduction="sum"))
                tokens += len(c)
                g = model.generate(torch.tensor([p]), max_new_tokens=len(c) + 8, do_sample=False)
            copied += r["formal_statement"] in tok.decode(g[0, len(p):], skip_special_tokens=True)
        out[kind] = {"rows": len(pick), "greedy_copies_statement": copied, "loss_per_token": loss / tokens}
    return out


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True)
    ap.add_argument("--data", required=True, type=Path)
    ap.add_argument("--n", type=int, default=24)
    ap.add_argument("--seed", type=int, default=1)
    a = ap.parse_args()
    for kind, res in probe(a.model, a.data, a.n, a.seed).items():
        print(f"{kind:10s} copies the statement (greedy): {res['greedy_copies_statement']} / {res['rows']}; "
              f"completion loss {res['loss_per_token']:.3f} per token")
