"""Outgoing HTTP for the workers: one client per process, timeouts on every request, and the
one place where httpx's exceptions become ours.

A worker keeps its client (and so its pooled connections) across jobs. `send` translates:
a timeout, a connection error, a 5xx or a 429 is `ProviderUnavailable` (RQ retries the job,
after `Retry-After` when the provider gives one); every other answer is returned as is,
for the provider module to judge.
"""

from __future__ import annotations

from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any

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
