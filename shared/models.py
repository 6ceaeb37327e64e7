"""The models that cross layers: the raw `Callback`, a provider `Fact`, the `PaymentEvent`.

`Callback` is the raw callback as the ingress accepted it: what travels on the `callbacks` queue.

One model, unchanged from the ingress to the worker. `body` holds the bytes exactly as
received (base64 in JSON), so a worker can verify again what the ingress verified. What
could carry a secret never gets here: the ingress stores only the headers a provider
module asks for, and the request target with any key in it redacted.
"""

from __future__ import annotations

import base64
import itertools
import os
import secrets
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

import orjson
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


def callback_json(
    *, id: str, merchant: str, provider: str, method: str, uri: str, headers: dict[str, str],
    body: bytes, source: str, received_at: datetime, reference: str,
) -> bytes:
    """`Callback(...).model_dump_json()`, byte for byte, at a fifth of the cost: the ingress
    builds one per request from values it has already checked (tests/shared/test_models.py)."""
    return orjson.dumps(
        {"id": id, "merchant": merchant, "provider": provider, "method": method, "uri": uri,
         "headers": headers, "body": base64.urlsafe_b64encode(body).decode(),
         "source": source, "received_at": received_at, "reference": reference},
        option=orjson.OPT_UTC_Z,
    )


_id_prefix = secrets.token_hex(6)
_id_counter = itertools.count()


def _new_id_prefix() -> None:
    global _id_prefix, _id_counter  # per-process state, reset after fork
    _id_prefix = secrets.token_hex(6)
    _id_counter = itertools.count()


os.register_at_fork(after_in_child=_new_id_prefix)


def new_callback_id(now: float | None = None) -> str:
    """A unique id that sorts by receive time: `cb_`, 12 hex digits of ms, a random
    per-process prefix and a counter (no system call per id)."""
    millis = int((time.time() if now is None else now) * 1000)
    return f"cb_{millis:012x}{_id_prefix}{next(_id_counter) & 0xFFFFFF:06x}"


def utcnow() -> datetime:
    return datetime.now(UTC)


class DeliveryState(StrEnum):
    """The `state` of a delivery's hash (shared.keys.delivery_key)."""

    QUEUED = "queued"  # waiting for a worker
    PAUSED = "paused"  # its hook is paused or disabled: waits until resumed or enabled
    RETRYING = "retrying"  # an attempt failed; the next one is due at `next_at`
    DELIVERED = "delivered"  # a 2xx
    DEAD = "dead"  # dead-lettered: the schedule used up, RQ ended the last try, or the
    # hook was deleted
    DROPPED = "dropped"  # nothing to deliver: the event expired


# the states a delivery ends in: nothing runs it again (but a replay of a dead letter)
FINAL_STATES = frozenset({DeliveryState.DELIVERED, DeliveryState.DEAD, DeliveryState.DROPPED})


class EventType(StrEnum):
    """The canonical event types, dot-delimited as the Standard Webhooks spec suggests."""

    PENDING = "payment.pending"
    AUTHORIZED = "payment.authorized"
    CAPTURED = "payment.captured"
    REFUNDED = "payment.refunded"
    VOIDED = "payment.voided"
    FAILED = "payment.failed"
    CHARGEBACK = "payment.chargeback"
    CHARGEBACK_REVERSED = "payment.chargeback_reversed"

    @property
    def status(self) -> str:
        return self.value.removeprefix("payment.")


@dataclass(frozen=True, slots=True)
class Fact:
    """One thing the authoritative source says happened to a payment.

    `key` tells facts apart: the same provider fact always has the same key (so its event
    id is the same however often it is reported), another fact another key. A provider
    reporting cumulative totals (Netaxept's AmountCaptured) sets `total_minor` instead of
    `amount_minor`; the step amount is then the growth since the last recorded total.
    """

    type: EventType
    key: str
    payment_id: str
    transaction_id: str
    order_id: str | None = None
    amount_minor: int | None = None
    total_minor: int | None = None
    currency: str | None = None
    payment_method: str | None = None
    occurred_at: datetime | None = None
    provider_status: dict[str, Any] = field(default_factory=dict)


class EventData(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    merchant: str
    provider: str
    transaction_id: str
    payment_id: str
    order_id: str | None
    status: str
    amount: str | None
    amount_minor: int | None
    currency: str | None
    payment_method: str | None
    occurred_at: datetime | None
    received_at: datetime
    sequence: int
    provider_status: dict[str, Any]


class PaymentEvent(BaseModel):
    """The canonical event delivered to merchants (design.md section 5)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    id: str
    type: EventType
    timestamp: datetime
    data: EventData
