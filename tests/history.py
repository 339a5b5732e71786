"""The chaos history checker: fault tests record what happened (submits, claims per attempt,
the final event log, terminal status) and one checker asserts longrun's invariants over all of
it: one terminal event per run and it is last, seq gapless, ids equal to seqs, attempts claimed
once each and in increasing order, no older attempt writing after a newer one began, and ticker
tokens exactly 1..count."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.helpers import Got


@dataclass
class History:
    submits: dict[str, dict[str, Any]] = field(default_factory=dict)
    claims: list[tuple[str, int, str]] = field(default_factory=list)  # run, attempt, worker
    events: dict[str, list[Got]] = field(default_factory=dict)
    statuses: dict[str, str] = field(default_factory=dict)

    def submitted(self, run_id: str, **params: Any) -> None:
        self.submits[run_id] = params

    def read_worker_logs(self, paths: list[Path]) -> None:
        for path in paths:
            for line in path.read_text(errors="replace").splitlines():
                if not line.startswith("{"):
                    continue
                rec = json.loads(line)
                if rec.get("event") == "run_claimed":
                    self.claims.append((rec["run_id"], int(rec["attempt"]), rec["worker"]))


def check(h: History) -> dict[str, int]:
    """Assert the invariants; returns a few totals for the test's report."""
    problems: list[str] = []
    resumes = 0
    for run_id, params in h.submits.items():
        events = h.events.get(run_id, [])
        seqs = [e.data["seq"] for e in events]
        if seqs != list(range(1, len(events) + 1)):
            problems.append(f"{run_id}: seq not gapless: {seqs}")
        if [e.id for e in events] != [str(s) for s in seqs]:
            problems.append(f"{run_id}: ids differ from seqs")
        terminals = [e for e in events if e.event in ("done", "error", "cancelled")]
        if len(terminals) != 1 or events[-1] is not terminals[0]:
            problems.append(f"{run_id}: terminal events {[t.event for t in terminals]}")
        if h.statuses.get(run_id) != params.get("expect", "succeeded"):
            problems.append(f"{run_id}: status {h.statuses.get(run_id)}")
        attempts_in_log = [e.data["attempt"] for e in events if e.event == "resumed"]
        resumes += len(attempts_in_log)
        if attempts_in_log != sorted(set(attempts_in_log)):
            problems.append(f"{run_id}: attempts interleaved in the log: {attempts_in_log}")
        if "count" in params:
            tokens = [e.data["text"] for e in events if e.event == "token"]
            if tokens != [str(i) for i in range(1, params["count"] + 1)]:
                problems.append(f"{run_id}: tokens {tokens}")
    seen: dict[tuple[str, int], str] = {}
    for run_id, attempt, worker in h.claims:
        if (run_id, attempt) in seen:
            problems.append(f"{run_id}: attempt {attempt} claimed twice")
        seen[(run_id, attempt)] = worker
    assert not problems, "\n".join(problems[:20])
    return {"runs": len(h.submits), "claims": len(h.claims), "resumes": resumes}
