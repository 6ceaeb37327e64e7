"""The delivery benchmark, run briefly: it completes and reports every figure (no speed)."""

from __future__ import annotations

import re

import pytest

from tests.bench.delivery import run


def test_short_delivery_benchmark_reports_every_figure(
        capsys: pytest.CaptureFixture[str]) -> None:
    assert run(deliveries=200, rounds=1, timeout=1.0) == 0
    out = capsys.readouterr().out
    for label in ("endpoint answering at once", "with a hook timing out beside",
                  "share of its rate kept", r"requests the dead hook got \(all rounds\)",
                  "with a hook dripping beside", "share of its rate kept beside the dripping hook",
                  r"requests the dripping hook got \(all rounds\)"):
        assert re.search(rf"{label}\s+[\d.]+", out), out
    for hook in ("dead", "dripping"):
        got = int(re.search(rf"requests the {hook} hook got \(all rounds\)\s+(\d+)", out)[1])  # type: ignore[index]
        # paused after pause_after (5) failures, plus those already in flight beside the
        # first (max_in_flight_per_hook, 8, at most): the rest waited unsent
        assert 1 <= got <= 5 + 8 - 1
    attempts, timeouts = map(int, re.search(  # type: ignore[union-attr]
        r"attempts to it recorded, timeouts among them\s+(\d+) \((\d+) timeouts\)", out).groups())
    assert 1 <= attempts == timeouts <= 5 + 8 - 1  # every attempt to the dripping hook, a timeout
    line = re.search(r"its deliveries by state when the fast ones were done: (.*)", out)[1]  # type: ignore[index]
    states = {state: int(n) for state, n in re.findall(r"(\w[\w ]*?) (\d+)(?:,|$)", line)}
    assert set(states) <= {"queued", "retrying"} and sum(states.values()) == 20, states
