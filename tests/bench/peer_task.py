"""One callback's work as the peer job systems of `payhooks bench worker` do it (Celery in
tests/bench/peer_celery.py, dramatiq in tests/bench/peer_dramatiq.py, run and measured by
tests/bench/peers.py and tests/bench/compare.py): what payhooks' worker does for a PayEx
instrument-payment callback, written plainly, without payhooks.

1. GET the payment from the provider (the simulators) with the merchant's Bearer token and
   `$expand=transactions,payeeinfo`, as payhooks' PayEx follow-up does (shared/providers/
   payex.py), and parse its JSON;
2. build an event from its completed Sale, shaped like payhooks' (id, type, timestamp, data
   with the merchant, provider, payment, amount, ...);
3. sign it the Standard Webhooks way (`webhook-id`, `webhook-timestamp`, `webhook-signature`:
   base64 HMAC-SHA256 of `id.timestamp.body`) and POST it to the merchant endpoint.
A non-2xx answer raises, so the job system retries. Each thread keeps one httpx.Client
across tasks, so connections to the provider and the merchant are reused, as payhooks'
worker keeps its clients. No deduplication, no delivery records: that is payhooks' extra.

This module imports neither Celery nor dramatiq (so each peer loads only its own), and
reads its settings from the environment the runner gives the worker (`ENV`).
"""

from __future__ import annotations

import base64
import functools
import hashlib
import hmac
import json
import os
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import httpx

QUEUE = "callbacks"  # both peers' queue
TASK = "bench.peer_callback"  # the Celery task's and the dramatiq actor's name
MERCHANT, PROVIDER = "bench", "payex"
ENV = {"redis": "BENCH_PEER_REDIS_URL", "provider": "BENCH_PEER_PROVIDER_URL",
       "token": "BENCH_PEER_PROVIDER_TOKEN", "hook": "BENCH_PEER_HOOK_URL",
       "secret": "BENCH_PEER_HOOK_SECRET"}
TIMEOUT = httpx.Timeout(connect=3.0, read=10.0, write=10.0, pool=5.0)  # payhooks' own
_local = threading.local()


@dataclass(frozen=True, slots=True)
class PeerSettings:
    provider: str  # the provider's base URL
    token: str
    hook: str  # the merchant endpoint's URL
    secret: str  # whsec_...


@functools.cache
def settings() -> PeerSettings:
    return PeerSettings(*(os.environ[ENV[name]] for name in ("provider", "token", "hook",
                                                                "secret")))


def _client() -> httpx.Client:
    client: httpx.Client | None = getattr(_local, "client", None)
    if client is None:
        client = _local.client = httpx.Client(timeout=TIMEOUT, follow_redirects=False)
    return client


def sign(secret: str, event_id: str, timestamp: int, body: bytes) -> str:
    key = base64.b64decode(secret.removeprefix("whsec_"))
    digest = hmac.new(key, f"{event_id}.{timestamp}.".encode() + body, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def event(payment: dict[str, Any], received_at: datetime) -> dict[str, Any]:
    """The event of the payment's completed Sale."""
    sale = next(t for t in payment["transactions"]["transactionList"]
                if t["type"] == "Sale" and t["state"] == "Completed")
    key = "\n".join((MERCHANT, PROVIDER, payment["id"], f"{sale['number']}:Completed"))
    data = {"merchant": MERCHANT, "provider": PROVIDER, "transaction_id": sale["id"],
            "payment_id": payment["id"], "order_id": None, "status": "captured",
            "amount": f"{sale['amount'] / 100:.2f}", "amount_minor": sale["amount"],
            "currency": payment["currency"], "payment_method": payment["id"].split("/")[2],
            "occurred_at": sale["updated"], "received_at": received_at.isoformat(),
            "sequence": 1, "provider_status": {k: sale[k] for k in ("type", "state", "number")}}
    return {"id": "evt_" + hashlib.sha256(key.encode()).hexdigest()[:32],
            "type": "payment.captured", "timestamp": datetime.now(UTC).isoformat(),
            "data": data}


def handle(payment_path: str) -> None:
    """Follow one callback up (the payment at this `/psp/...` path) and deliver its event."""
    config, client, received_at = settings(), _client(), datetime.now(UTC)
    answer = client.get(config.provider + payment_path,
                        params={"$expand": "transactions,payeeinfo"},
                        headers={"Authorization": f"Bearer {config.token}",
                                 "Accept": "application/json"})
    answer.raise_for_status()
    built = event(answer.json()["payment"], received_at)
    body, now = json.dumps(built).encode(), int(time.time())
    client.post(config.hook, content=body, headers={
        "content-type": "application/json", "webhook-id": built["id"],
        "webhook-timestamp": str(now),
        "webhook-signature": sign(config.secret, built["id"], now, body),
    }).raise_for_status()
