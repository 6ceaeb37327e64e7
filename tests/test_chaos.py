"""`payhooks chaos --quick`: the real system under faults accounts for every callback.

The first test runs the command as a user would (about a minute and a half) and reads its
counts. The others show that the account catches what it is meant to catch: an event
missing, a fact under a second id, an event for a forged callback, a bad signature, and a
secret in a log line.
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

from shared import chaos
from shared.chaos import Outgoing, System, Tally
from shared.simulators import callbacks as build
from shared.simulators.client import SimulatorClient
from shared.simulators.merchant import MerchantEndpoint, Received
from tests.helpers import secrets_in

PROJECT = Path(__file__).resolve().parent.parent


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
    return System(tmp_path, tmp_path / "payhooks.toml", None, redis_client,  # type: ignore[arg-type]
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
