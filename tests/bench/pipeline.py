"""The pipeline, scaling and memory parts of `payhooks bench all` (`tests/bench/suite.py` runs them
and prints the table).

The real system runs as processes: our own Redis (no persistence) and the provider
simulators (`python -m shared.sandbox.simulators`), both started by `payhooks bench worker`'s
set-up (tests/bench/worker.py `start`), the ingress (`payhooks ingress`) and workers (`payhooks
worker`: SimpleWorkers on `callbacks` and `deliveries`, with the scheduler). The merchant has
one hook, at a `MerchantEndpoint` in this process that notes when each event arrives.
Callbacks are `payhooks bench worker`'s (`outgoing`: Netaxept authorized and captured, two
events; a PayEx Sale; IXOPAY DEBIT OK; ifthenpay paid; payments registered with the
simulators beforehand), the providers interleaved in the proportions of the mix.

- pipeline: the ingress and P workers, the simulators answering at once. The load generator
  (tests/bench/worker.py `send`: open-loop, an aiohttp client in this process) notes when each
  200 came. An event's latency is when the endpoint received it minus that 200 (matched by
  provider and payment id). A rate is callbacks whose every event arrived, divided by the
  time from the first 200 to the last arrival. Capacity: a backlog sent at 1,000/s, sized
  by a warm-up burst to last about `seconds`; then `seconds` at each share of capacity.
- scaling: for each worker count (no ingress: the callbacks are stored as the ingress stores
  them, in one batch, after a warm-up), callbacks fully delivered per second, timed from
  the store to the last arrival, with the simulators answering after 50 ms and at once.
- memory: VmHWM (peak RSS) of the ingress and of the largest worker after the pipeline.

Cores, on this 2-core machine: CPU 1 runs Redis, the simulators, the endpoint and this
process (the load generator), as a Redis host, the providers, the merchant and the
providers' senders would. CPU 0 runs the ingress and the pipeline's workers. The scaling
workers may use both CPUs: 8 processes waiting on 50 ms answers are I/O bound, and there
the question is whether they overlap their waits, not how fast one core runs Python.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import itertools
import os
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import orjson

from shared import queue as queues
from shared.sandbox.processes import answers, clean_env, stop
from shared.sandbox.redis_server import free_port
from shared.sandbox.simulators.callbacks import OutgoingCallback
from shared.sandbox.simulators.merchant import MerchantEndpoint
from shared.settings import load_settings
from tests.bench import worker as worker_bench
from tests.bench.ingress import BenchError
from tests.bench.worker import EVENTS, MERCHANT, PROVIDERS, Bench, Key

HOOK = """\
hooks = [{{ id = "orders", url = "{endpoint}/events", secret = "whsec_MfKQ9r8GKYqrTwjUPD8I" }}]
"""
BURST_RATE = 1000.0  # callbacks/s sent for the capacity backlog: far above what workers drain
WARMUP = 40  # callbacks through the pipeline before it is measured
STALL_SECONDS = 20.0  # no event for this long: the rest are reported missing
LATENCIES = (0.05, 0.0)  # the simulators' answer time in the scaling runs
GUESS = {0.05: 20.0, 0.0: 50.0}  # callbacks/s of one worker, to size the first batch
_PROJECT = Path(__file__).resolve().parents[2]
Keyed = list[tuple[Key, OutgoingCallback]]


@dataclass
class System:
    bench: Bench  # directory, config, settings, Redis client, simulators' admin, cpus
    endpoint: MerchantEndpoint
    serial: Iterator[int] = field(default_factory=itertools.count)


@dataclass(frozen=True, slots=True)
class Run:
    sent_rate: float  # callbacks/s the generator achieved (the batch: inf)
    rate: float  # callbacks fully delivered per second
    latencies_ms: list[float]  # one per event
    problems: list[str]


@dataclass(frozen=True, slots=True)
class Pipeline:
    workers: int
    capacity: Run
    loads: dict[float, Run]  # by share of capacity
    ingress_mb: float
    worker_mb: float

    @property
    def problems(self) -> list[str]:
        return [*self.capacity.problems, *(p for run in self.loads.values() for p in run.problems)]


def interleave(mix: Mapping[str, int], count: int) -> list[str]:
    """`count` providers in the proportions of `mix`, spread evenly (smooth weighted
    round-robin): 25/25/25/25 gives each provider in turn."""
    total, credit, order = sum(mix.values()), dict.fromkeys(mix, 0), []
    for _ in range(count):
        for provider, weight in mix.items():
            credit[provider] += weight
        chosen = max(credit, key=lambda provider: credit[provider])
        credit[chosen] -= total
        order.append(chosen)
    return order


def start(stack: contextlib.ExitStack, cpus: tuple[int, int]) -> System:
    """Redis, the simulators and the endpoint on cpus[1], with this process; the config
    has the worker benchmark's merchant and one hook at the endpoint."""
    os.sched_setaffinity(0, {cpus[1]})  # before the endpoint's thread, which inherits it
    endpoint = stack.enter_context(MerchantEndpoint())
    bench = worker_bench.start(stack, cpus)
    text = bench.config.read_text().partition("hooks = [")[0]
    bench.config.write_text(text + HOOK.format(endpoint=endpoint.url))
    bench.settings = load_settings(bench.config, environ={})
    if [hook.id for hook in bench.settings.merchants[MERCHANT].hooks] != ["orders"]:
        raise BenchError(f"{bench.config}: expected one hook after rewriting the worker's config")
    return System(bench, endpoint)


def spawn(stack: contextlib.ExitStack, argv: list[str], cpus: set[int], log: Path
           ) -> subprocess.Popen[bytes]:
    with log.open("wb") as stderr:
        process = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=stderr,
                                   env=clean_env(), cwd=_PROJECT,
                                   preexec_fn=functools.partial(os.sched_setaffinity, 0, cpus))
    stack.callback(stop, process)
    return process


def start_ingress(stack: contextlib.ExitStack, system: System, cpus: set[int]
                  ) -> tuple[str, subprocess.Popen[bytes]]:
    """`payhooks ingress` on a free port; its URL once healthy, and its process."""
    port, log = free_port(), system.bench.directory / "ingress.log"
    process = spawn(stack, [sys.executable, "-m", "shared.cli", "ingress", "--config",
                             str(system.bench.config), "--host", "127.0.0.1", "--port",
                             str(port)], cpus, log)
    url = f"http://127.0.0.1:{port}"
    worker_bench.wait(
        lambda: process.poll() is None and answers(f"{url}/healthz"), 30,
        lambda: f"the ingress did not start:\n{worker_bench.tail(log)}")
    return url, process


def start_workers(stack: contextlib.ExitStack, system: System, count: int, cpus: set[int]
                  ) -> list[subprocess.Popen[bytes]]:
    """`count` processes of `payhooks worker`, once each has registered with Redis."""
    client, directory = system.bench.redis, system.bench.directory
    before = client.scard("rq:workers")
    processes = [spawn(stack, [sys.executable, "-m", "shared.cli", "worker", "--config",
                                str(system.bench.config)], cpus, directory / f"worker-{n}.log")
                 for n in range(count)]
    worker_bench.wait(
        lambda: client.scard("rq:workers") >= before + count, 60,
        lambda: f"{count} workers did not start:\n"
                f"{worker_bench.tail(directory / 'worker-0.log')}")
    return processes


def callbacks(system: System, mix: Mapping[str, int], count: int) -> Keyed:
    """Fresh callbacks of the mix, their payments registered with the simulators."""
    # outgoing(n) builds a callback of PROVIDERS[n % 4]: n picks the provider, and stays unique
    return [worker_bench.outgoing(system.bench.admin,
                                   next(system.serial) * len(PROVIDERS) + PROVIDERS.index(p))
            for p in interleave(mix, count)]


def _key(body: bytes) -> Key:
    data = orjson.loads(body)["data"]
    return str(data["provider"]), str(data["payment_id"])


def _arrivals(system: System, keyed: Keyed, seen: int) -> list[tuple[Key, float]]:
    """Wait until every event of these callbacks reached the endpoint (or none came for
    STALL_SECONDS); each event's key and arrival time. `seen`: requests received before."""
    wanted = {key for key, _ in keyed}
    expected = sum(EVENTS[provider] for provider, _ in wanted)
    found: list[tuple[Key, float]] = []
    progress = time.monotonic()
    while len(found) < expected and time.monotonic() - progress < STALL_SECONDS:
        time.sleep(0.02)
        received = system.endpoint.received[seen:]
        seen += len(received)
        progress = time.monotonic() if received else progress
        found += [(key, r.at) for r in received if (key := _key(r.body)) in wanted]
    return found


def _measure(keyed: Keyed, acks: Mapping[Key, float], arrivals: Sequence[tuple[Key, float]],
             sent_rate: float) -> Run:
    """Rate, latencies and what is missing, from the 200s and the arrivals."""
    counts = Counter(key for key, _ in arrivals)
    done: dict[Key, float] = {}
    for key, at in arrivals:
        done[key] = max(done.get(key, 0.0), at)
    complete = [key for key, _ in keyed if counts[key] >= EVENTS[key[0]]]
    problems = [f"{len(keyed) - len(acks)} of {len(keyed)} callbacks not answered 200"
                ] if len(acks) < len(keyed) else []
    if len(complete) < len(keyed):
        problems.append(f"{len(keyed) - len(complete)} of {len(keyed)} callbacks not delivered")
    span = max(done.values(), default=0.0) - min(acks.values(), default=0.0)
    latencies = [(at - acks[key]) * 1000 for key, at in arrivals if key in acks]
    return Run(sent_rate, len(complete) / span if span > 0 else 0.0, latencies, problems)


def through_ingress(system: System, url: str, keyed: Keyed, rate: float) -> Run:
    """Send these callbacks open-loop at `rate` and wait for their events."""
    seen = len(system.endpoint.received)
    acks, sent_rate = asyncio.run(worker_bench.send(url, keyed, rate))
    return _measure(keyed, acks, _arrivals(system, keyed, seen), sent_rate)


def stored(system: System, keyed: Keyed) -> Run:
    """Store these callbacks in one batch, as the ingress would, and wait for their events;
    latencies count from the store."""
    jobs = worker_bench.stored_jobs(system.bench, keyed)
    seen, now = len(system.endpoint.received), time.time()
    worker_bench.enqueue(system.bench, queues.callback_template(), jobs)
    return _measure(keyed, dict.fromkeys((key for key, _ in keyed), now),
                    _arrivals(system, keyed, seen), float("inf"))


def peak_rss_mb(pid: int) -> float:
    """VmHWM, the peak resident set size of a running process, in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise BenchError(f"no VmHWM in /proc/{pid}/status")


def pipeline(system: System, mix: Mapping[str, int], workers: int, seconds: float,
             shares: Sequence[float], log: Callable[[str], None]) -> Pipeline:
    """The ingress and `workers` workers on cpus[0]: capacity, then the shares of it."""
    cpus = {system.bench.cpus[0]}
    with contextlib.ExitStack() as stack:
        url, ingress = start_ingress(stack, system, cpus)
        processes = start_workers(stack, system, workers, cpus)
        warm = through_ingress(system, url, callbacks(system, mix, WARMUP), BURST_RATE)
        count = max(WARMUP, round(warm.rate * seconds))
        capacity = through_ingress(system, url, callbacks(system, mix, count), BURST_RATE)
        log(f"pipeline: capacity {capacity.rate:.1f} callbacks/s with {workers} workers")
        loads = {}
        for share in shares:
            rate = capacity.rate * share
            keyed = callbacks(system, mix, max(4, round(rate * seconds)))
            loads[share] = through_ingress(system, url, keyed, rate)
            log(f"pipeline: at {share:.0%}, {loads[share].rate:.1f} callbacks/s delivered")
        memory = peak_rss_mb(ingress.pid), max(peak_rss_mb(p.pid) for p in processes)
    return Pipeline(workers, capacity, loads, *memory)


def _batch(rates: Mapping[int, float], workers: int, seconds: float, latency: float) -> int:
    """How many callbacks keep `workers` busy for about `seconds`, from the last count's rate."""
    per_worker = GUESS[latency]
    if rates:
        last = max(rates)
        per_worker = rates[last] / last
    return max(4 * workers, round(per_worker * workers * seconds))


def scaling(system: System, mix: Mapping[str, int], counts: Sequence[int], seconds: float,
            log: Callable[[str], None]) -> tuple[dict[float, dict[int, float]], list[str]]:
    """Callbacks fully delivered per second by each number of workers, by provider latency."""
    rates: dict[float, dict[int, float]] = {latency: {} for latency in LATENCIES}
    problems: list[str] = []
    admin, cpus = system.bench.admin, set(system.bench.cpus)
    for workers in counts:
        with contextlib.ExitStack() as stack:
            start_workers(stack, system, workers, cpus)
            problems += stored(system, callbacks(system, mix, 4 * workers)).problems  # warm-up
            for latency in LATENCIES:
                admin.faults("all", latency=latency)
                count = _batch(rates[latency], workers, seconds, latency)
                run = stored(system, callbacks(system, mix, count))
                rates[latency][workers], problems = run.rate, problems + run.problems
                log(f"scaling: {workers} workers, providers answering in {latency * 1000:g} "
                    f"ms: {run.rate:.1f} callbacks/s")
        admin.faults("all", latency=0.0)
    return rates, problems
