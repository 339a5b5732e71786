"""Public links: where the `url` and `events_url` of an answer point. One function builds their
start for every answer (the FastAPI routes and the submit lane alike), and never from what a
client may write alone: a `Host` header reflected into a link (with the stream token of its
`events_url`) would send that token wherever the client, or anyone between it and us, says.

- `LONGRUN_PUBLIC_URL` set: every link starts with it (`https://api.example.com/runs/...`).
- else, `LONGRUN_TRUSTED_HOSTS` set and the request's `Host` one of them (`api.example.com`,
  `api.example.com:8443`, or `*.example.com` for any subdomain): the request's scheme and host.
- else: the address the connection arrived at, the server's own socket (`http://127.0.0.1:8000`
  under `longrun dev`): right for a client that reaches the API directly, never chosen by the
  client, and wrong behind a proxy or a port mapping, which is where `LONGRUN_PUBLIC_URL` is
  needed. (Links relative to the API's root when that address is unknown: a Unix socket.)
"""

from __future__ import annotations

import re
from functools import lru_cache
from urllib.parse import urlsplit

from starlette.types import Scope

from shared.config import Settings

# A host name or IP literal and an optional port: nothing that could end the authority of a URL.
_HOST = re.compile(r"(?:[a-z0-9-]+(?:\.[a-z0-9-]+)*\.?|\[[0-9a-f:.]+\])(?::[0-9]{1,5})?")


def host_trusted(host: str, trusted: tuple[str, ...]) -> bool:
    """Whether `host` (a Host header: name, optional port) is one of `trusted` (lower-case
    names, with or without port; `*.domain` for any subdomain of `domain`)."""
    host = host.lower()
    if not _HOST.fullmatch(host):
        return False
    name = host.rsplit(":", 1)[0] if not host.endswith("]") else host
    for entry in trusted:
        if entry in (host, name):
            return True
        if entry.startswith("*.") and name.endswith(entry[1:]):
            return True
    return False


def public_base(scope: Scope, settings: Settings) -> str:
    """The start of every public link of this request's answer, without a trailing slash."""
    if settings.public_url is not None:
        return settings.public_url
    root = str(scope.get("root_path", "")).rstrip("/")
    scheme = scope.get("scheme", "http")
    if settings.trusted_hosts:
        raw = next((v for k, v in scope.get("headers", ()) if k == b"host"), None)
        if raw is not None:
            host = raw.decode("latin-1")
            if host_trusted(host, settings.trusted_hosts):
                return f"{scheme}://{host}{root}"
    server = scope.get("server")
    if not server or server[1] is None:
        return root
    name, port = server
    name = f"[{name}]" if ":" in name else name
    return f"{scheme}://{name}:{port}{root}"


def run_url(base: str, run_id: str) -> str:
    return f"{base}/runs/{run_id}"


def location(url: str) -> str:
    """A `Location` for a public link: its path alone (a reference relative to the origin the
    client called), as `Location` always was. The base is split once per distinct base (there
    are a handful per process), not once per answer."""
    base, sep, rest = url.rpartition("/runs/")
    if not sep:
        return urlsplit(url).path
    return _path_of(base) + sep + rest


@lru_cache(maxsize=64)
def _path_of(base: str) -> str:
    return urlsplit(base).path
