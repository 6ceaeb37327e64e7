"""The delivery benchmark, run briefly: it completes and reports every figure (no speed)."""

from __future__ import annotations

import re

import pytest

from workers.bench_delivery import run


def test_short_delivery_benchmark_reports_every_figure(
        capsys: pytest.CaptureFixture[str]) -> None:
    assert run(deliveries=200, rounds=1, timeout=1.0) == 0
    out = capsys.readouterr().out
    for label in ("endpoint answering at once", "with a hook timing out beside",
                  "share of its rate kept", r"requests the dead hook got \(all rounds\)"):
        assert re.search(rf"{label}\s+[\d.]+", out), out
    dead = int(re.search(r"requests the dead hook got \(all rounds\)\s+(\d+)", out)[1])  # type: ignore[index]
    assert 1 <= dead <= 6  # paused after pause_after (5) failures: the rest waited unsent
