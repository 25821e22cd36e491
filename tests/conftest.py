import json
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from lean_standin_server import StandinProcess  # noqa: E402

# the tests' own computing in one thread: the stage subprocesses and stand-in servers they start
# take the other core (generation.cpu_threads: a busy core makes a second thread a loss)
import torch  # noqa: E402
torch.set_num_threads(1)

HEADER = ("import Mathlib\nimport Aesop\n\nset_option maxHeartbeats 400000\n\n"
          "open BigOperators Real Nat Topology Rat\n\n")


def toy(name: str, prop: str, proof: str) -> dict:
    stmt = f"theorem {name} : {prop} := by"
    return {"id": name, "code": f"{HEADER}{stmt}\n  {proof}", "statement": stmt}


@pytest.fixture(scope="session")
def standin():
    """One shared stand-in server (4 workers, no latency, no faults) on a free port."""
    with StandinProcess(workers=4) as url:
        yield url


@pytest.fixture
def make_standin():
    """Start stand-in servers with given options; all stopped after the test."""
    procs = []

    def start(**options):
        p = StandinProcess(**options)
        procs.append(p)
        return p.start(), p

    yield start
    for p in procs:
        p.stop()


def print_marks(body: dict, payload):
    """A canned reply as a REPL would give it: each snippet that ends with lean_client's closing
    `#print "..."` gets that string as an info message in its response (when it has one)."""
    import copy
    from lean_client import _MARK
    if not isinstance(payload, dict) or not isinstance(payload.get("results"), list):
        return payload
    payload = copy.deepcopy(payload)
    codes = {str(i): s.get("code") or s.get("proof") or ""
             for i, s in enumerate(body.get("snippets") or body.get("codes") or [])}
    for r in payload["results"]:
        rid = str(r.get("id", r.get("custom_id", "")))
        mark = _MARK.search(codes.get(rid, ""))   # the client's own pattern of its mark
        if mark and isinstance(r.get("response"), dict):
            r["response"].setdefault("messages", [])
            r["response"]["messages"] = list(r["response"]["messages"] or []) + [
                {"severity": "info", "pos": {"line": 1, "column": 0}, "endPos": None,
                 "data": mark.group(1)}]
    return payload


class Recorder:
    """A real HTTP server on localhost that records requests and replays canned replies."""

    def __init__(self):
        self.requests = []
        self.replies = []          # list of (status, body) popped per POST; last one repeats
        self.print_marks = True    # as a Lean REPL does, print the client's closing `#print "..."`
        recorder = self

        class H(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a):
                pass

            def _send(self, status, body):
                data = (body if isinstance(body, str) else json.dumps(body)).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self):
                self._send(200, {"status": "ok"})

            def do_POST(self):
                n = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(n))
                recorder.requests.append({"path": self.path, "headers": dict(self.headers),
                                          "body": body})
                reply = recorder.replies.pop(0) if len(recorder.replies) > 1 else recorder.replies[0]
                status, payload = reply(body) if callable(reply) else reply
                if recorder.print_marks and status == 200:
                    payload = print_marks(body, payload)
                self._send(status, payload)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def recorder():
    r = Recorder()
    yield r
    r.close()
