"""The two agentic loops, one implementation with two callers: 04_eval.py evaluates with them
(--mode repair, --mode tool) and 03_rl_grpo.py trains on what they produce (--rollout repair,
--rollout tool), so the strategy learnt in training is the one deployed.

- repair_rounds: OProver's finite-round repair cycle. Round t of a trajectory sees the statement,
  the proofs retrieved for it (the caller's prompt function), and for t > 1 the previous attempt
  with its Lean diagnostics; a trajectory stops at its first verified proof.
- tool_rollouts: StepFun's tool-integrated generation. Generation pauses at `</sketch>`, the
  sketch runs on the Lean server, the REPL's JSON answer is appended inside <REPL></REPL> and
  generation resumes. Everything is kept in token space, so the sequence trained on is exactly
  the one sampled, and the tool's tokens carry loss_mask 0 (no loss, no importance ratio).
"""
import json
from dataclasses import dataclass, field
from typing import Callable, Sequence

import generation


# ---------------------------------------------------------------------------------------------
# OProver: rounds of repair
# ---------------------------------------------------------------------------------------------

NO_PROOF_FEEDBACK = "The answer holds no lean4 block with the unchanged statement."


@dataclass
class Round:
    index: int                    # 1-based round number
    prompt: str
    gen: generation.Generation
    verdict: object | None        # lean_client.Verdict, None when the answer held no proof
    feedback: str                 # what the next round is shown ("" when verified)
    prev_attempt: str = ""        # what this round was shown: the previous attempt ...
    prev_feedback: str = ""       # ... and its feedback ("" in round 1)

    @property
    def ok(self) -> bool:
        return bool(self.verdict is not None and self.verdict.ok)


def repair_rounds(items: Sequence, depth: int, prompt_of: Callable, sample: Callable,
                  verify: Callable,
                  feedback_of: Callable, seed_of: Callable, on_round: Callable | None = None,
                  resume: dict | None = None) -> list[list[Round]]:
    """Run a trajectory per item for up to `depth` rounds, all active trajectories batched per
    round. prompt_of(item, attempt, feedback, rnd) -> prompt text; sample(prompts, seeds) ->
    Generations; verify(items, texts) -> verdicts (None: no proof); feedback_of(verdict or None,
    rnd)
    -> the text the next round sees (empty: the no-proof line); seed_of(item, rnd) -> the rollout
    seed; on_round(rnd, [(i, Round)]) sees
    each round as soon as it is verified (04 logs it there); resume[i] = (next round, last
    attempt, its feedback) continues a trajectory cut by a crash. Returns each item's new rounds."""
    trajectories: list[list[Round]] = [[] for _ in items]
    resume = resume or {}
    # (attempt, feedback)
    state = {i: resume[i][1:] if i in resume else ("", "") for i in range(len(items))}
    start = {i: resume[i][0] if i in resume else 1 for i in range(len(items))}
    active: list[int] = []
    for rnd in range(1, depth + 1):
        active = sorted(active + [i for i in range(len(items)) if start[i] == rnd])
        if not active:
            continue
        prompts = [prompt_of(items[i], *state[i], rnd) for i in active]
        gens = sample(prompts, [seed_of(items[i], rnd) for i in active])
        verdicts = verify([items[i] for i in active], [g.text for g in gens])
        done_now, nxt = [], []
        for i, p, g, v in zip(active, prompts, gens, verdicts):
            fb = "" if (v is not None and v.ok) else feedback_of(v, rnd) or NO_PROOF_FEEDBACK
            r = Round(rnd, p, g, v, fb, *state[i])
            trajectories[i].append(r)
            done_now.append((i, r))
            if not r.ok:
                state[i] = (g.text, fb)
                nxt.append(i)
        if on_round:
            on_round(rnd, done_now)
        active = nxt
    return trajectories


# ---------------------------------------------------------------------------------------------
# StepFun: tool-integrated generation
# ---------------------------------------------------------------------------------------------

@dataclass
class ToolTrace:
    text: str = ""                                       # the completion, REPL answers inside
    token_ids: list[int] = field(default_factory=list)   # generated and tool tokens, as conditioned
                                                         # on
    logprobs: list[float] = field(default_factory=list)  # sampling log-probs (0.0 on tool tokens)
    loss_mask: list[int] = field(default_factory=list)   # 1: the model's token; 0: the tool's
    generated: int = 0                                   # tokens the model generated
    checks: int = 0                                      # sketches run
    finish: str = "length"                               # eos | length | budget | no_sketch |
                                                         # checks

    def as_generation(self) -> generation.Generation:
        return generation.Generation(self.text, self.token_ids, self.logprobs, self.finish)


def repl_text(v, line_numbering: str) -> str:
    """What StepFun's REPL would print for a sketch: its JSON, positions counted in the sketch
    (we sent `import Mathlib` before it), or the demo's line when no answer came."""
    if v.status in ("timeout", "server_error") or not isinstance((v.raw or {}).get("response"),
                                                                 dict):
        return f"repl cannot return status in {v.time} seconds!"
    shift = 1 - (1 if line_numbering == "after_imports" else 0)
    out = json.loads(json.dumps(v.raw["response"]))
    out.pop("env", None)   # StepFun's run_sketch (demo/pylean.py) drops it: a clean sketch is {}
    for item in (out.get("messages") or []) + (out.get("sorries") or []):
        for key in ("pos", "endPos"):
            if isinstance(item.get(key), dict) and "line" in item[key]:
                item[key]["line"] -= shift
    return json.dumps(out, ensure_ascii=False)


def sketch_of(text: str) -> str | None:
    """The code between the first <sketch> and the first </sketch> of a segment that stopped at
    </sketch>, as StepFun's demo takes it (str.find of both), `import Mathlib` removed (the REPL
    has Mathlib loaded), or None."""
    end = text.find("</sketch>")
    start = text.find("<sketch>")
    if end < 0 or start < 0 or start > end:
        return None
    return text[start + len("<sketch>"):end].replace("import Mathlib", "").strip()


def tool_rollouts(gen, tok, client, prompts: Sequence[str], seeds: Sequence[int], *,
                  max_new_tokens: int,
                  budget: int, max_checks: int = 0, temperature: float = 1.0,
                  top_p: float = 1.0) -> list[ToolTrace]:
    """StepFun's loop (demo/interact_with_lean4repl.py): generate until end of sequence or
    </sketch>; the sketch runs, `\\n<REPL>\\n{json}\\n</REPL>` is appended, generation goes on. A
    trace ends at end of sequence, when a call stops at its own token limit, when a stop holds no
    sketch, after max_checks checks (0: unlimited, as StepFun), or when the whole context (prompt
    + generated + REPL tokens) reaches `budget` tokens. Each call continues from the token ids of
    the context, never from re-tokenised text."""
    prompt_ids = [tok(p, add_special_tokens=False).input_ids for p in prompts]
    traces = [ToolTrace() for _ in prompts]
    ctx = lambda i: len(prompt_ids[i]) + len(traces[i].token_ids)   # noqa: E731
    active = [i for i in range(len(prompts)) if ctx(i) < budget]
    for i in set(range(len(prompts))) - set(active):
        traces[i].finish = "budget"
    while active:
        own = {i: min(max_new_tokens, budget - ctx(i)) for i in active}
        cap = min(own.values())      # one call for all: no trace may pass its own limit
        gens = gen.generate([prompt_ids[i] + traces[i].token_ids for i in active],
                            [generation.rollout_seed(seeds[i], traces[i].checks,
                                                     traces[i].generated) for i in active],
                            cap, temperature, top_p, stop=("</sketch>",))
        nxt, sketches = [], []
        for i, g in zip(active, gens):
            t = traces[i]
            t.text += g.text
            t.token_ids += g.token_ids
            t.logprobs += g.logprobs
            t.loss_mask += [1] * len(g.token_ids)
            t.generated += len(g.token_ids)
            if ctx(i) >= budget:
                t.finish = "budget"
            elif g.finish == "eos":
                t.finish = "eos"
            elif g.finish == "length":
                if len(g.token_ids) < own[i]:
                    nxt.append(i)        # cut by another trace's smaller limit: go on
                else:
                    t.finish = "length"  # its own limit: StepFun stops here
            elif (code := sketch_of(g.text)) is None:
                t.finish = "no_sketch"   # a stop without a sketch is a format error
            elif max_checks and t.checks >= max_checks:
                t.finish = "checks"
            else:
                sketches.append((i, code))
        if sketches:
            verdicts = client.verify([{"id": str(i), "code": "import Mathlib\n" + s}
                                      for i, s in sketches])
            for (i, _), v in zip(sketches, verdicts):
                t = traces[i]
                answer = f"\n<REPL>\n{repl_text(v, client.line_numbering)}\n</REPL>"
                ids = tok(answer, add_special_tokens=False).input_ids
                t.text += answer
                t.token_ids += ids
                t.logprobs += [0.0] * len(ids)
                t.loss_mask += [0] * len(ids)
                t.checks += 1
                if ctx(i) >= budget:
                    t.finish = "budget"  # a long REPL answer can fill the context
                else:
                    nxt.append(i)
        active = sorted(nxt)
    return traces
