"""Outgoing HTTP for the workers: one client per process, timeouts on every request, and the
one place where httpx's exceptions become ours.

A worker keeps its client (and so its pooled connections) across jobs. `send` translates:
a timeout, a connection error, a 5xx or a 429 is `ProviderUnavailable` (RQ retries the job,
after `Retry-After` when the provider gives one); every other answer is returned as is,
for the provider module to judge.

Deadlines. httpx's timeouts bound each read, so a server that sends a byte a second holds a
request forever. Within `deadline(seconds)`, every connect, TLS handshake, write and read
of the request waits at most until the deadline, whatever the server does: the network
backend of our clients (`_DeadlineBackend`) gives each socket operation the time that is
left, and none once it is spent (an httpx timeout). `send` runs each follow-up request under
`PROVIDER_DEADLINE` and reads at most `PROVIDER_ANSWER_LIMIT` bytes of its answer; a
delivery attempt runs under `[delivery] timeout` (workers/delivery.py).
"""

from __future__ import annotations

import contextlib
import ipaddress
import socket
import ssl
import time
from collections.abc import Iterable, Iterator
from contextvars import ContextVar
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any

import httpcore
import httpx

from shared.errors import ProviderUnavailable

USER_AGENT = "payhooks/0.1 (+https://github.com/payhooks/payhooks)"
TIMEOUT = httpx.Timeout(connect=3.0, read=10.0, write=10.0, pool=5.0)
PROVIDER_DEADLINE = 15.0  # a whole follow-up request, connect to last byte
PROVIDER_ANSWER_LIMIT = 4 * 1024 * 1024  # bytes of a follow-up answer, decoded

_DEADLINE: ContextVar[float | None] = ContextVar("payhooks_http_deadline", default=None)


@contextlib.contextmanager
def deadline(seconds: float) -> Iterator[None]:
    """Every request made inside ends within `seconds` from now, or times out."""
    token = _DEADLINE.set(time.monotonic() + seconds)
    try:
        yield
    finally:
        _DEADLINE.reset(token)


def _left(timeout: float | None, expired: type[httpcore.TimeoutException]) -> float | None:
    """The timeout of one socket operation: the given one, cut to the deadline's rest."""
    end = _DEADLINE.get()
    if end is None:
        return timeout
    left = end - time.monotonic()
    if left <= 0:
        raise expired("the request's deadline has passed")
    return left if timeout is None else min(timeout, left)


class _DeadlineStream(httpcore.NetworkStream):
    """A connection whose every operation ends by the deadline of the request using it."""

    def __init__(self, inner: httpcore.NetworkStream) -> None:
        self._inner = inner

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return self._inner.read(max_bytes, _left(timeout, httpcore.ReadTimeout))

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self._inner.write(buffer, _left(timeout, httpcore.WriteTimeout))

    def close(self) -> None:
        self._inner.close()

    def start_tls(self, ssl_context: ssl.SSLContext, server_hostname: str | None = None,
                  timeout: float | None = None) -> httpcore.NetworkStream:
        return _DeadlineStream(self._inner.start_tls(
            ssl_context, server_hostname, _left(timeout, httpcore.ConnectTimeout)))

    def get_extra_info(self, info: str) -> Any:
        return self._inner.get_extra_info(info)


class _DeadlineBackend(httpcore.SyncBackend):
    def connect_tcp(
        self, host: str, port: int, timeout: float | None = None,
        local_address: str | None = None, socket_options: Iterable[Any] | None = None,
    ) -> httpcore.NetworkStream:
        return _DeadlineStream(super().connect_tcp(
            host, port, _left(timeout, httpcore.ConnectTimeout), local_address,
            socket_options))


def _transport(backend: httpcore.NetworkBackend, limits: httpx.Limits) -> httpx.HTTPTransport:
    transport = httpx.HTTPTransport(limits=limits)
    # httpx has no hook for the connection step: give its pool our backend.
    pool = transport._pool
    assert isinstance(pool, httpcore.ConnectionPool)
    pool._network_backend = backend
    return transport


class _NoCookies(httpx.Cookies):
    """A jar that keeps nothing. Neither a provider's API nor a hook is a browser session:
    a cookie one merchant's hook set must never go to another's on the same host. And
    httpx parses every response's cookies through the standard library's cookie jar, which
    was a twelfth of a worker's CPU per callback."""

    def extract_cookies(self, response: httpx.Response) -> None:
        pass


def _cookieless(client: httpx.Client) -> httpx.Client:
    # httpx has no switch for cookies; its `cookies` setter would copy our jar into its own
    client._cookies = _NoCookies()
    return client


def make_client(transport: httpx.BaseTransport | None = None) -> httpx.Client:
    """A client with our timeouts, deadlines and user agent, keeping no cookies;
    `transport` is the test seam."""
    # as many kept alive as may be open: a worker's threads (16 by default) each hold one
    # while they wait for a provider, and one closed after every request cost a new
    # connection per follow-up (a third more CPU a callback with the provider at 50 ms)
    limits = httpx.Limits(max_connections=32, max_keepalive_connections=32)
    return _cookieless(httpx.Client(
        timeout=TIMEOUT,
        headers={"User-Agent": USER_AGENT},
        follow_redirects=False,
        transport=transport or _transport(_DeadlineBackend(), limits),
        limits=limits,
    ))


REFUSED = "refused"


class PrivateAddressRefused(httpcore.ConnectError):
    """A hook's host resolved to an address that is not public."""


class _PublicOnlyBackend(_DeadlineBackend):
    """Resolves the host itself, refuses it if any address is not globally routable, and
    connects to the address it checked (so a second DNS answer cannot point elsewhere).
    TLS is still verified against the host name: httpcore passes it as server_hostname."""

    def connect_tcp(
        self, host: str, port: int, timeout: float | None = None,
        local_address: str | None = None, socket_options: Iterable[Any] | None = None,
    ) -> httpcore.NetworkStream:
        try:
            infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except OSError as exc:
            raise httpcore.ConnectError(f"cannot resolve {host!r}: {exc}") from None
        addresses = [ipaddress.ip_address(str(info[4][0]).split("%")[0]) for info in infos]
        refused = [a for a in addresses if not a.is_global or a.is_multicast]
        if refused or not addresses:
            raise PrivateAddressRefused(f"{REFUSED}: {host!r} resolves to a non-public address")
        return super().connect_tcp(str(addresses[0]), port, timeout, local_address,
                                   socket_options)


def make_delivery_client(timeout: float, allow_private_networks: bool,
                         transport: httpx.BaseTransport | None = None) -> httpx.Client:
    """The client for merchant hooks: no redirects, a total timeout, no cookies, and
    (unless allowed) no connection to private, loopback or link-local addresses."""
    if transport is None:
        backend = _DeadlineBackend() if allow_private_networks else _PublicOnlyBackend()
        transport = _transport(backend, httpx.Limits(max_connections=32,
                                                     max_keepalive_connections=32))
    return _cookieless(httpx.Client(
        timeout=httpx.Timeout(timeout, connect=min(timeout, 5.0)),
        headers={"User-Agent": USER_AGENT}, follow_redirects=False, transport=transport,
    ))


def send(client: httpx.Client, method: str, url: str, what: str, *,
         within: float = PROVIDER_DEADLINE, **kwargs: Any) -> httpx.Response:
    """Send a follow-up request, done `within` seconds with at most `PROVIDER_ANSWER_LIMIT`
    bytes of answer; ProviderUnavailable when the provider cannot answer now, or answers
    more than that."""
    try:
        with deadline(within), client.stream(method, url, **kwargs) as streamed:
            body = bytearray()
            for chunk in streamed.iter_bytes():
                body += chunk
                if len(body) > PROVIDER_ANSWER_LIMIT:
                    raise ProviderUnavailable(
                        f"{what}: answer over {PROVIDER_ANSWER_LIMIT // 1024 // 1024} MiB")
    except httpx.TimeoutException:
        raise ProviderUnavailable(f"{what}: timed out") from None
    except httpx.HTTPError as exc:
        raise ProviderUnavailable(f"{what}: {exc.__class__.__name__}") from None
    headers = [(k, v) for k, v in streamed.headers.multi_items()
               if k.lower() not in ("content-encoding", "content-length", "transfer-encoding")]
    response = httpx.Response(streamed.status_code, headers=headers, content=bytes(body),
                              request=streamed.request)
    if response.status_code == 429 or response.status_code >= 500:
        raise ProviderUnavailable(
            f"{what}: HTTP {response.status_code}",
            retry_after=retry_after(response.headers.get("Retry-After"))
        )
    return response


def retry_after(value: str | None) -> float | None:
    """A `Retry-After` header as seconds from now: delay-seconds or an HTTP date; None for
    anything else (`nan`, `inf`, `soon`), which is no advice."""
    if value is None:
        return None
    if value.strip().isdigit():
        return float(value)
    try:
        moment = parsedate_to_datetime(value)
    except (TypeError, ValueError, OverflowError):
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return max(0.0, (moment - datetime.now(UTC)).total_seconds())
