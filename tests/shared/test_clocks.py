"""What hosts share is timed by Redis's clock (shared/clock.py), shown with processes whose
clock is shifted by Debian's faketime (libfaketime), against the test's real Redis.

Before, a hook's pause and the trimming of the dead letters used each host's own clock: a
host two hours ahead took a paused hook for resumed, and a host 40 days ahead trimmed every
dead letter (they are kept 30 days)."""

from __future__ import annotations

import os
import subprocess
import sys

import redis

from shared.keys import DEAD_LETTERS
from shared.settings import DeliverySettings
from tests.helpers import ROOT, faketime_binary, make_settings
from workers.delivery import dead_letter, note_failure

AHEAD = """
import sys
import redis
from shared.errors import PayhooksError
from shared.settings import DeliverySettings
from tests.helpers import make_settings
from workers import delivery
client = redis.Redis.from_url(sys.argv[1])
[hook] = make_settings(sys.argv[1]).merchants["shop-eu"].hooks
try:
    delivery.wait_if_paused(client, "shop-eu", hook, DeliverySettings())
    print("attempted")
except PayhooksError as exc:
    print(exc.__class__.__name__)
delivery.dead_letter(client, "shop-eu", "orders", "evt_ahead", b"{}", 7, DeliverySettings())
"""


def run_ahead(shift: str, redis_url: str) -> str:
    done = subprocess.run(
        [faketime_binary(), "-f", shift, sys.executable, "-c", AHEAD, redis_url],
        cwd=ROOT, capture_output=True, text=True, timeout=60,
        env={**os.environ, "FAKETIME_DONT_FAKE_MONOTONIC": "1"}, check=True)
    return done.stdout.strip()


def test_a_host_whose_clock_is_ahead_keeps_pauses_and_dead_letters(
        redis_url: str, redis_client: redis.Redis) -> None:
    settings = DeliverySettings()
    [hook] = make_settings(redis_url).merchants["shop-eu"].hooks
    for _ in range(settings.pause_after):  # paused for a minute, by this host
        note_failure(redis_client, "shop-eu", hook, settings)
    dead_letter(redis_client, "shop-eu", "orders", "evt_now", b"{}", 7, settings)
    assert run_ahead("+2h", redis_url) == "HookPaused"  # still paused for it
    run_ahead("+40d", redis_url)
    members: list[bytes] = redis_client.zrange(DEAD_LETTERS, 0, -1)  # type: ignore[assignment]
    assert {member.split(b"|")[1] for member in members} == {
        b"evt_now", b"evt_ahead"}  # a dead letter of today is kept: 30 days of Redis's time
