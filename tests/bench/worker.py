"""`payhooks bench worker`: one worker's process_callback rate next to RQ's own, and the time
from the ingress's 200 to a callback's delivery jobs. Redis (ours, no persistence) and the
provider simulators (`python -m shared.sandbox.simulators`, answering at once) run as processes.

1. RQ's no-op rate, the ceiling: N jobs of `noop`, shaped like callback jobs (the ingress's
   template, options, payloads and enqueue script), run by one `build_worker` worker (its
   default concurrency) in burst mode. Jobs/s = N / (first `started_at` to last
   `ended_at` in the job hashes).
2. process_callback's rate: N callbacks, a quarter per provider (Netaxept authorized and
   captured: two events; a PayEx payment with a completed Sale; IXOPAY DEBIT OK, which is
   authoritative; ifthenpay paid), verified and stored as the ingress does, run and timed
   the same way on `callbacks`. Two hooks take every event: two delivery jobs an event
   (the callback job makes no first attempts here, `[worker] inline_first_attempt =
   false`: steps 1-3 measure it up to its delivery jobs; the comparison that follows
   measures the whole work, deliveries included, with the defaults).
   Every callback must give its events and no job may fail, else exit code 1. Steps 1 and
   2 alternate for `rounds` rounds on a flushed Redis (this VM's speed drifts): medians.
3. End to end: the real ingress and one continuous worker (with the scheduler) take fresh
   callbacks sent open-loop, after a warm-up, at half of step 2's rate by an aiohttp client
   in this process. Latency = the `enqueued_at` RQ stamps on the last delivery job of the
   callback's events (in the worker, just before the MULTI/EXEC that stores it) minus the
   wall-clock time this process got the ingress's 200; events are matched to callbacks by
   provider and payment id. Each must be answered 200 and reach its deliveries.

Cores (2): CPU 0 runs only what is measured: the worker (steps 1-2), the ingress and the
worker (step 3). CPU 1 runs the simulators, Redis and this process (set-up, load generator),
as providers, Redis and senders would on other hosts. The header shows the Redis round trip
from CPU 0: RQ's worker waits for about 18 replies per job, so it bounds the ceiling.

Targets, reported and not enforced: process_callback >= 0.7 of the no-op rate; p99 <= 50 ms.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import os
import platform
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import aiohttp
import httpx
import redis
from rq.job import Job
from rq.registry import FailedJobRegistry
from rq.serializers import JSONSerializer
from rq.utils import utcparse
from yarl import URL

from shared import queue as queues
from shared.keys import ALL_EVENTS
from shared.models import callback_json, new_callback_id, utcnow
from shared.providers import build_providers
from shared.sandbox.processes import answers, clean_env, stop, wait_until
from shared.sandbox.redis_server import RedisServer, free_port
from shared.sandbox.simulators import callbacks as build
from shared.sandbox.simulators.callbacks import OutgoingCallback
from shared.sandbox.simulators.client import SimulatorClient
from shared.settings import Settings, load_settings
from tests.bench.ingress import BenchError, cpu_model, package_version, pin
from workers.events import delivery_job_id
from workers.listing import recent_events

if TYPE_CHECKING:
    from tests.bench import compare

MERCHANT, NETAXEPT_ID, HOOKS = "bench", "12002835", ("orders", "ledger")  # as in CONFIG
IXOPAY_SECRET = "bench-ixopay-shared-secret"
IFTHENPAY_KEY, NETAXEPT_TOKEN, PAYEX_TOKEN = "bench-key", "bench-netaxept", "bench-payex"
EVENTS = {"netaxept": 2, "payex": 1, "ixopay": 1, "ifthenpay": 1}  # events per callback
PROVIDERS = tuple(EVENTS)
NOOP_QUEUE, NOOP = "bench-noop", "tests.bench.worker.noop"
TARGET_RATIO, TARGET_P99_MS, LOAD_SHARE, WARMUP = 0.7, 50.0, 0.5, 40
_PROJECT = Path(__file__).resolve().parents[2]
CONFIG = """\
redis_url = "{redis}"
logging = {{ level = "info", format = "json" }}
delivery = {{ allow_private_networks = true }}
# steps 1-3 measure process_callback up to its delivery jobs: no first attempts of its own
worker = {{ inline_first_attempt = false }}

# max_follow_ups_per_minute: measured here is the throughput, not the flood cap (600)
[merchants.bench]
ixopay = {{ shared_secret = "{ixopay}", base_url = "{sims}" }}
ifthenpay = {{ anti_phishing_key = "{ifthenpay}", base_url = "{sims}" }}
netaxept = {{ merchant_id = "{netaxept_id}", token = "{netaxept}", base_url = "{sims}", \
max_follow_ups_per_minute = 1000000 }}
payex = {{ token = "{payex}", base_url = "{sims}", max_follow_ups_per_minute = 1000000 }}
hooks = [
  {{ id = "orders", url = "http://127.0.0.1:9/orders", secret = "whsec_MfKQ9r8GKYqrTwjUPD8I" }},
  {{ id = "ledger", url = "http://127.0.0.1:9/ledger", secret = "whsec_MfKQ9r8GKYqrTwjUPD8I" }},
]
"""
Key = tuple[str, str]  # provider, payment id: what ties an event to the callback sent
Keyed = Sequence[tuple[Key, OutgoingCallback]]


def noop(*args: object) -> None:
    """The job of the ceiling: takes a stored callback and does nothing with it."""


@dataclass
class Bench:
    directory: Path
    config: Path
    settings: Settings
    redis: redis.Redis
    admin: SimulatorClient
    cpus: tuple[int, int]  # (what is measured, everything else)


def wait(ready: Callable[[], bool], seconds: float, what: str | Callable[[], str]) -> None:
    wait_until(ready, seconds, what, BenchError)


def tail(log: Path) -> str:
    return log.read_text(errors="replace")[-2000:]


def spawn(stack: contextlib.ExitStack, argv: list[str], cpu: int, log: Path,
           ready: str | None = None) -> None:
    """Start a process pinned to `cpu`, stopped when `stack` closes; wait until `ready`
    answers a GET with 200."""
    with log.open("wb") as stderr:
        process = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=stderr,
                                   env=clean_env(), cwd=_PROJECT, preexec_fn=pin(cpu))
    stack.callback(stop, process)
    if ready is not None:
        wait(lambda: process.poll() is None and answers(ready), 30,
              lambda: f"{' '.join(argv[1:4])} did not start:\n{tail(log)}")


def _worker_argv(bench: Bench, queue: str, *burst: str) -> list[str]:
    return [sys.executable, "-m", "tests.bench.worker", "--worker", str(bench.config), queue,
            *burst]


def start(stack: contextlib.ExitStack, cpus: tuple[int, int]) -> Bench:
    """Redis and the simulators (credentials registered) on cpus[1], and the config."""
    directory = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="payhooks-bench-")))
    server = stack.enter_context(RedisServer())
    if server.process is not None:  # pin every thread: Redis starts its I/O threads early
        for task in Path(f"/proc/{server.process.pid}/task").iterdir():
            os.sched_setaffinity(int(task.name), {cpus[1]})
    sims = f"http://127.0.0.1:{free_port()}"
    spawn(stack, [sys.executable, "-m", "shared.sandbox.simulators", "--port",
                   sims.split(":")[-1]], cpus[1], directory / "simulators.log",
           f"{sims}/_sim/faults")
    config = directory / "payhooks.toml"
    config.write_text(CONFIG.format(
        redis=server.url, sims=sims, ixopay=IXOPAY_SECRET, ifthenpay=IFTHENPAY_KEY,
        netaxept_id=NETAXEPT_ID, netaxept=NETAXEPT_TOKEN, payex=PAYEX_TOKEN))
    admin = stack.enter_context(SimulatorClient(sims))
    admin.netaxept_credentials(NETAXEPT_ID, NETAXEPT_TOKEN)
    admin.payex_token(PAYEX_TOKEN)
    client = stack.enter_context(redis.Redis.from_url(server.url))
    return Bench(directory, config, load_settings(config, environ={}), client, admin, cpus)


def _round_trip_ms(bench: Bench, pings: int = 500) -> float:
    """The mean time of a PING from the worker's CPU to Redis."""
    os.sched_setaffinity(0, {bench.cpus[0]})
    start = time.perf_counter()
    for _ in range(pings):
        bench.redis.ping()
    elapsed = time.perf_counter() - start
    os.sched_setaffinity(0, {bench.cpus[1]})
    return elapsed / pings * 1000


def outgoing(admin: SimulatorClient, n: int) -> tuple[Key, OutgoingCallback]:
    """Callback n (the providers in turn), its payment registered with the simulators first."""
    provider, ref = PROVIDERS[n % len(PROVIDERS)], secrets.token_hex(10)
    if provider == "netaxept":
        admin.netaxept_transaction(ref, NETAXEPT_ID, 5000, currency="NOK", authorized=True,
                                   captured=5000, order_number=f"order-{n}")
        return (provider, ref), build.netaxept_callback(MERCHANT, ref)
    if provider == "payex":
        payment = admin.payex_payment(1500, transactions=[
            {"type": "Sale", "state": "Completed", "amount": 1500}])
        sale = payment["transactions"][0]
        return (provider, payment["path"]), build.payex_callback(
            MERCHANT, payment_id=payment["path"], transaction_id=sale["typed_path"],
            number=sale["number"])
    if provider == "ixopay":
        return (provider, ref), build.ixopay_callback(
            MERCHANT, IXOPAY_SECRET, uuid=ref, merchant_transaction_id=f"order-{n}")
    return (provider, ref), build.ifthenpay_callback(
        MERCHANT, IFTHENPAY_KEY, order_id=str(n), amount="12.34", request_id=ref,
        payment_datetime="03-01-2024 15:15:16")


def stored_jobs(bench: Bench, keyed: Keyed) -> list[queues.PendingJob]:
    """Each callback as the ingress stores it: verified, then its Callback JSON."""
    providers = build_providers(bench.settings.merchants[MERCHANT])
    stored = []
    for (provider, _), outgoing in keyed:
        incoming = outgoing.to_incoming()
        accepted = providers[provider].verify(incoming)
        callback_id = new_callback_id()
        stored.append((callback_id, callback_json(
            id=callback_id, merchant=MERCHANT, provider=provider, method=incoming.method,
            uri=accepted.uri, headers=accepted.headers, body=incoming.body,
            source=incoming.source, received_at=utcnow(), reference=accepted.reference),
            f"{provider} callback {callback_id} for {MERCHANT}"))
    return stored


def enqueue(bench: Bench, template: queues.JobTemplate, stored: list[queues.PendingJob]
             ) -> None:
    script = bench.redis.register_script(queues.ENQUEUE_SCRIPT)
    pending = [(job_id, template.data(data), text) for job_id, data, text in stored]
    for start in range(0, len(pending), 500):
        script(args=template.script_args(pending[start:start + 500]))


def epoch(stamp: bytes | None) -> float:
    if not stamp:
        raise BenchError("a job was not run")
    return utcparse(stamp.decode()).timestamp()


def _burst(bench: Bench, queue: str, ids: list[str]) -> float:
    """Run one burst worker on `queue` (on CPU 0) until it is empty; its jobs/s."""
    log = bench.directory / f"worker-{queue}.log"
    with log.open("wb") as stderr:
        done = subprocess.run(_worker_argv(bench, queue, "--burst"), stdout=subprocess.DEVNULL,
                              stderr=stderr, env=clean_env(), cwd=_PROJECT, timeout=900,
                              preexec_fn=pin(bench.cpus[0]), check=False)
    if done.returncode != 0:
        raise BenchError(f"the worker exited with {done.returncode}:\n{tail(log)}")
    pipe = bench.redis.pipeline(transaction=False)
    for job_id in ids:
        pipe.hmget(Job.redis_job_namespace_prefix + job_id, "started_at", "ended_at")
    times = [(epoch(start), epoch(end)) for start, end in pipe.execute()]
    return len(ids) / (max(end for _, end in times) - min(start for start, _ in times))


def _failed(bench: Bench) -> int:
    return FailedJobRegistry(queues.CALLBACKS, connection=bench.redis,
                             serializer=JSONSerializer).count


def _expected(keyed: Keyed) -> Counter[str]:
    """The events these callbacks give, by provider."""
    return Counter({p: n * EVENTS[p] for p, n in Counter(p for (p, _), _ in keyed).items()})


def _check(bench: Bench, keyed: Keyed) -> list[str]:
    """What is wrong after processing these callbacks: failed jobs, events, deliveries."""
    found = Counter(e.data.provider for e in recent_events(bench.redis, None, 10**7))
    problems = [f"{_failed(bench)} failed callback jobs"] if _failed(bench) else []
    problems += [f"{provider}: {found[provider]} events, expected {n}"
                 for provider, n in _expected(keyed).items() if found[provider] != n]
    deliveries = bench.redis.llen(f"rq:queue:{queues.DELIVERIES}")
    if deliveries != sum(_expected(keyed).values()) * len(HOOKS):
        problems.append(f"{deliveries} delivery jobs for {sum(found.values())} events")
    return problems


def _rounds(bench: Bench, count: int, rounds: int) -> tuple[float, float, list[str]]:
    """Alternate no-op and process_callback runs; their median rates and any problem."""
    keyed = [outgoing(bench.admin, n) for n in range(count)]
    stored = stored_jobs(bench, keyed)
    ids = [job_id for job_id, _, _ in stored]
    noops: list[float] = []
    rates: list[float] = []
    runs = ((NOOP_QUEUE, queues.JobTemplate(NOOP_QUEUE, NOOP, queues.CALLBACK_JOB_OPTIONS),
             noops), (queues.CALLBACKS, queues.callback_template(), rates))
    problems = []
    for number in range(1, rounds + 1):
        for queue, template, measured in runs:
            bench.redis.flushdb()
            enqueue(bench, template, stored)
            measured.append(_burst(bench, queue, ids))
        problems += _check(bench, keyed)
        print(f"round {number}: no-op {noops[-1]:.1f} jobs/s, process_callback "
              f"{rates[-1]:.1f} callbacks/s", flush=True)
    return statistics.median(noops), statistics.median(rates), problems


async def send(url: str, keyed: Keyed, rate: float) -> tuple[dict[Key, float], float]:
    """Send the callbacks open-loop, one every 1/rate s: when each 200 came, the rate sent."""
    acks: dict[Key, float] = {}

    async def one(session: aiohttp.ClientSession, key: Key, callback: OutgoingCallback) -> None:
        async with session.request(callback.method, URL(url + callback.path, encoded=True),
                                   data=callback.body or None, headers=callback.headers) as r:
            if r.status == 200:
                acks[key] = time.time()
            await r.read()

    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        tasks, start = [], time.monotonic()
        for n, (key, callback) in enumerate(keyed):
            await asyncio.sleep(max(0.0, start + n / rate - time.monotonic()))
            tasks.append(asyncio.create_task(one(session, key, callback)))
        sent = time.monotonic() - start
        await asyncio.gather(*tasks, return_exceptions=True)
    return acks, (len(keyed) - 1) / sent if sent else 0.0


def _settle(bench: Bench, events: int) -> None:
    """Wait (a minute at most) until the worker has recorded `events` events or failed a job."""
    with contextlib.suppress(BenchError):  # what is missing is reported by _check
        wait(lambda: bench.redis.zcard(ALL_EVENTS) >= events or _failed(bench) > 0, 60, "")


def _delivered(bench: Bench) -> dict[Key, float]:
    """By payment: the latest `enqueued_at` of the delivery jobs of its events."""
    events = recent_events(bench.redis, None, 10**7)
    pipe = bench.redis.pipeline(transaction=False)
    for event in events:
        for hook in HOOKS:
            pipe.hget(Job.redis_job_namespace_prefix + delivery_job_id(event.id, hook),
                      "enqueued_at")
    stamps, done = iter(pipe.execute()), dict[Key, float]()
    for event in events:
        key = (event.data.provider, event.data.payment_id)
        for _ in HOOKS:
            done[key] = max(done.get(key, 0.0), epoch(next(stamps)))
    return done


@dataclass(frozen=True)
class RedisCost:
    """What Redis itself spent on the measured callbacks, from its INFO before and after:
    its CPU (user and system) and the commands it ran, per callback, end to end (the
    ingress's store, the worker's processing, the deliveries to every hook)."""

    cpu_us: float
    commands: float

    @property
    def per_core(self) -> float:
        """Callbacks a second that one Redis core carries at that cost."""
        return 1e6 / self.cpu_us if self.cpu_us else math.inf


def _redis_totals(client: redis.Redis) -> tuple[float, int]:
    cpu, stats = client.info("cpu"), client.info("stats")
    return (float(cpu["used_cpu_user"]) + float(cpu["used_cpu_sys"]),
            int(stats["total_commands_processed"]))


def _e2e(bench: Bench, rate: float, seconds: float
         ) -> tuple[float, list[float], list[str], RedisCost]:
    """The ingress and a continuous worker on CPU 0; fresh callbacks at `rate` for `seconds`
    after a warm-up; the latency of each, in ms, and Redis's own cost per callback."""
    bench.redis.flushdb()
    warm = [outgoing(bench.admin, n) for n in range(WARMUP)]
    keyed = [outgoing(bench.admin, WARMUP + n) for n in range(max(4, round(rate * seconds)))]
    with contextlib.ExitStack() as stack:
        port = free_port()
        spawn(stack, [sys.executable, "-m", "shared.cli", "ingress", "--config",
                       str(bench.config), "--host", "127.0.0.1", "--port", str(port)],
               bench.cpus[0], bench.directory / "ingress.log", f"http://127.0.0.1:{port}/healthz")
        spawn(stack, _worker_argv(bench, queues.CALLBACKS), bench.cpus[0],
               bench.directory / "worker-e2e.log")
        wait(lambda: bench.redis.scard("rq:workers") > 0, 30, "the worker did not start")
        for sent, total in ((warm, warm), (keyed, [*warm, *keyed])):
            before = _redis_totals(bench.redis)
            acks, achieved = asyncio.run(send(f"http://127.0.0.1:{port}", sent, rate))
            _settle(bench, sum(_expected(total).values()))
            after = _redis_totals(bench.redis)
    cost = RedisCost(cpu_us=(after[0] - before[0]) * 1e6 / len(keyed),
                     commands=(after[1] - before[1]) / len(keyed))
    done = _delivered(bench)
    latencies = [(done[key] - ack) * 1000 for key, ack in acks.items() if key in done]
    problems = _check(bench, [*warm, *keyed])
    if len(latencies) < len(keyed):
        problems.append(f"e2e: {len(keyed) - len(acks)} callbacks not answered 200, "
                        f"{len(acks) - len(latencies)} answered without deliveries")
    return achieved, latencies, problems, cost


def percentile(values: Sequence[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[max(0, math.ceil(share * len(ordered)) - 1)] if ordered else math.nan


def header(bench: Bench, count: int, rounds: int, seconds: float) -> str:
    return (
        f"payhooks worker benchmark: {count} callbacks a round (a quarter per provider, "
        f"{len(HOOKS)} hooks taking every event), medians of {rounds} rounds (no-op, then "
        f"process_callback); end to end {seconds:g} s at {LOAD_SHARE:.0%} of that rate\n"
        f"machine: {os.cpu_count()} cores, {cpu_model()}, "
        f"Python {platform.python_version()}, RQ {package_version('rq')}, redis-py "
        f"{package_version('redis')}, Redis {bench.redis.info('server')['redis_version']} "
        f"(no persistence, PING from CPU {bench.cpus[0]} {_round_trip_ms(bench):.3f} ms)\n"
        f"cores: CPU {bench.cpus[0]}: the worker (rounds), the ingress and the worker (end to "
        f"end); CPU {bench.cpus[1]}: simulators, Redis, this process (set-up, load generator)")


def table(noop_rate: float, rate: float, achieved: float, latencies: list[float],
          cost: RedisCost) -> list[str]:
    ratio, p99 = rate / noop_rate, percentile(latencies, 0.99)
    rows = [("no-op jobs/s (RQ ceiling)", noop_rate, 1),
            ("process_callback callbacks/s", rate, 1), ("ratio to no-op", ratio, 2),
            (f"e2e callbacks/s (asked {rate * LOAD_SHARE:.1f})", achieved, 1),
            ("e2e latency p50 ms", percentile(latencies, 0.5), 2), ("e2e latency p99 ms", p99, 2),
            ("e2e latency max ms", max(latencies, default=math.nan), 2),
            ("Redis CPU per callback us (e2e)", cost.cpu_us, 1),
            ("Redis commands per callback (e2e)", cost.commands, 1),
            ("callbacks/s one Redis core carries", cost.per_core, 0)]
    return [*(f"{label:<40}{value:>12.{digits}f}" for label, value, digits in rows),
            f"target: ratio >= {TARGET_RATIO:.2f}: {'met' if ratio >= TARGET_RATIO else 'NOT met'}",
            f"target: e2e p99 <= {TARGET_P99_MS:g} ms: "
            f"{'met' if p99 <= TARGET_P99_MS else 'NOT met'}"]


def run(callbacks: int = 3000, rounds: int = 3, e2e_seconds: float = 10.0,
        peers: compare.Options | None = None) -> int:
    """Run the benchmark and print its table, then the comparison with the peer job systems
    when `peers` says how (tests/bench/compare.py); 0 when every callback gave its deliveries."""
    allowed = sorted(os.sched_getaffinity(0))
    cpus = (allowed[0], allowed[-1])  # the same CPU on a one-CPU machine
    try:
        with contextlib.ExitStack() as stack:
            stack.callback(os.sched_setaffinity, 0, allowed)
            bench = start(stack, cpus)
            print(header(bench, callbacks, rounds, e2e_seconds), flush=True)
            noop_rate, rate, problems = _rounds(bench, callbacks, max(1, rounds))
            achieved, latencies, more, cost = _e2e(bench, rate * LOAD_SHARE, e2e_seconds)
    except (BenchError, redis.RedisError, httpx.HTTPError, OSError) as exc:
        print(f"bench: {exc.__class__.__name__}: {exc}", file=sys.stderr)
        return 1
    print("\n".join(table(noop_rate, rate, achieved, latencies, cost)))
    problems += more
    print(f"checks: {'; '.join(problems) or 'every callback gave its events and deliveries'}")
    code = 1 if problems else 0
    if peers is not None:
        from tests.bench import compare as peer_comparison  # it imports this module

        print(flush=True)
        code = max(code, peer_comparison.run(peers))
    return code


def work(config: str, queues: tuple[str, ...], burst: bool, concurrency: int | None = None
         ) -> int:
    """The measured worker: `build_worker`'s worker on these queues, logging as deployed,
    `concurrency` jobs at once (default: the config's `[worker] concurrency`)."""
    from shared.logging import configure_logging
    from workers.worker import build_worker

    settings = load_settings(config)
    configure_logging(settings.logging)
    worker = build_worker(settings, queues=queues, concurrency=concurrency)
    # RQ's own lines at warning, as `payhooks worker` has them (workers/worker.py `work`)
    worker.work(burst=burst, with_scheduler=not burst,
                logging_level="DEBUG" if settings.logging.level == "debug" else "WARNING")
    return 0


def _worker_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.bench.worker",
                                     description="the worker that payhooks bench measures")
    parser.add_argument("--worker", nargs=2, required=True, metavar=("CONFIG", "QUEUE[,QUEUE]"))
    parser.add_argument("--burst", action="store_true", help="stop once the queues are empty")
    parser.add_argument("--concurrency", type=int, metavar="N",
                        help="jobs at once (default: build_worker's)")
    args = parser.parse_args(argv)
    config, names = args.worker
    return work(config, tuple(filter(None, names.split(","))), args.burst, args.concurrency)


if __name__ == "__main__":
    sys.exit(_worker_main(sys.argv[1:]))
