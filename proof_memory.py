"""The proof memory of repair mode (OProver): verified proofs with BM25 retrieval over their
statements, seeded from the verified proofs shipped in data/ and never from the benchmark being
scored.
"""
from __future__ import annotations

import json
import zipfile
from pathlib import Path

import canonical
import common
import lean_client


class ProofBank:
    """Verified proofs (statement, proof, source, run) with BM25 retrieval over statements."""

    def __init__(self, path: Path, scored: list[dict]):
        self.path = path
        self.blocked = {canonical.canonical_statement(r["formal_statement"]) for r in scored}
        self.blocked_names = {lean_client.theorem_name(r["formal_statement"]) for r in scored}
        self.rows = common.read_rows(path, "proof_bank") if path.exists() and path.stat().st_size else []
        self._index = None

    def seed(self, rows: list[dict]) -> int:
        """Add shipped proofs, leaving out every problem of the benchmarks being scored."""
        added = 0
        for r in rows:
            if (lean_client.theorem_name(r["formal_statement"]) in self.blocked_names or
                    canonical.canonical_statement(r["formal_statement"]) in self.blocked):
                continue
            added += self.add(r, save=False)
        self.save()
        return added

    def add(self, row: dict, save: bool = True) -> bool:
        key = (lean_client.collapse_ws(row["formal_statement"]), lean_client.collapse_ws(row["proof"]))
        if any((lean_client.collapse_ws(r["formal_statement"]), lean_client.collapse_ws(r["proof"])) == key for r in self.rows):
            return False
        self.rows.append(row)
        self._index = None
        if save:
            self.save()
        return True

    def save(self) -> None:
        common.write_parquet(self.rows, self.path, "proof_bank")

    def retrieve(self, statement: str, k: int, exclude_id: str) -> list[dict]:
        """Top-k by BM25 over statements; never the problem itself. The index is built once per
        bank state (not per call): the excluded entries are filtered from a slightly longer list."""
        if k <= 0 or not self.rows:
            return []
        import bm25s
        if self._index is None:
            self._index = bm25s.BM25()
            self._index.index(bm25s.tokenize([r["formal_statement"] for r in self.rows], stopwords=None,
                                             show_progress=False), show_progress=False)
        key = lean_client.collapse_ws(statement)
        excluded = sum(r["statement_id"] == exclude_id or lean_client.collapse_ws(r["formal_statement"]) == key
                       for r in self.rows)
        want = min(k + excluded, len(self.rows))
        docs, _ = self._index.retrieve(bm25s.tokenize([statement], stopwords=None, show_progress=False),
                                       k=want, show_progress=False)
        hits = [self.rows[int(i)] for i in docs[0]]
        return [r for r in hits if r["statement_id"] != exclude_id and
                lean_client.collapse_ws(r["formal_statement"]) != key][:k]


def shipped_proofs() -> list[dict]:
    """The verified proofs bundled in data/: 67 miniF2F-valid human proofs and Kimina-Prover-Preview's
    197 miniF2F-test proofs (the latter are left out whenever miniF2F-test is scored)."""
    rows = []
    for line in (common.PROJECT_ROOT / "data/proofs/deepseek_v15_minif2f_valid_few_shot.jsonl").open():
        r = json.loads(line)
        rows.append({"statement_id": f"minif2f_valid_proofs/{r['name']}", "formal_statement":
                     lean_client.normalize_statement(r["formal_statement"]), "header": "",
                     "proof": r["formal_proof"], "source": "deepseek_v15_minif2f_valid_few_shot", "run": "shipped"})
    with zipfile.ZipFile(common.PROJECT_ROOT / "data/proofs/kimina_preview_minif2f_test_solved.zip") as zf:
        name = next(n for n in zf.namelist() if n.endswith(".jsonl"))
        for line in zf.read(name).decode().splitlines():
            r = json.loads(line)
            header, body = lean_client.split_header(r["correct_proof"])
            stmt = body[body.find("theorem"):body.find(":= by") + 5]
            rows.append({"statement_id": f"kimina_preview/{r['name']}", "formal_statement": stmt,
                         "header": header, "proof": body[body.find(":= by") + 5:],
                         "source": "kimina_preview_minif2f_test_solved", "run": "shipped"})
    return rows
