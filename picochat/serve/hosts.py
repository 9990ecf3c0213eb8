"""Which Host names and Origins the server answers: the defence against DNS rebinding and
cross-site requests from web pages the user visits.

A server on 127.0.0.1 is not private to its user: any web page open in the user's browser can
send requests to it. Two tricks matter, and each has a check here:

- **DNS rebinding.** evil.example first resolves to the attacker's server, then to 127.0.0.1; the
  page's scripts are now "same-origin" with this server and can read its answers. The browser
  still sends `Host: evil.example:8000`, so answering only the host names this server is reached
  by (400 host_not_allowed otherwise) stops it.
- **Cross-site writes.** A page on another origin can send a POST without reading the answer
  (a form, or fetch in "no-cors" mode), e.g. to write rankings into the preference file. Browsers
  send an `Origin` header with it; a write whose Origin is not this server's is refused (403).
  Clients that are not browsers (curl, the openai package) send no Origin and are not affected.

Ports are not compared: a page served from another port of an allowed host is trusted like the
server's own (it runs on the same machine, or behind the same proxy).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from urllib.parse import urlsplit

from picochat.serve.errors import APIError

LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")
WILDCARD_ADDRESSES = ("0.0.0.0", "::", "")  # binding these listens on every interface
ANY_HOST = "*"
WRITE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})


def host_name(netloc: str) -> str:
    """'Example.COM:8000' -> 'example.com', '[::1]:8000' -> '::1': the name without port, as compared."""
    netloc = netloc.strip().lower()
    if netloc.startswith("["):  # an IPv6 address, with or without a port after the bracket
        end = netloc.find("]")
        return netloc[1:end] if end > 0 else ""
    if netloc.count(":") == 1:  # name:port (a bare IPv6 address has several colons)
        netloc = netloc.split(":")[0]
    return netloc.rstrip(".")


@dataclass(frozen=True)
class HostPolicy:
    """The host names requests may be addressed to; ANY_HOST in `names` accepts every name."""

    names: frozenset[str] = frozenset(LOOPBACK_NAMES)

    @property
    def any_host(self) -> bool:
        return ANY_HOST in self.names

    def allows_host(self, host_header: str) -> bool:
        name = host_name(host_header)
        return bool(name) and (self.any_host or name in self.names)

    def allows_origin(self, origin: str, host_header: str) -> bool:
        """Whether a browser page of `origin` may write. With any host allowed, the page must come
        from the host the request was sent to (rebinding makes those equal too: the API key, which
        `host_policy` requires then, is what keeps other sites out)."""
        try:
            parts = urlsplit(origin)
            name = (parts.hostname or "").rstrip(".")
        except ValueError:  # a malformed Origin, e.g. 'http://[::1'
            return False
        if parts.scheme not in ("http", "https") or not name:
            return False  # includes "null": sandboxed frames and file:// pages
        return name == host_name(host_header) if self.any_host else name in self.names


def host_policy(bind_host: str, allowed_hosts: Iterable[str], api_key_set: bool) -> HostPolicy:
    """The policy of `picochat serve --host BIND --allowed-hosts NAMES`.

    Always the loopback names, plus the bound address, plus `allowed_hosts` ('*': any). Bound to
    every interface (0.0.0.0 or ::) the server cannot know the names clients use: without
    --allowed-hosts it accepts any name if an API key is required, and refuses to start otherwise
    (any web page any user on the network opens could use it)."""
    extra = {ANY_HOST if h.strip() == ANY_HOST else host_name(h) for h in allowed_hosts if h.strip()}
    names = set(LOOPBACK_NAMES) | extra
    if bind_host.strip("[]") in WILDCARD_ADDRESSES:
        if not extra:
            if not api_key_set:
                raise ValueError(
                    f"binding {bind_host or 'every interface'} without an API key would let any web page opened "
                    "on your network use this server. Set an API key (PICOCHAT_API_KEY), or name the host names "
                    "clients reach this machine by with --allowed-hosts (e.g. --allowed-hosts "
                    "192.168.1.20,mybox.lan; '*' accepts any)")
            names.add(ANY_HOST)
    else:
        names.add(host_name(bind_host))
    return HostPolicy(frozenset(names))


class HostGuard:
    """ASGI middleware, outermost: 400 for a Host this server does not answer to, 403 for a browser
    write (POST, PUT, PATCH, DELETE with an Origin header) from another origin."""

    def __init__(self, app, policy: HostPolicy):
        self.app, self.policy = app, policy

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = {k.lower(): v.decode("latin-1") for k, v in scope.get("headers") or []}
        host = headers.get(b"host", "")
        if not self.policy.allows_host(host):
            allowed = ", ".join(sorted(self.policy.names))
            return await APIError(
                400, f"this server does not answer to the host name in 'Host: {host}' (it answers to {allowed}). "
                "If clients reach it by that name, e.g. through a reverse proxy, start it with "
                "--allowed-hosts NAME", code="host_not_allowed").send(send)
        origin = headers.get(b"origin")
        if scope["method"] in WRITE_METHODS and origin is not None and not self.policy.allows_origin(origin, host):
            return await APIError(
                403, f"a page from {origin} may not send requests to this server (cross-site request). Open "
                "the page from this server itself, or start the server with --allowed-hosts naming the page's "
                "host", code="origin_not_allowed").send(send)
        await self.app(scope, receive, send)
