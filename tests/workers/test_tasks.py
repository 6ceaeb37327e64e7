"""process_callback against the provider simulators (real HTTP) and a real Redis.

Each test builds the callback a provider would send, stores it as the ingress would, and
runs the job: directly (a task is a plain function) or through a real RQ worker.
"""

from __future__ import annotations

import json
import threading
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import redis
from rq import Queue, SimpleWorker
from rq.job import Job, JobStatus
from rq.registry import FailedJobRegistry, ScheduledJobRegistry
from rq.serializers import JSONSerializer

from shared.errors import ProviderRejected, ProviderUnavailable
from shared.models import Callback, EventType, Fact, PaymentEvent
from shared.queue import CALLBACK_JOB_OPTIONS, CALLBACKS, PROCESS_CALLBACK
from shared.sandbox.simulators import callbacks as build
from shared.sandbox.simulators.client import SimulatorClient
from shared.settings import settings_from_dict
from tests.conformance.harness import AnswerServer
from tests.helpers import (
    IFTHENPAY_KEY,
    IXOPAY_SECRET,
    ixopay_headers,
    netaxept,
    netaxept_callback,
    raw,
    run_callback_job,
    seconds_until_due,
    stored_callback,
    worker_config,
)
from workers import runtime as runtimes
from workers.events import delivery_job_id, record
from workers.listing import recent_events
from workers.runtime import Runtime
from workers.tasks import process_callback


def events(client: redis.Redis, merchant: str = "shop-eu") -> list[PaymentEvent]:
    """The merchant's recorded events, oldest first."""
    return list(reversed(recent_events(client, merchant, limit=1000)))






def summary(found: list[PaymentEvent]) -> list[tuple[str, int | None, int]]:
    return [(e.type.value, e.data.amount_minor, e.data.sequence) for e in found]


@pytest.mark.usefixtures("worker_runtime")
class TestNetaxept:
    def test_each_state_becomes_an_event_once(self, admin: SimulatorClient,
                                              redis_client: redis.Redis) -> None:
        callback = netaxept(admin, "tx-1", authorized=True)
        assert len(process_callback(callback)["events"]) == 1
        assert process_callback(callback)["events"] == []  # a retry of the same callback

        netaxept(admin, "tx-1", authorized=True, captured=6000)
        process_callback(callback)
        netaxept(admin, "tx-1", authorized=True, captured=10000, credited=2500)
        process_callback(callback)
        process_callback(callback)

        assert summary(events(redis_client)) == [
            ("payment.authorized", 10000, 1), ("payment.captured", 6000, 2),
            ("payment.captured", 4000, 3), ("payment.refunded", 2500, 4)]
        last = events(redis_client)[-1]
        assert (last.data.order_id, last.data.currency, last.data.amount) == (
            "order-77", "NOK", "25.00")

    def test_old_facts_do_not_come_back_after_their_event_records_expire(
            self, admin: SimulatorClient, redis_client: redis.Redis) -> None:
        """A refund on day 11: the Query answer lists the whole history again, and the
        10-day event records are gone (deleted here by hand). Only the refund is new, and
        its sequence follows the old ones."""
        callback = netaxept(admin, "tx-old", authorized=True, captured=10000)
        process_callback(callback)
        for key in redis_client.scan_iter("payhooks:event:*"):
            redis_client.delete(key)
        netaxept(admin, "tx-old", authorized=True, captured=10000, credited=4000)
        [refund] = process_callback(callback)["events"]
        assert process_callback(callback)["events"] == []
        found = {e.id: e for e in recent_events(redis_client, "shop-eu")}
        assert (found[refund].type, found[refund].data.sequence) == (EventType.REFUNDED, 3)
        assert len(found) == 1  # the two old events' records are gone; no new copy of them

    def test_a_payment_recorded_before_fact_marks_gets_them_from_its_events(
            self, admin: SimulatorClient, redis_client: redis.Redis) -> None:
        callback = netaxept(admin, "tx-legacy", authorized=True)
        process_callback(callback)
        [payment] = redis_client.scan_iter("payhooks:payment:*")
        marks = [raw(k) for k in redis_client.hkeys(payment) if raw(k).startswith(b"fact:")]
        redis_client.hdel(payment, *marks)  # as a payment recorded by an older payhooks
        assert process_callback(callback)["events"] == []  # known by its event record
        assert sorted(raw(k) for k in redis_client.hkeys(payment)
                      if raw(k).startswith(b"fact:")) == sorted(marks)  # marked now

    def test_a_late_callback_reports_everything_that_happened(
            self, admin: SimulatorClient, redis_client: redis.Redis) -> None:
        callback = netaxept(admin, "tx-2", authorized=True, captured=10000, credited=10000)
        process_callback(callback)
        assert [e.type for e in events(redis_client)] == [
            EventType.AUTHORIZED, EventType.CAPTURED, EventType.REFUNDED]

    def test_failed_registered_and_annulled(self, admin: SimulatorClient,
                                            redis_client: redis.Redis) -> None:
        process_callback(netaxept(admin, "tx-3"))
        process_callback(netaxept(admin, "tx-4", error={
            "operation": "Auth", "code": "99", "source": "Netaxept", "text": "declined"}))
        process_callback(netaxept(admin, "tx-5", authorized=True, annulled=True))
        assert [(e.data.payment_id, e.type) for e in events(redis_client)] == [
            ("tx-3", EventType.PENDING), ("tx-4", EventType.FAILED),
            ("tx-5", EventType.AUTHORIZED), ("tx-5", EventType.VOIDED)]

    def test_an_unknown_transaction_is_rejected(self, sims: Any) -> None:
        callback = netaxept_callback("nope")
        with pytest.raises(ProviderRejected, match="unknown transaction"):
            process_callback(callback)

    def test_a_failing_api_is_worth_a_retry(self, admin: SimulatorClient) -> None:
        callback = netaxept(admin, "tx-6", authorized=True)
        admin.faults("netaxept", error_rate=1.0)
        with pytest.raises(ProviderUnavailable):
            process_callback(callback)


@pytest.mark.usefixtures("worker_runtime")
class TestPayex:
    def test_instrument_payment_transactions_become_events(
            self, admin: SimulatorClient, redis_client: redis.Redis) -> None:
        payment = admin.payex_payment(1500, currency="SEK", transactions=[
            {"type": "Authorization", "state": "Completed", "amount": 1500}])
        auth = payment["transactions"][0]
        callback = stored_callback(build.payex_callback(
            "shop-eu", payment_id=payment["path"], transaction_id=auth["typed_path"],
            number=auth["number"]), "shop-eu", "payex")
        process_callback(callback)
        admin.payex_transaction(payment["id"], "Capture", amount=1000)
        admin.payex_transaction(payment["id"], "Reversal", amount=400)
        process_callback(callback)  # an old callback: the GET tells the whole story
        process_callback(callback)
        assert summary(events(redis_client)) == [
            ("payment.authorized", 1500, 1), ("payment.captured", 1000, 2),
            ("payment.refunded", 400, 3)]
        assert events(redis_client)[0].data.payment_method == "creditcard"

    def test_payment_order_paid_then_captured(self, admin: SimulatorClient,
                                              redis_client: redis.Redis) -> None:
        order = admin.payex_payment_order(
            100, status="Paid", currency="SEK", order_reference="549213",
            paid={"transactionType": "Authorization", "instrument": "CreditCard",
                  "amount": 100},
            financial_transactions=[{"type": "Capture", "amount": 60}])
        callback = stored_callback(build.payex_callback(
            "shop-eu", payment_order_id=order["path"], order_reference="549213",
            number=order["paid"]["number"]), "shop-eu", "payex")
        process_callback(callback)
        found = events(redis_client)
        assert summary(found) == [("payment.authorized", 100, 1), ("payment.captured", 60, 2)]
        assert found[0].data.order_id == "549213"

    def test_a_wrong_token_is_rejected(self, admin: SimulatorClient,
                                       worker_runtime: Runtime) -> None:
        payment = admin.payex_payment(100, transactions=[])
        callback = stored_callback(build.payex_callback("shop-eu", payment_id=payment["path"]),
                                   "shop-eu", "payex")
        admin.reset()  # forgets the registered token
        with pytest.raises(ProviderRejected, match="check the credentials"):
            process_callback(callback)

    @pytest.mark.parametrize(("age", "outcome"), [(60, ProviderUnavailable),
                                                  (7200, ProviderRejected)])
    def test_an_unknown_payment_is_retried_for_an_hour_then_rejected(
            self, worker_runtime: Runtime, age: int, outcome: type[Exception]) -> None:
        """Swedbank Pay calls back as the payment is made: a 404 soon after may be its API
        lagging behind (was rejected at once, and the payment lost)."""
        unknown = "/psp/creditcard/payments/00000000-0000-0000-0000-000000000404"
        callback = stored_callback(build.payex_callback("shop-eu", payment_id=unknown),
                                   "shop-eu", "payex")
        callback["received_at"] = (datetime.now(UTC) - timedelta(seconds=age)).isoformat()
        with pytest.raises(outcome, match="HTTP 404"):
            process_callback(callback)


def ixopay(result: str = "OK", kind: str = "DEBIT", uuid_: str | None = None,
           merchant: str = "shop-eu", **extra: Any) -> dict[str, Any]:
    outgoing = build.ixopay_callback(
        merchant, IXOPAY_SECRET, uuid=uuid_ or uuid.uuid4().hex[:20],
        merchant_transaction_id="order-42", transaction_type=kind, result=result,
        amount="129.50", extra=extra or None)
    return stored_callback(outgoing, merchant, "ixopay")


@pytest.mark.usefixtures("worker_runtime")
class TestIxopay:
    def test_pending_then_ok_are_two_events_and_retries_none(
            self, redis_client: redis.Redis) -> None:
        process_callback(ixopay("PENDING", uuid_="u-1"))
        process_callback(ixopay("OK", uuid_="u-1"))
        process_callback(ixopay("OK", uuid_="u-1"))  # IXOPAY retries for a week
        assert summary(events(redis_client)) == [
            ("payment.pending", 12950, 1), ("payment.captured", 12950, 2)]
        assert events(redis_client)[1].data.amount == "129.50"

    def test_a_chargeback_belongs_to_the_original_order(self,
                                                        redis_client: redis.Redis) -> None:
        process_callback(ixopay("OK", uuid_="u-2"))
        process_callback(ixopay("OK", "CHARGEBACK", uuid_="cb-1", chargebackData={
            "originalUuid": "u-2", "originalMerchantTransactionId": "order-42",
            "amount": 129.5, "currency": "EUR", "reason": "fraud"}))
        found = events(redis_client)
        assert [(e.type, e.data.payment_id, e.data.order_id, e.data.sequence) for e in found] == [
            (EventType.CAPTURED, "u-2", "order-42", 1),
            (EventType.CHARGEBACK, "u-2", "order-42", 2)]

    def test_callbacks_without_uuid_are_told_apart_by_merchant_transaction_id(
            self, redis_client: redis.Redis) -> None:
        """The ingress accepts merchantTransactionId alone; two such orders collapsed onto
        one empty payment id, and the second capture was dropped as a duplicate."""
        for order in ("order-a", "order-b", "order-a"):
            body = json.dumps({"result": "OK", "merchantTransactionId": order,
                               "transactionType": "DEBIT", "amount": "5.00",
                               "currency": "EUR"}).encode()
            path = "/callbacks/shop-eu/ixopay"
            process_callback(stored_callback(
                build.OutgoingCallback("POST", path, ixopay_headers(body, path), body),
                "shop-eu", "ixopay"))
        assert [(e.data.order_id, e.data.payment_id, e.type.value)
                for e in events(redis_client)] == [
            ("order-a", "mtid:order-a", "payment.captured"),
            ("order-b", "mtid:order-b", "payment.captured")]

    def test_register_is_unsupported_and_delivers_nothing(self,
                                                          redis_client: redis.Redis) -> None:
        assert "unsupported" in process_callback(ixopay("OK", "REGISTER"))
        assert events(redis_client) == []

    def test_the_status_api_overrules_the_callback(self, admin: SimulatorClient,
                                                   redis_client: redis.Redis) -> None:
        admin.ixopay_transaction("u-3", "order-42", transactionType="DEBIT",
                                 transactionStatus="ERROR", amount="129.50", currency="EUR")
        process_callback(ixopay("OK", uuid_="u-3", merchant="strict-eu"))
        assert [e.type for e in events(redis_client, "strict-eu")] == [EventType.FAILED]

    def test_the_status_api_rate_limit_means_retry_later(self, admin: SimulatorClient) -> None:
        admin.ixopay_transaction("u-4", "order-42", transactionStatus="SUCCESS")
        admin.faults("ixopay", rate_limit_per_minute=1)
        process_callback(ixopay("OK", uuid_="u-4", merchant="strict-eu"))
        with pytest.raises(ProviderUnavailable):
            process_callback(ixopay("OK", uuid_="u-4", merchant="strict-eu"))


def ifthenpay(merchant: str = "shop-eu", status: str | None = None,
              amount: str = "33.61") -> dict[str, Any]:
    outgoing = build.ifthenpay_callback(merchant, IFTHENPAY_KEY, order_id="1887", amount=amount,
                                        request_id="i2szvoUfPYBMWdSxqO3n", status=status,
                                        payment_datetime="03-01-2024 15:15:16")
    return stored_callback(outgoing, merchant, "ifthenpay")


@pytest.mark.usefixtures("worker_runtime")
class TestIfthenpay:
    def test_paid_then_refunded(self, redis_client: redis.Redis) -> None:
        process_callback(ifthenpay())
        process_callback(ifthenpay(status="PAGO"))  # the same payment, said again
        process_callback(ifthenpay(status="DEVOLVIDO", amount="10.00"))
        found = events(redis_client)
        assert summary(found) == [("payment.captured", 3361, 1), ("payment.refunded", 1000, 2)]
        assert found[0].data.occurred_at is not None
        assert found[0].data.occurred_at.utcoffset() is not None

    def test_confirmed_by_the_payments_api_only_once_listed(
            self, admin: SimulatorClient, redis_client: redis.Redis) -> None:
        with pytest.raises(ProviderUnavailable, match="does not list"):
            process_callback(ifthenpay("strict-eu"))
        admin.ifthenpay_payment("1887", 33.61, requestId="i2szvoUfPYBMWdSxqO3n", entity="MBWAY")
        process_callback(ifthenpay("strict-eu"))
        assert [e.type for e in events(redis_client, "strict-eu")] == [EventType.CAPTURED]


@pytest.mark.usefixtures("worker_runtime")
def test_deliveries_are_enqueued_once_per_matching_hook(admin: SimulatorClient,
                                                        redis_client: redis.Redis) -> None:
    process_callback(netaxept(admin, "tx-7", authorized=True, captured=100, credited=100))
    queued = {raw(job_id).decode() for job_id in redis_client.lrange("rq:queue:deliveries", 0, -1)}
    found = events(redis_client)
    expected = {delivery_job_id(e.id, "orders") for e in found}
    expected.add(delivery_job_id(found[-1].id, "refunds"))  # refunds takes payment.refunded
    assert queued == expected
    job = Job.fetch(delivery_job_id(found[0].id, "orders"), connection=redis_client,
                    serializer=JSONSerializer)
    assert job.args == [found[0].id, "shop-eu", "orders"]


@pytest.mark.usefixtures("worker_runtime")
def test_the_same_fact_recorded_by_racing_workers_is_one_event(
        worker_runtime: Runtime, redis_client: redis.Redis) -> None:
    callback = Callback.model_validate_json(json.dumps(ixopay("OK", uuid_="u-9")))
    facts = [Fact(EventType.CAPTURED, "race", payment_id="p-1", transaction_id="t-1",
                  amount_minor=100, currency="EUR")]
    hooks = worker_runtime.settings.merchants["shop-eu"].hooks
    barrier, results = threading.Barrier(8), []

    def race() -> None:
        client = redis.Redis.from_url(worker_runtime.settings.redis_url)
        barrier.wait()
        results.append(len(record(client, callback, facts, hooks, [1.0])))
        client.close()

    threads = [threading.Thread(target=race) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(results) == [0] * 7 + [1]
    assert redis_client.llen("rq:queue:deliveries") == 1


def worker(runtime: Runtime) -> SimpleWorker:
    queue = Queue(CALLBACKS, connection=runtime.redis, serializer=JSONSerializer)
    return SimpleWorker([queue], connection=runtime.redis, serializer=JSONSerializer)


def enqueue(runtime: Runtime, callback: dict[str, Any]) -> Job:
    queue = Queue(CALLBACKS, connection=runtime.redis, serializer=JSONSerializer)
    options = dict(CALLBACK_JOB_OPTIONS)
    return queue.enqueue(PROCESS_CALLBACK, callback, job_id=callback["id"],
                         job_timeout=options.pop("timeout"), **options)


def test_a_real_worker_retries_an_unavailable_provider_then_succeeds(
        worker_runtime: Runtime, admin: SimulatorClient, redis_client: redis.Redis) -> None:
    callback = netaxept(admin, "tx-8", authorized=True)
    admin.faults("netaxept", error_rate=1.0)
    job = enqueue(worker_runtime, callback)
    worker(worker_runtime).work(burst=True, with_scheduler=True)

    scheduled = ScheduledJobRegistry(CALLBACKS, connection=redis_client,
                                     serializer=JSONSerializer)
    assert job.id in scheduled.get_job_ids()
    job.refresh()
    assert job.retries_left == CALLBACK_JOB_OPTIONS["retry"].max - 1

    admin.faults("netaxept", error_rate=0.0)
    queue = Queue(CALLBACKS, connection=redis_client, serializer=JSONSerializer)
    scheduled.remove(job)
    queue.enqueue_job(job)  # what the scheduler does once the retry interval has passed
    worker(worker_runtime).work(burst=True, with_scheduler=True)
    assert job.get_status() == JobStatus.FINISHED
    assert [e.type for e in events(redis_client)] == [EventType.AUTHORIZED]


def test_a_real_worker_fails_a_rejected_callback_without_retrying(
        worker_runtime: Runtime, sims: Any, redis_client: redis.Redis) -> None:
    callback = netaxept_callback("unknown")
    job = enqueue(worker_runtime, callback)
    worker(worker_runtime).work(burst=True, with_scheduler=True)
    failed = FailedJobRegistry(CALLBACKS, connection=redis_client, serializer=JSONSerializer)
    assert job.id in failed.get_job_ids()
    job.refresh()
    assert job.retries_left == 0
    assert "unknown transaction" in (job.latest_result().exc_string or "")  # type: ignore[union-attr]


def test_a_flood_of_callbacks_cannot_spend_the_merchants_api_quota(
        worker_runtime: Runtime, admin: SimulatorClient, redis_client: redis.Redis,
        sims: Any) -> None:
    config = worker_config(worker_runtime.settings.redis_url, sims.url)
    config["merchants"]["shop-eu"]["netaxept"]["max_follow_ups_per_minute"] = 3
    runtimes.install(Runtime(settings_from_dict(config, environ={}), worker_runtime.redis,
                             worker_runtime.http))
    forged = [netaxept_callback(f"forged-{n}") for n in range(3)]  # unknown transactions
    for callback in forged:
        with pytest.raises(ProviderRejected):
            process_callback(callback)
    genuine = netaxept(admin, "real-1", authorized=True)
    with pytest.raises(ProviderUnavailable, match="a minute already used"):
        process_callback(genuine)  # waits for the next minute: retried, not dropped
    assert admin.stats()["requests"]["netaxept"] == 3
    # as a job: back at the start of the next minute, by Redis's clock, with every attempt
    # of its schedule left (the provider was not asked, so a long flood cannot use them up)
    job, started, finished = run_callback_job(redis_client, genuine)
    assert job.get_status() == "scheduled"
    assert job.retries_left == CALLBACK_JOB_OPTIONS["retry"].max
    wait = seconds_until_due(redis_client, job, started)
    past_the_minute = (started.timestamp() + wait) % 60  # this Redis shares our clock
    assert 0 < wait <= 61 + (finished - started).total_seconds()
    assert min(past_the_minute, 60 - past_the_minute) <= 2


def test_a_providers_retry_after_sets_when_the_callback_is_tried_again(
        worker_runtime: Runtime, redis_client: redis.Redis, sims: Any) -> None:
    """A 429 with Retry-After: the next try comes then, and the schedule after it is the
    callback job's own."""
    answers = [{"path": "/Netaxept/Query.aspx", "status": 429, "headers": {"Retry-After": "600"},
                "text": "slow down"}]
    with AnswerServer(answers) as provider:
        config = worker_config(worker_runtime.settings.redis_url, sims.url)
        config["merchants"]["shop-eu"]["netaxept"]["base_url"] = provider.url
        runtimes.install(Runtime(settings_from_dict(config, environ={}), worker_runtime.redis,
                                 worker_runtime.http))
        job, started, finished = run_callback_job(redis_client, netaxept_callback("tx-429"))
    schedule = CALLBACK_JOB_OPTIONS["retry"]
    assert job.get_status() == "scheduled" and job.retries_left == schedule.max - 1
    assert seconds_until_due(redis_client, job, started) >= 600 - 1
    assert seconds_until_due(redis_client, job, finished) <= 600 + 1
    steps = schedule.intervals
    assert (job.retry_intervals or [])[1:] == [steps[max(len(steps) - left, 0)]
                                               for left in range(schedule.max - 1, 0, -1)]


def test_only_requests_to_the_provider_spend_the_follow_up_budget(
        worker_runtime: Runtime, redis_client: redis.Redis, sims: Any) -> None:
    config = worker_config(worker_runtime.settings.redis_url, sims.url)
    config["merchants"]["shop-eu"]["ixopay"]["max_follow_ups_per_minute"] = 1
    runtimes.install(Runtime(settings_from_dict(config, environ={}), worker_runtime.redis,
                             worker_runtime.http))
    # IXOPAY's signed callback is authoritative unless verify_with_status_api: no request,
    # so a sales peak of them is never held back by the cap
    for n in range(5):
        assert process_callback(ixopay(uuid_=f"peak-{n}"))["events"]
    assert len(events(redis_client)) == 5
