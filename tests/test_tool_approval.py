"""The `chat` agent's tool approval (issue 16): a call of a tool that needs approval waits for
a person, who approves it, rejects it (the model reads why) or edits its arguments."""

from __future__ import annotations

from typing import Any

import pytest

from shared.llm.approval import Verdict, rejection_text, verdict_of
from tests.helpers import read_events, submit, wait_status

pytestmark = pytest.mark.timeout(60)

PARAMS = {"tools": ["calculator"], "require_approval": ["calculator"]}


@pytest.mark.parametrize(
    ("value", "verdict"),
    [
        (True, Verdict(True)),
        ("approve", Verdict(True)),
        ({"approve": True}, Verdict(True)),
        ({"args": {"expression": "1+1"}}, Verdict(True, args={"expression": "1+1"})),
        ({"approve": True, "args": {"x": 1}}, Verdict(True, args={"x": 1})),
        (False, Verdict(False)),
        ("reject", Verdict(False)),
        ({"approve": False, "reason": "too risky"}, Verdict(False, reason="too risky")),
        ({"approve": True, "args": "not an object"}, Verdict(False, reason=pytest.approx)),
        (1, Verdict(False, reason="the answer was not an approval")),
        (None, Verdict(False, reason="the answer was not an approval")),
    ],
)
def test_an_answer_reads_as_approve_edit_or_reject_and_anything_else_runs_nothing(
    value: Any, verdict: Verdict
) -> None:
    got = verdict_of(value)
    if verdict.reason is pytest.approx:
        assert not got.approved
    else:
        assert got == verdict
    if not got.approved:
        assert rejection_text(got).startswith("The user rejected this tool call")


async def _asked(client) -> tuple[str, dict[str, Any]]:
    rid = await submit(client, agent="chat", input="what is 6*7", params=PARAMS)
    run = await wait_status(client, rid, "waiting")
    return rid, run["interrupt"]


@pytest.mark.parametrize(
    ("value", "ok", "said"),
    [
        (True, True, "6*7 = 42"),
        ({"args": {"expression": "6*8"}}, True, "6*8 = 48"),
        ({"approve": False, "reason": "not today"}, False, "Reason: not today"),
    ],
)
async def test_a_tool_call_needing_approval_waits_then_runs_as_the_person_said(
    client, worker, value, ok, said
):
    # Given a chat run whose calculator calls need approval
    rid, asked = await _asked(client)
    payload = asked["payload"]
    assert payload["kind"] == "tool_approval"
    assert payload["tool"] == "calculator"
    assert payload["args"] == {"expression": "6*7"}
    # When the person answers
    resp = await client.post(
        f"/runs/{rid}/resume", json={"interrupt_id": asked["interrupt_id"], "value": value}
    )
    assert resp.status_code == 202
    # Then the call runs (or not) as they said, announced once, and the model reads the result
    done = await wait_status(client, rid, "succeeded")
    _, events = await read_events(client, rid)
    starts = [e for e in events if e.event == "tool_start"]
    ends = [e for e in events if e.event == "tool_end"]
    assert len(starts) == len(ends) == 1
    assert ends[0].data["ok"] is ok
    assert said in ends[0].data["preview"]
    assert said in done["output"]
    seqs = [e.data["seq"] for e in events]
    assert seqs == list(range(1, len(events) + 1))
    kinds = [e.event for e in events]
    assert kinds.index("interrupt") < kinds.index("resumed") < kinds.index("tool_start")
    assert kinds.count("usage") == 2  # the model turn before the wait is not played again
