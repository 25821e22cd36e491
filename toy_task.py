"""The toy task of the CPU smoke run, defined once: the statement grammar, the rule that says
which tactic proves which relation, and the checker that decides a snippet. 01_prepare_data.py
builds the toy data from it; the stand-in server (lean_standin_server.py) answers with it.
This is NOT Lean: it decides one invented fragment,

    theorem NAME : A REL B := by
      TACTIC

where A and B are closed natural-number expressions (literals, + - * / % ^, parentheses,
`(n : ℕ)` ascriptions; truncated subtraction and floor division as in Lean's ℕ) and REL is one
of = ≠ < ≤ > ≥ ∣. The tactic rules are invented so that the right tactic depends on the
relation symbol:

    rfl       closes a true  =
    decide    closes a true  ≠
    omega     closes a true  < ≤ > ≥
    norm_num  closes a true  ∣
    sorry     closes anything, with Lean's "declaration uses 'sorry'" warning and a sorries entry
    exact X   closes the goal if X is an axiom or theorem declared earlier with the same statement

Any other use fails with an error message shaped like Lean's, at the tactic's position; a
tactic after the goal is closed gives "no goals to be proved". `axiom NAME : P` and
`#print axioms NAME` are understood. Every statement outside the fragment (for example a real
miniF2F theorem) gets an error saying so: it is never reported as proved.
"""
from __future__ import annotations

import itertools
import json
import random
import re
from collections import defaultdict

from canonical import hash_split
from formats import build_lean_code, kimina_completion, lean_feedback
from lean_client import import_line_count, parse_result, strip_lean_comments

FRAGMENT = "toy-nat-arith-v1"
RELATIONS = ("=", "≠", "<", "≤", ">", "≥", "∣")
TACTIC_RULES = {"rfl": ("=",), "decide": ("≠",), "omega": ("<", "≤", ">", "≥"), "norm_num": ("∣",)}
TACTIC_AXIOMS = {"rfl": [], "decide": [], "omega": ["propext"],
                 "norm_num": ["Classical.choice", "Quot.sound", "propext"]}
MAX_VALUE = 10 ** 60


# ---------------------------------------------------------------------------------------------
# The toy fragment
# ---------------------------------------------------------------------------------------------

class OutsideFragment(Exception):
    pass


def _tokens(expr: str) -> list[str]:
    toks = re.findall(r"\d+|[()+\-*/%^:]|ℕ|Nat|\S", expr)
    return toks


def eval_nat(expr: str) -> int:
    """Evaluate a closed ℕ expression with Lean's truncated - and floor / (x / 0 = 0)."""
    toks, pos = _tokens(expr), 0

    def peek():
        return toks[pos] if pos < len(toks) else None

    def take(expected=None):
        nonlocal pos
        tok = peek()
        if tok is None or (expected and tok != expected):
            raise OutsideFragment(f"expected {expected or 'a term'} in {expr!r}")
        pos += 1
        return tok

    def atom():
        tok = peek()
        if tok and tok.isdigit():
            return int(take())
        if tok == "(":
            take("(")
            val = additive()
            if peek() == ":":
                take(":")
                if take() not in ("ℕ", "Nat"):
                    raise OutsideFragment("only ℕ is in the toy fragment")
            take(")")
            return val
        raise OutsideFragment(f"unexpected {tok!r} in {expr!r}")

    def power():
        base = atom()
        if peek() == "^":
            take("^")
            exp = power()
            if exp > 256 or base > 10 ** 6:
                raise OutsideFragment("number too large for the toy fragment")
            base = base ** exp
        return base

    def multiplicative():
        val = power()
        while peek() in ("*", "/", "%"):
            op, rhs = take(), power()
            val = val * rhs if op == "*" else (val // rhs if rhs else 0) if op == "/" else (
                val % rhs if rhs else val)
        return val

    def additive():
        val = multiplicative()
        while peek() in ("+", "-"):
            op, rhs = take(), multiplicative()
            val = val + rhs if op == "+" else max(0, val - rhs)
        if val > MAX_VALUE:
            raise OutsideFragment("number too large for the toy fragment")
        return val

    result = additive()
    if pos != len(toks):
        raise OutsideFragment(f"unexpected {toks[pos]!r} in {expr!r}")
    return result


def decide_prop(prop: str) -> tuple[str, bool]:
    """(relation, truth) of a closed ℕ proposition, or OutsideFragment."""
    depth, at = 0, None
    for i, ch in enumerate(prop):
        depth += ch == "("
        depth -= ch == ")"
        if depth == 0 and ch in RELATIONS:
            at = i
            break
    if at is None:
        raise OutsideFragment("no relation")
    rel, lhs, rhs = prop[at], eval_nat(prop[:at]), eval_nat(prop[at + 1:])
    truth = {"=": lhs == rhs, "≠": lhs != rhs, "<": lhs < rhs, "≤": lhs <= rhs, ">": lhs > rhs,
             "≥": lhs >= rhs, "∣": (rhs % lhs == 0) if lhs else rhs == 0}[rel]
    return rel, truth


def _failure(tactic: str, rel: str, truth: bool, goal: str) -> str:
    """Lean-shaped failure text that, like Lean's, shows the goal that failed (`⊢ 7 ∣ 21`), so a
    second turn can in principle read the relation off it and pick the right tactic."""
    if tactic == "rfl":
        return ("The rfl tactic failed. Possible reasons:\n- The goal is not a reflexive relation "
                "(neither `=` nor a relation with a @[refl] lemma).\n- The arguments of the "
                f"relation are not equal.\n⊢ {goal}")
    if tactic == "decide":
        if truth:
            return (f"failed to reduce to true/false\n  {goal}\nmaximum recursion "
                    f"depth has been reached\n"
                    "use `set_option maxRecDepth <num>` to increase limit")
        return (f"decide failed to prove the proposition\n  {goal}\nsince its 'Decidable' instance "
                "reduced to\n  Decidable.isFalse")
    if tactic == "omega":
        return ("omega could not prove the goal:\n" + ("No usable constraints found for "
                                                       "the hypotheses and goal."
                if truth else "a possible counterexample "
                              "may satisfy the constraints") + f"\n⊢ {goal}")
    return f"unsolved goals\n⊢ {goal}" if not truth else f"simp made no progress\n⊢ {goal}"


class Checker:
    """Elaborates one snippet of the toy fragment; returns the REPL-style response dict."""

    CMD = re.compile(r"^(theorem|lemma|axiom|#print|example|def|#check|#eval|import|set_option|"
                     r"open|namespace|section|end|noncomputable|instance|@\[)\b|^@\[", re.M)

    def __init__(self, code: str, line_base: str):
        self.code = code
        self.blank = strip_lean_comments(code, keep_columns=True)
        self.offset = import_line_count(code) if line_base == "after_imports" else 0
        self.messages: list[dict] = []
        self.sorries: list[dict] = []
        self.env: dict[str, dict] = {}  # name -> {"prop": str, "axioms": [..]}

    def pos(self, index: int) -> dict:
        line = self.blank.count("\n", 0, index) + 1
        col = index - (self.blank.rfind("\n", 0, index) + 1)
        return {"line": line - self.offset, "column": col}

    def msg(self, severity: str, start: int, end: int, text: str) -> None:
        self.messages.append({"severity": severity, "pos": self.pos(start),
                              "endPos": self.pos(end), "data": text})

    def run(self) -> dict:
        starts = [m.start() for m in self.CMD.finditer(self.blank)] + [len(self.blank)]
        for a, b in zip(starts, starts[1:]):
            self.command(a, b)
        return {"messages": self.messages, "sorries": self.sorries, "env": 0}

    def command(self, a: int, b: int) -> None:
        text = self.blank[a:b]
        head = text.split(None, 1)[0] if text.strip() else ""
        if head in ("import", "set_option", "open"):
            return
        if head == "axiom":
            m = re.match(r"axiom\s+(\S+)\s*:\s*(.+?)\s*$", text, re.S)
            if m:
                self.env[m.group(1)] = {"prop": " ".join(m.group(2).split()),
                                        "axioms": [m.group(1)]}
                return
        if head == "#print":
            said = re.match(r'#print\s+"([^"\n]*)"', self.code[a:b])
            if said:   # Lean prints the string as an info message (lean_client's closing mark)
                self.msg("info", a, a + 6, said.group(1))
                return
            m = re.match(r"#print\s+axioms\s+(\S+)", text)
            if m:
                name = m.group(1)
                if name not in self.env:
                    self.msg("error", a, a + len(m.group(0)), f"unknown constant '{name}'")
                    return
                used = sorted(set(self.env[name]["axioms"]))
                self.msg("info", a, a + 6, f"'{name}' depends on axioms: [{', '.join(used)}]"
                         if used
                         else f"'{name}' does not depend on any axioms")
                return
        if head in ("theorem", "lemma"):
            self.theorem(a, b)
            return
        self.msg("error", a, a + len(head), f"stand-in server: command '{head}' is outside the toy "
                 "fragment (theorem/lemma/axiom/#print axioms/#print \"text\" only)")

    def theorem(self, a: int, b: int) -> None:
        text = self.blank[a:b]
        m = re.match(r"(theorem|lemma)\s+(\S+)\s*:(.*?):=\s*by\b", text, re.S)
        if not m:
            self.msg("error", a, b, "stand-in server: this declaration is outside the toy fragment "
                     "(expected `theorem NAME : A REL B := by TACTIC` over closed ℕ terms)")
            return
        name, prop = m.group(2), " ".join(m.group(3).split())
        name_at = a + m.start(2)
        axioms: list[str] = ["sorryAx"]   # an elaboration error leaves the decl with sorryAx
        try:
            rel, truth = decide_prop(prop)
        except OutsideFragment as exc:
            self.msg("error", name_at, name_at + len(name),
                     "stand-in server: statement outside the "
                     f"toy fragment (closed ℕ arithmetic), cannot be checked here: {exc}")
            self.env[name] = {"prop": prop, "axioms": axioms}
            return
        proof_start = a + m.end()
        tactics = [(proof_start + t.start(1), t.group(1).rstrip())
                   for t in re.finditer(r"[ \t]*([^;\n]+)", self.blank[proof_start:b])
                   if t.group(1).strip()]
        open_goal, used = True, []
        for at, tac in tactics:
            word = tac.split()[0]
            if not open_goal:
                self.msg("error", at, at + len(tac), "no goals to be proved")
                open_goal = None
                break
            if word == "sorry":
                self.sorries.append({"pos": self.pos(at), "endPos": self.pos(at + 5),
                                     "goal": f"⊢ {prop}"})
                self.msg("warning", name_at, name_at + len(name), "declaration uses 'sorry'")
                used.append("sorryAx")
                open_goal = False
            elif word == "exact" and len(tac.split()) == 2:
                ref = self.env.get(tac.split()[1])
                if ref and ref["prop"] == prop:
                    used += ref["axioms"]
                    open_goal = False
                else:
                    self.msg("error", at, at + len(tac), f"type mismatch\n  {tac.split()[1]}\n"
                             f"has a different type than the goal\n  {prop}")
                    break
            elif word in TACTIC_RULES and len(tac.split()) == 1:
                if truth and rel in TACTIC_RULES[word]:
                    used += TACTIC_AXIOMS[word]
                    open_goal = False
                else:
                    self.msg("error", at, at + len(tac), _failure(word, rel, truth, prop))
                    break
            else:
                self.msg("error", at, at + len(word), f"unknown tactic '{word}'")
                break
        else:
            if open_goal:
                self.msg("error", a + m.end() - 2, a + m.end(), f"unsolved goals\n⊢ {prop}")
        if open_goal is False and not any(x["severity"] == "error" for x in self.messages):
            axioms = used
        self.env[name] = {"prop": prop, "axioms": axioms}


# ---------------------------------------------------------------------------------------------
# Statements, targets and feedback for the toy data (01_prepare_data.py --task toy)
# ---------------------------------------------------------------------------------------------

TOY_HEADER = "import Mathlib\n\n"


def toy_statement(rng: random.Random, tactic: str) -> str:
    """A true closed ℕ statement that `tactic` (and only it) proves, with one of its relations.
    The caller draws the tactic, so every tactic is right equally often (with relations drawn
    uniformly, omega would fit 4 of 7 and RL collapses onto it). The number ranges leave over
    10,000 distinct statements per tactic, so deduplication cannot skew the mix."""
    rel = rng.choice(TACTIC_RULES[tactic])
    if rel == "∣":
        d = rng.randint(2, 60)
        return f"{d} ∣ {d * rng.randint(1, 400)}"
    a, b = rng.randint(1, 99), rng.randint(1, 99)
    lhs, val = rng.choice([(f"{a} + {b}", a + b), (f"{a} * {b}", a * b), (str(a), a)])
    k = rng.randint(1, 40)
    if rel in (">", "≥") and val <= k:
        lhs, val = str(val + k), val + k
    rhs = {"=": val, "≠": val + k, "<": val + k, "≤": val + k - 1, ">": val - k, "≥": val - k}[rel]
    return f"{lhs} {rel} {rhs}"


def relation_of(statement: str) -> str:
    """The relation symbol of a toy statement (its class)."""
    return decide_prop(statement.split(" : ", 1)[1].rsplit(":=", 1)[0])[0]


def toy_completion(stmt: str, tactic: str) -> str:
    return kimina_completion(TOY_HEADER, stmt, f"\n  {tactic}",
                             "One tactic should close this closed ℕ goal.")


TOOL_OPENING = "One tactic should close this closed ℕ goal; I check it in the REPL first.\n"
TOOL_RETRY = "\nThe REPL reports an error at the tactic; I try another one.\n"
TOOL_DONE = "\nThe REPL reports no error, so this proof is complete.\n"


def toy_tool_trace(stmt: str, order: list[str]) -> str:
    """A StepFun-style tool-integrated trace, the SFT target of `--prompt_format stepfun`: inside
    the think block, a sketch per tactic of `order` until one passes, each followed by the REPL's
    answer exactly as the tool loop appends it (agent_loops.tool_rollouts: `\n<REPL>\n{json}\n
    </REPL>`, the JSON of this checker with positions counted in the sketch, as
    agent_loops.repl_text prints it), then the final lean4 block with the tactic that passed.
    tests/test_agentic_rl.py replays it through the live loop and gets the same text."""
    thinking = TOOL_OPENING
    for tactic in order:
        sketch = f"{stmt}\n  {tactic}"
        answer = Checker(sketch, "snippet").run()
        answer.pop("env")   # the REPL text the model sees has none (agent_loops.repl_text)
        thinking += f"<sketch>\n{sketch}\n</sketch>\n<REPL>\n{json.dumps(answer, ensure_ascii=False)}\n</REPL>"
        if not answer["messages"]:
            return kimina_completion(TOY_HEADER, stmt, f"\n  {tactic}", thinking + TOOL_DONE)
        thinking += TOOL_RETRY
    raise ValueError(f"no tactic of {order} proves {stmt!r}: a verified trace "
                     f"ends with a passing sketch")


def toy_feedback(stmt: str, tactic: str) -> str:
    """The feedback 03 and 04 would show for this attempt: the stand-in's messages through the
    same parser and formatter as a live verification (lean_client), so the repair rows match
    the second-turn prompts the model meets in RL and evaluation."""
    code = build_lean_code(TOY_HEADER, stmt, f"\n  {tactic}")
    return lean_feedback(parse_result("toy", code, {"response": Checker(code, "snippet").run()}),
                         "kimina")



def build_toy(cfg) -> tuple[dict[str, list[dict]], list[dict], list[dict]]:
    """The toy data of 01_prepare_data.py --task toy (cfg: its Settings): eval, RL and SFT rows.
    Balanced by construction: the k-th statement is drawn for tactic k mod 4 (redrawn until
    new), so each tactic is right for a quarter of the statements in every file. The eval file
    is in a stratified order (classes interleaved, each shuffled), so any prefix is balanced."""
    rng, order_rng = random.Random(cfg.seed), random.Random(f"{cfg.seed}/tool-order")
    tactics = sorted(TACTIC_RULES)
    props: dict[str, str] = {}
    for k in range(cfg.toy_n_statements):
        while True:
            prop = toy_statement(rng, tactics[k % len(tactics)])
            if prop not in props:
                props[prop] = tactics[k % len(tactics)]
                break
    evals, rl, sft = [], [], []
    for i, (prop, right) in enumerate(props.items()):
        stmt = f"theorem toy_{i:05d} : {prop} := by"
        rec = {"statement_id": f"toy/{i:05d}", "source": "toy", "split": "", "header": TOY_HEADER,
               "formal_statement": stmt,
               "informal_problem": f"Prove that {prop} holds for natural numbers.",
               # its class (03 --balance_by toy_tactic)
               "theorem_name": f"toy_{i:05d}", "toy_tactic": right}
        bucket = hash_split(prop, cfg.toy_eval_fraction, held_out="test")
        if bucket == "test":
            evals.append({**rec, "split": "test",
                          "eval_source": "toy_task.py (the stand-in's fragment, NOT Lean)"})
        elif hash_split(prop + "#sft", cfg.toy_sft_fraction, held_out="sft") == "sft":
            correct = rng.random() < cfg.toy_sft_correct
            tactic = right if correct else rng.choice([t for t in tactics if t != right])
            split = hash_split(stmt, cfg.valid_fraction)
            if cfg.prompt_format == "stepfun":   # a verified tool trace: sketches until one passes
                rest = [t for t in tactics if t != tactic]
                order_rng.shuffle(rest)   # its own stream: the RL and eval files stay the Kimina
                                          # run's
                order = [tactic] + rest
                order = order[:order.index(right) + 1]
                sft.append({**rec, "split": split, "formal_proof": f"\n  {right}",
                            "completion": toy_tool_trace(stmt, order)})
                continue
            sft.append({**rec, "split": split, "formal_proof": f"\n  {tactic}",
                        "completion": toy_completion(stmt, tactic)})
            if cfg.toy_sft_repair and rng.random() < cfg.toy_sft_repair:   # no draw when off
                first = rng.choice([t for t in tactics if t != right])
                second = rng.choice([t for t in tactics if t != first])
                sft.append({**rec, "statement_id": rec["statement_id"] + "#repair", "split": split,
                            "formal_proof": f"\n  {second}",
                            "completion": toy_completion(stmt, second),
                            "prev_attempt": toy_completion(stmt, first),
                            "lean_feedback": toy_feedback(stmt, first)})
        else:
            rl.append({**rec, "split": hash_split(stmt, cfg.valid_fraction)})
    by_class: dict[str, list[dict]] = defaultdict(list)
    for rec in evals:
        by_class[props[rec["formal_statement"].split(" : ", 1)[1][:-len(" := by")]]].append(rec)
    for recs in by_class.values():
        rng.shuffle(recs)
    stratified = [r for group in itertools.zip_longest(*(by_class[t] for t in tactics))
                  for r in group if r]
    return {"toy": stratified}, rl, sft
