"""The raw callback as the ingress accepted it: what travels on the `callbacks` queue.

One model, unchanged from the ingress to the worker. `body` holds the bytes exactly as
received (base64 in JSON), so a worker can verify again what the ingress verified. What
could carry a secret never gets here: the ingress stores only the headers a provider
module asks for, and the request target with any key in it redacted.
"""

from __future__ import annotations

import secrets
import time
from datetime import UTC, datetime

from pydantic import BaseModel, ConfigDict


class Callback(BaseModel):
    model_config = ConfigDict(
        frozen=True, extra="forbid", ser_json_bytes="base64", val_json_bytes="base64"
    )

    id: str
    merchant: str
    provider: str
    method: str
    uri: str  # path and query as the provider sent it (a key in the query is redacted)
    headers: dict[str, str]  # lower-case names; only those the provider module keeps
    body: bytes
    source: str  # the client address (X-Forwarded-For from a trusted proxy, else the peer)
    received_at: datetime
    reference: str  # the provider's id for the payment or transaction, for logs and lookups


def new_callback_id(now: float | None = None) -> str:
    """A unique id that sorts by receive time: 12 hex digits of ms, then 16 random."""
    millis = int((time.time() if now is None else now) * 1000)
    return f"cb_{millis:012x}{secrets.token_hex(8)}"


def utcnow() -> datetime:
    return datetime.now(UTC)
