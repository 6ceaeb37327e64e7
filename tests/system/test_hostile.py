"""Hostile endpoints and providers: servers on 127.0.0.1 that drip, never end or never
answer (tests/hostile.py), against real deliveries, real follow-ups and a real worker.

httpx's timeouts bound each read, so before the deadlines a server that sent a byte every
half second held a worker until RQ's job timeout, and an endless answer grew a worker's
memory without bound.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import orjson
import pytest
import redis
from structlog.testing import capture_logs

from shared.errors import ProviderUnavailable
from shared.http import (
    PROVIDER_ANSWER_LIMIT,
    PROVIDER_DEADLINE,
    deadline,
    make_client,
    make_delivery_client,
    send,
)
from shared.keys import attempts_key, delivery_key, hook_key
from shared.queue import CALLBACK_JOB_OPTIONS
from shared.sandbox.simulators import callbacks as build
from shared.sandbox.simulators.client import SimulatorClient
from shared.sandbox.simulators.merchant import Answer, MerchantEndpoint
from shared.settings import settings_from_dict
from tests.conformance.harness import AnswerServer
from tests.helpers import (
    netaxept,
    netaxept_callback,
    run_callback_job,
    seconds_until_due,
    settings_for,
    stored_callback,
    work,
    worker_config,
)
from tests.hostile import HostileServer
from workers import runtime as runtimes
from workers.events import FACTS_PER_TRANSACTION
from workers.listing import recent_events
from workers.runtime import BUSY_WAIT, Runtime
from workers.tasks import process_callback


def test_a_dripping_answer_is_cut_off_at_the_deadline() -> None:
    with HostileServer("drip", interval=0.3, lifetime=20) as drip, make_client() as client:
        started = time.monotonic()
        with pytest.raises(ProviderUnavailable, match="timed out"):
            send(client, "GET", drip.url, "dripping provider", within=1.0)
        assert time.monotonic() - started < 1.8
        assert drip.sent >= 2  # it did drip: each byte came well within the read timeout


def test_a_silent_provider_is_cut_off_at_the_deadline() -> None:
    with HostileServer("silent", lifetime=20) as silent, make_client() as client:
        started = time.monotonic()
        with pytest.raises(ProviderUnavailable, match="timed out"):
            send(client, "GET", silent.url, "silent provider", within=1.0)
        assert time.monotonic() - started < 1.8


def test_an_endless_answer_is_a_provider_error_after_the_limit() -> None:
    with (HostileServer("endless", lifetime=20) as endless, make_client() as client,
          pytest.raises(ProviderUnavailable, match="answer over 4 MiB")):
        send(client, "GET", endless.url, "endless provider")
    assert PROVIDER_ANSWER_LIMIT <= endless.sent < 4 * PROVIDER_ANSWER_LIMIT


def test_the_merchant_endpoints_drip_outlasts_the_read_timeout_not_the_deadline() -> None:
    """The drip the benchmarks and `payhooks chaos` use (`Answer(drip=...)`): the status at
    once, then a byte at a time, on past a read timeout; a delivery's deadline ends it."""
    with (MerchantEndpoint() as endpoint,
          make_delivery_client(1.0, allow_private_networks=True) as client):
        endpoint.script("/slow", default=Answer(drip=0.2))
        received, started = 0, time.monotonic()
        with client.stream("POST", f"{endpoint.url}/slow", content=b"{}") as response:
            assert response.status_code == 200 and time.monotonic() - started < 0.5
            for chunk in response.iter_raw():
                received += len(chunk)
                if time.monotonic() - started > 1.5:  # the read timeout is 1 s
                    break
        assert 5 <= received <= 10
        started = time.monotonic()
        with (pytest.raises(httpx.TimeoutException), deadline(1.0),
              client.stream("POST", f"{endpoint.url}/slow", content=b"{}") as response):
            for _ in response.iter_raw():
                pass
        assert time.monotonic() - started < 1.8
        assert len(endpoint.requests_to("/slow")) == 2


@pytest.mark.usefixtures("worker_runtime")
def test_a_dripping_netaxept_query_frees_the_worker_within_the_deadline(
        redis_url: str, redis_client: redis.Redis, sims: Any) -> None:
    """The callback job ends as a retry by the deadline, not by RQ's job timeout (122 s)."""
    with (HostileServer("drip", interval=0.5, lifetime=PROVIDER_DEADLINE + 20) as drip,
          answering(redis_url, sims.url, drip.url)):
        started = time.monotonic()
        with pytest.raises(ProviderUnavailable, match="timed out"):
            process_callback(netaxept_callback("tx-dripping"))
        assert time.monotonic() - started < PROVIDER_DEADLINE + 2


def test_a_dripping_hook_is_a_timeout_that_counts_toward_its_pause(
        worker_runtime: Runtime, admin: SimulatorClient, redis_client: redis.Redis,
        sims: Any) -> None:
    with HostileServer("drip", interval=0.3, lifetime=30) as drip:
        settings = settings_for(worker_runtime.settings.redis_url, sims.url, drip.url,
                                timeout="1s", retry_schedule=["100s", "200s"])
        runtime = Runtime(settings, worker_runtime.redis, worker_runtime.http)
        runtimes.install(runtime)
        try:
            [event_id] = process_callback(netaxept(admin, "tx-drip", authorized=True))["events"]
            started = time.monotonic()
            work(runtime)  # a real RQ worker takes the delivery
            elapsed = time.monotonic() - started
        finally:
            runtimes.install(worker_runtime)
    assert elapsed < 2.5
    [attempt] = [orjson.loads(raw) for raw in redis_client.lrange(
        attempts_key(event_id, "orders"), 0, -1)]
    assert attempt["error"] == "timeout" and attempt["status"] is None
    assert 900 <= attempt["duration_ms"] < 1600
    assert redis_client.hget(delivery_key(event_id, "orders"), "state") == b"retrying"
    assert redis_client.hget(hook_key("shop-eu", "orders"), "failures") == b"1"


@pytest.mark.usefixtures("worker_runtime")
def test_a_dripping_provider_holds_no_more_workers_than_its_share(
        redis_url: str, redis_client: redis.Redis, sims: Any) -> None:
    """With `max_follow_ups_in_flight = 1`, while one callback waits on a dripping Netaxept
    API, the next one to that API is not sent: its job, run by a real RQ worker, steps aside
    for a few seconds and keeps every attempt of its schedule."""
    with (HostileServer("drip", interval=0.3, lifetime=4) as drip,
          answering(redis_url, sims.url, drip.url, in_flight=1)):
        def wait_on_the_drip() -> None:
            with contextlib.suppress(ProviderUnavailable):
                process_callback(netaxept_callback("tx-drip-1"))

        first = threading.Thread(target=wait_on_the_drip)
        first.start()
        try:
            deadline = time.monotonic() + 3
            while drip.requests < 1 and time.monotonic() < deadline:
                time.sleep(0.02)
            job, started, finished = run_callback_job(redis_client,
                                                      netaxept_callback("tx-drip-2"))
            took = (finished - started).total_seconds()
            requests_meanwhile = drip.requests
        finally:
            first.join(10)
    assert requests_meanwhile == 1 and took < 2
    assert job.get_status() == "scheduled"
    assert job.retries_left == CALLBACK_JOB_OPTIONS["retry"].max  # no attempt spent
    # 2 to 4 s after the job stepped aside (RQ keeps whole seconds)
    assert seconds_until_due(redis_client, job, started) >= BUSY_WAIT - 1
    assert seconds_until_due(redis_client, job, finished) <= 2 * BUSY_WAIT + 1


@contextlib.contextmanager
def answering(redis_url: str, sims_url: str, base_url: str, in_flight: int = 4
              ) -> Iterator[Runtime]:
    """Jobs in this process run with shop-eu's Netaxept and PayEx APIs at `base_url`."""
    config = worker_config(redis_url, sims_url)
    for provider in ("netaxept", "payex"):
        config["merchants"]["shop-eu"][provider]["base_url"] = base_url
        config["merchants"]["shop-eu"][provider]["max_follow_ups_in_flight"] = in_flight
    runtime = Runtime.from_settings(settings_from_dict(config, environ={}))
    previous = runtimes.current()
    runtimes.install(runtime)
    try:
        yield runtime
    finally:
        runtimes.install(previous)
        runtime.close()


PAYMENT = "/psp/creditcard/payments/5adc265f-f87f-4313-577e-08d3dca1a26c"


@pytest.mark.parametrize("answer", [{"payment": []}, [], {"payment": {"transactions": []}},
                                    {"payment": {"transactions": {"transactionList": {}}}}])
@pytest.mark.usefixtures("worker_runtime")
def test_an_answer_of_the_wrong_shape_is_a_logged_retry(
        redis_url: str, sims: Any, answer: Any) -> None:
    with AnswerServer() as server, answering(redis_url, sims.url, server.url):
        server.serve([{"method": "GET", "path": PAYMENT, "json": answer}])
        with capture_logs() as logs, pytest.raises(ProviderUnavailable):
            process_callback(stored_callback(build.payex_callback(
                "shop-eu", payment_id=PAYMENT), "shop-eu", "payex"))
    [line] = [entry for entry in logs if entry["event"] == "callback_processed"]
    assert line["outcome"] == "retry"


@pytest.mark.usefixtures("worker_runtime")
def test_a_payment_info_without_summary_is_a_provider_error(redis_url: str, sims: Any) -> None:
    with AnswerServer() as server, answering(redis_url, sims.url, server.url):
        server.serve([{"method": "GET", "path": "/Netaxept/Query.aspx",
                       "text": "<PaymentInfo/>", "content_type": "text/xml"}])
        with pytest.raises(ProviderUnavailable, match="without Summary"):
            process_callback(netaxept_callback("tx-empty"))


@pytest.mark.usefixtures("worker_runtime")
def test_an_answer_with_thousands_of_transactions_keeps_each_redis_command_small(
        redis_url: str, redis_client: redis.Redis, sims: Any) -> None:
    """An answer listing 100,000 transactions made one WATCH/MGET block Redis for 47 s:
    the facts are recorded in slices, every command of them stays small, and all are
    recorded, in order."""
    count = 3000
    listed = [{"id": f"{PAYMENT}/transactions/{n:08d}-0000-0000-0000-000000000000",
               "type": "Sale", "state": "Completed", "number": n, "amount": 100}
              for n in range(1, count + 1)]
    answer = {"payment": {"id": PAYMENT, "currency": "SEK",
                          "transactions": {"transactionList": listed}}}
    redis_client.config_set("slowlog-max-len", 100000)
    redis_client.config_set("slowlog-log-slower-than", 0)  # every command, with its size
    redis_client.slowlog_reset()
    try:
        with AnswerServer() as server, answering(redis_url, sims.url, server.url):
            server.serve([{"method": "GET", "path": PAYMENT, "json": answer}])
            result = process_callback(stored_callback(build.payex_callback(
                "shop-eu", payment_id=PAYMENT), "shop-eu", "payex"))
        log = redis_client.slowlog_get(100000)
    finally:
        redis_client.config_set("slowlog-log-slower-than", 10000)
        redis_client.config_set("slowlog-max-len", 128)
    assert len(result["events"]) == count
    sizes = [_arguments(entry) for entry in log]
    assert max(sizes) <= 2 * FACTS_PER_TRANSACTION + 16, max(sizes)
    sequences = sorted(e.data.sequence for e in recent_events(redis_client, "shop-eu",
                                                              limit=count))
    assert sequences == list(range(1, count + 1))


def _arguments(entry: dict[str, Any]) -> int:
    """How many arguments a SLOWLOG entry's command had (Redis keeps 32 and counts the rest)."""
    words = entry["command"].split()
    if len(words) >= 4 and words[-1] == b"arguments)" and words[-4] == b"...":
        return 31 + int(words[-3].lstrip(b"("))
    return len(words)
