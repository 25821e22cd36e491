"""Prompt formats, target completions, proof extraction and format checks: what the model
reads and writes. 02 builds SFT prompts with it, 03 and 04 sample and score with it, so a
prompt at training is the prompt at deployment.
"""
from __future__ import annotations

import re

from lean_client import LeanMessage, Verdict, normalize_statement, strip_lean_comments


# ---------------------------------------------------------------------------------------------
# Prompts (Kimina-Prover format, REFERENCE.md section 2)
# ---------------------------------------------------------------------------------------------

KIMINA_SYSTEM = "You are an expert in mathematics and proving theorems in Lean 4."
KIMINA_USER = ("Think about and solve the following problems step by step in Lean 4.\n\n"
               "# Problem:\n{informal}\n\n# Formal Statement:\n```lean4\n{formal}\n```\n")


def kimina_messages(formal_statement: str, informal: str = "", header: str = "") -> list[dict]:
    formal = (header + formal_statement).strip("\n")
    return [{"role": "system", "content": KIMINA_SYSTEM},
            {"role": "user", "content": KIMINA_USER.format(informal=informal.strip(), formal=formal)}]


def kimina_completion(header: str, statement: str, proof: str, thinking: str) -> str:
    """A target completion in the Kimina output format: one <think> block, then exactly one
    final lean4 block holding header + statement + proof."""
    code = build_lean_code(header, statement, proof).strip("\n")
    return f"<think>\n{thinking.strip()}\n</think>\n```lean4\n{code}\n```"


def thinking_from_proof(informal: str, proof: str) -> str:
    """Reasoning for an SFT target when the source has only a proof (departure: Kimina's SFT
    targets carry real reasoning traces). It restates the problem and walks through the proof
    in two ```tactics blocks, so Kimina's format checks hold."""
    steps = [l for l in proof.strip("\n").split("\n") if l.strip()]
    half = max(1, len(steps) // 2)
    first, second = steps[:half], steps[half:] or steps[:half]
    intro = informal.strip() or "We prove the formal statement directly."
    return (f"{intro}\n\nFirst steps:\n```tactics\n" + "\n".join(first) +
            "\n```\n\nThen:\n```tactics\n" + "\n".join(second) + "\n```")


# ---------------------------------------------------------------------------------------------
# Proof extraction and format checks (Kimina reward = proof x format)
# ---------------------------------------------------------------------------------------------

_LEAN_BLOCK = re.compile(r"```lean4?[ \t]*\n(.*?)```", re.S)
_TACTICS_BLOCK = re.compile(r"```tactics[ \t]*\n(.*?)```", re.S)


def extract_proof(completion: str, statement: str) -> str | None:
    """The tactic proof after `:= by` in the last lean4 block that contains the statement
    verbatim, or None. The caller rebuilds header + statement + proof, so a model that edits
    the statement gets None (and reward 0)."""
    stmt = normalize_statement(statement)
    for block in reversed(_LEAN_BLOCK.findall(completion)):
        at = block.find(stmt)
        if at >= 0:
            return block[at + len(stmt):].rstrip()
    return None


def build_lean_code(header: str, statement: str, proof: str) -> str:
    header = header if not header or header.endswith("\n") else header + "\n"
    return f"{header}{normalize_statement(statement)}{proof}"


def verify_completions(client, rows: list[dict], texts: list[str]) -> list:
    """Extract each completion's proof of its row's statement (header, formal_statement) and
    verify them all through `client` (a LeanClient) in one call: a Verdict per completion, None
    where the completion holds no proof of the statement."""
    items, where = [], []
    for k, (row, text) in enumerate(zip(rows, texts)):
        proof = extract_proof(text, row["formal_statement"])
        if proof is not None:
            items.append({"id": str(k), "statement": row["formal_statement"], "header": row.get("header") or "",
                          "code": build_lean_code(row["header"], row["formal_statement"], proof)})
            where.append(k)
    verdicts = [None] * len(texts)
    for k, v in zip(where, client.verify(items) if items else []):
        verdicts[k] = v
    return verdicts


def format_errors(completion: str, statement: str, *, require_tactic_blocks: bool = True,
                  min_overlap: float = 0.7) -> list[str]:
    """Kimina's format checks (REFERENCE.md section 2); an empty list means the format is fine.

    Departure: Kimina's exact implementation is not public in our sources; the checks follow
    the published list. `require_tactic_blocks=False` drops the two ```tactics checks, which
    only make sense for models distilled on Kimina's long reasoning traces.
    """
    errors: list[str] = []
    n_open, n_close = completion.count("<think>"), completion.count("</think>")
    if n_open != 1 or n_close != 1 or completion.find("<think>") > completion.find("</think>"):
        errors.append("think_block")
    thinking, _, answer = completion.partition("</think>")
    blocks = list(_LEAN_BLOCK.finditer(answer if n_close else completion))
    if not blocks or (answer if n_close else completion)[blocks[-1].end():].strip():
        errors.append("no_final_lean_block")
    if len(blocks) > 1:
        errors.append("multiple_lean_blocks")
    counts: dict[str, int] = {}
    for line in completion.split("\n"):
        if len(line.split()) >= 10:
            counts[line.strip()] = counts.get(line.strip(), 0) + 1
    if any(c >= 6 for c in counts.values()):
        errors.append("repeated_lines")
    final_code = blocks[-1].group(1) if blocks else ""
    if require_tactic_blocks:
        tactic_blocks = _TACTICS_BLOCK.findall(thinking)
        if len(tactic_blocks) < 2:
            errors.append("few_tactic_blocks")
        else:
            tactic_lines = {l.strip() for b in tactic_blocks for l in b.split("\n") if l.strip()}
            code_lines = {l.strip() for l in final_code.split("\n") if l.strip()}
            if tactic_lines and len(tactic_lines & code_lines) / len(tactic_lines) < min_overlap:
                errors.append("tactics_mismatch")
    code_no_comments = strip_lean_comments(final_code)
    if (re.search(r"(^|\s)axiom\s", code_no_comments) or "local_instance" in code_no_comments
            or normalize_statement(statement) not in final_code):
        errors.append("forbidden_or_changed_statement")
    return errors


# ---------------------------------------------------------------------------------------------
# Chat messages for every turn the stages train or sample on
# ---------------------------------------------------------------------------------------------

def prompt_messages(row: dict) -> list[dict]:
    """The messages before the target completion. A row with `prev_attempt` and
    `lean_feedback` is a repair/second turn (Kimina error correction, OProver repair data):
    the first attempt as the assistant turn, Lean's feedback as the next user turn."""
    msgs = kimina_messages(row["formal_statement"], row.get("informal_problem") or "",
                           row.get("header") or "")
    attempt, feedback = row.get("prev_attempt"), row.get("lean_feedback")
    if isinstance(attempt, str) and attempt.strip() and isinstance(feedback, str) and feedback.strip():
        msgs += [{"role": "assistant", "content": attempt}, {"role": "user", "content": feedback}]
    return msgs


def render_prompt_text(row: dict) -> str:
    """The prompt as ChatML text without a tokenizer (to train the tiny preset's tokenizer on
    the same text the model will see)."""
    return "".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n"
                   for m in prompt_messages(row)) + "<|im_start|>assistant\n"


def render_prompt(tokenizer, messages: list[dict]) -> str:
    """Chat template with the generation prompt. The prompt then ends on the template's own
    boundary (e.g. '<|im_start|>assistant\\n'), never inside a BPE merge of the answer."""
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError(f"tokenizer {getattr(tokenizer, 'name_or_path', '?')!r} has no chat template; "
                         "prompts are built with it (use an instruct/chat model or set one)")
    return tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)


# ---------------------------------------------------------------------------------------------
# Lean feedback for second turns and repair prompts
# ---------------------------------------------------------------------------------------------

GOEDEL_HEAD = ("The proof (Round {r}) is not correct. Following is the compilation error message, "
               "where we use <error></error> to signal the position of the error.")
GOEDEL_TAIL = ("Before producing the Lean 4 code to formally prove the given theorem, provide a "
               "detailed analysis of the error message.")


def lean_feedback(verdict: Verdict, style: str = "kimina", round_idx: int = 1) -> str:
    """Repair text from a failed verdict.

    kimina: the first 3 errors, each `# Error i:`, `Error message:`, and the offending lines
            +-2 with a `>` marker; a timeout or server failure gives `# System Error:`.
    goedel: Goedel-Prover-V2's correction turn: up to 8 errors, the span wrapped in
            <error></error> with 2 lines of context either side (4 in all).
    Lines are snippet lines (the client normalised old servers' after-import numbering).
    """
    if style not in ("kimina", "goedel"):
        raise ValueError(f"unknown feedback style {style!r} (kimina or goedel)")
    lines = verdict.code.split("\n")
    if verdict.status in ("timeout", "server_error", "rejected"):
        text = verdict.error or verdict.status
        if style == "kimina":
            return f"# System Error:\n{text}\n"
        return f"{GOEDEL_HEAD.format(r=round_idx)}\n\nSystem error: {text}\n\n{GOEDEL_TAIL}"
    problems = verdict.errors
    if verdict.status == "sorry" and not problems:
        problems = [m for m in verdict.messages if "sorry" in m.text] or [
            LeanMessage("warning", int(s.get("pos", {}).get("line", 1)), 0, None, None,
                        "declaration uses 'sorry'") for s in verdict.sorries[:1]]
    if style == "kimina":
        parts = []
        for i, msg in enumerate(problems[:3], 1):
            lo, hi = max(1, msg.line - 2), min(len(lines), msg.line + 2)
            snippet = "\n".join(("> " if ln == msg.line else "  ") + lines[ln - 1]
                                for ln in range(lo, hi + 1))
            parts.append(f"# Error {i}:\nError message:\n{msg.text}\n\n{snippet}\n")
        return "\n".join(parts)
    parts = [GOEDEL_HEAD.format(r=round_idx)]
    for i, msg in enumerate(problems[:8], 1):
        parts.append(f"Error {i}:\n\nCorresponding Code:\n```lean4\n{_wrap_span(lines, msg)}\n```\n\n"
                     f"Error Message: {msg.text}")
    parts.append(GOEDEL_TAIL)
    return "\n\n".join(parts)


def _wrap_span(lines: list[str], msg: LeanMessage, context: int = 2) -> str:
    start_l, start_c = msg.line, msg.column
    end_l = msg.end_line or msg.line
    end_c = msg.end_column if msg.end_line else len(lines[end_l - 1]) if end_l <= len(lines) else 0
    if (end_l, end_c) < (start_l, start_c):
        end_l, end_c = start_l, len(lines[start_l - 1]) if start_l <= len(lines) else 0
    out = []
    for ln in range(max(1, start_l - context), min(len(lines), end_l + context) + 1):
        text = lines[ln - 1]
        if ln == end_l:
            text = text[:end_c] + "</error>" + text[end_c:]
        if ln == start_l:
            text = text[:start_c] + "<error>" + text[start_c:]
        out.append(text)
    return "\n".join(out)
