"""The conformance corpus: real providers' callbacks and answers, end to end.

Each case's callback goes through the real ingress (`create_app`), then a real RQ worker
(forking, as `payhooks worker` runs) processes it, asking `AnswerServer` for the follow-up:
the provider's recorded answers. The events recorded, and the callback's outcome, must be
what the case's source reads from the same data.
"""

from __future__ import annotations

import copy
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from rq.job import Job, JobStatus
from rq.serializers import JSONSerializer

from ingress.app import create_app
from shared.keys import unsupported_key
from shared.queue import CALLBACKS
from shared.settings import Settings, settings_from_dict
from tests.conformance.harness import MERCHANT, AnswerServer, Case, all_cases
from tests.helpers import HOOK_SECRET, MERCHANT_CONFIG, raw
from workers import runtime as runtimes
from workers.listing import recent_events
from workers.worker import build_worker

CASES = all_cases()
_EVENT_FIELDS = ("type", "amount_minor", "currency", "order_id", "payment_id",
                 "transaction_id", "payment_method")


@pytest.fixture(scope="module")
def answers() -> Iterator[AnswerServer]:
    server = AnswerServer()
    yield server
    server.close()


def case_settings(case: Case, redis_url: str, base_url: str) -> Settings:
    """shop-eu with every provider's API at `base_url`, and the case's own settings."""
    merchant: dict[str, Any] = copy.deepcopy(MERCHANT_CONFIG["shop-eu"])
    for provider in ("ixopay", "ifthenpay", "netaxept", "payex"):
        merchant[provider]["base_url"] = base_url
    merchant[case.provider].update(case.settings)
    merchant["hooks"] = [{"id": "orders", "url": "http://127.0.0.1:9/hook",
                          "secret": HOOK_SECRET}]
    return settings_from_dict({"redis_url": redis_url, "merchants": {MERCHANT: merchant}},
                              environ={})


def outcome(client: redis.Redis, job_id: str) -> str:
    """What became of the callback job: recorded, unsupported, retry or rejected."""
    job = Job.fetch(job_id, connection=client, serializer=JSONSerializer)
    status = job.get_status()
    if status is JobStatus.FINISHED:  # kept with its reason when it gave no event
        return "unsupported" if client.exists(unsupported_key(job_id)) else "recorded"
    if status in (JobStatus.SCHEDULED, JobStatus.DEFERRED, JobStatus.QUEUED):
        return "retry"
    return "rejected" if status is JobStatus.FAILED else str(status)


def _describe(event: Any) -> dict[str, Any]:
    data = event.data
    return {"type": event.type.value, **{name: getattr(data, name) for name in _EVENT_FIELDS
                                         if name != "type"}}


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
async def test_case(case: Case, answers: AnswerServer, redis_url: str,
                    redis_client: redis.Redis, aiohttp_client: Any) -> None:
    settings = case_settings(case, redis_url, answers.url)
    answers.serve(case.answers)
    client = await aiohttp_client(create_app(settings))
    method, uri, headers, body = case.request()
    response = await client.request(method, uri, data=body, headers=headers)
    expect = case.expect
    assert response.status == expect["ingress"], await response.text()
    jobs = [raw(job).decode() for job in redis_client.lrange(f"rq:queue:{CALLBACKS}", 0, -1)]
    if response.status != 200:
        assert jobs == [], "a refused callback was stored"
        return
    assert len(jobs) == 1
    try:
        build_worker(settings, queues=(CALLBACKS,)).work(burst=True, with_scheduler=True)
    finally:
        runtimes.install(None)
    assert outcome(redis_client, jobs[0]) == expect["outcome"], answers.asked
    recorded = [_describe(e) for e in reversed(recent_events(redis_client, MERCHANT))]
    wanted = expect.get("events") or []
    assert len(recorded) == len(wanted), (recorded, wanted)
    for got, want in zip(recorded, wanted, strict=True):
        assert {name: got[name] for name in want} == want, (recorded, wanted)


def test_the_corpus_is_broad_and_sourced() -> None:
    """At least 40 cases from at least 12 distinct sources, every case citing one, and every
    canonical event type each provider can give shown by some case."""
    sources: set[str] = set()
    for case in CASES:
        assert case.sources, f"{case.name} names no source"
        for source in case.sources:
            assert (source.get("repo") and source.get("path")) or source.get("doc"), case.name
            sources.add(source.get("repo") or source.get("doc", ""))
    assert len(CASES) >= 40
    assert len(sources) >= 12, sorted(sources)
    shown = Counter((case.provider, event["type"]) for case in CASES
                    for event in case.expect.get("events") or [])
    can_give = {
        "ixopay": {"pending", "authorized", "captured", "refunded", "voided", "failed",
                   "chargeback", "chargeback_reversed"},
        "ifthenpay": {"captured", "refunded"},
        "netaxept": {"pending", "authorized", "captured", "refunded", "voided", "failed"},
        "payex": {"pending", "authorized", "captured", "refunded", "voided", "failed"},
    }
    for provider, types in can_give.items():
        missing = {t for t in types if (provider, f"payment.{t}") not in shown}
        assert not missing, f"{provider}: no case gives {sorted(missing)}"
