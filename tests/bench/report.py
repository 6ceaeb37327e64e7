"""The table and the plot of `payhooks bench all` (tests/bench/suite.py measures).

Every figure is one row of a Markdown table (part, figure, measured value, target), so the
same text is printed, written to `results.md` and can be pasted into the README. The plot,
`bench.png`, has two panels: the distribution (CDF) of end-to-end latency at each share of
the pipeline's capacity, and callbacks/s by number of workers with the providers answering
in 50 ms and at once. It needs matplotlib (the `bench` extra); without it the table says so.
"""

from __future__ import annotations

import os
import platform
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from tests.bench.ingress import WrkResult, cpu_model, median_result, package_version
from tests.bench.pipeline import Pipeline
from tests.bench.worker import percentile

if TYPE_CHECKING:
    from matplotlib.axes import Axes  # type: ignore[import-not-found,unused-ignore]

TARGET_RATIO, TARGET_P99_MS = 0.50, 10.0
TARGET_SCALING, SCALING_AT = 6.0, 8  # 8 workers >= 6x one, providers answering in 50 ms
TARGET_INGRESS_MB, TARGET_WORKER_MB = 80.0, 60.0
LATENCY_LABELS = {0.05: "providers answering in 50 ms", 0.0: "providers answering at once"}


@dataclass(frozen=True, slots=True)
class Results:
    options: str  # as a command line
    connections: int  # wrk's
    cpus: tuple[int, int]  # (what is measured, the rest)
    redis_version: str
    load_before: float  # the 1-minute load average when the run began: others' work is noise
    ingress_runs: dict[str, list[WrkResult]]  # bare, mix, everysec, always
    ingress_ratio: float
    fsync_ratio: float
    pipeline: Pipeline
    scaling: dict[float, dict[int, float]]  # provider latency -> workers -> callbacks/s
    problems: list[str]


@dataclass(frozen=True, slots=True)
class Figure:
    part: str
    name: str
    value: float
    digits: int = 1
    target: str = ""

    def row(self) -> str:
        return f"| {self.part} | {self.name} | {self.value:,.{self.digits}f} | {self.target} |"


def _target(value: float, limit: float, at_least: bool, unit: str = "") -> str:
    met = value >= limit if at_least else value <= limit
    return f"{'≥' if at_least else '≤'} {limit:g}{unit}: {'met' if met else 'NOT met'}"


def _ingress(results: Results) -> list[Figure]:
    bare, mix = (median_result(results.ingress_runs[name]) for name in ("bare", "mix"))
    part = "ingress"
    return [
        Figure(part, "acknowledged callbacks/s (the mix)", mix.rps),
        Figure(part, "bare aiohttp `OK` handler, requests/s", bare.rps),
        Figure(part, "ratio to the bare handler (median of rounds)", results.ingress_ratio, 2,
               _target(results.ingress_ratio, TARGET_RATIO, at_least=True)),
        Figure(part, "acknowledgement latency p50 ms", mix.p50_ms, 2),
        Figure(part, "acknowledgement latency p99 ms", mix.p99_ms, 2,
               _target(mix.p99_ms, TARGET_P99_MS, at_least=False, unit=" ms")),
        Figure(part, "bare handler latency p99 ms", bare.p99_ms, 2),
    ]


def _pipeline(pipeline: Pipeline) -> list[Figure]:
    part = "pipeline"
    figures = [Figure(part, f"capacity, callbacks/s from acknowledgement to merchant receipt "
                            f"({pipeline.workers} workers)", pipeline.capacity.rate)]
    for share, run in pipeline.loads.items():
        at = f"at {share:.0%} of capacity:"
        latencies = run.latencies_ms
        figures += [Figure(part, f"{at} callbacks/s sent", run.sent_rate),
                    Figure(part, f"{at} callbacks/s delivered", run.rate),
                    Figure(part, f"{at} end-to-end latency p50 ms", percentile(latencies, 0.5)),
                    Figure(part, f"{at} end-to-end latency p99 ms", percentile(latencies, 0.99)),
                    Figure(part, f"{at} end-to-end latency max ms", max(latencies, default=0.0))]
    return figures


def _workers(count: int) -> str:
    return f"{count} worker{'s' if count > 1 else ''}"


def _scaling(scaling: Mapping[float, Mapping[int, float]]) -> list[Figure]:
    figures = []
    for latency, rates in scaling.items():
        label = LATENCY_LABELS.get(latency, f"{latency * 1000:g} ms")
        least, most = min(rates), max(rates)
        figures += [Figure("scaling", f"{label}: callbacks/s, {_workers(n)}", rate)
                    for n, rate in rates.items()]
        multiple = rates[most] / rates[least] if rates[least] else 0.0
        target = (_target(multiple, TARGET_SCALING, at_least=True, unit="x")
                  if latency == 0.05 and (least, most) == (1, SCALING_AT) else "")
        figures.append(Figure("scaling", f"{label}: {_workers(most)} ÷ {_workers(least)}",
                              multiple, 2, target))
    return figures


def _memory_and_durability(results: Results) -> list[Figure]:
    pipeline = results.pipeline
    everysec, always = (median_result(results.ingress_runs[name])
                        for name in ("everysec", "always"))
    return [
        Figure("memory", "ingress peak RSS MiB", pipeline.ingress_mb, 1,
               _target(pipeline.ingress_mb, TARGET_INGRESS_MB, at_least=False, unit=" MB")),
        Figure("memory", f"worker peak RSS MiB (largest of {pipeline.workers})",
               pipeline.worker_mb, 1,
               _target(pipeline.worker_mb, TARGET_WORKER_MB, at_least=False, unit=" MB")),
        Figure("durability", "IXOPAY callbacks/s, appendfsync everysec", everysec.rps),
        Figure("durability", "IXOPAY p99 ms, appendfsync everysec", everysec.p99_ms, 2),
        Figure("durability", "IXOPAY callbacks/s, appendfsync always", always.rps),
        Figure("durability", "IXOPAY p99 ms, appendfsync always", always.p99_ms, 2),
        Figure("durability", "always ÷ everysec (median of rounds)", results.fsync_ratio, 2),
    ]


def figures(results: Results) -> list[Figure]:
    """Every figure, in the order of the table."""
    return [*_ingress(results), *_pipeline(results.pipeline), *_scaling(results.scaling),
            *_memory_and_durability(results)]


def _machine(redis_version: str) -> str:
    memory = re.search(r"^MemTotal:\s*(\d+) kB", Path("/proc/meminfo").read_text(), re.M)
    system = platform.freedesktop_os_release().get("PRETTY_NAME", platform.system())
    return (f"{os.cpu_count()} cores, {cpu_model()}, "
            f"{int(memory.group(1)) / 2**20 if memory else 0:.0f} GiB RAM, {system}, Python "
            f"{platform.python_version()}, aiohttp {package_version('aiohttp')}, uvloop "
            f"{package_version('uvloop')}, RQ {package_version('rq')}, "
            f"redis-py {package_version('redis')}, "
            f"Redis {redis_version}")


def header(results: Results) -> list[str]:
    measured, rest = results.cpus
    return [
        "# payhooks benchmark", "",
        f"`{results.options}`, {datetime.now(UTC):%Y-%m-%d %H:%M} UTC.", "",
        f"- Machine: {_machine(results.redis_version)}; load average {results.load_before:.2f} "
        "when the run began.",
        f"- Cores: CPU {measured} runs what is measured: the ingress or the bare handler "
        f"(wrk loads one at a time), then the ingress and the pipeline's workers. CPU {rest} "
        f"runs wrk ({results.connections} connections), Redis, the provider simulators, the "
        "merchant endpoint and the pipeline's load generator. The scaling runs' workers may "
        "use both CPUs (the ingress is not running then).",
        "- Ingress: the real ingress (Redis with AOF, `appendfsync everysec`) and a bare aiohttp "
        "handler, loaded in turn in each round; durability: a second ingress with "
        "`appendfsync always`, in the same rounds.",
        "- Pipeline: open-loop load through the ingress; latency from each callback's 200 to "
        "the merchant endpoint receiving each of its events; simulators answering at once.",
        "- Scaling: callbacks stored as the ingress stores them, in one batch; callbacks/s "
        "until the last of their events reached the merchant.", "",
    ]


def markdown(results: Results, plot_note: str) -> str:
    rows = [figure.row() for figure in figures(results)]
    checks = "; ".join(results.problems) or ("every callback was acknowledged and its events "
                                            "delivered; every wrk request answered 2xx and stored")
    return "\n".join([*header(results), "| Part | Figure | Measured | Target |",
                      "| --- | --- | ---: | --- |", *rows, "", f"Checks: {checks}.", "",
                      plot_note, ""])


def write(results: Results, directory: Path) -> str:
    """Write `results.md` and `bench.png` into `directory`; the Markdown."""
    directory.mkdir(parents=True, exist_ok=True)
    missing = plot(results, directory / "bench.png")
    note = (f"Plot: not drawn, {missing}." if missing
            else "![End-to-end latency and scaling](bench.png)")
    text = markdown(results, note)
    (directory / "results.md").write_text(text, encoding="utf-8")
    return text


def _latency_panel(axes: Axes, pipeline: Pipeline) -> None:
    for share, run in pipeline.loads.items():
        ordered = sorted(run.latencies_ms)
        shares = [(n + 1) / len(ordered) for n in range(len(ordered))]
        axes.step(ordered, shares, where="post",
                  label=f"{share:.0%} of capacity ({run.rate:,.0f} callbacks/s)")
    axes.set_xscale("log")
    axes.set_xlabel("end-to-end latency, ms (200 to merchant receipt)")
    axes.set_ylabel("share of events")
    axes.set_title(f"Pipeline latency, {pipeline.workers} workers")
    axes.grid(True, which="both", alpha=0.3)
    axes.legend(loc="lower right")


def _scaling_panel(axes: Axes, scaling: Mapping[float, Mapping[int, float]],
                   counts: Sequence[int]) -> None:
    for latency, rates in scaling.items():
        axes.plot(list(rates), list(rates.values()), marker="o",
                  label=LATENCY_LABELS.get(latency, f"{latency * 1000:g} ms"))
    slow = scaling.get(0.05, {})
    if slow.get(1):
        axes.plot(counts, [slow[1] * n for n in counts], linestyle="--", color="grey",
                  label="linear from 1 worker (50 ms)")
        if SCALING_AT in counts:
            axes.plot([SCALING_AT], [slow[1] * TARGET_SCALING], marker="x", color="red",
                      linestyle="none", label=f"target: {TARGET_SCALING:g}x one worker")
    axes.set_xticks(list(counts), [str(n) for n in counts])
    axes.set_xlabel("workers")
    axes.set_ylabel("callbacks/s fully delivered")
    axes.set_title("Scaling")
    axes.grid(True, alpha=0.3)
    axes.legend(loc="upper left")


def plot(results: Results, path: Path) -> str | None:
    """Draw the two panels into `path`; None when drawn, else why not."""
    try:
        import matplotlib  # type: ignore[import-not-found,unused-ignore]
    except ImportError:
        return "matplotlib is not installed (pip install matplotlib)"
    matplotlib.use("Agg")
    from matplotlib import pyplot  # type: ignore[import-not-found,unused-ignore]

    figure, (left, right) = pyplot.subplots(1, 2, figsize=(12, 4.5))
    _latency_panel(left, results.pipeline)
    counts = sorted({n for rates in results.scaling.values() for n in rates})
    _scaling_panel(right, results.scaling, counts)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    pyplot.close(figure)
    return None
