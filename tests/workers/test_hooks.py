"""`payhooks hooks` and `payhooks resend` as an operator uses them after a merchant's endpoint
broke and was fixed: the hook's health with the last failure, resume with its waiting
deliveries sent at once, a pause by hand that loses nothing, an event sent again under the
same id and never doubled. Real endpoint on 127.0.0.1, real RQ workers (with RQ's
scheduler), the CLI as a process."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from rq import Queue, SimpleWorker
from rq.job import Job, JobStatus
from rq.registry import ScheduledJobRegistry
from rq.serializers import JSONSerializer

from shared.queue import DELIVERIES
from shared.sandbox.simulators.client import SimulatorClient
from shared.sandbox.simulators.merchant import Answer, MerchantEndpoint
from tests.helpers import config_for, netaxept, runtime_with, secrets_in
from workers.events import LOOK_AGAIN, delivery_job_id
from workers.listing import delivery_states, recent_events
from workers.runtime import Runtime
from workers.tasks import process_callback


@pytest.fixture
def setup(worker_runtime: Runtime, endpoint: MerchantEndpoint, sims: Any, tmp_path: Path
          ) -> Iterator[tuple[Runtime, Path]]:
    """The runtime with shop-eu's hooks at the endpoint (pausing after 2 failures), and the
    same configuration as a file for the CLI."""
    config = config_for(worker_runtime.settings.redis_url, sims.url, endpoint.url,
                        retry_schedule=["100s", "200s", "300s"], pause_after=2)
    path = tmp_path / "payhooks.toml"
    with runtime_with(worker_runtime, config, path) as runtime:
        yield runtime, path


def work(runtime: Runtime) -> None:
    """A real worker on deliveries, with RQ's scheduler: what is due is queued, then run."""
    queue = Queue(DELIVERIES, connection=runtime.redis, serializer=JSONSerializer)
    SimpleWorker([queue], connection=runtime.redis, serializer=JSONSerializer).work(
        burst=True, with_scheduler=True)


def cli(config: Path, *args: str, code: int = 0) -> str:
    done = subprocess.run([sys.executable, "-m", "shared.cli", *args, "--config",
                           str(config)], capture_output=True, text=True, timeout=60)
    assert done.returncode == code, done.stdout + done.stderr
    assert secrets_in(done.stdout + done.stderr) == []
    return done.stdout + done.stderr


def health(config: Path) -> dict[str, dict[str, Any]]:
    lines = cli(config, "hooks", "--json").splitlines()
    return {entry["hook"]: entry for entry in map(json.loads, lines)}


def orders_ids(endpoint: MerchantEndpoint) -> list[str]:
    return [r.headers["webhook-id"] for r in endpoint.requests_to("/orders")]


def test_a_broken_hook_is_seen_paused_with_why_and_resumed_with_its_deliveries_now(
        setup: tuple[Runtime, Path], admin: SimulatorClient, endpoint: MerchantEndpoint,
        redis_client: redis.Redis) -> None:
    runtime, config = setup
    endpoint.script("/orders", default=Answer(500))
    process_callback(netaxept(admin, "h-1", authorized=True))
    process_callback(netaxept(admin, "h-2", authorized=True))
    work(runtime)
    assert len(endpoint.requests_to("/orders")) == 2
    orders = health(config)["orders"]
    assert orders["state"].startswith("paused (") and not orders["paused_by_hand"]
    assert (orders["failed"], orders["last_error"]) == (2, "HTTP 500")
    assert orders["url"] == f"{endpoint.url}/orders"
    listed = cli(config, "hooks")
    assert "shop-eu/orders" in listed and "last failure" in listed and "HTTP 500" in listed
    assert health(config)["refunds"]["state"] == "healthy"

    endpoint.script("/orders", default=Answer(200))  # the merchant fixed the endpoint
    assert "resumed shop-eu/orders: 2 waiting deliveries due now" in cli(
        config, "hooks", "resume", "shop-eu/orders")
    work(runtime)  # not in 100 s: at once
    assert len(endpoint.requests_to("/orders")) == 4
    states = {delivery_states(redis_client, runtime.settings, e)["orders"]
              for e in recent_events(redis_client, "shop-eu")}
    assert states == {"delivered (2 attempts)"}
    orders = health(config)["orders"]
    assert (orders["state"], orders["delivered"], orders["success_rate"]) == (
        "healthy", 2, 0.5)


def test_a_pause_by_hand_holds_every_delivery_until_resumed_and_loses_none(
        setup: tuple[Runtime, Path], admin: SimulatorClient, endpoint: MerchantEndpoint,
        redis_client: redis.Redis) -> None:
    runtime, config = setup
    process_callback(netaxept(admin, "p-1", authorized=True))  # queued before the pause
    assert "until resumed" in cli(config, "hooks", "pause", "shop-eu/orders")
    process_callback(netaxept(admin, "p-2", authorized=True))  # recorded during it
    work(runtime)
    assert endpoint.requests_to("/orders") == []
    assert health(config)["orders"]["state"] == "paused by hand"
    scheduled = ScheduledJobRegistry(DELIVERIES, connection=redis_client,
                                     serializer=JSONSerializer)
    events = recent_events(redis_client, "shop-eu")
    for event in events:  # each looks again within the hour, none is dropped or dead
        job_id = delivery_job_id(event.id, "orders")
        due = scheduled.get_scheduled_time(job_id).timestamp()
        assert due - runtime.redis.time()[0] <= LOOK_AGAIN + 6
        job = Job.fetch(job_id, connection=redis_client, serializer=JSONSerializer)
        assert (job.get_status(), job.retries_left) == (JobStatus.SCHEDULED, 3)

    assert "2 waiting deliveries due now" in cli(config, "hooks", "resume", "shop-eu/orders")
    work(runtime)
    assert sorted(orders_ids(endpoint)) == sorted(e.id for e in events)

    assert "for 60 s" in cli(config, "hooks", "pause", "shop-eu/orders", "--for", "1m")
    assert health(config)["orders"]["state"].startswith("paused by hand (")
    assert "not a duration" in cli(config, "hooks", "pause", "shop-eu/orders", "--for",
                                   "soon", code=2)
    wrong = cli(config, "hooks", "resume", "shop-eu/order", code=2)
    assert "no hook 'shop-eu/order'" in wrong and "shop-eu/orders" in wrong


def test_an_event_is_resent_under_its_own_id_and_never_doubled(
        setup: tuple[Runtime, Path], admin: SimulatorClient, endpoint: MerchantEndpoint,
        redis_client: redis.Redis) -> None:
    runtime, config = setup
    process_callback(netaxept(admin, "r-1", authorized=True))
    [event] = recent_events(redis_client, "shop-eu")
    assert "orders: on its way already" in cli(config, "resend", event.id)  # still queued
    work(runtime)
    assert orders_ids(endpoint) == [event.id]

    assert f"{event.id} -> shop-eu/orders: queued" in cli(config, "resend", event.id)
    assert "on its way already" in cli(config, "resend", event.id, "--hook", "orders")
    work(runtime)
    assert orders_ids(endpoint) == [event.id, event.id]  # the merchant dedups by webhook-id
    assert delivery_states(redis_client, runtime.settings, event)["orders"] == (
        "delivered (2 attempts)")

    refused = cli(config, "resend", event.id, "--hook", "refunds", code=2)
    assert "no hook 'refunds' that takes payment.authorized events" in refused
    assert "no event evt_nope" in cli(config, "resend", "evt_nope", code=1)
