"""What every grouped write of an attempt shares: the fence it takes on each run's row, the
events it archives under that fence, and the split of a batch into rounds where a run appears
once (so that each round is one statement with one outcome per run)."""

from __future__ import annotations

import uuid
from collections.abc import Sequence

from shared.models import Event


def fenced_events(fence_columns: str, events_param: int) -> str:
    """The CTEs `fence` and `archived` of a statement over a `req` relation (run_id, attempt,
        first_seq): `fence` locks each run's row through its primary key, only where the run is
        `running` under the request's attempt and its log ends right before the request's first
        event; `archived` inserts the events (four arrays from `$events_param`: run ids, seqs,
        types, data) of the runs fenced, each row carrying its run's `created_at` (the partition key
    of `run_events`, migration 0012). `(status = 'running') IS TRUE` is not an index condition,
        so the planner cannot scan `runs_active` for every running run instead (it did when the
        statistics said few runs were running: each batch then walked all of them, and the dead
        index entries every claim leaves behind)."""
    p = events_param
    return f"""fence AS (
        SELECT {fence_columns}, runs.created_at AS run_created_at FROM runs JOIN req
          ON runs.run_id = req.run_id AND runs.attempt = req.attempt
        WHERE (runs.status = 'running') IS TRUE AND runs.last_seq = req.first_seq - 1
        ORDER BY runs.run_id
        FOR UPDATE OF runs
    ), archived AS (
        INSERT INTO run_events (run_id, run_created_at, seq, type, data)
        SELECT e.run_id, fence.run_created_at, e.seq, e.type, e.data
        FROM unnest(${p}::uuid[], ${p + 1}::int[], ${p + 2}::text[], ${p + 3}::bytea[])
            AS e(run_id, seq, type, data)
        JOIN fence ON fence.run_id = e.run_id
    )"""


def rounds(keys: Sequence[str]) -> list[list[int]]:
    """Split item indexes into rounds where no key repeats; a repeated key goes to a later
    round, so each round can be one statement with one outcome per row."""
    out: list[list[int]] = []
    seen: list[set[str]] = []
    for i, key in enumerate(keys):
        for r, keys_of_round in enumerate(seen):
            if key not in keys_of_round:
                keys_of_round.add(key)
                out[r].append(i)
                break
        else:
            seen.append({key})
            out.append([i])
    return out


def event_arrays(
    run_ids: Sequence[uuid.UUID], events: Sequence[Sequence[Event]]
) -> list[list[uuid.UUID] | list[int] | list[str] | list[bytes]]:
    """The four arrays `fenced_events` archives: each run's events, flattened in order."""
    ev_runs: list[uuid.UUID] = []
    ev_seqs: list[int] = []
    ev_types: list[str] = []
    ev_data: list[bytes] = []
    for rid, evs in zip(run_ids, events, strict=True):
        for e in evs:
            ev_runs.append(rid)
            ev_seqs.append(e.seq)
            ev_types.append(e.type)
            ev_data.append(e.data)
    return [ev_runs, ev_seqs, ev_types, ev_data]
