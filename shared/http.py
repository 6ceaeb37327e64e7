"""Outgoing HTTP for the workers: one client per process, timeouts on every request, and the
one place where httpx's exceptions become ours.

A worker keeps its client (and so its pooled connections) across jobs. `send` translates:
a timeout, a connection error, a 5xx or a 429 is `ProviderUnavailable` (RQ retries the job,
after `Retry-After` when the provider gives one); every other answer is returned as is,
for the provider module to judge.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Iterable
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any

import httpcore
import httpx

from shared.errors import ProviderUnavailable

USER_AGENT = "payhooks/0.1 (+https://github.com/payhooks/payhooks)"
TIMEOUT = httpx.Timeout(connect=3.0, read=10.0, write=10.0, pool=5.0)


def make_client(transport: httpx.BaseTransport | None = None) -> httpx.Client:
    """A client with our timeouts and user agent; `transport` is the test seam."""
    return httpx.Client(
        timeout=TIMEOUT,
        headers={"User-Agent": USER_AGENT},
        follow_redirects=False,
        transport=transport,
        limits=httpx.Limits(max_connections=20, max_keepalive_connections=10),
    )


REFUSED = "refused"


class PrivateAddressRefused(httpcore.ConnectError):
    """A hook's host resolved to an address that is not public."""


class _PublicOnlyBackend(httpcore.SyncBackend):
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
    """The client for merchant hooks: no redirects, a total timeout, and (unless allowed)
    no connection to private, loopback or link-local addresses."""
    if transport is None:
        guarded = httpx.HTTPTransport(limits=httpx.Limits(max_connections=50,
                                                          max_keepalive_connections=20))
        if not allow_private_networks:
            # httpx has no hook for the connection step: give its pool our backend.
            pool = guarded._pool
            assert isinstance(pool, httpcore.ConnectionPool)
            pool._network_backend = _PublicOnlyBackend()
        transport = guarded
    return httpx.Client(
        timeout=httpx.Timeout(timeout, connect=min(timeout, 5.0)),
        headers={"User-Agent": USER_AGENT}, follow_redirects=False, transport=transport,
    )


def send(client: httpx.Client, method: str, url: str, what: str, **kwargs: Any) -> httpx.Response:
    """Send a follow-up request; ProviderUnavailable when the provider cannot answer now."""
    try:
        response = client.request(method, url, **kwargs)
    except httpx.TimeoutException:
        raise ProviderUnavailable(f"{what}: timed out") from None
    except httpx.HTTPError as exc:
        raise ProviderUnavailable(f"{what}: {exc.__class__.__name__}") from None
    if response.status_code == 429 or response.status_code >= 500:
        raise ProviderUnavailable(
            f"{what}: HTTP {response.status_code}", retry_after=_retry_after(response)
        )
    return response


def _retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("Retry-After")
    if value is None:
        return None
    if value.strip().isdigit():
        return float(value)
    try:
        moment = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, (moment - datetime.now(UTC)).total_seconds())
