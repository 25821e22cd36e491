"""The proof memory of repair mode (OProver): verified proofs with BM25 retrieval over their
statements.

What an evaluation may retrieve from is fixed before it starts and does not change while it
runs (OProver's memory grows only between post-training iterations):
- built from training-side proofs only: the verified proofs shipped in data/, this run's SFT
  proofs that verify, or proof files a user names (an earlier iteration's found proofs, a corpus
  such as an OProofs export), never from the benchmarks being scored: every entry whose theorem
  name or canonical statement matches a scored problem is left out when the memory is built;
- at retrieval, every entry that is the problem itself is excluded again (same id, same theorem
  name, or the same statement up to whitespace, comments and bound-variable names);
- saved as a versioned artifact, memory_<key>.parquet, where the key hashes its entries, so two
  evaluations share a memory only when they retrieve from the same proofs, and the results name it.
Proofs found while evaluating go to their own file (the next iteration's training data); only
`online=True` (an experiment, off by default) lets them into the memory during the evaluation,
and then results depend on problem order.
"""
from __future__ import annotations

import hashlib
import json
import zipfile
from pathlib import Path

import canonical
import common
import lean_client

DATA = Path(__file__).resolve().parent / "data"


def shipped_proofs() -> list[dict]:
    """The verified proofs bundled in data/: 67 miniF2F-valid human proofs and
    Kimina-Prover-Preview's
    197 miniF2F-test proofs (the latter are left out whenever miniF2F-test is scored)."""
    rows = []
    for line in (DATA / "proofs/deepseek_v15_minif2f_valid_few_shot.jsonl").open():
        r = json.loads(line)
        rows.append({"statement_id": f"minif2f_valid_proofs/{r['name']}", "formal_statement":
                     lean_client.normalize_statement(r["formal_statement"]), "header": "",
                     "proof": r["formal_proof"], "source": "deepseek_v15_minif2f_valid_few_shot",
                     "run": "shipped"})
    with zipfile.ZipFile(DATA / "proofs/kimina_preview_minif2f_test_solved.zip") as zf:
        name = next(n for n in zf.namelist() if n.endswith(".jsonl"))
        for line in zf.read(name).decode().splitlines():
            r = json.loads(line)
            header, body = canonical.split_header(r["correct_proof"])
            stmt = body[body.find("theorem"):body.find(":= by") + 5]
            rows.append({"statement_id": f"kimina_preview/{r['name']}", "formal_statement": stmt,
                         "header": header, "proof": body[body.find(":= by") + 5:],
                         "source": "kimina_preview_minif2f_test_solved", "run": "shipped"})
    return rows


def read_proof_file(path: Path) -> list[dict]:
    """A proof file in the proof_bank schema (Parquet, or JSONL with the same keys)."""
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq
        if path.exists() and pq.read_metadata(path).num_rows == 0:
            return []      # an empty memory is a memory (05's v0; an iteration that found nothing)
        return common.read_rows(path, "proof_bank")
    rows = []
    for lineno, line in enumerate(path.read_text().splitlines(), 1):
        if line.strip():
            try:
                r = json.loads(line)
                rows.append({c: str(r[c]) if c in ("statement_id", "formal_statement", "proof")
                             else str(r.get(c) or "")
                             for c in common.SCHEMAS["proof_bank"]})
            except (ValueError, KeyError) as exc:
                raise SystemExit(f"{path}:{lineno}: a proof row needs statement_id, "
                                 f"formal_statement, proof ({exc})")
    return rows


class ProofMemory:
    """Verified proofs (statement, proof, source, run); BM25 over statements; frozen unless
    online."""

    def __init__(self, entries: list[dict], scored: list[dict], online: bool = False):
        self.online = online
        blocked = {canonical.canonical_statement(r["formal_statement"]) for r in scored}
        blocked_names = {lean_client.theorem_name(r["formal_statement"]) for r in scored}
        self.rows: list[dict] = []
        self._keys: set = set()
        self.left_out = 0
        for r in entries:
            if (lean_client.theorem_name(r["formal_statement"]) in blocked_names or
                    canonical.canonical_statement(r["formal_statement"]) in blocked):
                self.left_out += 1
                continue
            self._add(r)
        self.key = hashlib.sha256(json.dumps(sorted([r["formal_statement"], r["proof"]]
                                                    for r in self.rows),
                                             ensure_ascii=False).encode()).hexdigest()[:12]
        self._index = None

    @property
    def name(self) -> str:
        return f"memory_{self.key}" + ("+online" if self.online else "")

    def _add(self, row: dict) -> bool:
        key = (lean_client.collapse_ws(row["formal_statement"]),
               lean_client.collapse_ws(row["proof"]))
        if key in self._keys:
            return False
        self._keys.add(key)
        self.rows.append({**row, "_canon": canonical.canonical_statement(row["formal_statement"]),
                          "_name": lean_client.theorem_name(row["formal_statement"])})
        self._index = None
        return True

    def add_found(self, row: dict) -> bool:
        """Only an online memory takes proofs found during the evaluation."""
        if not self.online:
            raise RuntimeError("a frozen memory takes no proofs during an "
                               "evaluation (online=False)")
        return self._add(row)

    def save(self, folder: Path) -> Path:
        path = Path(folder) / f"memory_{self.key}.parquet"
        if not path.exists():
            common.write_parquet([{c: r[c] for c in common.SCHEMAS["proof_bank"]}
                                  for r in self.rows], path, "proof_bank")
        return path

    def retrieve(self, statement: str, k: int, exclude_id: str) -> list[dict]:
        """Top-k by BM25 over statements; never the problem itself (same id, same theorem name, or
        the same canonical statement). The index is built once per memory state."""
        if k <= 0 or not self.rows:
            return []
        import bm25s
        if self._index is None:
            self._index = bm25s.BM25()
            self._index.index(bm25s.tokenize([r["formal_statement"] for r in self.rows],
                                             stopwords=None,
                                             show_progress=False), show_progress=False)
        canon, name = canonical.canonical_statement(statement), lean_client.theorem_name(statement)

        def is_self(r):
            return r["statement_id"] == exclude_id or r["_canon"] == canon or (name and r["_name"] == name)
        excluded = sum(map(is_self, self.rows))
        docs, _ = self._index.retrieve(bm25s.tokenize([statement], stopwords=None,
                                                      show_progress=False),
                                       k=min(k + excluded, len(self.rows)), show_progress=False)
        hits = [self.rows[int(i)] for i in docs[0]]
        return [{c: r[c] for c in common.SCHEMAS["proof_bank"]} for r in hits if not is_self(r)][:k]
