"""Statement text: where a Lean file's header ends (split_header), when two statements say the
same thing, and which split a statement falls in. The canonical form (comments, theorem name,
whitespace and bound-variable names factored out) is what deduplication and decontamination
(01) and the proof memory's self-exclusion (04) all key on, so the three agree by construction.
"""
from __future__ import annotations

import hashlib
import re

from lean_client import DECL, collapse_ws, normalize_statement, strip_lean_comments


_HEADER_LINE = re.compile(r"^\s*(import|open|set_option|universe|namespace)\b")


def split_header(code: str) -> tuple[str, str]:
    """Split a Lean file into (header, rest). The header runs to the end of the last leading
    `import` / `open` / `set_option` / `universe` / `namespace` command (comments before it, such
    as a licence block, included) and the blank lines after it. It never ends inside a comment:
    a problem text in a `/- ... -/` block between the header and the theorem, even one with
    blank lines inside, goes to the rest whole (Numina / Kimina-Promptset statements)."""
    lines = code.split("\n")
    bare = strip_lean_comments(code, keep_columns=True).split("\n")   # same lines, comments blanked
    last = -1
    for idx, line in enumerate(bare):
        if _HEADER_LINE.match(line):
            last = idx
        elif line.strip():
            break
    if last < 0:
        return "", code
    code_end = len(bare[last].rstrip())   # a comment opened on that line stays in the rest
    header = "\n".join(lines[:last] + [lines[last][:code_end]]) + "\n"
    tail, rest = lines[last][code_end:].strip(), "\n".join(lines[last + 1:])
    if tail:
        return header, tail + "\n" + rest
    blank = re.match(r"[ \t]*\n(?:[ \t]*\n)*", rest)   # the blank lines after it join the header
    if blank:
        header, rest = header + "\n" * blank.group(0).count("\n"), rest[blank.end():]
    return header, rest


_BINDER_GROUP = re.compile(r"[(\{\[⦃]\s*([^\s:(){}\[\]⦃⦄,]+(?:\s+[^\s:(){}\[\]⦃⦄,]+)*)\s*:")
_QUANTIFIED = re.compile(r"(?:∀|∃!?|fun|λ|∑|∏|⋃|⋂)\s+([^,:=↦]+?)\s*(?=,|:|=>|↦|\bin\b|∈|>|<|≥|≤|≠)")
_IDENT = re.compile(r"^[^\W\d][\w'!?₀-₉]*$")


def binder_names(statement: str) -> list[str]:
    """Names bound in a statement (signature binders and ∀/∃/fun/∑ binders), in order."""
    found: list[tuple[int, str]] = []
    for rx in (_BINDER_GROUP, _QUANTIFIED):
        for m in rx.finditer(statement):
            for name in m.group(1).replace("(", " ").replace(")", " ").split():
                if _IDENT.match(name) and name not in ("in", "fun", "λ"):
                    found.append((m.start(1), name))
    return list(dict.fromkeys(name for _, name in sorted(found)))


def canonical_statement(statement: str) -> str:
    """The statement with comments, theorem name, whitespace and bound-variable names factored
    out: two statements with the same canonical form say the same thing. Used to decontaminate
    training data against eval sets (a renamed copy of a miniF2F theorem is still caught)."""
    text = strip_lean_comments(normalize_statement(statement))
    text = re.sub(rf"^\s*{DECL}\s+\S+", "theorem _", text)
    names = binder_names(text)
    if names:
        mapping = {n: f"v{i}" for i, n in enumerate(names)}
        alternatives = "|".join(re.escape(n) for n in sorted(names, key=len, reverse=True))
        text = re.sub(rf"(?<![\w'.])({alternatives})(?![\w'!?₀-₉])", lambda m: mapping[m.group(1)],
                      text)
    return collapse_ws(text)


def statement_conclusion(statement: str) -> str:
    """The goal after the binders: what follows the last top-level ':' before ':= by'."""
    text = normalize_statement(statement)[:-len(":= by")]
    depth, cut = 0, -1
    for i, ch in enumerate(text):
        depth += ch in "([{⦃"
        depth -= ch in ")]}⦄"
        if ch == ":" and depth == 0 and text[i + 1:i + 2] != "=":
            cut = i
    return collapse_ws(text[cut + 1:])


def hash_split(statement: str, fraction: float, held_out: str = "valid") -> str:
    """held_out for about `fraction` of statements, else train: by a hash, so a statement stays
    on its side however the sources change."""
    bucket = int(hashlib.sha256(collapse_ws(statement).encode()).hexdigest()[:8], 16) / 0xFFFFFFFF
    return held_out if bucket < fraction else "train"
