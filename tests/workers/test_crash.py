"""A worker killed at any line of the job, then the job run again: nothing lost, nothing twice.

The job (three facts: authorized, captured, refunded; four delivery jobs) first runs once
under a tracer that counts the lines it executes in workers/tasks.py and workers/events.py.
Then, for every N up to that count, a forked child runs the job and SIGKILLs itself when it
reaches its Nth line; the parent runs the job again, as RQ would, and checks what Redis
holds: the three events, each once, with sequences 1-3, and the four delivery jobs, each
queued once.
"""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Callable
from types import FrameType
from typing import Any

import pytest
import redis

from shared.sandbox.simulators import callbacks as build
from shared.sandbox.simulators.client import SimulatorClient
from shared.settings import Settings
from tests.helpers import NETAXEPT_PASSWORD, NETAXEPT_USER, ROOT, raw, stored_callback
from workers import runtime as runtimes
from workers.listing import recent_events
from workers.runtime import Runtime
from workers.tasks import process_callback

WORKERS = ROOT / "workers"
TRACED = {str(WORKERS / "tasks.py"), str(WORKERS / "events.py")}
Tracer = Callable[[FrameType, str, Any], Any]


def line_tracer(on_line: Callable[[], None]) -> Tracer:
    def trace(frame: FrameType, event: str, arg: Any) -> Tracer | None:
        if frame.f_code.co_filename not in TRACED:
            return None
        if event == "line":
            on_line()
        return trace

    return trace


def run_traced(callback: dict[str, Any], on_line: Callable[[], None]) -> None:
    sys.settrace(line_tracer(on_line))
    try:
        process_callback(callback)
    finally:
        sys.settrace(None)


def state(client: redis.Redis) -> tuple[list[tuple[str, int]], list[bytes]]:
    events = sorted((e.type.value, e.data.sequence)
                    for e in recent_events(client, "shop-eu", limit=100))
    return events, sorted(raw(job) for job in client.lrange("rq:queue:deliveries", 0, -1))


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_killed_at_any_line_then_run_again_loses_nothing_and_doubles_nothing(
    worker_runtime: Runtime, worker_settings: Settings, admin: SimulatorClient,
    redis_client: redis.Redis,
) -> None:
    admin.netaxept_transaction("tx-crash", "12002835", 10000, authorized=True, captured=6000,
                               credited=1000)
    callback = stored_callback(build.netaxept_callback(
        "shop-eu", "tx-crash", NETAXEPT_USER, NETAXEPT_PASSWORD), "shop-eu", "netaxept")

    process_callback(callback)  # warm up: caches (the delivery job template) filled, as in
    redis_client.flushdb()     # every forked child, so that all runs execute the same lines
    lines = [0]
    run_traced(callback, lambda: lines.__setitem__(0, lines[0] + 1))
    expected = state(redis_client)
    assert expected[0] == [("payment.authorized", 1), ("payment.captured", 2),
                           ("payment.refunded", 3)]
    assert len(expected[1]) == len(set(expected[1])) == 4
    assert lines[0] > 50

    for kill_at in range(1, lines[0] + 1):
        redis_client.flushdb()
        pid = os.fork()
        if pid == 0:  # the worker that dies
            runtimes.install(Runtime.from_settings(worker_settings))
            seen = [0]

            def count_or_die(seen: list[int] = seen, kill_at: int = kill_at) -> None:
                seen[0] += 1
                if seen[0] == kill_at:
                    os.kill(os.getpid(), signal.SIGKILL)

            run_traced(callback, count_or_die)
            os._exit(0)
        _, status = os.waitpid(pid, 0)
        assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL, kill_at
        process_callback(callback)  # RQ runs the abandoned job again
        assert state(redis_client) == expected, f"killed at line {kill_at}"
