"""Redis replies become values here: stream entries become `Event`s and `QueueEntry`s, bytes
become text. Nothing outside `shared.redis` sees a raw reply."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from shared.models import Event


@dataclass(frozen=True)
class QueueEntry:
    """A delivered queue entry. `entry_id` is qualified by its shard (`<stream id>` on shard
    0, `<stream id>@<shard>` on the others: two shards can mint the same stream id), so it
    names one delivery across the whole queue; `shared.redis` alone splits it again."""

    entry_id: str
    run_id: str
    handoffs: int = 0
    user_id: str = ""
    priority: str = "normal"
    shard: int = 0

    @property
    def stream_id(self) -> str:
        return split_entry_id(self.entry_id)[1]


def qualify_entry_id(stream_id: str, shard: int) -> str:
    return stream_id if shard == 0 else f"{stream_id}@{shard}"


def split_entry_id(entry_id: str) -> tuple[int, str]:
    """(shard, stream id) of a qualified entry id."""
    raw, _, shard = entry_id.partition("@")
    return (int(shard) if shard.isdigit() else 0), raw


def text(value: bytes | str | None) -> str:
    if value is None:
        return ""
    return value.decode() if isinstance(value, bytes) else value


def text_map(fields: Mapping[Any, Any] | None) -> dict[str, str]:
    """A hash or stream entry's fields as text."""
    return {text(k): text(v) for k, v in (fields or {}).items()}


def parse_queue_entry(
    entry_id: bytes | str, fields: Mapping[bytes, bytes] | None, shard: int = 0
) -> QueueEntry:
    """A queue stream entry; `run_id` is '' for a deleted entry (XAUTOCLAIM/XPENDING nil)."""
    fields = fields or {}
    raw_handoffs = fields.get(b"handoffs", b"0")
    return QueueEntry(
        entry_id=qualify_entry_id(text(entry_id), shard),
        run_id=text(fields.get(b"run", b"")),
        handoffs=int(raw_handoffs) if raw_handoffs.isdigit() else 0,
        user_id=text(fields.get(b"user", b"")),
        priority=text(fields.get(b"prio", b"normal")) or "normal",
        shard=shard,
    )


def pairs_to_map(flat: Sequence[Any]) -> dict[bytes, bytes]:
    """A Lua reply's flat field list [k1, v1, k2, v2 ...] as a mapping."""
    return {flat[i]: flat[i + 1] for i in range(0, len(flat) - 1, 2)}


def parse_stream_events(entries: Sequence[tuple[bytes, dict[bytes, bytes]]]) -> list[Event]:
    out = []
    for entry_id, fields in entries:
        seq = int(text(entry_id).split("-", 1)[1])
        out.append(Event(seq=seq, type=text(fields[b"t"]), data=fields[b"d"]))
    return out


def raise_first_error(replies: Sequence[Any]) -> None:
    """A pipeline's replies with `raise_on_error=False`: raise the first error among them, so
    that no caller ever reads an error instance as a value."""
    for reply in replies:
        if isinstance(reply, BaseException):
            raise reply
