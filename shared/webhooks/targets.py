"""Where a webhook may go: server-side request forgery is refused at both ends. A URL is checked
when a run or a key names it (`parse`, then `resolve`), and resolved and checked again before
every attempt, whose connection then goes to an address that passed (`Target.pinned`): a name
that resolved to a public address at submit and to an internal one later (DNS rebinding) is
refused, not followed.

Refused: anything but an absolute http(s) URL with a host (no user-info, no fragment, at most
`MAX_URL_CHARS`); a host with any address that is loopback, private, link-local, multicast,
reserved, unspecified or otherwise not global, or that does not resolve. Plain http only to an
allowed host. `LONGRUN_WEBHOOK_ALLOW_HOSTS` allows names (exactly), addresses and networks
(CIDR) that would otherwise be refused: for tests and private deployments.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from dataclasses import dataclass
from functools import cache
from urllib.parse import urlsplit

from shared.errors import InvalidWebhook

MAX_URL_CHARS = 2048
RESOLVE_TIMEOUT_SECONDS = 2.0

IP = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network

NOT_PUBLIC = "the webhook's host is loopback, private, link-local or otherwise not a public address"


@dataclass(frozen=True)
class Target:
    url: str
    scheme: str
    host: str  # lower-case; an IPv6 literal without its brackets
    port: int
    path: str  # path and query, as sent in the request line

    @property
    def host_header(self) -> str:
        name = f"[{self.host}]" if ":" in self.host else self.host
        default = 443 if self.scheme == "https" else 80
        return name if self.port == default else f"{name}:{self.port}"

    def pinned(self, ip: str) -> str:
        """The URL of this target with its host replaced by the address that passed the check
        (the request then carries `host_header`, and TLS the name: see `worker.webhooks`)."""
        name = f"[{ip}]" if ":" in ip else ip
        return f"{self.scheme}://{name}:{self.port}{self.path}"


@dataclass(frozen=True)
class Allowance:
    names: frozenset[str]
    networks: tuple[Network, ...]

    def admits_name(self, host: str) -> bool:
        return host in self.names

    def admits_ip(self, ip: IP) -> bool:
        return any(ip.version == n.version and ip in n for n in self.networks)


@cache
def allowance(entries: tuple[str, ...]) -> Allowance:
    names: set[str] = set()
    networks: list[Network] = []
    for raw in entries:
        entry = raw.strip().lower()
        try:
            networks.append(ipaddress.ip_network(entry, strict=False))
        except ValueError:
            names.add(entry.rstrip("."))
    return Allowance(frozenset(names), tuple(networks))


def literal_ip(host: str) -> IP | None:
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        return None


def public(ip: IP) -> bool:
    """Whether an address is one the open internet routes to (an IPv4-mapped IPv6 address is
    judged as the IPv4 address it carries)."""
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_global and not (
        ip.is_multicast
        or ip.is_reserved
        or ip.is_unspecified
        or ip.is_loopback
        or ip.is_link_local
        or ip.is_private
    )


def parse(raw: str, allow: tuple[str, ...]) -> Target:
    """The target a URL names, or InvalidWebhook (no I/O: `resolve` checks the addresses)."""
    if len(raw) > MAX_URL_CHARS:
        raise InvalidWebhook(f"webhook: at most {MAX_URL_CHARS} characters")
    if any(c.isspace() or ord(c) < 0x20 or ord(c) == 0x7F for c in raw) or not raw.isascii():
        raise InvalidWebhook("webhook: an absolute URL without spaces or control characters")
    try:
        parts = urlsplit(raw)
        port = parts.port
    except ValueError:
        raise InvalidWebhook("webhook: not a valid URL") from None
    host = (parts.hostname or "").rstrip(".")
    if parts.scheme not in ("http", "https") or not host:
        raise InvalidWebhook("webhook: an absolute http(s) URL, like https://example.com/hook")
    if parts.username is not None or parts.password is not None:
        raise InvalidWebhook("webhook: no credentials in the URL (the signature authenticates)")
    if parts.fragment:
        raise InvalidWebhook("webhook: no fragment (#...)")
    allowed = allowance(allow)
    ip = literal_ip(host)
    if parts.scheme == "http" and not (
        allowed.admits_name(host) or (ip is not None and allowed.admits_ip(ip))
    ):
        raise InvalidWebhook("webhook: https is required")
    path = parts.path or "/"
    if parts.query:
        path = f"{path}?{parts.query}"
    default = 443 if parts.scheme == "https" else 80
    return Target(raw, parts.scheme, host, port or default, path)


async def resolve(target: Target, allow: tuple[str, ...]) -> list[str]:
    """The addresses to connect to, each checked, IPv4 first (a host without IPv6 routes is
    common); InvalidWebhook when the host does not resolve or any of its addresses is not
    public (and not allowed)."""
    allowed = allowance(allow)
    ip = literal_ip(target.host)
    if ip is not None:
        ips = [ip]
    else:
        try:
            infos = await asyncio.wait_for(
                asyncio.get_running_loop().getaddrinfo(
                    target.host, target.port, type=socket.SOCK_STREAM
                ),
                RESOLVE_TIMEOUT_SECONDS,
            )
        except (OSError, TimeoutError):
            raise InvalidWebhook("webhook: the host does not resolve") from None
        found = {ipaddress.ip_address(str(info[4][0]).split("%", 1)[0]) for info in infos}
        ips = sorted(found, key=lambda i: (i.version, int(i)))
        if not ips:
            raise InvalidWebhook("webhook: the host does not resolve")
    if allowed.admits_name(target.host):
        return [str(i) for i in ips]
    if not all(public(i) or allowed.admits_ip(i) for i in ips):
        raise InvalidWebhook(NOT_PUBLIC)
    return [str(i) for i in ips]


async def checked(raw: str, allow: tuple[str, ...]) -> Target:
    """`parse`, then `resolve`: a target that may be stored."""
    target = parse(raw, allow)
    await resolve(target, allow)
    return target
