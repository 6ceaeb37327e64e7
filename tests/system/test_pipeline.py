"""End to end: provider callbacks through the real ingress, a real RQ worker and the provider
simulators, to events listed by `payhooks events`."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import redis
from aiohttp.test_utils import TestClient

from ingress.app import create_app
from shared.queue import CALLBACKS
from shared.sandbox.simulators import Simulators
from shared.sandbox.simulators import callbacks as build
from shared.sandbox.simulators.callbacks import OutgoingCallback
from shared.sandbox.simulators.client import SimulatorClient
from shared.settings import Settings
from tests.helpers import (
    IFTHENPAY_KEY,
    IXOPAY_SECRET,
    NETAXEPT_PASSWORD,
    NETAXEPT_USER,
    secrets_in,
    to_toml,
    worker_config,
)
from workers.listing import recent_events
from workers.runtime import Runtime
from workers.worker import build_worker


async def send(client: TestClient[Any, Any], callback: OutgoingCallback) -> int:
    response = await client.request(callback.method, callback.path, data=callback.body,
                                    headers=callback.headers)
    return response.status


def provider_callbacks(admin: SimulatorClient) -> dict[str, OutgoingCallback]:
    admin.netaxept_transaction("e2e-nets", "12002835", 5000, currency="NOK", captured=5000,
                               authorized=True)
    payment = admin.payex_payment(1500, transactions=[
        {"type": "Sale", "state": "Completed", "amount": 1500}])
    return {
        "ixopay": build.ixopay_callback("shop-eu", IXOPAY_SECRET, uuid="e2e-ixo",
                                        merchant_transaction_id="order-1", amount="9.99"),
        "ifthenpay": build.ifthenpay_callback("shop-eu", IFTHENPAY_KEY, order_id="1887",
                                              amount="33.61", request_id="e2eRequest"),
        "netaxept": build.netaxept_callback("shop-eu", "e2e-nets", NETAXEPT_USER,
                                            NETAXEPT_PASSWORD),
        "payex": build.payex_callback("shop-eu", payment_id=payment["path"],
                                      transaction_id=payment["transactions"][0]["typed_path"]),
    }


async def test_each_provider_callback_becomes_an_event_once(
    worker_settings: Settings, worker_runtime: Runtime, admin: SimulatorClient,
    redis_client: redis.Redis, aiohttp_client: Any, sims: Simulators, tmp_path: Path,
) -> None:
    client = await aiohttp_client(create_app(worker_settings))
    sent = provider_callbacks(admin)
    for callback in sent.values():
        assert await send(client, callback) == 200
    assert await send(client, sent["ixopay"]) == 200  # a provider retry: stored again
    assert redis_client.llen("rq:queue:callbacks") == 5

    build_worker(worker_settings, queues=(CALLBACKS,)).work(burst=True, with_scheduler=True)

    found = {(e.data.provider, e.type.value, e.data.amount) for e in
             recent_events(redis_client, "shop-eu")}
    assert found == {
        ("ixopay", "payment.captured", "9.99"), ("ifthenpay", "payment.captured", "33.61"),
        ("netaxept", "payment.authorized", "50.00"), ("netaxept", "payment.captured", "50.00"),
        ("payex", "payment.captured", "15.00"),
    }

    config = tmp_path / "payhooks.toml"
    config.write_text(to_toml(worker_config(worker_settings.redis_url, sims.url)))
    listed = subprocess.run(
        [sys.executable, "-m", "shared.cli", "events", "--config", str(config), "--json",
         "--merchant", "shop-eu"], capture_output=True, text=True, check=True, timeout=60)
    lines = [json.loads(line) for line in listed.stdout.splitlines()]
    assert len(lines) == 5
    # the hook refuses connections: a first attempt failed (retrying), or the hook was
    # failing or paused by then and the delivery waits its turn (queued, paused)
    states = [line["deliveries"]["orders"] for line in lines]
    assert all(state.split(" ")[0] in {"retrying", "queued", "paused"} for state in states), (
        states)
    assert any(state.startswith("retrying (attempt 1 failed: could not connect")
               for state in states), states
    times = [line["timestamp"] for line in lines]
    assert times == sorted(times, reverse=True)
    table = subprocess.run(
        [sys.executable, "-m", "shared.cli", "events", "--config", str(config)],
        capture_output=True, text=True, check=True, timeout=60).stdout
    assert table.count("payment.captured") == 4
    assert secrets_in(listed.stdout + table) == []
