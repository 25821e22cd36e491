"""lean_client.py over real HTTP, against the stand-in server (not Lean) and a recording server."""
import json
import time
import zipfile

import pytest
import requests

from conftest import HEADER, ROOT, toy
from formats import lean_feedback
from lean_client import (LeanClient, LeanServerUnavailable, parse_result,
                         soundness_gate)

KIMINA_ZIP = ROOT / "data/proofs/kimina_preview_minif2f_test_solved.zip"


def fast_client(url, **kw):
    kw.setdefault("backoff", 0.01)
    kw.setdefault("max_retries", 3)
    return LeanClient(url, **kw)


# ---------------------------------------------------------------- protocol and verdicts

def test_request_shape_and_auth_header(recorder):
    recorder.replies = [(200, {"results": [{"id": "0", "time": 0.1,
                                            "response": {"messages": [], "env": 0}}]})]
    client = fast_client(recorder.url, api_key="s3cret", timeout=17)
    [v] = client.verify([{"id": "mine", "code": "theorem a : 1 = 1 := by rfl"}])
    req = recorder.requests[0]
    assert req["path"] == "/api/check"
    assert req["headers"]["Authorization"] == "Bearer s3cret"
    sent = req["body"]["snippets"][0]["code"]
    # the code, then the closing mark a REPL must print (lean_client.parse_result)
    assert sent.startswith("theorem a : 1 = 1 := by rfl\n\n#print \"lean_client checked ")
    assert req["body"] == {"snippets": [{"id": "0", "code": sent}],
                           "timeout": 17, "debug": False, "reuse": True, "infotree": None}
    assert v.id == "mine" and v.status == "valid" and v.ok and v.time == 0.1


def test_stand_in_auth(make_standin):
    url, _ = make_standin(api_key="k1")
    assert requests.get(url + "/health").json()["status"] == "ok"  # health needs no key
    good = fast_client(url, api_key="k1").verify([toy("t", "1 + 1 = 2", "rfl")])[0]
    bad = fast_client(url, api_key="wrong").verify([toy("t", "1 + 1 = 2", "rfl")])[0]
    missing = fast_client(url, api_key="").verify([toy("t", "1 + 1 = 2", "rfl")])[0]
    assert good.ok
    assert bad.status == "server_error" and "401" in bad.error and "LEAN_SERVER_API_KEY" in bad.error
    assert missing.status == "server_error" and "Missing API key" in missing.error


REAL_SHAPES = [
    # docs/PROTOCOL.md: #check Nat
    ({"id": "x", "time": 0.01,
      "response": {"messages": [{"severity": "info", "pos": {"line": 1, "column": 0},
      "endPos": {"line": 1, "column": 6}, "data": "Nat : Type"}], "env": 0}}, "valid"),
    ({"id": "x", "time": 3.0, "error": "Lean REPL command timed out in 3.0 seconds",
      "diagnostics": {"repl_uuid": "abc"}}, "timeout"),
    ({"id": "x", "time": 0.2, "error": "Snippet execution failed: JSON decode error"},
     "server_error"),
    ({"id": "x", "time": 0.5,
      "response": {"messages": [{"severity": "warning", "pos": {"line": 3, "column": 8},
      "endPos": {"line": 3, "column": 9}, "data": "declaration uses 'sorry'"}],
      "sorries": [{"pos": {"line": 3, "column": 30}, "endPos": {"line": 3, "column": 35},
                   "goal": "⊢ 1 = 1"}],
      "env": 0}}, "sorry"),
    ({"id": "x", "time": 0.5,
      "response": {"messages": [{"severity": "warning", "pos": {"line": 3, "column": 8},
      "endPos": {"line": 3, "column": 9}, "data": "declaration uses 'sorry'"}], "env": 0}},
     "sorry"),
    ({"id": "x", "time": 0.5, "response": {"messages": [
        {"severity": "warning", "pos": {"line": 3, "column": 8}, "endPos": None,
         "data": "declaration uses 'sorry'"},
        {"severity": "error", "pos": {"line": 4, "column": 2}, "endPos": {"line": 4, "column": 8},
         "data": "linarith failed to find a contradiction"}], "env": 0}}, "lean_error"),
    ({"id": "x", "time": 0.5, "response": {"message": "unknown environment."}}, "server_error"),
    ({"id": "x", "time": 0.5}, "server_error"),
]


@pytest.mark.parametrize("result,status", REAL_SHAPES)
def test_parse_real_response_shapes(result, status):
    v = parse_result("x", "a\nb\nc\nd\ne", result)
    assert v.status == status
    assert v.ok == (status == "valid")
    assert v.raw == result


def test_order_ids_dedup_and_batching(make_standin):
    url, _ = make_standin(workers=4)
    props = [("2 + 2 = 4", "rfl", "valid"), ("2 + 2 = 5", "rfl", "lean_error"),
             ("3 ≠ 4", "decide", "valid"), ("3 < 4", "omega", "valid"),
             ("3 ∣ 9", "norm_num", "valid"),
             ("3 ∣ 10", "norm_num", "lean_error"), ("7 = 7", "sorry", "sorry"),
             ("3 < 4", "rfl", "lean_error")]
    items, expected = [], []
    for rep in range(5):  # every proof five times: four of them are duplicates
        for i, (prop, tac, status) in enumerate(props):
            item = toy(f"t{i}", prop, tac)
            item["id"] = f"item{rep}_{i}"
            items.append(item)
            expected.append(status)
    client = fast_client(url, batch_size=3)
    verdicts = client.verify(items)
    assert [v.id for v in verdicts] == [it["id"] for it in items]
    # the sorry item is rejected by the gate before sending; the others reach the server
    assert [v.status for v in verdicts] == [("rejected" if s == "sorry" else s) for s in expected]
    stats = requests.get(url + "/_standin/stats").json()
    assert stats["snippets"] == 7                    # 7 unique codes, each sent once
    assert stats["requests"] == 3 and stats["max_batch"] == 3   # ceil(7 / 3) batches
    assert client.stats["dedup_hits"] == 7 * 4


def test_sorry_reported_like_lean(standin):
    item = toy("s", "7 = 7", "sorry")
    [v] = fast_client(standin).verify([{"id": "s", "code": item["code"]}])  # no statement: no gate
    assert v.status == "sorry" and not v.ok
    assert v.sorries and v.sorries[0]["goal"] == "⊢ 7 = 7"
    assert any(m.text == "declaration uses 'sorry'" and m.severity == "warning" for m in v.messages)


def test_statement_outside_toy_fragment_is_an_error_never_a_pass(standin):
    code = HEADER + "theorem real (a : ℝ) (h : 0 < a) : 0 < a ^ 2 := by\n  positivity"
    [v] = fast_client(standin).verify([{"id": "r", "code": code}])
    assert v.status == "lean_error" and "outside the toy fragment" in v.errors[0].text


# ---------------------------------------------------------------- faults

@pytest.mark.parametrize("fault", ["500", "429", "malformed", "drop"])
def test_retries_recover_from_each_fault(make_standin, fault):
    url, _ = make_standin()
    requests.post(url + "/_standin/faults", json={"next": [fault, fault]})
    client = fast_client(url, batch_size=4)
    items = [toy(f"t{i}", f"{i} + 1 = {i + 1}", "rfl") for i in range(8)]
    verdicts = client.verify(items)
    assert all(v.ok for v in verdicts), [v.error for v in verdicts]
    assert client.stats["retries"] == 2
    assert requests.get(url + "/_standin/stats").json()["faults"] == {fault: 2}


def test_crashing_snippet_is_isolated_by_splitting(make_standin):
    url, _ = make_standin()
    items = [toy(f"t{i}", f"{i} + 1 = {i + 1}", "rfl") for i in range(8)]
    items[5] = {"id": "crash", "code": items[5]["code"] + "\n-- STANDIN_CRASH"}
    client = fast_client(url, batch_size=8, max_retries=1)
    verdicts = client.verify(items)
    assert [v.status for v in verdicts] == ["valid"] * 5 + ["server_error"] + ["valid"] * 2
    assert "HTTP 500" in verdicts[5].error
    assert client.stats["splits"] >= 3   # 8 -> 4 -> 2 -> 1


def test_lean_timeout_and_persistent_500_are_error_verdicts(make_standin):
    url, _ = make_standin()
    timeout_item = {"id": "slow", "code": toy("a", "1 = 1", "rfl")["code"] + "\n-- STANDIN_TIMEOUT"}
    [v] = fast_client(url).verify([timeout_item], timeout=3)
    assert v.status == "timeout" and "timed out in 3.0 seconds" in v.error
    requests.post(url + "/_standin/faults", json={"rates": {"500": 1.0}})
    vs = fast_client(url, max_retries=2).verify([toy(f"t{i}", "1 = 1", "rfl") for i in range(3)])
    assert all(v.status == "server_error" and not v.ok for v in vs)


def test_server_disappearing_mid_run_costs_error_verdicts(make_standin):
    url, proc = make_standin()
    client = fast_client(url, max_retries=2)
    assert client.verify([toy("a", "1 = 1", "rfl")])[0].ok
    proc.stop()
    t0 = time.time()
    vs = client.verify([toy(f"b{i}", "2 = 2", "rfl") for i in range(10)])
    assert all(v.status == "server_error" for v in vs)
    assert "connection failed" in vs[0].error
    assert time.time() - t0 < 10   # refused connections are not split, so this stays quick


def test_http_timeout_is_an_error_verdict(make_standin, monkeypatch):
    monkeypatch.setenv("STANDIN_HANG_S", "3")
    url, _ = make_standin()
    requests.post(url + "/_standin/faults", json={"next": ["hang"] * 3})
    [v] = fast_client(url, http_timeout=0.5, max_retries=2).verify([toy("a", "1 = 1", "rfl")])
    assert v.status == "server_error" and "no answer" in v.error


def test_several_servers_share_the_load(make_standin):
    url1, _ = make_standin()
    url2, _ = make_standin()
    client = fast_client(f"{url1},{url2}", batch_size=2)
    vs = client.verify([toy(f"t{i}", f"{i} = {i}", "rfl") for i in range(12)])
    assert all(v.ok for v in vs)
    n1 = requests.get(url1 + "/_standin/stats").json()["snippets"]
    n2 = requests.get(url2 + "/_standin/stats").json()["snippets"]
    assert n1 + n2 == 12 and n1 > 0 and n2 > 0


def test_failover_to_the_live_server(make_standin):
    url1, _ = make_standin()
    dead = "http://127.0.0.1:9"   # discard port: nothing listens
    vs = fast_client(f"{dead},{url1}", batch_size=1).verify(
        [toy(f"t{i}", f"{i} = {i}", "rfl") for i in range(4)])
    assert all(v.ok for v in vs)


# ---------------------------------------------------------------- cache and health

def test_persistent_cache_survives_a_restart(make_standin, tmp_path):
    url, _ = make_standin()
    items = [toy(f"t{i}", f"{i} + 1 = {i + 1}", "rfl") for i in range(6)]
    items.append({"id": "to", "code": items[0]["code"] + "\n-- STANDIN_TIMEOUT"})
    c1 = fast_client(url, cache_path=tmp_path / "verdicts.sqlite")
    first = c1.verify(items, timeout=2)
    c1.close()
    c2 = fast_client(url, cache_path=tmp_path / "verdicts.sqlite")   # a new process would do this
    second = c2.verify(items, timeout=2)
    assert [v.status for v in first] == [v.status for v in second] == ["valid"] * 6 + ["timeout"]
    assert c2.stats["cache_hits"] == 6          # the timeout is not cached: it is retried
    assert all(v.cached for v in second[:6]) and not second[6].cached
    assert requests.get(url + "/_standin/stats").json()["snippets"] == 8


def test_cache_is_keyed_by_server_identity(make_standin, recorder, tmp_path):
    url, _ = make_standin()
    db = tmp_path / "v.sqlite"
    item = toy("a", "1 = 2", "rfl")
    assert fast_client(url, cache_path=db).verify([item])[0].status == "lean_error"
    recorder.replies = [(200,
                         {"results": [{"id": "0", "time": 0.1,
                                       "response": {"messages": [], "env": 0}}]})]
    # same code, a server that does not call itself a stand-in: must be asked, not answered from cache
    v = fast_client(recorder.url, cache_path=db).verify([item])[0]
    assert len(recorder.requests) == 1 and not v.cached


def test_require_healthy_names_docker_and_variables():
    client = LeanClient("http://127.0.0.1:9")
    with pytest.raises(LeanServerUnavailable) as err:
        client.require_healthy()
    assert "docker run" in str(err.value) and "LEAN_SERVER_API_URL" in str(err.value)


def test_url_from_environment(monkeypatch, standin):
    monkeypatch.setenv("LEAN_SERVER_API_URL", standin)
    assert LeanClient().verify([toy("a", "5 = 5", "rfl")])[0].ok
    monkeypatch.delenv("LEAN_SERVER_API_URL")
    with pytest.raises(LeanServerUnavailable):
        LeanClient()


def test_legacy_verify_endpoint(standin):
    client = fast_client(standin, endpoint="verify")
    vs = client.verify([toy("a", "5 = 5", "rfl"), toy("b", "5 = 6", "rfl")])
    assert [v.status for v in vs] == ["valid", "lean_error"]


def test_server_validation_errors(standin):
    r = requests.post(standin + "/api/check", json={"snippets": [{"id": "a", "code": "x"},
                                                                  {"id": "a", "code": "y"}]})
    assert r.status_code == 422
    assert requests.post(standin + "/api/check", json={"snippets": []}).status_code == 422


# ---------------------------------------------------------------- soundness gate

STMT = "theorem mathd_algebra_10 : abs ((120 : ℝ) / 100 * 30 - 130 / 100 * 20) = 10 := by"
OK_PROOF = f"{HEADER}{STMT}\n  norm_num [abs_of_nonneg]"
RED_TEAM = {
    "sorry": f"{HEADER}{STMT}\n  sorry",
    "admit": f"{HEADER}{STMT}\n  admit",
    "axiom": f"{HEADER}axiom cheat : False\n\n{STMT}\n  exact cheat.elim",
    "private axiom": f"{HEADER}private axiom cheat : False\n{STMT}\n  exact cheat.elim",
    "changed statement": f"{HEADER}{STMT.replace('= 10', '≥ 0')}\n  positivity",
    "statement only in a comment": f"{HEADER}/- {STMT} -/\ntheorem other : True := by\n  trivial",
    "statement only in a string": f'{HEADER}def s := " {STMT}"\ntheorem '
            f'other : True := by\n  trivial',
    "apply?": f"{HEADER}{STMT}\n  apply?",
    "exact?": f"{HEADER}{STMT}\n  exact?",
    "#exit": f"{HEADER}{STMT}\n  norm_num\n#exit",
    "local_instance": f"{HEADER}{STMT}\n  have := local_instance\n  norm_num",
    "implemented_by": f"{HEADER}@[implemented_by foo] def bar : Nat := 1\n{STMT}\n  norm_num",
    "extern": f'{HEADER}@[extern "lean_cheat"] def bar : Nat := 1\n{STMT}\n  norm_num',
    "skip kernel": f"{HEADER}set_option debug.skipKernelTC true in\n{STMT}\n  norm_num",
    "other option": f"{HEADER}set_option trace.Meta.synthInstance true\n{STMT}\n  norm_num",
    "redefinition": f"{HEADER}theorem mathd_algebra_10 : True := trivial\n{STMT}\n  norm_num",
    "def with the name": f"{HEADER}def mathd_algebra_10 := 1\n{STMT}\n  norm_num",
    "macro": f"{HEADER}macro \"norm_num\" : tactic => `(tactic| simp)\n{STMT}\n  norm_num",
    "macro_rules": f"{HEADER}macro_rules | `(tactic| trivial) => `(tactic| "
            f"simp)\n{STMT}\n  trivial",
    "notation": f"{HEADER}local notation \"ℝ\" => ℕ\n{STMT}\n  norm_num",
    "namespace": f"{HEADER}namespace Foo\n{STMT}\n  norm_num\nend Foo",
    "run_cmd": f"{HEADER}run_cmd Lean.Elab.Command.liftTermElabM (pure ())\n{STMT}\n  norm_num",
    "#eval": f"{HEADER}#eval IO.println 1\n{STMT}\n  norm_num",
    "unsafe": f"{HEADER}unsafe def f : Nat := 1\n{STMT}\n  norm_num",
    "instance": f"{HEADER}instance : Inhabited False := ⟨sorry⟩\n{STMT}\n  norm_num",
    "opaque": f"{HEADER}opaque cheat : False\n{STMT}\n  exact cheat.elim",
    "statement inside another term": f"{HEADER}example := fun _ => {STMT}\n  norm_num",
    "decreasing_by sorry": f"{HEADER}{STMT}\n  norm_num\n  decreasing_by sorry",
}
# Second round (issue #18): the theorem's text kept verbatim, its meaning changed by what the file
# declares before it. Each entry names the class it stands for.
MEANING_RED_TEAM = {
    "variable + include": f"{HEADER}variable (h : False)\ninclude h\n{STMT}\n  exact h.elim",
    "indented variable": f"{HEADER}  variable (h : False)\n  include h\n{STMT}\n  exact h.elim",
    "omit": f"{HEADER}omit [Fact True] in\n{STMT}\n  norm_num",
    "local instance": f"{HEADER}local instance : Inhabited ℝ := ⟨0⟩\n{STMT}\n  norm_num",
    "scoped instance": f"{HEADER}scoped instance : Inhabited ℝ := ⟨0⟩\n{STMT}\n  norm_num",
    "attribute [instance]": f"{HEADER}def i : Inhabited ℝ := ⟨0⟩\nattribute "
                    f"[instance] i\n{STMT}\n  norm_num",
    "attribute [local instance]": f"{HEADER}def i : Inhabited ℝ := ⟨0⟩\nattribute [local "
                    f"instance] i\n{STMT}\n  norm_num",
    "attribute removal": f"{HEADER}attribute [-instance] Real.instLE\n{STMT}\n  norm_num",
    "@[instance] def": f"{HEADER}@[instance] def i : Inhabited ℝ := ⟨0⟩\n{STMT}\n  norm_num",
    "@[default_instance]": f"{HEADER}@[default_instance] def i : Inhabited ℝ "
                    f":= ⟨0⟩\n{STMT}\n  norm_num",
    "@[csimp]": f"{HEADER}@[csimp] theorem c : @id = @id := rfl\n{STMT}\n  norm_num",
    "notation3": f'{HEADER}notation3 "abs" => id\n{STMT}\n  norm_num',
    "infixl": f'{HEADER}infixl:65 " * " => HAdd.hAdd\n{STMT}\n  norm_num',
    "binder_predicate": f"{HEADER}binder_predicate x \" > \" y:term => `($x "
                    f"< $y)\n{STMT}\n  norm_num",
    "open ... in on the theorem": f"{HEADER}open Nat in\n{STMT}\n  norm_num",
    "open ... in through set_option ... in": f"{HEADER}open Nat in\nset_option maxHeartbeats "
                    f"400000 in\n{STMT}\n  norm_num",
    "open ... in on one line": f"{HEADER}open Nat in {STMT}\n  norm_num",
    "run_tac": f"{HEADER}{STMT}\n  run_tac do (← getMainGoal).assign (← mkFreshExprMVar none)",
    "open after a declaration": f"{HEADER}theorem helper : True := "
                    f"trivial\nopen Nat\n{STMT}\n  norm_num",
    "open a namespace the file fills": f"{HEADER}open Foo\ndef Foo.ten : ℝ "
                    f":= 10\n{STMT}\n  norm_num",
    "open renaming": f"{HEADER}open Nat renaming sqrt → abs\n{STMT}\n  norm_num",
    "open hiding": f"{HEADER}open Real hiding pi\n{STMT}\n  norm_num",
    "open with explicit names": f"{HEADER}open Nat (sqrt)\n{STMT}\n  norm_num",
    "helper reusing a statement name": f"{HEADER}def abs (x : ℝ) : ℝ := 10\n{STMT}\n  norm_num",
    "export": f"{HEADER}export Nat (sqrt)\n{STMT}\n  norm_num",
    "noncomputable section": f"{HEADER}noncomputable section\n{STMT}\n  norm_num\nend",
    "mutual": f"{HEADER}mutual\ntheorem a : True := trivial\nend\n{STMT}\n  norm_num",
    "unseal": f"{HEADER}unseal Nat.add in\n{STMT}\n  norm_num",
    "autoImplicit": f"{HEADER}set_option autoImplicit true\n{STMT}\n  norm_num",
    "set_option ... in on the theorem": f"{HEADER}set_option pp.proofs true in\n{STMT}\n  norm_num",
    "simproc": f"{HEADER}simproc s (abs _) := fun _ => pure .continue\n{STMT}\n  norm_num",
    "initialize": f"{HEADER}initialize pure ()\n{STMT}\n  norm_num",
    "literal sorryAx": f"{HEADER}{STMT}\n  exact sorryAx _ false",
    "qualified sorryAx": f"{HEADER}{STMT}\n  exact (Lean.sorryAx _ false)",
    "lcProof": f"{HEADER}{STMT}\n  exact lcProof",
}


def test_gate_accepts_a_fair_proof():
    assert soundness_gate(OK_PROOF, STMT) is None
    assert soundness_gate(OK_PROOF + "\n-- sorry in a comment is fine", STMT) is None
    assert soundness_gate(OK_PROOF, STMT.replace(":= by", ":= by sorry")) is None


@pytest.mark.parametrize("name", sorted(RED_TEAM) + sorted(MEANING_RED_TEAM))
def test_gate_rejects_every_cheat(name):
    reason = soundness_gate({**RED_TEAM, **MEANING_RED_TEAM}[name], STMT)
    assert reason, f"cheat {name!r} passed the gate"


def test_gate_reasons_name_the_command():
    assert "variable" in soundness_gate(MEANING_RED_TEAM["variable + include"], STMT)
    assert "instance" in soundness_gate(MEANING_RED_TEAM["attribute [instance]"], STMT)
    assert "@[csimp]" in soundness_gate(MEANING_RED_TEAM["@[csimp]"], STMT)
    assert "open ... in" in soundness_gate(MEANING_RED_TEAM["open ... in on the theorem"], STMT)
    assert "declares into (Foo)" in soundness_gate(MEANING_RED_TEAM["open a namespace the file fills"], STMT)
    assert "omit" in soundness_gate(MEANING_RED_TEAM["omit"], STMT)


def test_gate_allows_helpers_and_header_opens():
    helper = "theorem h_aux : (2 : ℝ) = 1 + 1 := by norm_num\n"
    assert soundness_gate(f"{HEADER}{helper}{STMT}\n  norm_num", STMT) is None
    assert soundness_gate(f"{HEADER}open Finset in\n@[simp] {helper}{STMT}\n  norm_num",
                          STMT) is None
    assert soundness_gate(f"{HEADER}{STMT}\n  set_option maxRecDepth 4000 in\n  norm_num",
                          STMT) is None
    # with the dataset's header known, the file may open nothing the header does not
    assert soundness_gate(OK_PROOF, STMT, header=HEADER) is None
    extra = OK_PROOF.replace("open BigOperators", "open Finset BigOperators")
    assert soundness_gate(extra, STMT) is None
    assert "Finset" in soundness_gate(extra, STMT, header=HEADER)


def test_native_decide_accepted_by_default_and_refusable():
    code = f"{HEADER}theorem t : 2 ^ 10 = 1024 := by\n  native_decide"
    assert soundness_gate(code, "theorem t : 2 ^ 10 = 1024 := by") is None
    assert "native_decide" in soundness_gate(code, "theorem t : 2 ^ 10 = 1024 := by",
                                             reject_native_decide=True)
    # Kimina's own verified proofs use it: 11 of the 197 (they pass above)
    assert sum("native_decide" in r["correct_proof"] for r in _kimina_real_proofs()) == 11


def test_gate_rejects_before_sending(standin):
    client = fast_client(standin)
    before = requests.get(standin + "/_standin/stats").json()["snippets"]
    vs = client.verify([{"id": k, "code": c, "statement": STMT} for k, c in RED_TEAM.items()])
    assert all(v.status == "rejected" and v.error for v in vs)
    assert requests.get(standin + "/_standin/stats").json()["snippets"] == before


def _kimina_real_proofs():
    with zipfile.ZipFile(KIMINA_ZIP) as zf:
        name = next(n for n in zf.namelist() if n.endswith("minif2f-test-solved.jsonl"))
        return [json.loads(line) for line in zf.read(name).decode().splitlines() if line.strip()]


def test_gate_accepts_all_197_real_verified_proofs():
    import re
    rows = _kimina_real_proofs()
    assert len(rows) == 197
    dataset = {json.loads(l)["name"]: json.loads(l)["formal_statement"]
               for l in (ROOT / "data/minif2f/deepseek_v15_minif2f.jsonl").read_text().splitlines()}
    checked_against_dataset = 0
    for row in rows:
        code = row["correct_proof"]
        # the statement each proof was checked against: the declaration as it stands in the file
        stmt = re.search(r"theorem\s.*?:=\s*by", code, re.S).group(0)
        assert soundness_gate(code, stmt) is None, row["name"]
        if dataset.get(row["name"], "").strip() in code:
            assert soundness_gate(code, dataset[row["name"]]) is None, row["name"]
            checked_against_dataset += 1
    assert checked_against_dataset == 190   # 7 proofs target Kimina's corrected statements


def test_gate_accepts_the_67_human_minif2f_valid_proofs():
    # DeepSeek-Prover-V1.5's few-shot file: statement and human proof, checked under its header
    header = ("import Mathlib\nimport Aesop\n\nset_option maxHeartbeats 400000\n\n"
              "open BigOperators Real Nat Topology Rat\n\n")
    rows = [json.loads(l)
            for l in (ROOT / "data/proofs/deepseek_v15_minif2f_valid_few_shot.jsonl").open()]
    assert len(rows) == 67
    for r in rows:
        code = header + r["formal_statement"] + r["formal_proof"]
        assert soundness_gate(code, r["formal_statement"], header=header) is None, r["name"]


def test_gate_accepts_the_28_kimina_72b_proofs():
    # whole files with helper lemmas, `open ... in` on helpers, their own headers
    import re
    with zipfile.ZipFile(ROOT / "data/proofs/kimina_72b_minif2f_test_solved_filtered_0710.zip") as zf:
        files = [n for n in zf.namelist() if "/src/" in n and n.endswith(".lean")]
        assert len(files) == 28
        for n in files:
            code, name = zf.read(n).decode(), n.rsplit("/", 1)[1][:-5]
            stmt = re.search(rf"(?m)^theorem {re.escape(name)}\b.*?:=\s*by", code, re.S).group(0)
            assert soundness_gate(code, stmt) is None, name


def test_axiom_check_reports_native_decide(recorder):
    stmt = "theorem t : 2 ^ 10 = 1024 := by"
    code = f"{HEADER}{stmt}\n  native_decide"
    reply = (200, {"results": [{"id": "0", "time": 0.1, "response": {"env": 0, "messages": [
        {"severity": "info", "pos": {"line": 9, "column": 0}, "endPos": None,
         "data": "'t' depends on axioms: [propext, Lean.ofReduceBool]"}]}}]})
    recorder.replies = [reply]
    [v] = fast_client(recorder.url,
                      check_axioms=True).verify([{"id": "t", "code": code, "statement": stmt}])
    assert v.ok and v.axioms == ["propext", "Lean.ofReduceBool"] and v.code == code
    recorder.replies = [reply]
    strict = fast_client(recorder.url, check_axioms=True, reject_native_decide=True)
    # refused by the gate before sending; a proof that hides it from the gate fails the axiom check
    assert strict.verify([{"id": "t", "code": code, "statement": stmt}])[0].status == "rejected"
    [v] = strict.verify([{"id": "t", "code": code.replace("native_decide", "exact my_lemma"),
                          "statement": stmt}])
    assert v.status == "rejected" and "Lean.ofReduceBool" in v.error


def test_axiom_check(recorder):
    stmt = "theorem t : 1 = 1 := by"
    code = f"{HEADER}{stmt}\n  rfl"

    def reply(axioms):
        text = f"'t' depends on axioms: [{axioms}]" if axioms else "'t' does not depend on any axioms"
        return (200, {"results": [{"id": "0", "time": 0.1, "response": {"env": 0, "messages": [
            {"severity": "info", "pos": {"line": 9, "column": 0}, "endPos": None,
             "data": text}]}}]})

    client = fast_client(recorder.url, check_axioms=True)
    for axioms, ok in [("propext, Classical.choice, Quot.sound", True), ("", True),
                       ("propext, cheat", False), ("sorryAx", False)]:
        recorder.replies = [reply(axioms)]
        [v] = client.verify([{"id": "t", "code": code + axioms.replace(",", "")[:0],
                              "statement": stmt}])
        assert v.ok == ok, axioms
        if not ok:
            assert v.status == "rejected" and "uses axioms" in v.error
    sent = recorder.requests[-1]["body"]["snippets"][0]["code"]
    assert "\n\n#print axioms t\n\n#print \"lean_client checked " in sent


def test_axiom_check_against_stand_in(standin):
    client = fast_client(standin, check_axioms=True)
    assert client.verify([toy("t", "3 ∣ 9", "norm_num")])[0].ok
    # no statement, no gate, no appended check: the stand-in itself reports the axiom used
    code = f"{HEADER}axiom cheat : 1 = 2\ntheorem t : 1 = 2 := by\n  exact cheat\n#print axioms t"
    [v] = client.verify([{"id": "x", "code": code}])
    assert v.ok and v.messages[0].text == "'t' depends on axioms: [cheat]"


# ---------------------------------------------------------------- feedback

def _failed(url, line_base_client="snippet"):
    code = f"{HEADER}theorem t : 2 + 2 = 5 := by\n  rfl"
    client = fast_client(url, line_numbering=line_base_client)
    return client.verify([{"id": "f", "code": code}])[0]


def test_kimina_feedback_marks_the_offending_line(standin):
    v = _failed(standin)
    fb = lean_feedback(v, "kimina")
    # code lines after the two imports: 005 is the blank line before the theorem, 007 the tactic
    assert fb.startswith("# Error 1:\nError message: \nThe rfl tactic failed")
    assert fb.endswith("Lean 4 code snippet with error:\n```lean4\n005  | \n006  | "
                       "theorem t : 2 + 2 = 5 := by\n"
                       "007 >|   rfl\n```\n")


# A response in the Kimina Lean Server's shape (docs/PROTOCOL.md) with an infotree, as the
# REPL returns one when asked ("infotree": "original"); positions count from the whole snippet.
INFOTREE_CODE = "import Mathlib\n\ntheorem t (x : ℕ) (h : x = 2) : x + x = 5 := by\n  subst h\n  norm_num"
INFOTREE_RESULT = {"id": "0", "time": 0.4, "response": {"env": 0, "messages": [
    {"severity": "error", "pos": {"line": 5, "column": 2}, "endPos": {"line": 5, "column": 10},
     "data": "unsolved goals\n⊢ False\n"},
    {"severity": "warning", "pos": {"line": 3, "column": 8}, "endPos": {"line": 3, "column": 9},
     "data": "unused"}],
    "infotree": [{"node": {"stx": {"range": {"start": {"line": 3, "column": 0},
                                             "finish": {"line": 5, "column": 10}}},
                           "goalsBefore": [], "goalsAfter": []},
                  "children": [{"node": {"stx": {"range": {"start": {"line": 4, "column": 2},
                                                           "finish": {"line": 4, "column": 9}}},
                                         "goalsBefore": ["x : ℕ\nh : x = 2\n⊢ x + x = 5"],
                                         "goalsAfter": ["⊢ 2 + 2 = 5"]},
                                "children": []},
                               {"node": {"stx": {"range": {"start": {"line": 5, "column": 2},
                                                           "finish": {"line": 5, "column": 10}}},
                                         "goalsBefore": ["⊢ 2 + 2 = 5"], "goalsAfter": []},
                                "children": []}]}]}}


def test_kimina_feedback_is_byte_identical_to_the_recipe():
    # layout of kimina-prover-rl recipe/kimina_prover_rl/kimina_prover_rl/reward/error_fixing.py
    # (format_error_output / create_tool_message), written out by hand for this response
    v = parse_result("0", INFOTREE_CODE, INFOTREE_RESULT)
    assert lean_feedback(v, "kimina") == (
        "# Error 1:\n"
        "Goals state before error position: \n⊢ 2 + 2 = 5\n\n"
        "Error message: \nunsolved goals\n⊢ False\n\n"
        "Lean 4 code snippet with error:\n```lean4\n"
        "002  | theorem t (x : ℕ) (h : x = 2) : x + x = 5 := by\n"
        "003  |   subst h\n"
        "004 >|   norm_num\n"
        "```\n")
    # the same without an infotree: no goal state line
    plain = parse_result("0", INFOTREE_CODE, {**INFOTREE_RESULT, "response": {
        k: w for k, w in INFOTREE_RESULT["response"].items() if k != "infotree"}})
    assert lean_feedback(plain,
                         "kimina").startswith("# Error 1:\nError message: "
                                              "\nunsolved goals\n⊢ False\n\n")
    # a top-level error only (a timeout): the System Error block
    t = parse_result("0", INFOTREE_CODE,
                     {"id": "0", "error": "Lean REPL command timed out in 60.0 seconds"})
    assert lean_feedback(t,
                         "kimina") == "# System Error:\nError message: \nLean REPL command timed out in 60.0 seconds\n\n"
    # only a sorry warning: no errors, no top-level error -> empty feedback, no second turn
    s = parse_result("0", INFOTREE_CODE, {"id": "0", "response": {"env": 0, "messages": [
        {"severity": "warning", "pos": {"line": 3, "column": 8}, "endPos": None,
         "data": "declaration uses 'sorry'"}],
        "sorries": [{"pos": {"line": 5, "column": 2}, "goal": "⊢ False"}]}})
    assert s.status == "sorry" and lean_feedback(s, "kimina") == ""


def test_goedel_feedback_is_byte_identical_to_its_utils():
    # Goedel-Prover-V2 2e9036e: the expected bytes are its own functions' output, run on this
    # attempt: src/utils.py DeepSeekCoTHandler.problem_check (replace_statement_in_proof) on
    # "import Mathlib\n\ntheorem t ... := by sorry" and the answer holding INFOTREE_CODE,
    # src/compile.py handle() (the import line dropped), then get_error_str(error_thres=True)
    # with the error on the `norm_num` line. The failed attempt was round 1.
    v = parse_result("0", INFOTREE_CODE, INFOTREE_RESULT)
    assert lean_feedback(v, "goedel", round_idx=1) == (
        "The proof (Round 0) is not correct. Following is the compilation "
        "error message, where we use "
        "<error></error> to signal the position of the error.\n\n"
        "\nError 1:\n\nCorresponding Code:\n```lean4\n"
        "\ntheorem t (x : ℕ) (h : x = 2) : x + x = 5 := by \n  subst h\n"
        "  <error>norm_num</error>\n"
        "\n```\n\nError Message: unsolved goals\n⊢ False\n\n"
        "\n\nBefore producing the Lean 4 code to formally prove the given "
        "theorem, provide a detailed "
        "analysis of the error message.")


def test_feedback_line_arithmetic_old_and_new_servers(make_standin, standin):
    old_url, _ = make_standin(line_base="after_imports")
    new = _failed(standin)
    old = _failed(old_url, line_base_client="after_imports")
    raw_old_line = old.raw["response"]["messages"][0]["pos"]["line"]
    assert raw_old_line == new.errors[0].line - 2          # two import lines cut off
    assert old.errors[0].line == new.errors[0].line        # normalised by the client
    assert lean_feedback(old, "kimina") == lean_feedback(new, "kimina")
    assert lean_feedback(old, "goedel") == lean_feedback(new, "goedel")


def test_line_numbering_is_probed_not_assumed(make_standin):
    for base in ("snippet", "after_imports"):
        url, _ = make_standin(line_base=base)
        client = fast_client(url, line_numbering="snippet")
        assert client.probe_line_numbering() == base and client.line_numbering == base
        v = client.verify([{"id": "f", "code": f"{HEADER}theorem t : 2 + 2 = 5 := by\n  rfl"}])[0]
        assert v.errors[0].line == 9                        # the tactic's line in the whole snippet


def test_infotree_is_requested_when_asked(recorder):
    recorder.replies = [(200, {"results": [INFOTREE_RESULT]})]
    fast_client(recorder.url, infotree="original").verify([{"id": "0", "code": INFOTREE_CODE}])
    assert recorder.requests[-1]["body"]["infotree"] == "original"


def test_feedback_caps_error_counts():
    code = "\n".join(f"line {i}" for i in range(1, 21))
    msgs = [{"severity": "error", "pos": {"line": i, "column": 0},
             "endPos": {"line": i, "column": 4},
             "data": f"err{i}"} for i in range(1, 11)]
    v = parse_result("x", code, {"time": 0, "response": {"messages": msgs, "env": 0}})
    assert lean_feedback(v, "kimina").count("# Error") == 3
    assert lean_feedback(v, "goedel").count("</error>") - 1 == 8   # the header names the tags once
    assert "[Omitted 2 more errors]" in lean_feedback(v, "goedel")
    with pytest.raises(ValueError):
        lean_feedback(v, "other")


# ---------------------------------------------------------------- degenerate replies (issue #34)

DEGENERATE = [{"response": {}}, {"response": {"messages": None}}, {"time": 0.2, "response": {}},
              {"response": {"messages": [], "sorries": []}}, {"response": {"time": 0.1}}]


@pytest.mark.parametrize("reply", DEGENERATE)
def test_a_degenerate_reply_is_a_server_error_never_a_pass_nor_cached(recorder, tmp_path, reply):
    """A REPL answers a clean proof with `{}` when the server keeps no environment (gc), so an
    empty answer alone cannot be told from a broken server; the client's closing `#print` can:
    a real REPL prints it, these replies do not."""
    recorder.print_marks = False
    recorder.replies = [(200, {"results": [{"id": "0", **reply}]})]
    stmt = "theorem t : 1 = 1 := by"
    code = f"{HEADER}{stmt}\n  rfl"
    client = fast_client(recorder.url, cache_path=tmp_path / "v.sqlite", server_identity="fake")
    [v] = client.verify([{"id": "t", "code": code, "statement": stmt}])
    assert v.status == "server_error" and not v.ok and "closing #print" in v.error
    # nothing was cached: the same code asks the server again once it answers properly
    recorder.print_marks = True
    recorder.replies = [(200, {"results": [{"id": "0", "time": 0.1, "response": {}}]})]
    [again] = client.verify([{"id": "t", "code": code, "statement": stmt}])
    assert not again.cached and again.status == "valid" and again.messages == []
    assert len(recorder.requests) == 2


def test_the_mark_never_reaches_feedback_or_a_lean_error(recorder, standin):
    # a real answer with an error needs no mark (a comment left open can swallow it); the
    # mark's message, when printed, is not among the verdict's messages nor in its raw result
    recorder.print_marks = False
    recorder.replies = [(200, {"results": [{"id": "0", "time": 0.1, "response": {"messages": [
        {"severity": "error", "pos": {"line": 9, "column": 2}, "endPos": None,
         "data": "unsolved goals"}]}}]})]
    [v] = fast_client(recorder.url).verify([toy("t", "1 = 1", "omega")])
    assert v.status == "lean_error" and [m.text for m in v.messages] == ["unsolved goals"]
    [ok] = fast_client(standin).verify([toy("t", "1 = 1", "rfl")])
    assert ok.status == "valid" and ok.messages == []
    assert "lean_client checked" not in json.dumps(ok.raw) and "lean_client" not in ok.code


def test_a_hung_server_costs_a_bounded_time(tmp_path):
    """Issue #34: a server that accepts and never answers held one batch of 8 for about 11 hours
    (a wait of timeout x batch + 60 s, split on timeouts, 5 attempts). Now a batch ends with
    error verdicts by `max_batch_seconds` whatever the server does."""
    import socket
    import threading
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(64)
    held, stop = [], threading.Event()

    def accept_and_hold():   # read nothing, answer nothing: the connection just hangs
        srv.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(srv.accept()[0])
            except OSError:
                pass
    threading.Thread(target=accept_and_hold, daemon=True).start()
    try:
        client = LeanClient(f"http://127.0.0.1:{srv.getsockname()[1]}", timeout=1, batch_size=8,
                            max_retries=4, backoff=0.05, http_timeout=1.0, max_batch_seconds=3.0)
        t0 = time.monotonic()
        verdicts = client.verify([toy(f"t{i}", "1 = 1", "rfl") for i in range(8)])
        took = time.monotonic() - t0
    finally:
        stop.set()
        for c in held:
            c.close()
        srv.close()
    assert {v.status for v in verdicts} == {"server_error"}
    assert "no answer within" in verdicts[0].error and took < 5.0, took
    assert client.stats["splits"] == 0                  # no halving of a batch nobody answers
    # the default bound: two full waits of the batch's HTTP timeout
    assert LeanClient("http://x", timeout=60, batch_size=8).max_batch_seconds == 2 * (60 * 8 + 60)
