"""`payhooks bench delivery`: deliveries/s against an endpoint that answers at once, and
whether a hook that times out on every request slows the others down.

Redis (ours, no persistence) runs on CPU 1 with this process, which also serves the merchant
endpoint (`MerchantEndpoint`: `/fast` answers 200 at once, `/dead` never within the
timeout). Two workers (`build_worker` SimpleWorkers on `deliveries`, with the scheduler)
run on CPU 0. Events and their delivery jobs are recorded as process_callback records them
(workers/events.py), then the workers start:

1. baseline: N deliveries to the fast hook. Rate = N / (first `started_at` to last
   `ended_at` of their jobs).
2. isolation: the same N, with one delivery to the dead hook after every ten. The fast
   hook's rate is measured the same way; the dead hook's deliveries time out, the hook is
   paused after `pause_after` failures, and its later deliveries wait unsent.
The ratio of 2 to 1 is the share of their speed the other hooks keep (target >= 0.9,
reported, not enforced).
"""

from __future__ import annotations

import contextlib
import os
import statistics
import sys
import tempfile
from datetime import UTC, datetime
from pathlib import Path

import redis

from ingress.bench import BenchError
from shared.models import Callback, EventType, Fact
from shared.redis_server import RedisServer
from shared.settings import Settings, load_settings
from shared.simulators.merchant import Answer, MerchantEndpoint
from workers.bench import _epoch, _spawn, _wait
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
"""
WORKERS = 2


def _record(client: redis.Redis, settings: Settings, merchant: str, n: int) -> str:
    """One event of `merchant` with one delivery job; its delivery job id."""
    now = datetime.now(UTC)
    callback = Callback(id=f"cb_bench{n}", merchant=merchant, provider="ixopay", method="POST",
                        uri="/", headers={}, body=b"{}", source="127.0.0.1", received_at=now,
                        reference=f"p-{n}")
    fact = Fact(EventType.CAPTURED, key="bench", payment_id=f"p-{merchant}-{n}",
                transaction_id=f"t-{n}", amount_minor=100 + n, currency="EUR")
    [event] = record(client, callback, [fact], settings.merchants[merchant].hooks,
                     settings.delivery.retry_schedule)
    return delivery_job_id(event.id, "orders")


def _phase(client: redis.Redis, config: Path, directory: Path, count: int, dead_every: int
           ) -> float:
    """Deliveries/s to the fast hook, with a dead hook's delivery after every `dead_every`."""
    client.flushdb()
    settings = load_settings(config, environ={})
    fast = []
    for n in range(count):
        fast.append(_record(client, settings, "fast", n))
        if dead_every and n % dead_every == dead_every - 1:
            _record(client, settings, "dead", n)
    with contextlib.ExitStack() as stack:
        for index in range(WORKERS):
            _spawn(stack, [sys.executable, "-m", "workers.bench", "--worker", str(config),
                           "deliveries"], 0, directory / f"worker-{index}.log")
        _wait(lambda: _finished(client, fast) == len(fast), 600,
              "the fast deliveries did not finish")
    pipe = client.pipeline(transaction=False)
    for job_id in fast:
        pipe.hmget(f"rq:job:{job_id}", ["started_at", "ended_at"])
    stamps = pipe.execute()
    first = min(_epoch(started) for started, _ in stamps)
    last = max(_epoch(ended) for _, ended in stamps)
    return count / (last - first)


def _finished(client: redis.Redis, job_ids: list[str]) -> int:
    pipe = client.pipeline(transaction=False)
    for job_id in job_ids:
        pipe.hget(f"rq:job:{job_id}", "status")
    return sum(status == b"finished" for status in pipe.execute())


def run(deliveries: int = 3000, rounds: int = 3, timeout: float = 2.0) -> int:
    """Run the benchmark and print its figures; 0 when every fast delivery was made."""
    allowed = sorted(os.sched_getaffinity(0))
    os.sched_setaffinity(0, {allowed[-1]})
    baselines, isolated, dead_requests = [], [], 0
    try:
        with contextlib.ExitStack() as stack:
            directory = Path(stack.enter_context(tempfile.TemporaryDirectory(
                prefix="payhooks-bench-")))
            server = stack.enter_context(RedisServer())
            endpoint = stack.enter_context(MerchantEndpoint())
            endpoint.script("/dead", default=Answer(delay=timeout * 20))
            config = directory / "payhooks.toml"
            config.write_text(CONFIG.format(redis=server.url, timeout=timeout,
                                            endpoint=endpoint.url))
            client = stack.enter_context(redis.Redis.from_url(server.url))
            for _ in range(rounds):
                baselines.append(_phase(client, config, directory, deliveries, 0))
                isolated.append(_phase(client, config, directory, deliveries, 10))
            dead_requests = len(endpoint.requests_to("/dead"))
    except (BenchError, redis.RedisError, OSError) as exc:
        print(f"bench: {exc.__class__.__name__}: {exc}", file=sys.stderr)
        return 1
    baseline, kept = statistics.median(baselines), statistics.median(isolated)
    print(f"payhooks delivery benchmark: {deliveries} deliveries a phase, {WORKERS} workers on "
          f"CPU 0, endpoint and Redis on CPU 1, timeout {timeout:g} s, medians of {rounds} "
          f"rounds\n"
          f"deliveries/s, endpoint answering at once            {baseline:8.1f} "
          f"({baseline / WORKERS:.1f} per worker)\n"
          f"deliveries/s to it, with a hook timing out beside  {kept:8.1f}\n"
          f"share of its rate kept                              {kept / baseline:8.2f}\n"
          f"requests the dead hook got (all rounds)             {dead_requests:8d} "
          f"of {rounds * (deliveries // 10)} deliveries due\n"
          f"target: share kept >= 0.90: {'met' if kept / baseline >= 0.9 else 'NOT met'}")
    return 0


if __name__ == "__main__":
    sys.exit(run(int(sys.argv[1]) if len(sys.argv) > 1 else 3000))
