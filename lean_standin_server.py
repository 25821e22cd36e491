"""STAND-IN for the Kimina Lean Server. This is NOT Lean and proves nothing about Lean.

It exists because no Lean toolchain can be installed on the machines where this project's
tests and CPU smoke run execute. It speaks the Kimina Lean Server's HTTP protocol exactly
(REFERENCE.md section 1: POST /api/check, the older POST /verify, GET /health, Bearer auth,
the same response schema, HTTP 422/401/429/500 behaviour) and decides one small toy fragment:

    theorem NAME : A REL B := by
      TACTIC

where A and B are closed natural-number expressions (literals, + - * / % ^, parentheses,
`(n : ℕ)` ascriptions; truncated subtraction and floor division as in Lean's ℕ) and REL is one
of = ≠ < ≤ > ≥ ∣. The tactic rules are invented so that the right tactic depends on the
relation symbol (the "toy task" the CPU smoke run trains on):

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

Knobs: --workers (a pool, like the server's REPLs), --latency-ms per proof, --line-base
(snippet, or after_imports as servers before Oct 2025 counted), --api-key, and injected faults
(timeouts, 500s, 429s, malformed JSON, dropped connections), by rate (seeded) or queued through
POST /_standin/faults {"next": ["500", "429", "malformed", "drop", "hang"]}. A snippet whose
code contains STANDIN_CRASH makes its whole request fail with HTTP 500 (a crashed REPL); one
containing STANDIN_TIMEOUT times out. GET /_standin/stats counts requests and snippets.

    python lean_standin_server.py --port 8000 --workers 4 --latency-ms 50
"""
from __future__ import annotations

import argparse
import json
import os
import random
import re
import socket
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import import_line_count, strip_lean_comments  # noqa: E402

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
    if tactic == "rfl":
        return ("The rfl tactic failed. Possible reasons:\n- The goal is not a reflexive relation "
                "(neither `=` nor a relation with a @[refl] lemma).\n- The arguments of the "
                f"relation are not equal.\n⊢ {goal}")
    if tactic == "decide":
        if truth:
            return "maximum recursion depth has been reached\nuse `set_option maxRecDepth <num>` to increase limit"
        return (f"decide failed to prove the proposition\n  {goal}\nsince its 'Decidable' instance "
                "reduced to\n  Decidable.isFalse")
    if tactic == "omega":
        return ("omega could not prove the goal:\na possible counterexample may satisfy the "
                "constraints\n  " + ("no usable constraints found" if truth else goal))
    return f"unsolved goals\n⊢ {goal}" if not truth else "simp made no progress"


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
                self.env[m.group(1)] = {"prop": " ".join(m.group(2).split()), "axioms": [m.group(1)]}
                return
        if head == "#print":
            m = re.match(r"#print\s+axioms\s+(\S+)", text)
            if m:
                name = m.group(1)
                if name not in self.env:
                    self.msg("error", a, a + len(m.group(0)), f"unknown constant '{name}'")
                    return
                used = sorted(set(self.env[name]["axioms"]))
                self.msg("info", a, a + 6, f"'{name}' depends on axioms: [{', '.join(used)}]" if used
                         else f"'{name}' does not depend on any axioms")
                return
        if head in ("theorem", "lemma"):
            self.theorem(a, b)
            return
        self.msg("error", a, a + len(head), f"stand-in server: command '{head}' is outside the toy "
                 "fragment (theorem/lemma/axiom/#print axioms only)")

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
            self.msg("error", name_at, name_at + len(name), "stand-in server: statement outside the "
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
# HTTP server
# ---------------------------------------------------------------------------------------------

class StandinState:
    def __init__(self, args):
        self.args = args
        self.pool = ThreadPoolExecutor(args.workers, thread_name_prefix="repl")
        self.rng = random.Random(args.seed)
        self.lock = threading.Lock()
        self.queued_faults: list[str] = []
        self.rates = {"500": args.fault_500, "429": args.fault_429, "malformed": args.fault_malformed,
                      "drop": args.fault_drop, "timeout": args.fault_timeout}
        self.stats = {"requests": 0, "snippets": 0, "faults": {}, "max_batch": 0}

    def next_fault(self) -> str | None:
        with self.lock:
            if self.queued_faults:
                return self.queued_faults.pop(0)
            for kind in ("500", "429", "malformed", "drop"):
                if self.rates[kind] and self.rng.random() < self.rates[kind]:
                    return kind
        return None

    def check_snippet(self, code: str, timeout: float) -> dict:
        t0 = time.perf_counter()
        with self.lock:
            injected_timeout = self.rates["timeout"] and self.rng.random() < self.rates["timeout"]
        latency = self.args.latency_ms / 1000.0
        if "STANDIN_TIMEOUT" in code or injected_timeout or latency > timeout:
            time.sleep(min(latency, timeout))
            return {"error": f"Lean REPL command timed out in {float(timeout)} seconds",
                    "time": float(timeout)}
        time.sleep(latency)
        response = Checker(code, self.args.line_base).run()
        return {"response": response, "time": round(time.perf_counter() - t0, 4)}


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"   # keep-alive, so the client's connection pool is exercised
    disable_nagle_algorithm = True  # headers and body go out in two writes; don't delay the second
    state: StandinState

    def log_message(self, fmt, *args):  # quiet unless asked
        if self.state.args.verbose:
            super().log_message(fmt, *args)

    def reply(self, code: int, body: dict | str) -> None:
        data = (body if isinstance(body, str) else json.dumps(body, ensure_ascii=False)).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def read_json(self):
        n = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(n) if n else b""
        try:
            return json.loads(raw or b"null")
        except ValueError:
            return None

    def do_GET(self):
        if self.path == "/health":
            return self.reply(200, {"status": "ok", "standin": True, "fragment": FRAGMENT,
                                    "note": "stand-in server, not Lean"})
        if self.path == "/_standin/stats":
            with self.state.lock:
                return self.reply(200, json.loads(json.dumps(self.state.stats)))
        self.reply(404, {"detail": "Not Found"})

    def authorized(self) -> bool:
        key = self.state.args.api_key
        if not key:
            return True
        got = self.headers.get("Authorization", "")
        if not got:
            self.reply(401, {"detail": "Missing API key"})
            return False
        if got != f"Bearer {key}":
            self.reply(401, {"detail": "Invalid API key"})
            return False
        return True

    def do_POST(self):
        body = self.read_json()
        if self.path == "/_standin/faults":
            with self.state.lock:
                self.state.queued_faults.extend((body or {}).get("next", []))
                for k, v in ((body or {}).get("rates") or {}).items():
                    self.state.rates[k] = float(v)
            return self.reply(200, {"ok": True})
        if self.path == "/_standin/reset":
            with self.state.lock:
                self.state.stats = {"requests": 0, "snippets": 0, "faults": {}, "max_batch": 0}
                self.state.queued_faults.clear()
            return self.reply(200, {"ok": True})
        if self.path not in ("/api/check", "/verify"):
            return self.reply(404, {"detail": "Not Found"})
        if not self.authorized():
            return
        legacy = self.path == "/verify"
        items = (body or {}).get("codes" if legacy else "snippets") if isinstance(body, dict) else None
        id_key, code_key = ("custom_id", "proof") if legacy else ("id", "code")
        if not isinstance(items, list) or not items:
            return self.reply(422, {"detail": [{"type": "value_error", "loc": ["body", "snippets"],
                                                "msg": "snippets must be a non-empty list"}]})
        ids = [str(s.get(id_key)) for s in items]
        if len(set(ids)) != len(ids):
            return self.reply(422, {"detail": [{"type": "value_error", "loc": ["body", "snippets"],
                                                "msg": "Value error, Snippet ids must be unique"}]})
        with self.state.lock:
            self.state.stats["requests"] += 1
            self.state.stats["snippets"] += len(items)
            self.state.stats["max_batch"] = max(self.state.stats["max_batch"], len(items))
        fault = self.state.next_fault()
        codes = [str(s.get(code_key) or s.get("code") or "") for s in items]
        if fault is None and any("STANDIN_CRASH" in c for c in codes):
            fault = "500"
        if fault:
            with self.state.lock:
                self.state.stats["faults"][fault] = self.state.stats["faults"].get(fault, 0) + 1
            if fault == "500":
                return self.reply(500, {"detail": "REPL process crashed"})
            if fault == "429":
                return self.reply(429, {"detail": "No available REPLs"})
            if fault == "malformed":
                return self.reply(200, '{"results": [{"id": ')
            if fault == "hang":
                time.sleep(float(os.environ.get("STANDIN_HANG_S", "5")))
            if fault in ("drop", "hang"):
                self.close_connection = True
                try:
                    self.connection.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                return
        timeout = float((body or {}).get("timeout") or 60)
        futures = [self.state.pool.submit(self.state.check_snippet, c, timeout) for c in codes]
        results = []
        for sid, fut in zip(ids, futures):
            res = fut.result()
            if legacy:
                out = {"custom_id": sid, "error": res.get("error")}
                if "response" in res:
                    out["response"] = {**res["response"], "time": res["time"]}
                results.append({k: v for k, v in out.items() if v is not None})
            else:
                results.append({"id": sid, **res})
        self.reply(200, {"results": results})


class StandinProcess:
    """Run the stand-in as a real subprocess on a free localhost port:

        with StandinProcess(workers=4, latency_ms=50) as url: ...
    """

    def __init__(self, **options):
        self.options = options
        self.proc = None
        self.url = ""

    def start(self) -> str:
        import subprocess
        cmd = [sys.executable, os.path.abspath(__file__), "--port", "0"]
        for k, v in self.options.items():
            flag = "--" + k.replace("_", "-")
            cmd += [flag] if v is True else [] if v is False else [flag, str(v)]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
        line = self.proc.stdout.readline()
        if not line.startswith("STANDIN LISTENING "):
            self.stop()
            raise RuntimeError(f"stand-in server did not start: {line!r}")
        self.url = line.split()[-1]
        return self.url

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except Exception:
                self.proc.kill()
        if self.proc and self.proc.stdout:
            self.proc.stdout.close()

    def __enter__(self) -> str:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="Stand-in Kimina Lean Server (NOT Lean; toy fragment).")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=0, help="0 picks a free port (printed on stdout)")
    p.add_argument("--workers", type=int, default=4)
    p.add_argument("--latency-ms", type=float, default=0.0)
    p.add_argument("--line-base", choices=("snippet", "after_imports"), default="snippet")
    p.add_argument("--api-key", default=os.environ.get("STANDIN_API_KEY", ""))
    p.add_argument("--seed", type=int, default=0)
    for kind in ("500", "429", "malformed", "drop", "timeout"):
        p.add_argument(f"--fault-{kind}", type=float, default=0.0, help=f"rate of {kind} faults")
    p.add_argument("--verbose", action="store_true")
    return p


def serve(args) -> None:
    Handler.state = StandinState(args)
    server = ThreadingHTTPServer((args.host, args.port), Handler)
    server.daemon_threads = True
    print(f"STANDIN LISTENING http://{args.host}:{server.server_address[1]}", flush=True)
    try:
        server.serve_forever(poll_interval=0.2)
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


if __name__ == "__main__":
    serve(build_parser().parse_args())
