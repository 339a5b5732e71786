"""The three-way checker on its own (no servers): a whole log passes, and each failure issue 14
describes is named. A checker that cannot fail proves nothing."""

from __future__ import annotations

import json
from typing import Any

from tests.chaos.followers import Received
from tests.chaos.truth import Ev, Evidence, Expect, check_run, ranges

RUN = "00000000-0000-0000-0000-000000000001"


def ev(seq: int, type_: str, **body: Any) -> Ev:
    return Ev(seq, type_, json.dumps({"seq": seq, "type": type_, **body}).encode())


def ticker_log(count: int = 3) -> list[Ev]:
    out = [ev(1, "start", agent="ticker")]
    out += [ev(i + 2, "token", text=str(i + 1)) for i in range(count)]
    out.append(ev(count + 2, "done", output={"count": count}))
    return out


def seen(events: list[Ev]) -> list[Received]:
    return [Received(str(e.seq), e.type, e.data.decode(), float(e.seq)) for e in events]


def evidence(archive: list[Ev], **changes: Any) -> Evidence:
    base: dict[str, Any] = {
        "followed": seen(archive),
        "follower_ended": True,
        "redis": list(archive),
        "archive": archive,
        "replay": list(archive),
        "replay_problem": None,
        "status": "succeeded",
        "attempt": 1,
        "claims": [1],
    }
    base.update(changes)
    return Evidence(**base)


TICKER = Expect("ticker", count=3)


def test_a_whole_log_seen_alike_by_client_redis_and_archive_passes() -> None:
    assert check_run(RUN, TICKER, evidence(ticker_log())) == []


def test_a_hole_in_the_archive_is_named_with_the_events_only_redis_and_the_client_have() -> None:
    log = ticker_log()
    problems = check_run(RUN, TICKER, evidence([log[0], *log[3:]], redis=log, followed=seen(log)))
    text = "\n".join(problems)
    assert "archive: seqs not gapless 1..N: 1,4..5" in text
    assert "redis has seqs 2..3 that the archive lacks" in text
    assert "follower has seqs 2..3 that the archive lacks" in text


def test_a_seq_the_client_saw_with_other_content_is_named() -> None:
    log = ticker_log()
    reused = [log[0], ev(2, "resumed", attempt=2), *log[2:]]
    problems = check_run(RUN, TICKER, evidence(reused, followed=seen(log), claims=[1, 2]))
    assert any("follower and the archive differ at seqs 2" in p for p in problems)


def test_a_second_ending_in_redis_and_a_second_execution_are_named() -> None:
    log = ticker_log()
    again = [*log, ev(6, "resumed", attempt=2), ev(7, "done", output={"count": 3})]
    problems = check_run(
        RUN, TICKER, evidence(log, redis=again, attempt=2, claims=[1, 2]), max_attempts=1
    )
    text = "\n".join(problems)
    assert "redis: 2 terminal events (seqs [5, 7])" in text
    assert "executed 2 times" in text


def test_tokens_of_an_older_attempt_after_a_newer_one_began_are_stitching() -> None:
    log = [
        ev(1, "start", agent="attempt_chat"),
        ev(2, "token", text="a1.aaaaaa.s1.w01"),
        ev(3, "resumed", attempt=2),
        ev(4, "token", text=" a1.aaaaaa.s1.w02"),
        ev(5, "done", output="x"),
    ]
    problems = check_run(RUN, Expect("attempt_chat", tagged=True), evidence(log, claims=[1, 2]))
    assert any("seq 4 is attempt 1's token inside attempt 2" in p for p in problems)


def test_a_replay_that_hangs_and_a_follower_that_never_ended_are_named() -> None:
    log = ticker_log()
    problems = check_run(
        RUN,
        TICKER,
        evidence(
            log,
            replay=[],
            replay_problem="replay hung",
            followed=seen(log[:2]),
            follower_ended=False,
        ),
    )
    text = "\n".join(problems)
    assert "replay hung" in text
    assert "follower never got the terminal event" in text


def test_redis_that_lost_data_may_hold_a_tail_of_the_log_or_nothing() -> None:
    log = ticker_log()
    assert check_run(RUN, TICKER, evidence(log, redis=log[2:]), redis_complete=False) == []
    assert check_run(RUN, TICKER, evidence(log, redis=[]), redis_complete=False) == []
    assert check_run(RUN, TICKER, evidence(log, redis=log[2:])) != []


def test_ranges_reads_as_runs_of_seqs() -> None:
    assert ranges([1, 2, 3, 5, 7, 8]) == "1..3,5,7..8"
    assert ranges([]) == "none"
