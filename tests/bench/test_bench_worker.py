"""The worker benchmark, run briefly: every callback must give its events and deliveries, and
every figure must be printed as a number. Speeds are not asserted: this is no timed test."""

from __future__ import annotations

import math
import re

import pytest

from tests.bench import worker as bench

FIGURES = ("no-op jobs/s (RQ ceiling)", "process_callback callbacks/s", "ratio to no-op",
           "e2e callbacks/s", "e2e latency p50 ms", "e2e latency p99 ms", "e2e latency max ms")


def test_quick_benchmark_processes_every_callback_and_prints_figures(
    capsys: pytest.CaptureFixture[str],
) -> None:
    code = bench.run(callbacks=200, rounds=1, e2e_seconds=2.0)

    out = capsys.readouterr().out
    assert code == 0, out
    for label in FIGURES:
        line = re.search(rf"^{re.escape(label)}.*?\s(-?\d+\.\d+)$", out, re.MULTILINE)
        assert line is not None, (label, out)
        assert math.isfinite(float(line.group(1))), (label, out)
    assert re.search(r"^round 1: no-op [\d.]+ jobs/s, process_callback [\d.]+ callbacks/s$",
                     out, re.MULTILINE), out
    assert re.search(r"^target: ratio >= 0\.70: (met|NOT met)$", out, re.MULTILINE), out
    assert re.search(r"^target: e2e p99 <= 50 ms: (met|NOT met)$", out, re.MULTILINE), out
    assert "checks: every callback gave its events and deliveries" in out


def test_percentile_is_nearest_rank() -> None:
    values = [float(n) for n in range(1, 101)]
    assert bench.percentile(values, 0.5) == 50.0
    assert bench.percentile(values, 0.99) == 99.0
    assert bench.percentile([7.0], 0.99) == 7.0
    assert math.isnan(bench.percentile([], 0.5))
