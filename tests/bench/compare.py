"""`payhooks bench worker`, its last part: payhooks' worker next to Celery and dramatiq doing the
same work per callback, in the same rounds, and their ratios (issue 17).

The work, the same for every system: a follow-up GET of a PayEx payment (one request, JSON)
to the provider simulators, answering at once or after 50 ms (their `latency` fault), then
an HMAC-signed POST of a small JSON event to a merchant endpoint answering 200 at once.
For payhooks that is its real pipeline: a callback job stored on `callbacks` as the ingress
stores it, run by `build_worker`'s worker on `callbacks` and `deliveries`, which follows up,
records the event (deduplicated, with its delivery job) and delivers it to the merchant's
one hook. Its config has PayEx only and raises `max_follow_ups_in_flight` and
`max_in_flight_per_hook` to 4 x N, the most jobs the runs have at once (at the defaults,
16 and 8, a worker of N > 8 would have its 9th delivery step aside for seconds); it logs
its JSON lines at info, as deployed. A peer does the follow-up and the delivery in one task
(tests/bench/peer_task.py) and logs at its default level (nothing per task). How each
worker is started and what it spent: tests/bench/peers.py.

One run: Redis flushed, C callbacks enqueued up front, then the worker started and watched
until the merchant endpoint has every callback's event. Timed from the worker's first
follow-up request (the simulators count them; polled) to the last event's arrival, so
start-up is left out; not from the first delivery, since payhooks' worker takes jobs from
`callbacks` before `deliveries` and delivers nothing until the backlog of callbacks is
followed up. At those two moments (the second 0.2 s after the last arrival, when the last
jobs have done their bookkeeping) Redis's `total_commands_processed` (every client's, Lua
scripts' calls included; nothing but the worker uses Redis then) and the worker's CPU
(utime + stime of its process tree) are read: their deltas over C are the Redis commands and
the worker CPU per callback, and C over the span is the callbacks/s. RSS: the largest peak
(VmHWM) of one process of the worker's tree at the end. C is sized from the last rate of
the same system and latency to last about `seconds`. With several processes, the span
starts at the first one's first request: the others' last moments of start-up count.

Rounds: each round runs, with the provider at once and then at 50 ms, every system in
turn; a figure is the median of the rounds, a ratio the median of the same rounds' ratios
(this VM's speed drifts). Also payhooks with 4 worker processes (provider at once), the
same N jobs in flight spread over them (N / 4 threads each): 4 processes of N threads on
2 cores only fight over them (215 callbacks/s and 7 ms of CPU a callback in one run).

Cores: CPU 0 runs only the measured worker (the 4 payhooks processes get both CPUs, as the
issue asks); CPU 1 runs Redis, the simulators, the endpoint and this process. Targets are
reported, never enforced; exit code 1 when a callback was not delivered or an event's
signature does not verify.
"""

from __future__ import annotations

import contextlib
import math
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import httpx
import orjson
import redis
from kombu.exceptions import KombuError
from standardwebhooks import Webhook
from standardwebhooks.webhooks import WebhookVerificationError

from shared.sandbox.processes import clean_env
from shared.sandbox.simulators.callbacks import OutgoingCallback
from shared.sandbox.simulators.merchant import MerchantEndpoint, Received
from shared.settings import load_settings
from tests.bench import peers
from tests.bench import worker as worker_bench
from tests.bench.ingress import BenchError, cpu_model, package_version
from tests.bench.peers import PeerTarget, Runner
from tests.bench.worker import MERCHANT, PAYEX_TOKEN, PROVIDERS, Bench, Key, Keyed

CONCURRENCY = 16  # jobs at once in one worker process, for payhooks and the peers alike
LATENCIES = (0.0, 0.05)  # the provider's answer time
PROCESSES = 4  # payhooks' multi-process run: N jobs in flight spread over them (N / 4 each)
START_SECONDS, STALL_SECONDS, SETTLE_SECONDS = 60.0, 20.0, 0.2
POLL_SECONDS, START_POLL_SECONDS = 0.005, 0.01  # the endpoint's list; the simulators' count
FIRST_GUESS = 150.0  # callbacks/s, times the root of its threads, a process is taken to do
SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8I"
TARGETS = {"rate_50": 100.0, "celery_share_50": 0.7, "rate_0": 200.0, "multi_0": 300.0,
           "commands": 60.0, "cpu_ms": 3.0, "rss_mb": 80.0, "rss_at": 32}
CONFIG = """\
redis_url = "{redis}"
logging = {{ level = "info", format = "json" }}
# in flight: no cap below what the runs have at once (processes x concurrency)
delivery = {{ allow_private_networks = true, max_in_flight_per_hook = {in_flight} }}

[merchants.bench]
payex = {{ token = "{token}", base_url = "{sims}", max_follow_ups_per_minute = 1000000, \
max_follow_ups_in_flight = {in_flight} }}
hooks = [{{ id = "orders", url = "{hook}", secret = "{secret}" }}]
"""
Cell = tuple[str, float]  # a runner's key, the provider's latency


@dataclass(frozen=True, slots=True)
class Options:
    concurrency: int = CONCURRENCY
    rounds: int = 3
    seconds: float = 5.0  # of deliveries a run, about
    quick: bool = False

    def __post_init__(self) -> None:
        if self.concurrency < 1 or self.rounds < 1 or self.seconds <= 0:
            raise ValueError("--concurrency and --rounds must be 1 or more")

    def quickened(self) -> Options:
        """The CI form: a small N, one round, a second a run; every figure still printed."""
        return replace(self, concurrency=4, rounds=1, seconds=1.0, quick=True)


@dataclass(frozen=True, slots=True)
class Sample:
    callbacks: int  # the run's, every one delivered
    seconds: float  # from the first follow-up request to the last event's arrival
    cpu_seconds: float
    commands: int
    rss_mb: float

    @property
    def rate(self) -> float:
        return self.callbacks / self.seconds

    @property
    def commands_each(self) -> float:
        return self.commands / self.callbacks

    @property
    def cpu_ms(self) -> float:
        return self.cpu_seconds * 1000 / self.callbacks


@dataclass
class Comparison:
    bench: Bench
    endpoint: MerchantEndpoint
    target: PeerTarget
    runners: list[Runner]
    # PayEx callbacks, their payments registered with the simulators
    pool: list[tuple[Key, OutgoingCallback]] = field(default_factory=list)
    samples: dict[Cell, list[Sample]] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)


def start(stack: contextlib.ExitStack, cpus: tuple[int, int], options: Options) -> Comparison:
    """Redis, the simulators and the endpoint on cpus[1], with this process; payhooks'
    config: PayEx only, one hook at the endpoint."""
    os.sched_setaffinity(0, {cpus[1]})  # before the endpoint's thread, which inherits it
    endpoint = stack.enter_context(MerchantEndpoint())
    bench = worker_bench.start(stack, cpus)
    payex = bench.settings.merchants[MERCHANT].payex
    assert payex is not None
    target = PeerTarget(bench.settings.redis_url, str(payex.base_url).rstrip("/"),
                        PAYEX_TOKEN, f"{endpoint.url}/events", SECRET)
    bench.config.write_text(CONFIG.format(
        redis=target.redis, token=target.token, sims=target.provider, hook=target.hook,
        secret=SECRET, in_flight=PROCESSES * options.concurrency))
    bench.settings = load_settings(bench.config, environ={})
    n = options.concurrency
    runners = [peers.payhooks(bench.config, n), peers.celery(n), peers.dramatiq(1),
               peers.dramatiq(n), peers.payhooks(bench.config, max(1, n // PROCESSES), PROCESSES)]
    return Comparison(bench, endpoint, target, runners)


def _callbacks(comparison: Comparison, count: int) -> Keyed:
    """`count` PayEx callbacks (a completed Sale each), from a pool that grows as needed:
    a run flushes Redis first, so payhooks finds none of them recorded."""
    pool, payex = comparison.pool, PROVIDERS.index("payex")
    while len(pool) < count:  # outgoing(n) builds a callback of PROVIDERS[n % 4]
        pool.append(worker_bench.outgoing(comparison.bench.admin,
                                          len(pool) * len(PROVIDERS) + payex))
    return pool[:count]


def _payment(received: Received) -> str:
    try:
        return str(orjson.loads(received.body)["data"]["payment_id"])
    except (orjson.JSONDecodeError, KeyError, TypeError):
        return ""


@dataclass
class Arrivals:
    """One run's events as the endpoint receives them, matched to its callbacks by payment."""

    endpoint: MerchantEndpoint
    seen: int  # requests the endpoint had before
    wanted: set[str]  # the run's payment paths
    at: dict[str, float] = field(default_factory=dict)  # first arrival, by payment
    received: list[Received] = field(default_factory=list)

    def update(self) -> bool:
        """Take the requests received since the last look; whether there were any."""
        new = self.endpoint.received[self.seen:]
        self.seen += len(new)
        for request in new:
            payment = _payment(request)
            if payment in self.wanted:
                self.received.append(request)
                self.at.setdefault(payment, request.at)
        return bool(new)


def _follow_ups(comparison: Comparison) -> int:
    """PayEx requests the simulators have had."""
    return int(comparison.bench.admin.stats()["requests"].get("payex", 0))


def _alive(runner: Runner, processes: Sequence[subprocess.Popen[bytes]], logs: Path) -> None:
    for number, process in enumerate(processes):
        if process.poll() is not None:
            log = (logs / f"{runner.key}-{number}.log").read_text(errors="replace")[-2000:]
            raise BenchError(f"{runner.label} exited with {process.returncode}:\n{log}")


def _wait_started(comparison: Comparison, runner: Runner,
                  processes: Sequence[subprocess.Popen[bytes]], before: int) -> None:
    """Until the worker's first follow-up request reaches the simulators (asked every
    START_POLL_SECONDS: the span may start that much late)."""
    deadline = time.monotonic() + START_SECONDS
    while _follow_ups(comparison) <= before:
        _alive(runner, processes, comparison.bench.directory)
        if time.monotonic() > deadline:
            raise BenchError(f"{runner.label} made no follow-up request within "
                             f"{START_SECONDS:g} s")
        time.sleep(START_POLL_SECONDS)


def _wait_delivered(arrivals: Arrivals, runner: Runner, logs: Path,
                    processes: Sequence[subprocess.Popen[bytes]]) -> None:
    """Until every callback's event arrived, or none came for STALL_SECONDS."""
    progress = time.monotonic()
    while len(arrivals.at) < len(arrivals.wanted):
        time.sleep(POLL_SECONDS)
        if arrivals.update():
            progress = time.monotonic()
        elif time.monotonic() - progress > STALL_SECONDS:
            return
        _alive(runner, processes, logs)


def _usage(comparison: Comparison, processes: Sequence[subprocess.Popen[bytes]]
           ) -> tuple[float, float, int]:
    """Now, the worker's CPU seconds so far and Redis's commands so far."""
    cpu = peers.cpu_seconds(peers.tree(process.pid for process in processes))
    stats = comparison.bench.redis.info("stats")
    return time.time(), cpu, int(stats["total_commands_processed"])


def _check(what: str, arrivals: Arrivals) -> list[str]:
    """A run's problems: callbacks whose event did not arrive, events that do not verify."""
    webhook, bad = Webhook(SECRET), 0
    for request in arrivals.received:
        try:
            webhook.verify(request.body, request.headers)
        except WebhookVerificationError:
            bad += 1
    missing = len(arrivals.wanted) - len(arrivals.at)
    return ([f"{what}: {missing} of {len(arrivals.wanted)} callbacks not delivered"]
            if missing else []) + ([f"{what}: {bad} events whose signature does not verify"]
                                   if bad else [])


def measure(comparison: Comparison, runner: Runner, count: int, cpus: set[int], what: str
            ) -> tuple[Sample, str]:
    """One run of `count` callbacks: its figures, and a note of follow-ups and duplicates."""
    bench, keyed = comparison.bench, _callbacks(comparison, count)
    bench.redis.flushdb()
    runner.enqueue(bench, keyed)
    arrivals = Arrivals(comparison.endpoint, len(comparison.endpoint.received),
                        {payment for (_, payment), _ in keyed})
    asked = _follow_ups(comparison)
    with contextlib.ExitStack() as stack:
        processes = peers.launch(stack, runner, {**clean_env(), **comparison.target.env()},
                                 cpus, bench.directory)
        _wait_started(comparison, runner, processes, asked)
        start = _usage(comparison, processes)
        _wait_delivered(arrivals, runner, bench.directory, processes)
        time.sleep(SETTLE_SECONDS)  # the last jobs' own bookkeeping after their POST
        end = _usage(comparison, processes)
        rss = peers.peak_rss_mb(peers.tree(process.pid for process in processes))
    comparison.problems += _check(what, arrivals)
    last = max(arrivals.at.values(), default=start[0])
    if len(arrivals.at) < 2 or last <= start[0]:
        raise BenchError(f"{what}: too few callbacks delivered to time ({len(arrivals.at)})")
    note = (f"{_follow_ups(comparison) - asked} follow-ups, "
            f"{len(arrivals.received) - len(arrivals.at)} duplicate events")
    # the second INFO counts the first one
    return Sample(len(arrivals.at), last - start[0], end[1] - start[1],
                  end[2] - start[2] - 1, rss), note


def _count(comparison: Comparison, runner: Runner, latency: float, seconds: float) -> int:
    """Callbacks for a run of about `seconds`: from this cell's last rate, else from the
    same system's last rate at once (capped by what its threads can wait at `latency`)."""
    threads = runner.threads * runner.processes
    done = comparison.samples.get((runner.key, latency))
    at_once = comparison.samples.get((runner.key, 0.0))
    if done:
        rate = done[-1].rate
    elif latency and at_once:
        rate = min(at_once[-1].rate, threads / (latency + 0.005))
    else:  # not measured yet
        rate = FIRST_GUESS * math.sqrt(runner.threads)
    return max(4 * threads, 20, round(rate * seconds))


def _when(latency: float) -> str:
    return f"{latency * 1000:g} ms" if latency else "at once"


def rounds(comparison: Comparison, options: Options, log: Callable[[str], None]) -> None:
    """Every system at each latency (the multi-process one at once only), `rounds` times."""
    cpus = comparison.bench.cpus
    for number in range(1, options.rounds + 1):
        for latency in LATENCIES:
            comparison.bench.admin.faults("payex", latency=latency)
            for runner in comparison.runners:
                if runner.processes > 1 and latency:
                    continue
                what = f"{runner.label}, provider {_when(latency)}, round {number}"
                count = _count(comparison, runner, latency, options.seconds)
                sample, note = measure(comparison, runner, count,
                                       set(cpus) if runner.processes > 1 else {cpus[0]}, what)
                comparison.samples.setdefault((runner.key, latency), []).append(sample)
                log(f"{what}: {sample.rate:.1f} callbacks/s ({sample.callbacks} in "
                    f"{sample.seconds:.2f} s), {sample.commands_each:.1f} Redis commands and "
                    f"{sample.cpu_ms:.2f} ms worker CPU a callback, RSS {sample.rss_mb:.1f} MB; "
                    f"{note}")
    comparison.bench.admin.faults("payex", latency=0.0)


def _figure(comparison: Comparison, key: str, latency: float, name: str) -> float:
    """The median over the rounds of one figure (a Sample property) of one cell."""
    samples = comparison.samples.get((key, latency))
    return statistics.median(getattr(s, name) for s in samples) if samples else math.nan


def ratio(comparison: Comparison, key: str, base: str, latency: float) -> float:
    """The median over the rounds of `key`'s callbacks/s over `base`'s in the same round."""
    pairs = zip(comparison.samples.get((key, latency), []),
                comparison.samples.get((base, latency), []), strict=False)
    ratios = [mine.rate / theirs.rate for mine, theirs in pairs]
    return statistics.median(ratios) if ratios else math.nan


def _number(value: float, digits: int) -> str:
    return "-" if math.isnan(value) else f"{value:,.{digits}f}"


def table(comparison: Comparison) -> list[str]:
    """The Markdown table: one row per system; the last three columns at once / 50 ms."""
    lines = ["| Worker | provider at once, callbacks/s | provider 50 ms, callbacks/s | Redis "
             "cmds/callback (at once / 50 ms) | worker CPU ms/callback (at once / 50 ms) | "
             "RSS MB (at once / 50 ms) |", "|---|---:|---:|---:|---:|---:|"]
    for runner in comparison.runners:
        cells = [_number(_figure(comparison, runner.key, latency, "rate"), 1)
                 for latency in LATENCIES]
        cells += [" / ".join(_number(_figure(comparison, runner.key, latency, name), digits)
                             for latency in LATENCIES)
                  for name, digits in (("commands_each", 1), ("cpu_ms", 2), ("rss_mb", 1))]
        lines.append(f"| {runner.label} | {' | '.join(cells)} |")
    return lines


def ratios(comparison: Comparison) -> str:
    payhooks, *others = (r for r in comparison.runners if r.processes == 1)
    return "ratios (payhooks ÷ peer, callbacks/s, median of the rounds' ratios): " + "; ".join(
        f"payhooks / {peer.label}: " + ", ".join(
            f"{_when(latency)} {_number(ratio(comparison, payhooks.key, peer.key, latency), 2)}"
            for latency in reversed(LATENCIES)) for peer in others)


def _target(text: str, value: float, bound: float, at_least: bool) -> str:
    met = value >= bound if at_least else value <= bound
    sense = ">=" if at_least else "<="
    return f"target: {text} {sense} {bound:g}: {_number(value, 2)}: {'met' if met else 'NOT met'}"


def targets(comparison: Comparison) -> list[str]:
    """The issue's targets for payhooks, reported; per-callback costs: the worse latency."""
    def worst(name: str) -> float:
        return max(_figure(comparison, "payhooks", latency, name) for latency in LATENCIES)

    multi = next(r.key for r in comparison.runners if r.processes > 1)
    ran_at = next(r.threads for r in comparison.runners if r.key == "payhooks")
    return [
        _target("provider 50 ms: payhooks one process, callbacks/s",
                _figure(comparison, "payhooks", 0.05, "rate"), TARGETS["rate_50"], True),
        _target("provider 50 ms: payhooks ÷ Celery threads",
                ratio(comparison, "payhooks", "celery", 0.05), TARGETS["celery_share_50"], True),
        _target("provider at once: payhooks one process, callbacks/s",
                _figure(comparison, "payhooks", 0.0, "rate"), TARGETS["rate_0"], True),
        _target(f"provider at once: payhooks {PROCESSES} processes, callbacks/s",
                _figure(comparison, multi, 0.0, "rate"), TARGETS["multi_0"], True),
        _target("payhooks Redis commands per callback (the worse latency)",
                worst("commands_each"), TARGETS["commands"], False),
        _target("payhooks worker CPU ms per callback (the worse latency)", worst("cpu_ms"),
                TARGETS["cpu_ms"], False),
        _target(f"payhooks RSS MB at N = {TARGETS['rss_at']:g} (measured at concurrency "
                f"{ran_at})", worst("rss_mb"), TARGETS["rss_mb"], False),
    ]


def header(comparison: Comparison, options: Options) -> str:
    bench, n = comparison.bench, options.concurrency
    versions = ", ".join(f"{name} {package_version(name)}" for name in (
        "celery", "kombu", "dramatiq", "rq", "redis", "httpx"))
    return "\n".join([
        f"comparison with peer job systems: N = {n} jobs at once a worker process, medians "
        f"of {options.rounds} rounds of about {options.seconds:g} s of deliveries a run"
        f"{' (--quick)' if options.quick else ''}",
        "work a callback: a PayEx follow-up GET (JSON) to the simulators, answering at once "
        "or in 50 ms, then an HMAC-signed POST of the event to a merchant endpoint "
        "answering 200 at once",
        "timing: callbacks/s from the worker's first follow-up request to the last delivery "
        "(start-up left out); Redis commands (every client's) and worker CPU (utime + stime "
        "of its process tree) over the same span, per callback; RSS: the largest VmHWM of "
        "one process of the tree",
        f"machine: {os.cpu_count()} cores, {cpu_model()}, Python {platform.python_version()}, "
        f"{versions}, Redis {bench.redis.info('server')['redis_version']} (no persistence); "
        f"load average {os.getloadavg()[0]:.2f} at the start (others' work is noise)",
        f"cores: CPU {bench.cpus[0]}: the worker ({PROCESSES} payhooks processes: CPUs "
        f"{bench.cpus[0]} and {bench.cpus[1]}); CPU {bench.cpus[1]}: Redis, the simulators, "
        "the merchant endpoint, this process",
    ])


def run(options: Options | None = None) -> int:
    """Run the comparison and print its table; 0 when every callback was delivered."""
    options = options or Options()
    allowed = sorted(os.sched_getaffinity(0))
    cpus = (allowed[0], allowed[-1])  # the same CPU on a one-CPU machine
    try:
        with contextlib.ExitStack() as stack:
            stack.callback(os.sched_setaffinity, 0, allowed)
            comparison = start(stack, cpus, options)
            print(header(comparison, options), flush=True)
            rounds(comparison, options, lambda line: print(line, flush=True))
    except (BenchError, redis.RedisError, httpx.HTTPError, OSError, KombuError) as exc:
        print(f"bench: {exc.__class__.__name__}: {exc}", file=sys.stderr)
        return 1
    print("\n".join([*table(comparison), ratios(comparison), *targets(comparison)]))
    problems = comparison.problems
    print(f"checks: {'; '.join(problems) or 'every callback delivered, every signature verifies'}")
    return 1 if problems else 0
