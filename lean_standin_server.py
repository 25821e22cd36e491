"""STAND-IN for the Kimina Lean Server. This is NOT Lean and proves nothing about Lean.

It exists because no Lean toolchain can be installed on the machines where this project's
tests and CPU smoke run execute. It speaks the Kimina Lean Server's HTTP protocol exactly
(docs/PROTOCOL.md: POST /api/check, the older POST /verify, GET /health, Bearer auth,
the same response schema, HTTP 422/401/429/500 behaviour) and decides the toy fragment
defined in toy_task.py (closed ℕ statements; which tactic closes which relation). Every
statement outside that fragment, a real miniF2F theorem for example, gets an error saying so:
it is never reported as proved.

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
import socket
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from toy_task import FRAGMENT, Checker  # noqa: E402

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
        self.rates = {"500": args.fault_500, "429": args.fault_429,
                      "malformed": args.fault_malformed,
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
        items = (body or {}).get("codes" if legacy
                                 else "snippets") if isinstance(body, dict) else None
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
