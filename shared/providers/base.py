"""What every payment-provider module provides. Read this before writing a provider.

The ingress hands a provider an `Incoming` request: framework-neutral, with the body bytes
exactly as received. `verify` decides, without any I/O, whether the request is a callback
from that provider for that merchant, and returns `Accepted`: what to store on the queue
(secrets removed) and the provider's reference for the log line. It raises `Unauthorized`
(401) when a signature, key or credential does not check out and `Malformed` (400) when the
request is not what the provider sends. Verification always runs on the raw bytes before
anything is parsed, and compares secrets with `hmac.compare_digest`.
"""

from __future__ import annotations

import hmac
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol

import orjson

from shared.errors import Malformed


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


def keep_headers(headers: Mapping[str, str], names: Sequence[str]) -> dict[str, str]:
    """The named headers that are present, under lower-case names."""
    return {name: headers[name] for name in names if name in headers}
