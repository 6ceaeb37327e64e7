"""`payhooks bench delivery`: deliveries/s against an endpoint that answers at once, and
whether a hook that times out, or drips its answer, on every request slows the others down.

Redis (ours, no persistence) runs on CPU 1 with this process, which also serves the merchant
endpoint (`MerchantEndpoint`: `/fast` answers 200 at once, `/dead` never within the
timeout, `/drip` sends its status at once and then a byte every quarter of the timeout,
so that every read gets a byte in time and only the attempt's deadline ends it). Two
workers (`build_worker` SimpleWorkers on `deliveries`, with the scheduler) run on CPU 0.
Events and their delivery jobs are recorded as process_callback records them
(workers/events.py), then the workers start:

1. baseline: N deliveries to the fast hook. Rate = N / (first `started_at` to last
   `ended_at` of their jobs).
2. isolation: the same N, with one delivery to the dead hook after every ten. The fast
   hook's rate is measured the same way; the dead hook's deliveries time out, the hook is
   paused after `pause_after` failures, and its later deliveries wait unsent.
3. dripping: the same as 2 with the dripping hook in place of the dead one. How its
   deliveries ended is read from their records (`payhooks:delivery:*`, the state, and
   `payhooks:attempts:*`, each attempt's error) when the fast ones are done.
The ratios of 2 and 3 to 1 are the share of their speed the other hooks keep (target
>= 0.9, reported, not enforced).
"""

from __future__ import annotations

import contextlib
import os
import statistics
import sys
import tempfile
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import orjson
import redis

from shared.keys import attempts_key, delivery_key
from shared.models import Callback, EventType, Fact
from shared.sandbox.redis_server import RedisServer
from shared.sandbox.simulators.merchant import Answer, MerchantEndpoint
from shared.settings import Settings, load_settings
from tests.bench.ingress import BenchError
from tests.bench.worker import epoch, spawn, wait
from workers.events import delivery_job_id, record

CONFIG = """\
redis_url = "{redis}"
[logging]
format = "json"
[delivery]
timeout = "{timeout}s"
allow_private_networks = true
retry_schedule = ["1h"]
[[merchants.fast.hooks]]
id = "orders"
url = "{endpoint}/fast"
secret = "whsec_ZGVsaXZlcnktYmVuY2gta2V5"
[[merchants.dead.hooks]]
id = "orders"
url = "{endpoint}/dead"
secret = "whsec_ZGVsaXZlcnktYmVuY2gta2V5"
[[merchants.drip.hooks]]
id = "orders"
url = "{endpoint}/drip"
secret = "whsec_ZGVsaXZlcnktYmVuY2gta2V5"
"""
WORKERS = 2


@dataclass
class Phase:
    """One phase: the fast hook's rate, and how the other hook's deliveries ended."""

    rate: float
    states: Counter[str] = field(default_factory=Counter)  # the other hook's, by state
    attempts: int = 0  # attempts recorded to the other hook
    timeouts: int = 0  # of them, timeouts


def _record(client: redis.Redis, settings: Settings, merchant: str, n: int) -> str:
    """One event of `merchant` with one delivery job to its hook; the event's id."""
    now = datetime.now(UTC)
    callback = Callback(id=f"cb_bench{n}", merchant=merchant, provider="ixopay", method="POST",
                        uri="/", headers={}, body=b"{}", source="127.0.0.1", received_at=now,
                        reference=f"p-{n}")
    fact = Fact(EventType.CAPTURED, key="bench", payment_id=f"p-{merchant}-{n}",
                transaction_id=f"t-{n}", amount_minor=100 + n, currency="EUR")
    [event] = record(client, callback, [fact], settings.merchants[merchant].hooks,
                     settings.delivery.retry_schedule)
    return event.id


def _phase(client: redis.Redis, config: Path, directory: Path, count: int,
           other: str | None = None, every: int = 10) -> Phase:
    """Deliveries/s to the fast hook, with a delivery to the `other` merchant's hook (dead
    or drip) after every `every`."""
    client.flushdb()
    settings = load_settings(config, environ={})
    fast, others = [], []
    for n in range(count):
        fast.append(delivery_job_id(_record(client, settings, "fast", n), "orders"))
        if other is not None and n % every == every - 1:
            others.append(_record(client, settings, other, n))
    with contextlib.ExitStack() as stack:
        for index in range(WORKERS):
            spawn(stack, [sys.executable, "-m", "tests.bench.worker", "--worker", str(config),
                           "deliveries"], 0, directory / f"worker-{index}.log")
        wait(lambda: _finished(client, fast) == len(fast), 600,
              "the fast deliveries did not finish")
    pipe = client.pipeline(transaction=False)
    for job_id in fast:
        pipe.hmget(f"rq:job:{job_id}", ["started_at", "ended_at"])
    stamps = pipe.execute()
    first = min(epoch(started) for started, _ in stamps)
    last = max(epoch(ended) for _, ended in stamps)
    return _ended(client, others, Phase(count / (last - first)))


def _ended(client: redis.Redis, events: list[str], phase: Phase) -> Phase:
    """How the deliveries of `events` to their hook ended, from their records."""
    pipe = client.pipeline(transaction=False)
    for event in events:
        pipe.hget(delivery_key(event, "orders"), "state")
        pipe.lrange(attempts_key(event, "orders"), 0, -1)
    answers = pipe.execute()
    for state, attempts in zip(answers[::2], answers[1::2], strict=True):
        phase.states[state.decode() if state else "no record"] += 1
        errors = [orjson.loads(attempt)["error"] for attempt in attempts]
        phase.attempts += len(errors)
        phase.timeouts += errors.count("timeout")
    return phase


def _finished(client: redis.Redis, job_ids: list[str]) -> int:
    pipe = client.pipeline(transaction=False)
    for job_id in job_ids:
        pipe.hget(f"rq:job:{job_id}", "status")
    return sum(status == b"finished" for status in pipe.execute())


def run(deliveries: int = 3000, rounds: int = 3, timeout: float = 2.0) -> int:
    """Run the benchmark and print its figures; 0 when every fast delivery was made."""
    allowed = sorted(os.sched_getaffinity(0))
    os.sched_setaffinity(0, {allowed[-1]})
    baselines: list[float] = []
    isolated: list[float] = []
    dripping: list[Phase] = []
    try:
        with contextlib.ExitStack() as stack:
            directory = Path(stack.enter_context(tempfile.TemporaryDirectory(
                prefix="payhooks-bench-")))
            server = stack.enter_context(RedisServer())
            endpoint = stack.enter_context(MerchantEndpoint())
            endpoint.script("/dead", default=Answer(delay=timeout * 20))
            endpoint.script("/drip", default=Answer(drip=timeout / 4))
            config = directory / "payhooks.toml"
            config.write_text(CONFIG.format(redis=server.url, timeout=timeout,
                                            endpoint=endpoint.url))
            client = stack.enter_context(redis.Redis.from_url(server.url))
            for _ in range(rounds):
                baselines.append(_phase(client, config, directory, deliveries).rate)
                isolated.append(_phase(client, config, directory, deliveries, "dead").rate)
                dripping.append(_phase(client, config, directory, deliveries, "drip"))
            dead_requests = len(endpoint.requests_to("/dead"))
            drip_requests = len(endpoint.requests_to("/drip"))
    except (BenchError, redis.RedisError, OSError) as exc:
        print(f"bench: {exc.__class__.__name__}: {exc}", file=sys.stderr)
        return 1
    baseline, kept = statistics.median(baselines), statistics.median(isolated)
    kept_drip = statistics.median(phase.rate for phase in dripping)
    states: Counter[str] = sum((phase.states for phase in dripping), Counter())
    attempts = sum(phase.attempts for phase in dripping)
    timeouts = sum(phase.timeouts for phase in dripping)
    due = rounds * (deliveries // 10)
    print(f"payhooks delivery benchmark: {deliveries} deliveries a phase, {WORKERS} workers on "
          f"CPU 0, endpoint and Redis on CPU 1, timeout {timeout:g} s, medians of {rounds} "
          f"rounds\n"
          f"deliveries/s, endpoint answering at once            {baseline:8.1f} "
          f"({baseline / WORKERS:.1f} per worker)\n"
          f"deliveries/s to it, with a hook timing out beside  {kept:8.1f}\n"
          f"share of its rate kept                              {kept / baseline:8.2f}\n"
          f"requests the dead hook got (all rounds)             {dead_requests:8d} "
          f"of {due} deliveries due\n"
          f"deliveries/s to it, with a hook dripping beside    {kept_drip:8.1f}\n"
          f"share of its rate kept beside the dripping hook     {kept_drip / baseline:8.2f}\n"
          f"requests the dripping hook got (all rounds)         {drip_requests:8d} "
          f"of {due} deliveries due\n"
          f"attempts to it recorded, timeouts among them        {attempts:8d} "
          f"({timeouts} timeouts)\n"
          f"its deliveries by state when the fast ones were done: "
          f"{', '.join(f'{state} {n}' for state, n in sorted(states.items()))}\n"
          f"target: share kept >= 0.90: {'met' if kept / baseline >= 0.9 else 'NOT met'}\n"
          f"target: share kept beside the dripping hook >= 0.90: "
          f"{'met' if kept_drip / baseline >= 0.9 else 'NOT met'}")
    return 0


if __name__ == "__main__":
    sys.exit(run(int(sys.argv[1]) if len(sys.argv) > 1 else 3000))
