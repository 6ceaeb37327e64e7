"""`payhooks bench all`: the whole system on this machine in one run, as one table and a plot.

What is measured, each part reusing a benchmark of its own:

- ingress (tests/bench/ingress.py's servers and wrk runner): wrk cycles 1,000 distinct valid
  callbacks of the mix through the real ingress (Redis with AOF, `appendfsync everysec`, as
  in compose.yaml) and, in the same round, through a bare aiohttp handler answering `OK`.
  Acknowledged callbacks/s, wrk's p50/p99 latency and the ratio to the bare handler, the
  median of the rounds' ratios.
- durability: in the same rounds, IXOPAY callbacks through a second ingress whose Redis
  runs `appendfsync always`, next to IXOPAY through the first (`everysec`).
- pipeline, scaling and memory (tests/bench/pipeline.py): the ingress, `payhooks worker`
  processes, the provider simulators and a merchant endpoint; an open-loop load generator
  sends the mix. Capacity from acknowledgement to the merchant's receipt, end-to-end
  latency at shares of it, throughput by number of workers with the providers answering in
  50 ms and at once, and the peak RSS of the ingress and of a worker.

How the generator and the system share the 2 cores: the measured servers (the ingress, the
bare handler, the pipeline's workers) run on CPU 0; wrk, Redis, the simulators, the merchant
endpoint and this process (the pipeline's load generator) run on CPU 1, as the providers,
Redis and the merchant would on other hosts. The scaling workers may use both CPUs. Where
this VM's speed drifts (±30% from minute to minute), a figure is a ratio measured in the same
round: ingress to bare, `always` to `everysec`, 8 workers to 1 in one run.

Exit code 0 when everything ran, every wrk request was answered 2xx and stored, and every
callback sent was acknowledged and its events delivered; else 1. Targets are reported as
met or NOT met, never enforced.
"""

from __future__ import annotations

import contextlib
import os
import statistics
import sys
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import httpx
import redis

from tests.bench import ingress as ingress_bench
from tests.bench import pipeline as bench_pipeline
from tests.bench import report as bench_report
from tests.bench.ingress import BUILDERS, REQUESTS_PER_PROVIDER, BenchError, Setup, WrkResult
from tests.bench.pipeline import interleave

DEFAULT_MIX = {"ixopay": 25, "ifthenpay": 25, "netaxept": 25, "payex": 25}


@dataclass(frozen=True, slots=True)
class Options:
    duration: float = 10.0  # seconds a measured run
    rounds: int = 3  # wrk rounds (bare, mix, everysec, always); medians are reported
    workers: tuple[int, ...] = (1, 2, 4, 8)  # the scaling part's worker counts
    pipeline_workers: int = 4
    loads: tuple[float, ...] = (0.5, 0.9)  # shares of the pipeline's capacity
    mix: dict[str, int] = field(default_factory=lambda: dict(DEFAULT_MIX))
    connections: int = 64  # wrk's
    results: Path = Path(".bench-results")
    warmup: float = 1.0  # seconds of wrk before each server is measured
    quick: bool = False

    def __post_init__(self) -> None:
        if self.duration <= 0 or self.rounds < 1 or self.pipeline_workers < 1:
            raise ValueError("--duration must be positive, --rounds and --pipeline-workers 1 "
                             "or more")

    def describe(self) -> str:
        """The options as a command line."""
        mix = ",".join(f"{provider}={weight}" for provider, weight in self.mix.items())
        return (f"payhooks bench all --duration {self.duration:g} --rounds {self.rounds} "
                f"--workers {','.join(map(str, self.workers))} --pipeline-workers "
                f"{self.pipeline_workers} --loads {','.join(f'{s:g}' for s in self.loads)} "
                f"--mix {mix}{' (--quick)' if self.quick else ''}")

    def quickened(self) -> Options:
        """The CI form: under a minute on 2 cores, every figure still reported."""
        return replace(self, duration=1.0, rounds=1, workers=(1, 2), pipeline_workers=2,
                       connections=16, quick=True)


@dataclass(frozen=True, slots=True)
class Ingress:
    runs: dict[str, list[WrkResult]]  # bare, mix, everysec, always: one per round
    problems: list[str]

    def median(self, name: str) -> WrkResult:
        return ingress_bench.median_result(self.runs[name])

    def ratio(self, name: str, base: str) -> float:
        """The median over rounds of this run's rate over the base's in the same round."""
        return statistics.median(r.rps / b.rps if b.rps else 0.0
                                 for r, b in zip(self.runs[name], self.runs[base], strict=True))


def parse_mix(text: str) -> dict[str, int]:
    """`ixopay=25,ifthenpay=25,...`: weights of the providers in the load (others get 0)."""
    mix: dict[str, int] = {}
    for part in filter(None, text.split(",")):
        provider, _, weight = part.partition("=")
        if provider not in DEFAULT_MIX or not weight.isdigit():
            raise ValueError(
                f"{part!r}: expected PROVIDER=WEIGHT, a provider of {', '.join(DEFAULT_MIX)}")
        mix[provider] = int(weight)
    if not any(mix.values()):
        raise ValueError(f"{text!r}: no provider has a weight")
    return {provider: weight for provider, weight in mix.items() if weight}


def parse_shares(text: str) -> tuple[float, ...]:
    """`0.5,0.9` as shares of the pipeline's capacity."""
    try:
        shares = tuple(float(part) for part in text.split(",") if part)
    except ValueError:
        raise ValueError(f"{text!r}: expected shares such as 0.5,0.9") from None
    if not shares or not all(0 < share <= 1.5 for share in shares):
        raise ValueError(f"{text!r}: expected shares of capacity between 0 and 1.5")
    return shares


def parse_counts(text: str) -> tuple[int, ...]:
    """`1,2,4,8` as worker counts, ascending."""
    try:
        counts = sorted({int(part) for part in text.split(",") if part})
    except ValueError:
        raise ValueError(f"{text!r}: expected numbers such as 1,2,4,8") from None
    if not counts or counts[0] < 1:
        raise ValueError(f"{text!r}: expected numbers of 1 or more")
    return tuple(counts)


def _targets(everysec: Setup, always: Setup, mix: dict[str, int]
             ) -> list[tuple[str, Setup, str, Path]]:
    """What wrk loads each round: name, set-up, URL and requests file."""
    mixed, ixopay = everysec.directory / "mix.lua", everysec.directory / "ixopay.lua"
    providers = interleave(mix, REQUESTS_PER_PROVIDER)
    ingress_bench.write_requests([BUILDERS[p](n) for n, p in enumerate(providers)], mixed)
    ingress_bench.write_requests([BUILDERS["ixopay"](n) for n in range(REQUESTS_PER_PROVIDER)],
                                 ixopay)
    return [("bare", everysec, everysec.bare_url, mixed),
            ("mix", everysec, everysec.ingress_url, mixed),
            ("everysec", everysec, everysec.ingress_url, ixopay),
            ("always", always, always.ingress_url, ixopay)]


def _stored_check(name: str, setup: Setup, result: WrkResult) -> list[str]:
    problems = [] if result.ok else [f"ingress {name}: {result.non_2xx} non-2xx answers, "
                                     f"{result.socket_errors} socket errors"]
    stored = int(setup.redis.llen("rq:queue:callbacks"))
    if name != "bare" and stored < result.answered_2xx:
        problems.append(f"ingress {name}: {stored} jobs stored for {result.answered_2xx} 200s")
    return problems


def measure_ingress(options: Options, cpus: tuple[int, int], log: Callable[[str], None]
                    ) -> Ingress:
    """Rounds of wrk against the bare handler and two ingresses (everysec, always)."""
    wrk = ingress_bench.ensure_wrk()
    if wrk is None:
        raise BenchError("the load generator wrk is not installed and could not be installed "
                         "(as root: apt-get install wrk)")
    argv = [wrk, "-t1", f"-c{options.connections}"]
    runs: dict[str, list[WrkResult]] = {}
    problems: list[str] = []
    with contextlib.ExitStack() as stack:
        everysec = ingress_bench.start(stack, argv, cpus, "everysec")
        targets = _targets(everysec, ingress_bench.start(stack, argv, cpus, "always"), options.mix)
        for _, setup, url, requests in targets:
            ingress_bench.run_wrk(setup, url, requests, options.warmup)
        for number in range(1, options.rounds + 1):
            for name, setup, url, requests in targets:
                setup.redis.flushdb()
                result = ingress_bench.run_wrk(setup, url, requests, options.duration)
                runs.setdefault(name, []).append(result)
                problems += _stored_check(name, setup, result)
            log(f"ingress round {number}: " + ", ".join(
                f"{name} {results[-1].rps:,.0f}/s" for name, results in runs.items()))
    return Ingress(runs, problems)


def _log(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def measure(options: Options, cpus: tuple[int, int]) -> bench_report.Results:
    """Every part in turn, each with its own servers."""
    load_before = os.getloadavg()[0]
    ingress = measure_ingress(options, cpus, _log)
    with contextlib.ExitStack() as stack:
        system = bench_pipeline.start(stack, cpus)
        pipeline = bench_pipeline.pipeline(system, options.mix, options.pipeline_workers,
                                           options.duration, options.loads, _log)
        scaling, problems = bench_pipeline.scaling(system, options.mix, options.workers,
                                                   options.duration, _log)
        redis_version = str(system.bench.redis.info("server")["redis_version"])
    return bench_report.Results(
        options=options.describe(), connections=options.connections, cpus=cpus,
        redis_version=redis_version, load_before=load_before,
        ingress_runs=ingress.runs, ingress_ratio=ingress.ratio("mix", "bare"),
        fsync_ratio=ingress.ratio("always", "everysec"), pipeline=pipeline, scaling=scaling,
        problems=[*ingress.problems, *pipeline.problems, *problems])


def run(options: Options) -> int:
    """Run every part, print the table and write it (and the plot) to `options.results`."""
    allowed = sorted(os.sched_getaffinity(0))
    cpus = (allowed[0], allowed[-1])  # the same CPU on a one-CPU machine
    try:
        with contextlib.ExitStack() as stack:
            stack.callback(os.sched_setaffinity, 0, allowed)
            results = measure(options, cpus)
    except (BenchError, redis.RedisError, httpx.HTTPError, OSError, RuntimeError) as exc:
        print(f"bench: {exc.__class__.__name__}: {exc}", file=sys.stderr)
        return 1
    print(bench_report.write(results, options.results))
    return 1 if results.problems else 0
