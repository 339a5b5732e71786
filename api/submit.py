"""The Idempotency-Key of `POST /runs`: which keys are valid, and the digest of the normalised
request body a key is bound to. The submit transaction that honours them (the key's look-up,
the in-flight cap, the insert) is `store.submits` (`shared/store/submits.py`)."""

from __future__ import annotations

import hashlib
import re
from typing import Any

import orjson

IDEMPOTENCY_KEY_RE = re.compile(r"[\x21-\x7e]{1,255}")  # whole keys only: fullmatch


def body_hash(normalised: dict[str, Any]) -> bytes:
    return hashlib.sha256(orjson.dumps(normalised, option=orjson.OPT_SORT_KEYS)).digest()
