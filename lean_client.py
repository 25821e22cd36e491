"""A thin, fast, honest batch client for the Kimina Lean Server (docs/PROTOCOL.md).

    from lean_client import LeanClient
    client = LeanClient()                        # LEAN_SERVER_API_URL / LEAN_SERVER_API_KEY
    verdicts = client.verify([{"id": "a", "code": full_lean_file, "statement": stmt}])
    verdicts[0].ok, verdicts[0].status, verdicts[0].errors   # messages in snippet line numbers

It batches snippets over one pooled session to one or more servers, retries connection errors,
429 and 5xx with backoff (splitting a batch that keeps failing with 500), verifies identical
code once per call, caches definitive verdicts in sqlite keyed by the server's identity, and
runs a static soundness gate before sending anything (policy: above `soundness_gate`; why:
docs/DESIGN.md). `verify` never raises because of the server: what could not be verified is a
verdict with status `timeout`, `server_error` or `rejected`, and only `valid` has `ok == True`.
It stands alone (only `requests` besides the standard library): copy it as one file; the
project imports its Lean text helpers (comments, statement normalisation) from here.
It is not Lean: a `valid` verdict is only as good as the server behind the URL (the tests'
stand-in says so in `/health`, and that identity keys the cache).
"""
from __future__ import annotations

import concurrent.futures as cf
import dataclasses
import hashlib
import itertools
import json
import logging
import os
import random
import re
import sqlite3
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import requests


log = logging.getLogger("lean_client")

STATUSES = ("valid", "sorry", "lean_error", "timeout", "server_error", "rejected")
CACHEABLE = ("valid", "sorry", "lean_error")  # verdicts that do not depend on load or timeouts
DEFAULT_ALLOWED_AXIOMS = ("propext", "Classical.choice", "Quot.sound")
DOCKER_HINT = ("Start a Kimina Lean Server with\n"
               "    docker run -d -p 80:8000 projectnumina/kimina-lean-server:2.0.0\n"
               "and point the client at it:\n"
               "    export LEAN_SERVER_API_URL=http://localhost:80   # several: comma-separated\n"
               "    export LEAN_SERVER_API_KEY=...                   # if the server has one\n"
               "For tests and the CPU smoke run, `python lean_standin_server.py` starts the "
               "stand-in (not Lean).")


class LeanServerUnavailable(RuntimeError):
    pass


# ---------------------------------------------------------------------------------------------
# Lean text
# ---------------------------------------------------------------------------------------------

# What a statement may declare. ProofNet has a few `def`/`noncomputable def` items (data whose
# construction is the proof); they are benchmark items like the theorems.
DECL = r"(?:noncomputable\s+)?(?:theorem|lemma|def)"


def strip_lean_comments(code: str, keep_columns: bool = False) -> str:
    """Remove `--` line comments and (nested) `/- ... -/` block comments, docstrings included,
    keeping newlines (and with keep_columns every column); string literals are left alone. The
    gate must not be fooled by a statement or a forbidden word inside a comment."""
    out: list[str] = []
    i, n, depth, in_string = 0, len(code), 0, False
    blank2 = "  " if keep_columns else ""
    while i < n:
        ch, two = code[i], code[i:i + 2]
        if depth or (two == "/-" and not in_string):     # inside a (nested) block comment
            if two in ("/-", "-/"):
                depth += 1 if two == "/-" else -1
                out.append(blank2)
                i += 2
            else:
                out.append("\n" if ch == "\n" else " " if keep_columns else "")
                i += 1
        elif in_string:
            out.append(code[i:i + 2] if ch == "\\" else ch)   # an escaped character is kept whole
            in_string = ch != '"'
            i += 2 if ch == "\\" else 1
        elif two == "--":
            j = code.find("\n", i)
            j = n if j < 0 else j
            out.append(" " * (j - i) if keep_columns else "")
            i = j
        else:
            in_string = ch == '"'
            out.append(ch)
            i += 1
    return "".join(out)


def collapse_ws(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip()


_TRAILING_PROOF = re.compile(r"(:=\s*(by)?\s*(sorry)?\s*|\s+sorry\s*)$", re.S)


def normalize_statement(statement: str) -> str:
    """A theorem statement in the form every stage uses: comments kept, trailing `sorry` removed,
    ending in `:= by` (Kimina: 'trailing sorry stripped, " by" appended if missing').

    Raises ValueError when the text holds no `theorem`/`lemma` declaration.
    """
    text = statement.strip()
    if not re.search(rf"(^|\n)\s*{DECL}\s", text):
        raise ValueError(f"no theorem/lemma/def declaration in statement: {text[:80]!r}")
    body = _TRAILING_PROOF.sub("", text).rstrip()
    if body.endswith(":="):
        body = body[:-2].rstrip()
    return body + " := by"


def theorem_name(statement: str) -> str | None:
    m = re.search(rf"(?:^|\n)\s*{DECL}\s+([^\s:({{\[]+)", strip_lean_comments(statement))
    return m.group(1) if m else None


def import_line_count(code: str) -> int:
    """Lines up to and including the last leading `import` line: what servers older than
    Oct 2025 cut off before counting message positions."""
    last = 0
    for idx, line in enumerate(strip_lean_comments(code).split("\n")):
        s = line.strip()
        if s.startswith("import "):
            last = idx + 1
        elif s:
            break
    return last


# ---------------------------------------------------------------------------------------------
# Verdicts
# ---------------------------------------------------------------------------------------------

@dataclass
class LeanMessage:
    severity: str            # trace | info | warning | error
    line: int                # 1-based, counted from the first line of the full snippet
    column: int              # 0-based, as Lean reports it
    end_line: int | None
    end_column: int | None
    text: str


@dataclass
class Verdict:
    id: str
    status: str                                   # one of STATUSES
    code: str = ""                                # the code that was (or would have been) sent
    messages: list[LeanMessage] = field(default_factory=list)
    sorries: list[dict] = field(default_factory=list)
    time: float = 0.0                             # server-reported seconds
    error: str = ""                               # server error / timeout text / gate reason
    raw: dict | None = None                       # the server's result object, untouched
    cached: bool = False
    axioms: list[str] | None = None               # from `#print axioms`, when it was asked for

    @property
    def ok(self) -> bool:
        return self.status == "valid"

    @property
    def errors(self) -> list[LeanMessage]:
        return [m for m in self.messages if m.severity == "error"]

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


MARK_PREFIX = "lean_client checked "   # verify ends every snippet with `#print "<it><hash>"`
_MARK = re.compile(r'#print "(' + MARK_PREFIX + r'[0-9a-f]{12})"\s*$')


def parse_result(item_id: str, code: str, result: dict, line_numbering: str = "snippet") -> Verdict:
    """One server result object -> Verdict, message lines in snippet numbering. When `code` ends
    with the client's mark, an answer with no error must print it (why: docs/PROTOCOL.md); the
    mark's message is taken out of the Verdict and of its raw result."""
    t = float(result.get("time") or (result.get("response") or {}).get("time") or 0.0)
    if result.get("error"):
        err = str(result["error"])
        status = "timeout" if "timed out" in err.lower() else "server_error"
        return Verdict(item_id, status, code, time=t, error=err, raw=result)
    resp = result.get("response")
    if not isinstance(resp, dict):
        return Verdict(item_id, "server_error", code, time=t, error="result has no response",
                       raw=result)
    if "message" in resp and "messages" not in resp and "env" not in resp:
        # a REPL-level failure ({"message": "..."}), not a Lean verdict
        return Verdict(item_id, "server_error", code, time=t, error=str(resp["message"]),
                       raw=result)
    if mark := _MARK.search(code):
        said = [m for m in resp.get("messages") or [] if m.get("data") == mark.group(1)]
        result = {**result, "response": {**resp, "messages": [
            m for m in resp.get("messages") or [] if m not in said]}}
        resp = result["response"]
        if not said and all(m.get("severity") != "error" for m in resp["messages"]):
            return Verdict(item_id, "server_error", code, time=t, raw=result, error="no output "
                           "of the client's closing #print in the answer: not a Lean verdict")
    offset = import_line_count(code) if line_numbering == "after_imports" else 0
    messages = []
    for m in resp.get("messages") or []:
        pos, end = m.get("pos") or {}, m.get("endPos") or {}
        messages.append(LeanMessage(
            severity=str(m.get("severity", "error")), line=int(pos.get("line", 1)) + offset,
            column=int(pos.get("column", 0)),
            end_line=(int(end["line"]) + offset) if end.get("line") is not None else None,
            end_column=int(end["column"]) if end.get("column") is not None else None,
            text=str(m.get("data", ""))))
    sorries = list(resp.get("sorries") or [])
    if any(m.severity == "error" for m in messages):
        status = "lean_error"
    elif sorries or any("declaration uses 'sorry'" in m.text for m in messages):
        status = "sorry"
    else:
        status = "valid"
    return Verdict(item_id, status, code, messages, sorries, t, "", result)


# ---------------------------------------------------------------------------------------------
# Soundness gate (static, before anything is sent)
# ---------------------------------------------------------------------------------------------

# Policy (why: docs/DESIGN.md, soundness): anything that can change what the theorem's text
# means is refused, not only what can fake a proof. Allowed besides the theorem: import; `open`
# before the first declaration, `open ... in` on a helper; `universe`; SAFE_OPTIONS; helpers
# with their own proofs, SAFE_ATTRIBUTES only, and names the statement does not use.
SAFE_OPTIONS = ("maxHeartbeats", "maxRecDepth", "linter.unusedVariables", "linter.unusedTactic",
                "pp.all", "pp.numericTypes", "synthInstance.maxHeartbeats")
SAFE_ATTRIBUTES = ("simp", "reducible", "irreducible", "inline", "specialize")
_SAFE_ATTRS = ", ".join(SAFE_ATTRIBUTES)
NATIVE_AXIOMS = ("Lean.ofReduceBool", "Lean.trustCompiler")   # what native_decide adds
_FORBIDDEN = [
    (r"\bsorry\b", "uses sorry"),
    (r"\badmit\b", "uses admit"),
    (r"(?<![\w'.])(?:[\w']+\.)*(?:[a-z]{2,}Ax|lcProof|lcUnreachable)(?![\w'])",
     "names a sorryAx-like escape constant"),
    (r"(^|\s)(private\s+|protected\s+)?axiom\s", "declares an axiom"),
    (r"\bapply\?", "uses apply? (can close goals without a sorry warning on old Lean)"),
    (r"\bexact\?", "uses exact?"),
    (r"#exit\b", "uses #exit"),
    (r"\blocal_instance\b", "uses local_instance"),
    (r"\bimplemented_by\b", "uses implemented_by"),
    (r"@\[\s*extern\b|\bextern\b", "uses extern"),
    (r"\bunsafe\b", "uses unsafe"),
    (r"set_option\s+debug\.skipKernelTC", "switches off the kernel type checker"),
    (r"(?<![\w'.])(variable|include|omit)(?![\w'.])", "declares section variables ({0}): they "
     "change the theorem's hypotheses"),
    (r"\b(run_cmd|run_elab|run_meta|run_tac|by_elab|initialize|builtin_initialize|simproc|dsimproc|"
     r"mkSorry|admitGoal)\b|#eval\b",
     "runs meta code ({0})"),
    (r"(?<![\w'.])(elab|elab_rules|macro|macro_rules|syntax|notation|notation3|infix|infixl|"
     r"infixr|prefix|postfix|declare_syntax_cat|binder_predicate)(?![\w'.])",
     "declares notation, syntax or macros ({0})"),
    (r"(?<![\w'.])(instance|attribute\s*\[)", "declares an instance or changes attributes ({0})"),
    (r"(?<![\w'.])(namespace|section|export|mutual|seal|unseal)(?![\w'.])",
     "opens a namespace or section, or changes unfolding ({0})"),
    (r"(^|\s)opaque\s", "declares an opaque constant"),
    (r"\bLean\.(Elab|Meta|Environment|Kernel)\b|\baddDecl\b", "uses the meta API"),
]
_NATIVE = [(r"\bnative_decide\b|\bdecide\s+\+native\b|\bnative\s*:=\s*true\b|\bofReduceBool\b",
            "uses native_decide (Lean.ofReduceBool), refused for this benchmark")]
_DECL_HEAD = (r"(?m)^[ \t]*((?:@\[[^\]\n]*\][ \t]*)?)"
              r"((?:private|protected|noncomputable|nonrec)[ \t]+)*"
              r"(theorem|lemma|def|abbrev|structure|inductive|class|example)[ \t]+([^\s:({\[]*)")


def _opened(command: str) -> list[str] | str:
    """Namespaces an `open` command opens, or a reason it is refused (renaming, hiding, ...)."""
    words = command.split()[1:]
    if words[:1] == ["scoped"]:
        words = words[1:]
    if not words or any(not re.fullmatch(r"[A-Za-z_][\w.']*", w)
                        or w in ("renaming", "hiding", "private")
                        for w in words):
        return f"uses an `open` form that can rename or shadow names ({collapse_ws(command)})"
    return words


def soundness_gate(code: str, statement: str, header: str | None = None,
                   reject_native_decide: bool = False) -> str | None:
    """Why `code` cannot count as a proof of `statement`, or None when it may be sent.

    Static and conservative (the policy is in the comment above). `header`: the dataset's
    header, when known: then the file may open no namespace the header does not. The 197
    Kimina-Preview and 28 Kimina-72B verified miniF2F proofs and the 67 human miniF2F-valid
    proofs we ship all pass (tests/test_lean_client.py); a real server still has the last word.
    """
    try:
        stmt = normalize_statement(statement)
    except ValueError as exc:
        return f"bad statement: {exc}"
    name = theorem_name(stmt)
    # comments and string literals cannot hold the statement or a forbidden word
    bare = re.sub(r'"(?:[^"\\]|\\.)*"', '""', strip_lean_comments(code))
    for pattern, reason in _FORBIDDEN + (_NATIVE if reject_native_decide else []):
        m = re.search(pattern, bare, re.M)
        if m:
            return reason.format(collapse_ws(m.group(0)))
    for m in re.finditer(r"set_option\s+(\S+)", bare):
        if m.group(1) not in SAFE_OPTIONS:
            return f"sets option {m.group(1)}"
    tokens = collapse_ws(strip_lean_comments(stmt)).split(" ")
    if collapse_ws(" ".join(tokens)) not in collapse_ws(bare):
        return "the theorem statement is missing or changed"
    # it must stand as a declaration of its own at the start of a line, not inside a term
    at = re.search(r"(?m)^[ \t]*(@\[[^\]\n]*\][ \t]*)?((private|protected|nonrec)[ \t]+)?"
                   + r"\s+".join(map(re.escape, tokens)), bare)
    if not at:
        return "the theorem statement is not a top-level declaration"
    decls = list(re.finditer(_DECL_HEAD, bare))
    for d in decls:
        for attr in re.findall(r"[^\s,\[@\]]+", d.group(1)) if d.group(1) else []:
            if attr not in SAFE_ATTRIBUTES:
                return f"puts attribute @[{attr}] on a declaration (allowed: {_SAFE_ATTRS})"
    if name:
        names = [d.group(4) for d in decls]
        if names.count(name) != 1:
            return f"the name {name} is declared {names.count(name)} times"
        used = {t.split(".")[-1] for t in re.findall(r"[^\W\d][\w'.]*", strip_lean_comments(stmt))}
        for helper in names:
            if helper != name and helper and helper.split(".")[-1] in used:
                return f"a helper declaration {helper} reuses a name the statement uses"
    # what is open when the theorem is elaborated: header opens only
    first_decl = min((d.start() for d in decls), default=len(bare))
    declared = {n for d in decls for n in d.group(4).split(".")[:-1]}
    header_opens = set()
    for line in re.findall(r"(?m)^[ \t]*open\b[^\n]*", strip_lean_comments(header or "")):
        header_opens |= set(_opened(line)) if isinstance(_opened(line), list) else set()
    for m in re.finditer(r"(?<![\w'.])open\b[^\n]*?(?=(?<![\w'.])in(?![\w'.])|\n|$)(in\b)?",
                         bare[:at.start()]):
        opened = _opened(m.group(0)[:-2] if m.group(1) else m.group(0))
        if isinstance(opened, str):
            return opened
        if into := sorted(declared & set(opened)):
            return f"opens a namespace the file declares into ({', '.join(into)})"
        if m.group(1):   # `open ... in` scopes over the next command: it must not be the theorem
            if min((d.start() for d in decls if d.start() >= m.end()),
                   default=at.start()) >= at.start():
                return "puts `open ... in` on the theorem: it changes the names its statement sees"
        elif m.start() > first_decl:
            return "opens a namespace after a declaration: the theorem would see other names"
        elif header is not None and (more := sorted(set(opened) - header_opens)):
            return f"opens {', '.join(more)}, which the header does not"
    return None


# ---------------------------------------------------------------------------------------------
# Persistent verdict cache
# ---------------------------------------------------------------------------------------------

class VerdictCache:
    """sqlite: key = sha256(server identity, code) -> the server's raw result JSON."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(str(self.path), check_same_thread=False, timeout=30)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("CREATE TABLE IF NOT EXISTS verdicts (key TEXT PRIMARY KEY, result TEXT)")
        self._db.commit()

    @staticmethod
    def key(identity: str, code: str) -> str:
        return hashlib.sha256(f"{identity}\x00{code}".encode()).hexdigest()

    def get_many(self, keys: list[str]) -> dict[str, dict]:
        found: dict[str, dict] = {}
        with self._lock:
            for i in range(0, len(keys), 500):
                chunk = keys[i:i + 500]
                q = f"SELECT key, result FROM verdicts WHERE key IN ({','.join('?' * len(chunk))})"
                for k, res in self._db.execute(q, chunk):
                    found[k] = json.loads(res)
        return found

    def put_many(self, rows: list[tuple[str, dict]]) -> None:
        if not rows:
            return
        with self._lock:
            self._db.executemany("INSERT OR REPLACE INTO verdicts VALUES (?, ?)",
                                 [(k, json.dumps(r)) for k, r in rows])
            self._db.commit()

    def close(self) -> None:
        with self._lock:
            self._db.close()


# ---------------------------------------------------------------------------------------------
# The client
# ---------------------------------------------------------------------------------------------

class _BatchFailure(Exception):
    def __init__(self, message: str, splittable: bool):
        super().__init__(message)
        self.splittable = splittable


class LeanClient:
    def __init__(self, url: str | None = None, api_key: str | None = None, timeout: int = 60,
                 batch_size: int = 8, max_workers: int | None = None, *,
                 http_timeout: float | None = None, max_retries: int = 4, backoff: float = 0.5,
                 cache_path: str | Path | None = None, endpoint: str = "check",
                 line_numbering: str = "snippet", check_axioms: bool = False,
                 allowed_axioms: tuple[str, ...] = DEFAULT_ALLOWED_AXIOMS,
                 reject_native_decide: bool = False, server_identity: str | None = None,
                 infotree: str | None = None, max_batch_seconds: float | None = None):
        url = url or os.environ.get("LEAN_SERVER_API_URL", "")
        self.urls = [u.strip().rstrip("/") for u in url.split(",") if u.strip()]
        if not self.urls:
            raise LeanServerUnavailable("no Lean server URL given.\n" + DOCKER_HINT)
        self.urls = [u if "://" in u else f"http://{u}" for u in self.urls]
        self.api_key = api_key if api_key is not None else os.environ.get("LEAN_SERVER_API_KEY")
        if endpoint not in ("check", "verify"):
            raise ValueError("endpoint must be 'check' (/api/check) or 'verify' (old /verify)")
        if line_numbering not in ("snippet", "after_imports"):
            raise ValueError("line_numbering must be 'snippet' or 'after_imports'")
        self.timeout, self.batch_size = int(timeout), max(1, int(batch_size))
        self.max_workers = max_workers or 4 * len(self.urls)
        self.http_timeout = http_timeout or self.timeout * self.batch_size + 60
        self.max_retries, self.backoff = max_retries, backoff
        # whatever the server does (hangs, 500s, splits), a batch gives error verdicts by then
        self.max_batch_seconds = max_batch_seconds or 2 * self.http_timeout
        self.endpoint, self.line_numbering = endpoint, line_numbering
        # native_decide is accepted unless refused (Kimina's verified proofs use it); when
        # accepted, its axioms pass the #print axioms check and show in Verdict.axioms
        self.reject_native_decide = reject_native_decide
        self.check_axioms = check_axioms
        self.allowed_axioms = tuple(allowed_axioms) + (() if reject_native_decide
                                                       else NATIVE_AXIOMS)
        self._identity, self.infotree = server_identity, infotree   # None | "original" | ...
        self.cache = VerdictCache(cache_path) if cache_path else None
        self.session = requests.Session()
        adapter = requests.adapters.HTTPAdapter(pool_connections=len(self.urls),
                                                pool_maxsize=self.max_workers, max_retries=0)
        self.session.mount("http://", adapter)
        self.session.mount("https://", adapter)
        self._url_cycle = itertools.count()
        self._stats_lock = threading.Lock()
        self.stats = {"items": 0, "sent": 0, "cache_hits": 0, "dedup_hits": 0, "rejected": 0,
                      "requests": 0, "retries": 0, "splits": 0, "failed_snippets": 0}

    # -- health and identity ------------------------------------------------------------------
    def health(self) -> dict[str, dict | None]:
        """GET /health on every URL: url -> JSON body, or None when it does not answer ok."""
        out: dict[str, dict | None] = {}
        for u in self.urls:
            try:
                r = self.session.get(f"{u}/health", timeout=5)
                body = r.json() if r.status_code == 200 else None
                out[u] = body if isinstance(body, dict) and body.get("status") == "ok" else None
            except (requests.RequestException, ValueError):
                out[u] = None
        return out

    def require_healthy(self) -> dict[str, dict]:
        """Raise LeanServerUnavailable, naming the Docker command and variables, if no server
        answers /health. Call at the start of a stage."""
        status = self.health()
        alive = {u: b for u, b in status.items() if b is not None}
        if not alive:
            raise LeanServerUnavailable(f"no Lean server answers /health at {', '.join(self.urls)}"
                                        f".\n{DOCKER_HINT}")
        for u in status:
            if status[u] is None:
                log.warning("Lean server %s does not answer /health; the others share its load", u)
        return alive

    @property
    def identity(self) -> str | None:
        """What the cache keys on, or None while no server has answered /health (then the cache
        is not used). Health payload beyond {"status": "ok"} (the stand-in says it is a
        stand-in) is part of it, so stand-in verdicts never answer for a real server."""
        if self._identity is None:
            bodies = [b for b in self.health().values() if b]
            if not bodies:
                return None
            extra = sorted({json.dumps({k: v for k, v in b.items() if k != "status"},
                                       sort_keys=True)
                            for b in bodies})
            self._identity = json.dumps({"urls": sorted(self.urls), "health": extra,
                                         "endpoint": self.endpoint})
        return self._identity

    def probe_line_numbering(self) -> str:
        """Ask the server how it counts message lines (servers before Oct 2025 count after the
        imports) with one probe snippet, and use the answer from now on."""
        v = self.verify([{"id": "probe", "code": "import Mathlib\n\n#check Nat"}])[0]
        lines = {m.line for m in v.messages}   # numbered as self.line_numbering assumed
        offset = 0 if self.line_numbering == "snippet" else 1
        if lines and lines <= {3 - offset, 2 - offset}:
            self.line_numbering = "snippet" if 3 - offset in lines else "after_imports"
        else:
            log.warning("line-numbering probe got no usable message (%s); keeping %s", v.error,
                        self.line_numbering)
        return self.line_numbering

    # -- verify -------------------------------------------------------------------------------
    def verify(self, items: list[dict], timeout: int | None = None,
               progress: bool = False) -> list[Verdict]:
        """One Verdict per item, in input order. Items: {"id", "code", optional "statement",
        optional "header" (the dataset's header: the gate then allows no other `open`)}."""
        timeout = int(timeout or self.timeout)
        # id, sent, gate reason, axioms?, code
        prepared: list[tuple[str, str, str | None, bool, str]] = []
        for idx, item in enumerate(items):
            if not isinstance(item, dict) or not isinstance(item.get("code"), str):
                raise ValueError(f"verify item {idx} needs a dict with a string 'code'")
            code = given = item["code"]
            stmt = item.get("statement")
            reason = soundness_gate(code, stmt, item.get("header"),
                                    self.reject_native_decide) if stmt else None
            axioms = bool(stmt and not reason and self.check_axioms)
            if axioms:
                code = f"{code.rstrip()}\n\n#print axioms {theorem_name(stmt)}\n"
            if not reason:   # a mark the REPL must print: an empty answer is then no pass
                mark = hashlib.sha256(code.encode()).hexdigest()[:12]
                code = f'{code.rstrip()}\n\n#print "{MARK_PREFIX}{mark}"\n'
            prepared.append((str(item.get("id", idx)), code, reason, axioms, given))
        self._bump("items", len(items))
        self._bump("rejected", sum(1 for p in prepared if p[2]))

        unique = list(dict.fromkeys(p[1] for p in prepared if not p[2]))
        self._bump("dedup_hits", sum(1 for p in prepared if not p[2]) - len(unique))
        results: dict[str, dict] = {}
        from_cache: set[str] = set()
        identity = self.identity if self.cache and unique else None
        if identity:
            keys = {c: VerdictCache.key(identity, c) for c in unique}
            hit = self.cache.get_many(list(keys.values()))
            for c, k in keys.items():
                if k in hit:
                    results[c] = hit[k]
                    from_cache.add(c)
            self._bump("cache_hits", len(from_cache))
        todo = [c for c in unique if c not in results]
        if todo:
            results.update(self._send_all(todo, timeout, progress))

        verdicts, to_cache = [], []
        for item_id, code, reason, axioms, given in prepared:
            if reason:
                verdicts.append(Verdict(item_id, "rejected", code, error=reason))
                continue
            v = parse_result(item_id, code, results[code], self.line_numbering)
            v.cached = code in from_cache
            if axioms and v.ok:
                v = self._check_axioms(v)
            v.code = given   # feedback quotes the code as written, not the appended check
            verdicts.append(v)
        if identity:
            for code in todo:
                v = parse_result("", code, results[code], self.line_numbering)
                if v.status in CACHEABLE:
                    to_cache.append((VerdictCache.key(identity, code), results[code]))
            self.cache.put_many(to_cache)
        return verdicts

    def _check_axioms(self, v: Verdict) -> Verdict:
        used: list[str] | None = None
        for m in v.messages:
            if "does not depend on any axioms" in m.text:
                used = []
            got = re.search(r"depends on axioms: \[(.*?)\]", m.text, re.S)
            if got:
                used = [a.strip() for a in got.group(1).split(",") if a.strip()]
        if used is None:
            return dataclasses.replace(v, status="rejected", error="no #print axioms output")
        bad = [a for a in used if a not in self.allowed_axioms]
        if bad:
            return dataclasses.replace(v, status="rejected", error=f"uses axioms {bad}",
                                       axioms=used)
        return dataclasses.replace(v, axioms=used)

    # -- transport ----------------------------------------------------------------------------
    def _bump(self, key: str, n: int = 1) -> None:
        with self._stats_lock:
            self.stats[key] += n

    def _send_all(self, codes: list[str], timeout: int, progress: bool) -> dict[str, dict]:
        batches = [codes[i:i + self.batch_size] for i in range(0, len(codes), self.batch_size)]
        out: dict[str, dict] = {}
        bar = None
        if progress:
            from tqdm import tqdm
            bar = tqdm(total=len(codes), desc="verify", unit="proof", leave=False)
        with cf.ThreadPoolExecutor(self.max_workers) as pool:
            for res in pool.map(lambda b: self._send_batch(b, timeout), batches):
                out.update(res)
                if bar:
                    bar.update(len(res))
        if bar:
            bar.close()
        return out

    def _send_batch(self, codes: list[str], timeout: int, deadline: float = 0.0
                    ) -> dict[str, dict]:
        """code -> result object; never raises, and never runs past the batch's deadline."""
        deadline = deadline or time.monotonic() + self.max_batch_seconds
        try:
            return self._post_with_retries(codes, timeout, deadline)
        except _BatchFailure as fail:
            if fail.splittable and len(codes) > 1 and time.monotonic() < deadline:
                self._bump("splits")
                mid = len(codes) // 2
                return {**self._send_batch(codes[:mid], timeout, deadline),
                        **self._send_batch(codes[mid:], timeout, deadline)}
            self._bump("failed_snippets", len(codes))
            return {c: {"error": f"verification failed: {fail}", "time": 0.0} for c in codes}
        except Exception as exc:  # a bug or an odd library error must not end a training run
            log.exception("unexpected error while verifying a batch")
            self._bump("failed_snippets", len(codes))
            return {c: {"error": f"client error: {exc!r}", "time": 0.0} for c in codes}

    def _payload(self, codes: list[str], timeout: int) -> tuple[str, dict]:
        if self.endpoint == "check":
            return "/api/check", {"snippets": [{"id": str(i), "code": c}
                                               for i, c in enumerate(codes)],
                                  "timeout": timeout, "debug": False, "reuse": True,
                                  "infotree": self.infotree}
        return "/verify", {"codes": [{"custom_id": str(i), "proof": c}
                                     for i, c in enumerate(codes)],
                           "timeout": timeout, "infotree_type": self.infotree,
                           "disable_cache": False}

    def _post_with_retries(self, codes: list[str], timeout: int, deadline: float
                           ) -> dict[str, dict]:
        path, payload = self._payload(codes, timeout)
        headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
        last, splittable = "no attempt", False
        start = next(self._url_cycle)
        for attempt in range(self.max_retries + 1):
            if attempt:
                self._bump("retries")
                pause = min(30.0, self.backoff * 2 ** (attempt - 1)) * random.uniform(0.5, 1.5)
                time.sleep(max(0.0, min(pause, deadline - time.monotonic())))
            left = deadline - time.monotonic()
            if left <= 0:
                raise _BatchFailure(f"{last}; gave up at the batch's bound of "
                                    f"{self.max_batch_seconds:.0f} s", splittable=False)
            url = self.urls[(start + attempt) % len(self.urls)]  # a retry tries the next server
            self._bump("requests")
            try:
                resp = self.session.post(url + path, json=payload, headers=headers,
                                         timeout=min(self.http_timeout, left))
            except requests.ConnectionError as exc:
                refused = "NewConnectionError" in repr(exc) or "refused" in str(exc).lower()
                last, splittable = f"{url}: connection failed ({type(exc).__name__})", not refused
                continue
            except requests.Timeout:   # a server that does not answer a batch won't answer halves
                last = f"{url}: no answer within {min(self.http_timeout, left):.0f} s"
                splittable = False
                continue
            if resp.status_code == 429 or resp.status_code >= 500:
                last, splittable = f"{url}: HTTP {resp.status_code}", resp.status_code >= 500
                continue
            if resp.status_code in (401, 403):
                raise _BatchFailure(f"{url}: HTTP {resp.status_code} {resp.text[:200]} "
                                    "(check LEAN_SERVER_API_KEY)", splittable=False)
            if resp.status_code != 200:
                raise _BatchFailure(f"{url}: HTTP {resp.status_code} {resp.text[:300]}",
                                    splittable=False)
            try:
                body = resp.json()
                results = body["results"]
                key = "id" if self.endpoint == "check" else "custom_id"
                by_id = {str(r[key]): r for r in results}
            except (ValueError, KeyError, TypeError):
                last, splittable = f"{url}: malformed response {resp.text[:120]!r}", True
                continue
            self._bump("sent", len(codes))
            return {c: by_id.get(str(i), {"error": "server returned no result for this snippet"})
                    for i, c in enumerate(codes)}
        raise _BatchFailure(f"{last} after {self.max_retries + 1} attempts", splittable)

    def close(self) -> None:
        self.session.close()
        if self.cache:
            self.cache.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
