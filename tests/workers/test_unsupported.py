"""Callbacks the provider proved it sent but payhooks could not turn into an event: stored,
acknowledged, visible with their reason, and replayed once payhooks reads them.

The story of a user: a shop on ifthenpay's VirtueMart plugin, whose template sends the
plugin's own payment-method id as `pm` and ifthenpay's method as `pmt`, points ifthenpay at
payhooks without saying which plugin it uses. The key is right, so the callback is stored
and answered `ok`, but the two methods disagree: unsupported, with the reason. The operator
finds it, sets `plugin = "virtuemart"` and replays it: now it is a payment.
"""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import redis

from ingress.app import create_app
from shared.keys import UNSUPPORTED
from shared.queue import CALLBACKS
from shared.settings import Settings, settings_from_dict
from tests.helpers import HOOK_SECRET, IFTHENPAY_KEY, MERCHANT_CONFIG, secrets_in, to_toml
from workers import runtime as runtimes
from workers.listing import recent_events
from workers.worker import build_worker

# ifthenpay/joomla-virtuemart: helpers/ifthenpayhelper.php builds this template
VIRTUEMART = ("option=com_virtuemart&view=pluginresponse&task=pluginnotification"
              f"&tmpl=component&pm=3&oid=88&apk={IFTHENPAY_KEY}&amt=49.95&pmt=MBWAY")


def config(redis_url: str, **ifthenpay: Any) -> dict[str, Any]:
    merchant = copy.deepcopy(MERCHANT_CONFIG["shop-eu"])
    merchant["ifthenpay"].update(ifthenpay)
    merchant["hooks"] = [{"id": "orders", "url": "http://127.0.0.1:9/hook",
                          "secret": HOOK_SECRET}]
    return {"redis_url": redis_url, "merchants": {"shop-eu": merchant}}


def run_worker(settings: Settings) -> None:
    try:
        build_worker(settings, queues=(CALLBACKS,)).work(burst=True, with_scheduler=True)
    finally:
        runtimes.install(None)


def cli(path: Path, *args: str) -> str:
    done = subprocess.run([sys.executable, "-m", "shared.cli", *args, "--config", str(path)],
                          capture_output=True, text=True, timeout=60, check=True)
    assert secrets_in(done.stdout + done.stderr) == []
    return done.stdout


async def test_an_unreadable_proven_callback_is_kept_listed_and_replayed(
        redis_url: str, redis_client: redis.Redis, aiohttp_client: Any, tmp_path: Path) -> None:
    before = settings_from_dict(config(redis_url), environ={})
    client = await aiohttp_client(create_app(before))
    response = await client.get(f"/callbacks/shop-eu/ifthenpay?{VIRTUEMART}")
    assert (response.status, await response.text()) == (200, "ok")
    run_worker(before)
    assert recent_events(redis_client, "shop-eu") == []

    path = tmp_path / "payhooks.toml"
    path.write_text(to_toml(config(redis_url)))
    [line] = cli(path, "events", "--unsupported", "--json").splitlines()
    listed = json.loads(line)
    assert listed["provider"] == "ifthenpay"
    assert listed["reason"] == (
        "ifthenpay: payment_method is given more than once, with different values")
    assert "unsupported: ifthenpay: payment_method" in cli(path, "events", "--unsupported")
    metrics = await (await client.get("/metrics")).text()
    assert ('payhooks_callbacks_processed_total{outcome="unsupported",provider="ifthenpay"} 1.0'
            in metrics)
    assert "1 unsupported callback to replay" in cli(path, "replay", "--unsupported",
                                                      "--dry-run")

    path.write_text(to_toml(config(redis_url, plugin="virtuemart")))  # the operator's fix
    assert "queued 1 of 1" in cli(path, "replay", "--unsupported")
    assert redis_client.zcard(UNSUPPORTED) == 0
    run_worker(settings_from_dict(config(redis_url, plugin="virtuemart"), environ={}))
    [event] = recent_events(redis_client, "shop-eu")
    assert (event.type.value, event.data.order_id, event.data.amount_minor,
            event.data.payment_method) == ("payment.captured", "88", 4995, "mbway")
    assert cli(path, "events", "--unsupported") == ""
    assert "0 unsupported callbacks match" in cli(path, "replay", "--unsupported")


async def test_a_replay_still_unsupported_is_kept_again(
        redis_url: str, redis_client: redis.Redis, aiohttp_client: Any, tmp_path: Path) -> None:
    settings = settings_from_dict(config(redis_url), environ={})
    client = await aiohttp_client(create_app(settings))
    assert (await client.get(f"/callbacks/shop-eu/ifthenpay?{VIRTUEMART}")).status == 200
    run_worker(settings)
    path = tmp_path / "payhooks.toml"
    path.write_text(to_toml(config(redis_url)))
    assert "queued 1 of 1" in cli(path, "replay", "--unsupported", "--provider", "ifthenpay")
    run_worker(settings)
    assert redis_client.zcard(UNSUPPORTED) == 1
    assert "0 unsupported callbacks match" in cli(path, "replay", "--unsupported",
                                                  "--provider", "ixopay")
