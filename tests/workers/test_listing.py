"""`payhooks events` as an operator asked "what happened to order 77" uses it: filters by
order, payment, transaction, provider, type and time, one event in full, and plain words
when nothing matches or a time cannot be read."""

from __future__ import annotations

import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import redis

from shared.models import Callback, EventType, Fact
from shared.settings import Settings
from tests.helpers import MERCHANT_CONFIG, make_settings, secrets_in, to_toml
from workers.events import record
from workers.listing import EventFilter, find_events


def callback(provider: str, reference: str) -> Callback:
    return Callback(id=f"cb_{reference}", merchant="shop-eu", provider=provider, method="POST",
                    uri="/", headers={}, body=b"{}", source="127.0.0.1",
                    received_at=datetime.now(UTC), reference=reference)


def pay(client: redis.Redis, settings: Settings, provider: str, order: str, *types: EventType
        ) -> None:
    facts = [Fact(type=kind, key=f"{order}:{kind.value}", payment_id=f"pay-{order}",
                  transaction_id=f"tx-{order}-{n}", order_id=order, amount_minor=100 * (n + 1),
                  currency="EUR") for n, kind in enumerate(types)]
    hooks = settings.merchants["shop-eu"].hooks
    record(client, callback(provider, order), facts, hooks, settings.delivery.retry_schedule)


def events_cli(config: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    done = subprocess.run([sys.executable, "-m", "shared.cli", "events", "--config",
                           str(config), *args], capture_output=True, text=True, timeout=60)
    assert secrets_in(done.stdout + done.stderr) == []
    if check:
        assert done.returncode == 0, done.stderr
    return done


def test_events_are_found_by_order_payment_provider_type_and_time(
        redis_url: str, redis_client: redis.Redis, tmp_path: Path) -> None:
    settings = make_settings(redis_url)
    pay(redis_client, settings, "ixopay", "order-77", EventType.AUTHORIZED, EventType.CAPTURED)
    for n in range(30):  # other orders around it, so that a filter has something to skip
        pay(redis_client, settings, "payex", f"order-{n}", EventType.CAPTURED)
    pay(redis_client, settings, "netaxept", "order-78", EventType.CAPTURED,
        EventType.REFUNDED)

    by_order = find_events(redis_client, EventFilter(order="order-77"))
    assert sorted(e.type.value for e in by_order) == ["payment.authorized",
                                                       "payment.captured"]
    assert [e.data.order_id for e in find_events(
        redis_client, EventFilter(payment="pay-order-78", type="payment.refund*"))] == [
        "order-78"]
    assert len(find_events(redis_client, EventFilter(provider="payex"), limit=100)) == 30
    assert len(find_events(redis_client, EventFilter(provider="payex"), limit=7)) == 7
    assert find_events(redis_client, EventFilter(since=time.time() + 60)) == []
    assert len(find_events(redis_client, EventFilter(until=time.time() + 60), limit=100)) == 34
    assert find_events(redis_client, EventFilter(merchant="open-shop")) == []

    config = tmp_path / "payhooks.toml"
    config.write_text(to_toml({"redis_url": redis_url, "merchants": MERCHANT_CONFIG}))
    lines = events_cli(config, "--order", "order-77", "--since", "1h").stdout.splitlines()
    assert len(lines) == 2 and all("order order-77" in line for line in lines)
    assert "ixopay" in lines[0] and "payment.captured" in lines[0]  # newest first
    assert events_cli(config, "--order", "order-99").stdout.strip() == "no event matches"

    event = by_order[0].id
    detail = events_cli(config, "--event", event).stdout
    assert f'"id": "{event}"' in detail and "orders: queued" in detail
    missing = events_cli(config, "--event", "evt_nope", check=False)
    assert missing.returncode == 1 and "no event evt_nope" in missing.stderr

    bad = events_cli(config, "--since", "yesterday", check=False)
    assert bad.returncode == 2
    assert "argument --since: 'yesterday' is neither a time" in bad.stderr
    assert "Traceback" not in bad.stderr

