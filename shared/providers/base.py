"""What every payment-provider module provides. Read this before writing a provider.

In the ingress: `verify` gets an `Incoming` request, framework-neutral, with the body bytes
exactly as received, and decides without any I/O whether it is a callback from that
provider for that merchant. It returns `Accepted`: what to store on the queue (secrets
removed) and the provider's reference for the log line. It raises `Unauthorized` (401) when
a signature, key or credential does not check out and `Malformed` (400) when the request is
not what the provider sends and nothing proves that it came from the provider. Once a
signature, key or credential has checked out, content it cannot read is accepted all the
same (`proven`): the worker records it as unsupported, with the reason, to be replayed once
payhooks reads it. Verification runs on the raw bytes before anything is parsed, and
compares secrets with `hmac.compare_digest`.

In the worker: `follow_up` gets the stored `Callback` and asks the authoritative source
(the provider's API, or the verified callback where the provider makes it authoritative)
what happened, as a list of `Fact`s: every fact the source reports now, old ones included,
so that a missed or reordered callback loses nothing (recording drops the facts already
recorded). It raises `ProviderUnavailable` for answers worth retrying (including an answer
that does not list yet the transaction the callback names: providers are eventually
consistent), `ProviderRejected` for permanent ones and `UnsupportedEvent` for callbacks
that map to no event, or that a proven sender sent in a form payhooks cannot read.
"""

from __future__ import annotations

import contextlib
import hmac
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, ClassVar, Protocol

import httpx
import orjson

from shared.errors import Malformed, ProviderRejected, ProviderUnavailable
from shared.http import send
from shared.models import Callback, Fact


@dataclass(frozen=True, slots=True)
class Incoming:
    method: str
    uri: str  # the request target: path and raw query, as the provider sent it
    query: str  # the raw query string, without "?"
    headers: Mapping[str, str]  # case-insensitive
    body: bytes
    source: str


@dataclass(frozen=True, slots=True)
class Accepted:
    reference: str
    uri: str
    headers: dict[str, str]
    # Set when the provider proved it sent the callback but payhooks cannot read it: it is
    # stored and acknowledged all the same, and the worker records it as unsupported.
    unreadable: str | None = None


UNREADABLE = "unreadable"  # the reference of a proven callback whose content we cannot read


def proven(read: Callable[[], str], uri: str, headers: dict[str, str]) -> Accepted:
    """Accepted for a callback whose signature, key or credentials checked out: `read`
    gives its reference, and content it cannot read (Malformed) is no reason to refuse it.
    A 4xx would have the provider retry for days and then give up on the payment."""
    try:
        return Accepted(read(), uri, headers)
    except Malformed as exc:
        return Accepted(UNREADABLE, uri, headers, unreadable=exc.reason)


class RateLimiter(Protocol):
    def __call__(self, key: str, per_minute: int) -> None:
        """Take one request from the budget `key`; ProviderUnavailable when it is spent."""


def _unlimited() -> None:
    pass


def _anywhere(url: str) -> AbstractContextManager[None]:
    return contextlib.nullcontext()


@dataclass(frozen=True, slots=True)
class FollowUp:
    """What a provider's follow_up may use: an HTTP client and a shared rate limiter.
    Every request goes through `send`, which first takes a place among the requests in
    flight to that API (`max_follow_ups_in_flight`), then one from the merchant's budget of
    follow-up queries (`max_follow_ups_per_minute`): a callback that needs no request
    spends none of either."""

    http: httpx.Client
    limit: RateLimiter
    spend: Callable[[], None] = _unlimited  # ProviderBusy when the budget is spent
    received_at: datetime | None = None  # the callback's: how long a 404 is worth a retry
    # a place in flight at the URL's base for the request's duration; ProviderBusy if none
    occupy: Callable[[str], AbstractContextManager[None]] = _anywhere

    def send(self, method: str, url: str, what: str, **kwargs: Any) -> httpx.Response:
        """A follow-up request (shared.http.send), counted against the budget."""
        with self.occupy(url):
            self.spend()
            return send(self.http, method, url, what, **kwargs)

    def check(self, response: httpx.Response, what: str) -> None:
        """`check_status` for an answer to a request about this callback."""
        check_status(response.status_code, what, self.received_at or datetime.now(UTC))


class Provider(Protocol):
    name: ClassVar[str]  # used in the ingress route and in logs
    method: ClassVar[str]  # the HTTP method the provider calls with
    ack_body: ClassVar[str]  # the body of the 200 answer the provider expects
    @property
    def allowed_ips(self) -> Sequence[Any]:
        """Source networks allowed to send this merchant's callbacks; empty means any."""
        ...

    def verify(self, request: Incoming) -> Accepted:
        """Raise Unauthorized or Malformed unless the request is a genuine callback."""
        ...

    def follow_up(self, callback: Callback, context: FollowUp) -> list[Fact]:
        """The facts the authoritative source reports for the payment of this callback."""
        ...


# Answers that say "not now": a redirect (no provider API redirects its answers: a proxy or
# maintenance page), a timeout, a conflict with a change in progress, "too early"
_TRANSIENT = {408, 409, 425}
NOT_FOUND_GRACE = 3600.0  # a 404 this soon after the callback: the provider may lag behind


def check_status(status: int, what: str, received_at: datetime) -> None:
    """Raise unless `status` is a 2xx: ProviderUnavailable for answers worth retrying (3xx,
    408, 409, 425, and a 404 within `NOT_FOUND_GRACE` of the callback: providers call back
    as a transaction is made, and their API may not show it yet), ProviderRejected for the
    rest (401 and 403 mean our credentials). 429 and 5xx never get here (shared.http.send)."""
    if 200 <= status < 300:
        return
    if 300 <= status < 400 or status in _TRANSIENT:
        raise ProviderUnavailable(f"{what}: HTTP {status}")
    if status == 404 and (datetime.now(UTC) - received_at).total_seconds() < NOT_FOUND_GRACE:
        raise ProviderUnavailable(f"{what}: HTTP 404, retried for an hour after the callback")
    if status in (401, 403):
        raise ProviderRejected(f"{what}: HTTP {status}, check the credentials (token, user "
                               "name, password)")
    raise ProviderRejected(f"{what}: HTTP {status}")


def same_secret(given: str | bytes, expected: bytes) -> bool:
    """Constant-time comparison of a presented secret with the configured one."""
    if isinstance(given, str):
        given = given.encode("utf-8", "surrogateescape")
    return hmac.compare_digest(given, expected)


def load_json_object(body: bytes) -> dict[str, Any]:
    """The body as a JSON object, or Malformed."""
    try:
        value = orjson.loads(body)  # stricter than json (no NaN, 64-bit integers) and faster
    except orjson.JSONDecodeError:
        raise Malformed("body is not valid JSON") from None
    if not isinstance(value, dict):
        raise Malformed("body is not a JSON object")
    return value


def join_url(base_url: object, path: str) -> str:
    """The configured base URL with a path of ours appended (never a URL from a callback)."""
    return str(base_url).rstrip("/") + path


def keep_headers(headers: Mapping[str, str], names: Sequence[str]) -> dict[str, str]:
    """The named headers that are present, under lower-case names."""
    return {name: headers[name] for name in names if name in headers}
