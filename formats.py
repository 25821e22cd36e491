"""Prompt formats, target completions, proof extraction and format checks: what the model
reads and writes. 02 builds SFT prompts with it, 03 and 04 sample and score with it, so a
prompt at training is the prompt at deployment.
"""
from __future__ import annotations

import re

from lean_client import (MARK_PREFIX, LeanMessage, Verdict, normalize_statement,
                         strip_lean_comments)


# ---------------------------------------------------------------------------------------------
# Prompts (Kimina-Prover format, docs/RECIPES.md)
# ---------------------------------------------------------------------------------------------

KIMINA_SYSTEM = "You are an expert in mathematics and proving theorems in Lean 4."
KIMINA_USER = ("Think about and solve the following problems step by step in Lean 4.\n\n"
               "# Problem:\n{informal}\n\n# Formal Statement:\n```lean4\n{formal}\n```\n")


def kimina_messages(formal_statement: str, informal: str = "", header: str = "") -> list[dict]:
    formal = (header + formal_statement).strip("\n")
    return [{"role": "system", "content": KIMINA_SYSTEM},
            {"role": "user",
             "content": KIMINA_USER.format(informal=informal.strip(), formal=formal)}]


def kimina_completion(header: str, statement: str, proof: str, thinking: str) -> str:
    """A target completion in the Kimina output format: one <think> block, then exactly one
    final lean4 block holding header + statement + proof."""
    code = build_lean_code(header, statement, proof).strip("\n")
    return f"<think>\n{thinking.strip()}\n</think>\n```lean4\n{code}\n```"


def target_completion(fmt: str, header: str, statement: str, proof: str, thinking: str) -> str:
    """An SFT target in the answer shape of a prompt format, so SFT trains the format the model
    will be evaluated in: Kimina's and StepFun's think block then one lean4 block; DeepSeek-V2's
    and Goedel-V2's proof plan then the whole file in a lean4 block; OProver's bare lean4 block;
    the non-CoT prompt's continuation (the proof, then the closing fence)."""
    code = build_lean_code(header, statement, proof).strip("\n")
    if fmt in ("kimina", "kimina_preview", "stepfun"):
        return kimina_completion(header, statement, proof, thinking)
    if fmt in ("deepseek_v2", "goedel_v2"):
        return f"{thinking.strip()}\n\n```lean4\n{code}\n```"
    if fmt == "oprover":
        return f"```lean4\n{code}\n```"
    if fmt == "deepseek_v2_noncot":
        return f"{proof.rstrip()}\n```"
    raise ValueError(f"unknown prompt format {fmt!r}; known: {', '.join(FORMATS)}")


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
_GOEDEL_BLOCK = re.compile(r"```lean4\n(.*?)\n```", re.S)
# the families whose own pipelines check the model's proof under the original statement, the
# model's own statement text dropped (Goedel-Prover-V2 src/utils.py replace_statement_in_proof;
# its KiminaCoTHandler does the same for Kimina-Prover-Preview); Kimina's recipe stays strict
GOEDEL_FAMILY = ("deepseek_v2", "goedel_v2", "kimina_preview")
# Goedel's return_theorem_to_replace; the header lines its compile step (and its Kimina handler's
# problem text) leave out; what lean_client appends to every snippet it sends
_GOEDEL_THEOREM = re.compile(r"(?:^|\s)theorem\s+.*?:=\s*by", re.S)
_GOEDEL_DROPPED = ("import", "set_option", "open")
_CLIENT_TAIL = re.compile(r'\n\n#print (?:axioms |"' + re.escape(MARK_PREFIX) + ")")


def _goedel_uncomment(code: str) -> str:
    """Comments out as Goedel's remove_comments takes them: `/- ... -/` blocks (not nested),
    then everything after `--` on each line; stripped."""
    code = re.sub(r"/-.*?-/", "", code, flags=re.S)
    return "\n".join(line.split("--", 1)[0] for line in code.split("\n")).strip()
_TACTICS_BLOCK = re.compile(r"```tactics[ \t]*\n(.*?)```", re.S)


def extract_proof(completion: str, statement: str, fmt: str = "kimina") -> str | None:
    """The tactic proof after `:= by` in the last lean4 block that contains the statement
    verbatim, or None. The caller rebuilds header + statement + proof, so a model that edits
    the statement gets None (and reward 0). `deepseek_v2_noncot` continues the file after
    `:= by`: its proof is the completion up to the first ``` (DeepSeek-Prover-V1.5's
    post_process_output), checked as header + statement + that continuation (docs/FORMATS.md)."""
    if fmt == "deepseek_v2_noncot":
        cut = completion.find("```")
        proof = (completion[:cut] if cut >= 0 else completion).rstrip()
        return proof if proof.strip() else None
    if fmt in GOEDEL_FAMILY:   # Goedel-Prover-V2's replace_statement_in_proof (docs/FORMATS.md)
        blocks = _GOEDEL_BLOCK.findall(completion) or _LEAN_BLOCK.findall(completion)
        if not blocks:
            return None
        code = _goedel_uncomment(blocks[-1])
        head = _GOEDEL_THEOREM.search(code)
        return code[head.end():] if head else None
    stmt = normalize_statement(statement)
    for block in reversed(_LEAN_BLOCK.findall(completion)):
        at = block.find(stmt)
        if at >= 0:
            return block[at + len(stmt):].rstrip()
    return None


def decision_index(tok, text: str, token_ids: list[int], statement: str) -> int | None:
    """The index of the first generated token after `statement := by` in the last place the
    completion writes it: the token that picks the proof (the toy's tactic). Entropy averaged
    over all tokens hides a collapse there."""
    stmt = normalize_statement(statement)
    at = text.rfind(stmt)
    if at < 0 or not token_ids:
        return None
    target = at + len(stmt) + (len(text[at + len(stmt):]) - len(text[at + len(stmt):].lstrip()))
    lo, hi = 0, len(token_ids)              # smallest i with decode(ids[:i + 1]) reaching past
                                            # target
    while lo < hi:
        mid = (lo + hi) // 2
        if len(tok.decode(token_ids[:mid + 1])) > target:
            hi = mid
        else:
            lo = mid + 1
    return lo if lo < len(token_ids) else None


def build_lean_code(header: str, statement: str, proof: str) -> str:
    header = header if not header or header.endswith("\n") else header + "\n"
    return f"{header}{normalize_statement(statement)}{proof}"


def verify_completions(client, rows: list[dict], texts: list[str], fmt: str = "kimina") -> list:
    """Extract each completion's proof of its row's statement (header, formal_statement) in
    the answer shape of prompt format `fmt` and verify them all through `client` (a LeanClient)
    in one call: a Verdict per completion, None where it holds no proof of the statement."""
    items, where = [], []
    for k, (row, text) in enumerate(zip(rows, texts)):
        proof = extract_proof(text, row["formal_statement"], fmt)
        if proof is not None:
            items.append({"id": str(k), "statement": row["formal_statement"],
                          "header": row.get("header") or "",
                          "code": build_lean_code(row["header"], row["formal_statement"], proof)})
            where.append(k)
    verdicts = [None] * len(texts)
    for k, v in zip(where, client.verify(items) if items else []):
        verdicts[k] = v
    return verdicts


def format_errors(completion: str, statement: str, *, require_tactic_blocks: bool = True,
                  min_overlap: float = 0.7, fmt: str = "kimina") -> list[str]:
    """Kimina's format checks (docs/RECIPES.md); an empty list means the format is fine.

    Departure: Kimina's exact implementation is not public in our sources; the checks follow
    the published list. `require_tactic_blocks=False` drops the two ```tactics checks, which
    only make sense for models distilled on Kimina's long reasoning traces. Other prompt
    formats (`fmt`) are held only to a final lean4 block with the statement unchanged.
    """
    if fmt == "deepseek_v2_noncot" or fmt in GOEDEL_FAMILY:   # as their pipelines take a proof
        return [] if extract_proof(completion, statement, fmt) is not None else ["no_proof"]
    if fmt != "kimina":
        blocks = list(_LEAN_BLOCK.finditer(completion))
        found = blocks and normalize_statement(statement) in blocks[-1].group(1)
        return [] if found else ["no_final_lean_block" if not blocks
                                 else "forbidden_or_changed_statement"]
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

# Each prover family's own prompt, so a released model is evaluated the way it was trained.
# Sources (byte-level tests in tests/test_formats.py cite them): Kimina docs/RECIPES.md;
# DeepSeek-Prover-V2's README example; Goedel-Prover-V2 src/utils.py (DeepSeekCoTHandler,
# DeepSeekNonCoTHandler); StepFun-Prover-Preview demo/interact_with_lean4repl.py. OProver's
# prompt is not public: `oprover` is our layout of its compact round state (statement, retrieved
# proofs, the last attempt, its diagnostics), one user turn per round.
FORMATS = ("kimina", "kimina_preview", "deepseek_v2", "deepseek_v2_noncot", "goedel_v2",
           "stepfun", "oprover")
# the first name that matches wins: Kimina-Prover-Preview(-Distill) before Kimina-Prover(-RL)
MODEL_FORMATS = (("kimina-prover-preview", "kimina_preview"), ("kimina-prover", "kimina"),
                 ("deepseek-prover-v2", "deepseek_v2"),
                 ("goedel-prover-v2", "goedel_v2"), ("stepfun-prover", "stepfun"),
                 ("oprover", "oprover"))
FEEDBACK_STYLE = {"deepseek_v2": "goedel", "deepseek_v2_noncot": "goedel", "goedel_v2": "goedel",
                  "kimina_preview": "goedel"}
KIMINA_PREVIEW_SYSTEM = "You are an expert in mathematics and Lean 4."
DSV2_PLAN = ("Before producing the Lean 4 code to formally prove the given theorem, "
             "provide a detailed proof plan "
             "outlining the main proof steps and strategies.\nThe plan should highlight "
             "key ideas, intermediate "
             "lemmas, and proof structures that will guide the construction "
             "of the final formal proof.")
STEPFUN_SYSTEM = ("You will be given an unsolved Lean 4 problem. Think carefully and work "
                  "towards a solution. At any "
                  "point, you may use the Lean 4 REPL to check your progress by "
                  "enclosing your partial solution "
                  "between <sketch> and </sketch>. The REPL feedback will be provided "
                  "between <REPL> and </REPL>. "
                  "Continue this process as needed until you arrive at a "
                  "complete and correct solution.")


def format_for(model: str, requested: str = "auto", mode: str = "") -> str:
    """--prompt_format: a name from FORMATS, or auto: the family of a known model name (tool
    mode: StepFun's, whose protocol it is), else Kimina's."""
    if requested != "auto":
        if requested not in FORMATS:
            raise ValueError(f"unknown prompt format {requested!r}; known: {', '.join(FORMATS)}")
        return requested
    low = str(model).lower()
    found = next((fmt for key, fmt in MODEL_FORMATS if key in low), None)
    return found or ("stepfun" if mode == "tool" else "kimina")


def docstring_body(text: str) -> str:
    """What lies between a docstring's `/--` (or `/-`) and `-/`, its whitespace kept (it starts
    with one: `/-- text-/`), so lean_file writes the docstring back byte for byte."""
    body = text.strip()
    body = body[3:] if body.startswith("/--") else body[2:] if body.startswith("/-") else body
    return body[:-2] if body.endswith("-/") else body


def lean_file(row: dict, docstring: bool = True) -> str:
    """header + the informal problem as a `/-- -/` docstring + the theorem: the whole-file
    statement DeepSeek-Prover-V2 and Goedel-Prover-V2 are prompted with. A docstring's body
    (01 keeps its whitespace) is written back as it was; plain text gets `/-- text-/`."""
    informal = row.get("informal_problem") or ""
    if informal[:1].isspace() and informal.strip():   # a docstring's body, as written
        informal = f"/--{informal}-/"
    else:
        informal = informal.strip()
        if informal and not informal.startswith("/-"):
            informal = f"/-- {informal}-/"
    doc = informal + "\n" if informal and docstring else ""
    return (row.get("header") or "") + doc + normalize_statement(row["formal_statement"])


def first_turn(row: dict, fmt: str = "kimina", retrieved=()) -> list[dict]:
    if fmt == "kimina":
        msgs = kimina_messages(row["formal_statement"], row.get("informal_problem") or "",
                               row.get("header") or "")
    elif fmt == "kimina_preview":    # its model card's prompt, as Goedel's KiminaCoTHandler builds
        stmt = lean_file(row).split(":= by")[0] + ":= by"   # it: "# Problem:" + the file's
        problem = "\n".join(line for line in stmt.splitlines()   # lines but header and blanks
                            if not line.startswith(_GOEDEL_DROPPED)
                            and line.strip())
        msgs = [{"role": "system", "content": KIMINA_PREVIEW_SYSTEM},
                {"role": "user", "content": "Think about and solve the following problem step by "
                 f"step in Lean 4.\n# Problem:{problem}\n# Formal statement:\n```lean4\n{stmt}"
                 "\n```\n"}]
    elif fmt == "deepseek_v2":       # the README's example: `:= by` then `  sorry` on its own line
        msgs = [{"role": "user", "content": "Complete the following Lean 4 code:\n\n```lean4\n"
                 f"{(lean_file(row) + chr(10) + '  sorry').strip()}\n```\n\n{DSV2_PLAN}"}]
    elif fmt == "goedel_v2":         # Goedel's handler: `:= by sorry`, the fence closed right after
                                     # it
        msgs = [{"role": "user", "content": "Complete the following Lean 4 code:\n\n```lean4\n"
                 f"{lean_file(row).split(':= by')[0]}:= by sorry```\n\n{DSV2_PLAN}"}]
    elif fmt == "deepseek_v2_noncot":   # a raw completion prompt, no chat template
        msgs = [{"role": "user", "content": "Complete the following Lean 4 code:\n\n```lean4\n"
                 f"{lean_file(row).split(':= by')[0]}:= by"}]
    elif fmt == "stepfun":
        msgs = [{"role": "system", "content": STEPFUN_SYSTEM},
                {"role": "user",
                 "content": f"```lean4\n{lean_file(row, docstring=False).strip()}\n```"}]
    elif fmt == "oprover":
        return [{"role": "user", "content": oprover_state(row, retrieved, "", "")}]
    else:
        raise ValueError(f"unknown prompt format {fmt!r}; known: {', '.join(FORMATS)}")
    if retrieved:   # repair mode's retrieved proofs, after the problem
        msgs[-1] = {**msgs[-1],
                    "content": msgs[-1]["content"] + "\n# Verified proofs of similar statements:\n"
                    + "\n\n".join(f"```lean4\n{r['formal_statement']}{r['proof']}\n```"
                                  for r in retrieved) + "\n"}
    return msgs


def oprover_state(row: dict, retrieved, attempt: str, feedback: str) -> str:
    parts = [f"Prove the following theorem in Lean 4.\n\n# Formal "
             f"Statement:\n```lean4\n{lean_file(row).strip()}\n```"]
    if retrieved:
        parts.append("# Verified proofs of similar statements:\n" + "\n\n".join(
            f"```lean4\n{r['formal_statement']}{r['proof']}\n```" for r in retrieved))
    if attempt:
        code = extract_last_block(attempt)
        parts.append(f"# Previous attempt:\n```lean4\n{code}\n```" if code
                     else f"# Previous attempt:\n{attempt}")
        parts.append(f"# Lean diagnostics:\n{feedback.strip()}")
    parts.append("Write the complete Lean 4 code of a proof in one ```lean4 block.")
    return "\n\n".join(parts) + "\n"


def extract_last_block(text: str) -> str:
    blocks = _LEAN_BLOCK.findall(text)
    return blocks[-1].strip("\n") if blocks else ""


def prompt_messages(row: dict, fmt: str = "kimina", retrieved=(), earlier=()) -> list[dict]:
    """The messages before the target completion. A row with `prev_attempt` and
    `lean_feedback` is a repair/second turn (Kimina error correction, Goedel self-correction,
    OProver repair data): the attempt as the assistant turn and the feedback (already in the
    format's feedback style) as the next user turn; `earlier` holds the (attempt, feedback)
    pairs of the rounds before it, so a later correction round carries the whole history, as
    Goedel-Prover-V2's correction prompts do. OProver's round is one compact user turn."""
    attempt, feedback = row.get("prev_attempt"), row.get("lean_feedback")
    repair = isinstance(attempt,
                        str) and attempt.strip() and isinstance(feedback, str) and feedback.strip()
    if fmt == "oprover":
        return [{"role": "user", "content": oprover_state(row, retrieved, attempt if repair else "",
                                                          feedback if repair else "")}]
    if repair and fmt == "deepseek_v2_noncot":   # Goedel's non-CoT correction: the errors alone,
        failed_round, errors = goedel_round_and_errors(feedback, len(earlier) + 1)
        comments = "\n".join(f"-- {line}" for line in errors.splitlines() if line.strip())
        return [{"role": "user",
                 "content": f"-- The previous proof attempt (Round {failed_round - 1}) resulted "
                 f"in compilation errors:\n{comments}\n-- Please provide a corrected version. "
                 "Wrap the proof in ```lean4 and ```."}]
    msgs = first_turn(row, fmt, retrieved)
    for a, f in [*earlier, (attempt, feedback)] if repair else []:
        msgs += [{"role": "assistant", "content": a}, {"role": "user", "content": f}]
    return msgs


def render(tokenizer, messages: list[dict], fmt: str = "kimina") -> str:
    """The prompt text: the chat template, or the raw text of a completion-style format."""
    if fmt == "deepseek_v2_noncot":
        return messages[-1]["content"]
    return render_prompt(tokenizer, messages)


def render_prompt_text(row: dict, fmt: str = "kimina") -> str:
    """The prompt as ChatML text without a tokenizer (to train the tiny preset's tokenizer on
    the same text the model will see)."""
    return "".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n"
                   for m in prompt_messages(row, fmt)) + "<|im_start|>assistant\n"


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
               "where we use <error></error> to signal the position of the error.\n\n")
GOEDEL_TAIL = ("\n\nBefore producing the Lean 4 code to formally prove the "
               "given theorem, provide a "
               "detailed analysis of the error message.")


_GOEDEL_HEAD_RE = re.compile(re.escape(GOEDEL_HEAD).replace(r"\{r\}", r"(\d+)"))


def goedel_round_and_errors(feedback: str, default_round: int) -> tuple[int, str]:
    """A Goedel-style correction turn -> (the failed attempt's round, 1-based; its error string
    alone, what the non-CoT prompt comments out). Other text: (default_round, the text)."""
    head = _GOEDEL_HEAD_RE.match(feedback)
    if not head:
        return default_round, feedback
    return int(head.group(1)) + 1, feedback[head.end():].removesuffix(GOEDEL_TAIL)


def lean_feedback(verdict: Verdict, style: str = "kimina", round_idx: int = 1) -> str:
    """The user turn that shows a failed attempt's Lean errors, in a prover's exact layout.

    kimina: Kimina-Prover-RL's second turn (recipe/kimina_prover_rl/.../reward/error_fixing.py):
            the first 3 errors, each `# Error i:`, the goal state before the error when the server
            sent an infotree, `Error message: `, and the code lines error +-2 numbered `009 >| `,
            counted in the code after its leading import lines; a top-level failure (timeout,
            server error, or our gate's refusal) is `# System Error:`; no errors gives "".
    goedel: Goedel-Prover-V2's correction turn (src/utils.py get_error_str and the DeepSeek
            CoT handler's correction prompt): up to 8 errors, 4 lines before, the span wrapped
            in <error></error>, the line after, quoted from the code as Goedel compiles it
            (goedel_view: header lines dropped, comments removed); `round_idx` is the failed
            attempt's round (1 = the first attempt, Goedel's "Round 0"). An attempt whose check
            returned no result (a timeout, a server error) gets no correction turn: "" (Goedel's
            load_data_for_correction skips a compile result without `errors`).
    Lines are the client's snippet lines (it normalises old servers' after-import numbering).
    """
    if style == "kimina":
        return kimina_feedback(verdict)
    if style != "goedel":
        raise ValueError(f"unknown feedback style {style!r} (kimina or goedel)")
    if verdict.status in ("timeout", "server_error"):
        return ""
    if verdict.status == "rejected":   # our gate's refusal: Goedel would compile an error
        body = f"\nSystem error: {verdict.error or verdict.status}\n"
    else:
        body = goedel_error_str(*goedel_view(verdict.code, verdict.errors))
    return GOEDEL_HEAD.format(r=round_idx - 1) + body + GOEDEL_TAIL


def goedel_view(code: str, errors: list[LeanMessage]) -> tuple[str, list[LeanMessage]]:
    """The code Goedel-Prover-V2 compiles for an attempt, and our errors moved onto it.

    Goedel compiles replace_statement_in_proof's output (src/utils.py): the statement with its
    comments removed, cut after `:= by sorry` with `sorry` deleted (so `:= by ` keeps a space),
    then the model's proof, comments removed; src/compile.py's handle() then drops every line
    that starts with import, set_option or open (blank lines stay). We verified header +
    statement as written + the same proof, with lean_client's checks appended; so the proof's
    lines are Goedel's lines shifted, and an error in the statement keeps its distance from the
    statement's end."""
    cut = _CLIENT_TAIL.search(code)
    code = code[:cut.start()] if cut else code
    head = _GOEDEL_THEOREM.search(code)
    split = head.end() if head else 0
    prefix, proof = code[:split], code[split:]
    g_prefix = _goedel_uncomment(prefix) + (" " if head else "")
    ours_at, g_at = prefix.count("\n"), g_prefix.count("\n")
    col_shift = len(g_prefix.rsplit("\n", 1)[-1]) - len(prefix.rsplit("\n", 1)[-1])
    lines = (g_prefix + proof).split("\n")
    kept = [j for j, line in enumerate(lines) if not line.strip().startswith(_GOEDEL_DROPPED)]
    new_index = {j: k for k, j in enumerate(kept)}

    def move(line: int, col: int) -> tuple[int, int]:
        j = max(0, line - 1 - ours_at + g_at)           # 0-based line in Goedel's text
        col = col + col_shift if line - 1 == ours_at else col
        while j not in new_index and j > 0:             # a dropped line: the one above it
            j -= 1
        return new_index.get(j, 0) + 1, max(0, min(col, len(lines[j])))

    moved = []
    for e in errors:
        line, col = move(e.line, e.column)
        end = (None, None) if e.end_line is None else move(e.end_line, e.end_column or 0)
        moved.append(LeanMessage(e.severity, line, col, end[0], end[1], e.text))
    return "\n".join(lines[j] for j in kept), moved


def goedel_error_str(code: str, errors: list[LeanMessage], limit: int = 8) -> str:
    lines, out = code.split("\n"), ""
    for i, e in enumerate(errors[:limit], 1):
        s_line, s_col = e.line - 1, e.column
        e_line, e_col = (s_line,
                         len(lines[s_line])) if e.end_line is None else (e.end_line - 1, e.end_column)
        shown = "".join(lines[s_line + d] + "\n" for d in range(-4, 0) if s_line + d >= 0)
        if s_line == e_line:
            first = lines[s_line]
            shown += first[:s_col] + "<error>" + first[s_col:e_col] + "</error>" + first[e_col:] + "\n"
        else:
            shown += lines[s_line][:s_col] + "<error>" + lines[s_line][s_col:] + "\n"
            middle = list(range(s_line + 1, min(e_line, s_line + 6)))
            shown += "".join(lines[j] + "\n" for j in middle)
            if e_line > s_line + 6:   # long spans are cut, indented like the last line shown
                last = lines[middle[-1]]
                shown += "\n" + " " * (len(last) - len(last.lstrip(" "))) + "... --[Truncated]-- ...\n"
            shown += lines[e_line][:e_col] + "</error>" + lines[e_line][e_col:] + "\n"
        if e_line + 1 < len(lines):
            shown += lines[e_line + 1] + "\n"
        out += f"\nError {i}:\n\nCorresponding Code:\n```lean4\n{shown}\n```\n\nError Message: {e.text}\n"
    if len(errors) > limit:
        out += f"\n... [Omitted {len(errors) - limit} more errors] ...\n"
    return out


def kimina_feedback(verdict: Verdict) -> str:
    if verdict.status in ("timeout", "server_error", "rejected"):
        text = (verdict.error or verdict.status).strip()
        return f"# System Error:\nError message: \n{text}\n\n" if text else ""
    response = (verdict.raw or {}).get("response") or {}
    raw_errors = [m for m in response.get("messages") or [] if isinstance(m, dict)
                  and m.get("severity") == "error"]
    code = verdict.code.strip()
    lead = verdict.code[:len(verdict.code) - len(verdict.code.lstrip())].count("\n")
    lines = code.split("\n")
    n_imports = next((i for i, line in enumerate(lines) if not line.startswith("import")),
                     len(lines))
    context = lines[n_imports:]
    out = ""
    for i, (msg, raw) in enumerate(zip(verdict.errors[:3], raw_errors[:3] + [{}] * 3), 1):
        at = msg.line - lead - n_imports - 1         # 0-based line in the code after the imports
        goals = _goals_before(response.get("infotree"), raw.get("pos"), raw.get("endPos"))
        out += f"# Error {i}:\n"
        if goals:
            out += "Goals state before error position: \n" + "\n".join(goals) + "\n\n"
        out += f"Error message: \n{msg.text.strip()}\n\n"
        shown = "".join(f"{ln + 1:03d}{' >' if ln == at else '  '}| "
                        f"{context[ln].replace('count_heartbeats in', '')}\n"
                        for ln in range(max(0, at - 2), min(len(context), at + 3)))
        out += f"Lean 4 code snippet with error:\n```lean4\n{shown}```\n"
    return out


def _goals_before(infotree, start: dict | None, end: dict | None) -> list | None:
    """Goals of the infotree node whose syntax range lies inside the error's span and is nearest
    to it (10 x line distance + column distance, both ends): goalsBefore, else goalsAfter."""
    if not isinstance(infotree, list) or not isinstance(start, dict) or not isinstance(end, dict):
        return None

    def key(p):
        return (p["line"], p["column"]) if isinstance(p, dict) else None

    def dist(a, b):
        return 10 * abs(a["line"] - b["line"]) + abs(a["column"] - b["column"])
    best, stack = None, list(infotree)
    while stack:
        tree = stack.pop()
        rng = ((tree.get("node") or {}).get("stx")
               or {}).get("range") if isinstance(tree, dict) else None
        if isinstance(rng, dict) and key(rng.get("start")) and key(rng.get("finish")):
            if key(rng["start"]) >= key(start) and key(end) >= key(rng["finish"]):
                d = dist(rng["start"], start) + dist(rng["finish"], end)
                if best is None or d < best[0]:
                    best = (d, tree)
        if isinstance(tree, dict) and isinstance(tree.get("children"), list):
            stack.extend(tree["children"])
    if best is None:
        return None
    node = best[1].get("node") or {}
    return node.get("goalsBefore") or node.get("goalsAfter")
