"""Redis replies become values here: stream entries become `Event`s and `QueueEntry`s, bytes
become text. Nothing outside `shared.redis` sees a raw reply."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from shared.models import Event


@dataclass(frozen=True)
class QueueEntry:
    entry_id: str
    run_id: str
    handoffs: int = 0


def text(value: bytes | str | None) -> str:
    if value is None:
        return ""
    return value.decode() if isinstance(value, bytes) else value


def text_map(fields: Mapping[Any, Any] | None) -> dict[str, str]:
    """A hash or stream entry's fields as text."""
    return {text(k): text(v) for k, v in (fields or {}).items()}


def parse_queue_entry(entry_id: bytes | str, fields: dict[bytes, bytes] | None) -> QueueEntry:
    """A queue stream entry; `run_id` is '' for a deleted entry (XAUTOCLAIM/XPENDING nil)."""
    fields = fields or {}
    raw_handoffs = fields.get(b"handoffs", b"0")
    return QueueEntry(
        entry_id=text(entry_id),
        run_id=text(fields.get(b"run", b"")),
        handoffs=int(raw_handoffs) if raw_handoffs.isdigit() else 0,
    )


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
