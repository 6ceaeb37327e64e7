"""The simulators' in-memory state: what each imitated provider knows, and the fault settings.

One `State` holds everything, guarded by `State.lock`: the aiohttp handlers run on the
simulators' own event-loop thread while tests in the same process read and change the same
objects, so every access, from either side, happens under the lock. Money is in minor units
(Netaxept, PayEx), a decimal string (IXOPAY) or a `Decimal` (ifthenpay), as each API has it.

Fault injection is per provider (`Faults`): a fixed `latency`, an `error_rate` (503, or 500
for Netaxept), a `timeout_rate` (the answer waits `timeout_seconds`, 30 s by default, so
the client gives up), a `drip_rate` (the answer's status and headers at once, then its body
a byte every `drip_interval` seconds, 1 s by default) and IXOPAY's status-API rate limits.
The rates draw from one `random.Random(seed)`, which also shuffles Netaxept's element
order, so a run is repeatable.
"""

from __future__ import annotations

import random
import threading
import time
import uuid
from collections import Counter, deque
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from aiohttp import web

PROVIDERS = ("netaxept", "payex", "ixopay", "ifthenpay")
RATE_WINDOW = 60.0  # seconds, IXOPAY's status-API window


def now() -> datetime:
    return datetime.now(UTC)


def guid() -> str:
    return str(uuid.uuid4())


@dataclass
class Faults:
    latency: float = 0.0
    error_rate: float = 0.0
    timeout_rate: float = 0.0
    timeout_seconds: float = 30.0
    drip_rate: float = 0.0
    drip_interval: float = 1.0
    rate_limit_per_minute: int = 60  # IXOPAY: per API user; 0 turns the limit off
    rate_limit_per_transaction: int = 10  # IXOPAY: per merchantTransactionId; 0 is off


@dataclass
class NetaxeptError:
    operation: str = "Auth"
    code: str = "99"
    source: str = "Netaxept"
    text: str = "Auth Reg Comp Failure"


@dataclass
class NetaxeptTransaction:
    id: str
    merchant_id: str
    amount: int
    currency: str = "NOK"
    order_number: str = ""
    payment_method: str = "Visa"
    authorized: bool = False
    captured: int = 0
    credited: int = 0
    annulled: bool = False
    error: NetaxeptError | None = None
    created: datetime = field(default_factory=now)
    updated: datetime = field(default_factory=now)


@dataclass
class PayexTransaction:
    id: str
    type: str  # Authorization, Capture, Reversal, Cancellation, Sale, Verification
    state: str  # Initialized, Completed, Failed, AwaitingActivity
    number: int
    amount: int
    vat_amount: int = 0
    description: str = ""
    payee_reference: str = ""
    failed_reason: str = ""
    created: datetime = field(default_factory=now)
    updated: datetime = field(default_factory=now)


@dataclass
class PayexPayment:
    id: str
    instrument: str  # the path segment: creditcard, swish, vipps, ...
    number: int
    currency: str
    amount: int
    intent: str = "Authorization"
    state: str = "Ready"  # Ready, Pending, Failed, Aborted
    operation: str = "Purchase"
    description: str = ""
    transactions: list[PayexTransaction] = field(default_factory=list)
    created: datetime = field(default_factory=now)
    updated: datetime = field(default_factory=now)


@dataclass
class PayexPaid:
    transaction_type: str  # Authorization or Sale
    instrument: str  # CreditCard, Swish, Vipps, ...
    amount: int
    number: int
    payee_reference: str = ""


@dataclass
class PayexFinancialTransaction:
    id: str
    type: str  # Capture, Reversal, Sale, Cancellation
    number: int
    amount: int
    vat_amount: int = 0
    description: str = ""
    payee_reference: str = ""
    created: datetime = field(default_factory=now)
    updated: datetime = field(default_factory=now)


@dataclass
class PayexPaymentOrder:
    id: str
    status: str  # Initialized, Paid, Failed, Cancelled, Reversed, Aborted
    currency: str
    amount: int
    vat_amount: int = 0
    order_reference: str | None = None
    description: str = ""
    operation: str = "Purchase"
    paid: PayexPaid | None = None
    financial_transactions: list[PayexFinancialTransaction] = field(default_factory=list)
    created: datetime = field(default_factory=now)
    updated: datetime = field(default_factory=now)


@dataclass
class IxopayCredentials:
    username: str
    password: str


@dataclass
class IxopayTransaction:
    uuid: str
    merchant_transaction_id: str
    transaction_type: str = "DEBIT"
    transaction_status: str = "SUCCESS"  # SUCCESS, PENDING, REDIRECT, CANCELLED, ERROR
    amount: str = "9.99"
    currency: str = "EUR"
    payment_method: str = "Creditcard"
    purchase_id: str = ""
    api_key: str | None = None  # None: visible to every API key
    extra: dict[str, Any] = field(default_factory=dict)  # more response fields, verbatim


@dataclass
class IfthenpayPayment:
    order_id: str
    amount: Decimal
    entity: str = "MB"
    sub_entity: str = ""
    reference: str = ""
    request_id: str = ""
    fee: Decimal = Decimal("0")
    terminal: str = ""
    payment_date: datetime = field(default_factory=lambda: datetime.now().replace(microsecond=0))
    bo_key: str | None = None  # None: listed for every backoffice key


class State:
    """Everything the four simulated providers know. Hold `lock` while touching it."""

    def __init__(self, seed: int = 0) -> None:
        self.seed = seed
        self.lock = threading.Lock()
        self.reset()

    def reset(self) -> None:
        """Forget all data, counters and fault settings; reseed the random generator."""
        self.random = random.Random(self.seed)  # noqa: S311 - simulation, not security
        self.faults: dict[str, Faults] = {name: Faults() for name in PROVIDERS}
        self.requests: Counter[str] = Counter()
        self.responses: dict[str, Counter[int]] = {name: Counter() for name in PROVIDERS}
        self.dripped: Counter[str] = Counter()
        self.netaxept_credentials: dict[str, str] = {}
        self.netaxept_transactions: dict[str, NetaxeptTransaction] = {}
        self.payex_tokens: set[str] = set()
        self.payex_payments: dict[str, PayexPayment] = {}
        self.payex_orders: dict[str, PayexPaymentOrder] = {}
        self.ixopay_credentials: dict[str, IxopayCredentials] = {}
        self.ixopay_transactions: dict[str, IxopayTransaction] = {}
        self.ixopay_calls: dict[str, deque[float]] = {}
        self.ifthenpay_keys: set[str] = set()
        self.ifthenpay_payments: list[IfthenpayPayment] = []
        self._number = 40_000_000_000

    def next_number(self) -> int:
        """PayEx's next payment or transaction number: they only grow."""
        self._number += 1
        return self._number

    def set_faults(self, provider: str, **changes: float) -> None:
        """Change fault settings of one provider, or of every one with provider "all"."""
        names = PROVIDERS if provider == "all" else (provider,)
        for name in names:
            faults = self.faults[name]
            for key, value in changes.items():
                setattr(faults, key, type(getattr(faults, key))(value))

    def roll(self, rate: float) -> bool:
        """True with probability `rate`, from the seeded generator."""
        return rate > 0 and self.random.random() < rate

    def take_call(self, key: str, limit: int, at: float | None = None) -> float | None:
        """Count a call against a rolling 60 s limit: None if allowed, else seconds to wait."""
        if limit <= 0:
            return None
        at = time.monotonic() if at is None else at
        calls = self.ixopay_calls.setdefault(key, deque())
        while calls and calls[0] <= at - RATE_WINDOW:
            calls.popleft()
        if len(calls) >= limit:
            return calls[0] + RATE_WINDOW - at
        calls.append(at)
        return None

    def served(self, provider: str) -> int:
        """How many requests the provider's API has received (takes the lock)."""
        with self.lock:
            return self.requests[provider]

    def stats(self) -> dict[str, Any]:
        """Requests per provider, responses per provider and status, and answers dripped
        per provider (takes the lock)."""
        with self.lock:
            return {
                "requests": {name: self.requests[name] for name in PROVIDERS},
                "dripped": {name: self.dripped[name] for name in PROVIDERS},
                "responses": {
                    name: {str(status): count for status, count in sorted(counts.items())}
                    for name, counts in self.responses.items()
                },
            }


STATE = web.AppKey("simulator_state", State)
