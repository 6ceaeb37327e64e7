"""`payhooks chaos --quick`: the real system under faults accounts for every callback.

The first test runs the command as a user would (about a minute and a half) and reads its
counts. The others show that the account catches what it is meant to catch: an event
missing, a fact under a second id, an event for a forged callback, a bad signature, a
secret in a log line, a slow answer while Redis stalled, and a dripping hook's delivery
that has no record or held its worker past the deadline.
"""

from __future__ import annotations

import re
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import orjson
import pytest
import redis
from standardwebhooks import Webhook

from shared.keys import attempts_key, delivery_key
from shared.sandbox.simulators import callbacks as build
from shared.sandbox.simulators.client import SimulatorClient
from shared.sandbox.simulators.merchant import MerchantEndpoint, Received
from tests.chaos import run as chaos
from tests.chaos.run import DRIP_HOOK, Outgoing, System, Tally
from tests.helpers import ROOT, secrets_in

PROJECT = ROOT


def counts(output: str) -> dict[str, int]:
    return {match[1].strip(): int(match[2])
            for match in re.finditer(r"^(\s*[a-zA-Z(].*?)\s{2,}(\d+)$", output, re.M)}


def test_the_quick_chaos_run_loses_nothing_doubles_nothing_and_trusts_no_forgery() -> None:
    done = subprocess.run([sys.executable, "-m", "shared.cli", "chaos", "--quick", "--seed", "7"],
                          capture_output=True, text=True, cwd=PROJECT, timeout=480, check=False)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    found = counts(done.stdout)
    assert found["callbacks sent (genuine)"] == 400
    assert found["acknowledged (answered 200)"] == 400
    assert found["events delivered, signature verified"] == found[
        "events expected from acknowledged callbacks"] >= 400
    assert found["lost (acknowledged, events missing)"] == 0
    assert found["facts delivered under two event ids"] == 0
    assert found["events from forged callbacks"] == 0
    assert found["forged callbacks sent"] == 20
    assert found["Netaxept payments refunded, then called back"] > 0
    assert found["answered 5xx other than 503"] == 0
    assert found["secrets found in them"] == 0
    # the faults happened
    assert found["workers SIGKILLed"] >= 3
    assert found["Redis restarts (AOF, appendfsync always)"] == 2
    assert found["answered 503 (Redis down), then resent"] > 0
    # Redis stalled: every request in flight meanwhile had its answer within the promise
    assert found["Redis stalls (SIGSTOP), seconds in all"] >= 5
    stalled = found["requests in flight during a stall"]
    assert stalled >= 20 and found["answered 503"] > 0
    assert found["answered 503"] + found["answered 200"] + found[
        "answered 4xx (forged: refused, not stored)"] == stalled
    assert found["answered after 3 s or not at all"] == 0
    assert found["slowest answer, ms"] < 3000
    # follow-ups dripped, and their callbacks were processed all the same (nothing lost)
    assert found["follow-up answers dripped, cut off, retried"] > 0
    # the dripping hook: every refund has its delivery there, every attempt a timeout
    # within the deadline (5 s), none delivered, and the main hook's account is whole
    deliveries = found["deliveries to the dripping hook (refunds)"]
    assert deliveries >= 5
    assert 1 <= found["attempts recorded"] == found["ended as timeouts"]
    assert found["attempts recorded"] <= found["requests the dripping endpoint received"]
    assert 4500 <= found["longest, ms"] < 6000
    assert found["delivered"] == 0
    assert deliveries == (found["dead-lettered, retries used up"] + found[
        "retrying, next attempt scheduled"] + found["waiting, the hook failing or paused"])
    assert "nothing lost, nothing doubled, nothing forged" in done.stdout
    assert secrets_in(done.stdout + done.stderr) == []


def event(provider: str, payment: str, kind: str, event_id: str) -> bytes:
    return orjson.dumps({"id": event_id, "type": kind, "timestamp": "2026-11-21T10:00:00Z",
                         "data": {"provider": provider, "payment_id": payment}})


def signed(body: bytes, event_id: str, secret: str = chaos.SECRETS["hook"]) -> Received:
    now = datetime.now(UTC).replace(microsecond=0)
    signature = Webhook(secret).sign(event_id, now, body.decode())
    headers = {"webhook-id": event_id, "webhook-timestamp": str(int(now.timestamp())),
               "webhook-signature": signature}
    return Received("/events", headers, body, time.time())


@pytest.fixture
def system(tmp_path: Path, redis_client: redis.Redis, redis_url: str) -> System:
    endpoint = MerchantEndpoint(verify_secret=chaos.SECRETS["hook"])
    return System(tmp_path, tmp_path / "payhooks.toml", None, redis_client,
                  SimulatorClient("http://127.0.0.1:9"), endpoint)


def outgoing(provider: str, payment: str, forged: bool = False) -> Outgoing:
    callback = build.netaxept_callback(chaos.MERCHANT, payment)
    return Outgoing((provider, payment), callback, forged, statuses=[200])


def test_the_account_finds_what_is_lost_doubled_forged_unsigned_or_leaked(
    system: System
) -> None:
    items = [outgoing("netaxept", "t-1"), outgoing("payex", "/psp/p-2"),
             outgoing("ixopay", "u-3"), outgoing("netaxept", "t-4", forged=True)]
    system.endpoint.received += [
        signed(event("netaxept", "t-1", "payment.authorized", "evt_a"), "evt_a"),
        signed(event("netaxept", "t-1", "payment.captured", "evt_b"), "evt_b"),
        signed(event("netaxept", "t-1", "payment.captured", "evt_b"), "evt_b"),  # a retry: fine
        signed(event("payex", "/psp/p-2", "payment.captured", "evt_c"), "evt_c"),
        signed(event("payex", "/psp/p-2", "payment.captured", "evt_d"), "evt_d"),  # doubled
        # u-3's event never came: lost
        signed(event("netaxept", "t-4", "payment.captured", "evt_e"), "evt_e"),  # forged
        signed(event("ixopay", "u-3", "payment.captured", "evt_f"), "evt_f", "whsec_" + "eA=="),
    ]
    (system.directory / "worker-1.log").write_text(f'{{"token": "{chaos.SECRETS["payex"]}"}}\n')

    result = chaos.account(system, items)

    assert result.lost == [("ixopay", "u-3")]
    assert result.split_facts == [("payex", "/psp/p-2", "payment.captured")]
    assert result.forged_events == 1
    assert result.unverified == 1
    assert result.secrets_found == ["payex in worker-1.log"]
    problems = result.problems(Tally())
    assert len(problems) == 5, problems


def test_the_account_of_a_clean_run_has_no_problem(system: System) -> None:
    items = [outgoing("payex", "/psp/p-1")]
    system.endpoint.received.append(
        signed(event("payex", "/psp/p-1", "payment.captured", "evt_a"), "evt_a"))
    result = chaos.account(system, items)
    assert result.problems(Tally()) == []
    assert (result.expected_events, result.delivered_events) == (1, 1)


def test_the_account_finds_slow_answers_in_a_stall_and_dripping_deliveries_gone_wrong(
    system: System, redis_client: redis.Redis
) -> None:
    items = [Outgoing(("netaxept", f"t-{n}"), build.netaxept_callback(chaos.MERCHANT, f"t-{n}"),
                      statuses=[200], events=1) for n in (1, 2)]
    system.endpoint.received += [
        signed(event("netaxept", "t-1", "payment.refunded", "evt_r1"), "evt_r1"),
        signed(event("netaxept", "t-2", "payment.refunded", "evt_r2"), "evt_r2"),
    ]
    # evt_r1's delivery to the dripping hook: one attempt that was not a timeout and held
    # its worker 9 s; evt_r2's: no record at all
    redis_client.hset(delivery_key("evt_r1", DRIP_HOOK), "state", "retrying")
    redis_client.rpush(attempts_key("evt_r1", DRIP_HOOK), orjson.dumps(
        {"at": 0, "status": 200, "error": None, "duration_ms": 9000.0}))
    tally = Tally(stalls=[(100.0, 106.0)], answers=[
        (101.0, 1.9, 503), (99.5, 4.2, 503), (102.0, 0.5, None), (107.0, 0.1, 200)])

    result = chaos.account(system, items)

    assert (result.drip.expected, result.drip.deliveries) == (2, 1)
    assert (result.drip.attempts, result.drip.timeouts) == (1, 0)
    assert len(tally.during_stalls()) == 3  # the one sent after the stall is not counted
    problems = result.problems(tally)
    assert len(problems) == 4, problems
    assert "2 requests answered after 3 s or not at all" in problems[0]
