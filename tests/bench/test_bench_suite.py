"""`payhooks bench all`, run in its quick form: every callback acknowledged and delivered,
every figure reported as a number in results.md, and the plot drawn when matplotlib is
there. Speeds are not asserted: this is no timed test."""

from __future__ import annotations

import importlib.util
import math
import re
from pathlib import Path

import pytest

from shared.cli import main
from tests.bench import suite as bench
from tests.bench.pipeline import interleave

FIGURES = (
    "ingress | acknowledged callbacks/s (the mix)",
    "ingress | bare aiohttp `OK` handler, requests/s",
    "ingress | ratio to the bare handler (median of rounds)",
    "ingress | acknowledgement latency p50 ms",
    "ingress | acknowledgement latency p99 ms",
    "pipeline | capacity, callbacks/s from acknowledgement to merchant receipt (2 workers)",
    *(f"pipeline | at {share}% of capacity: {what}" for share in (50, 90) for what in (
        "callbacks/s sent", "callbacks/s delivered", "end-to-end latency p50 ms",
        "end-to-end latency p99 ms", "end-to-end latency max ms")),
    *(f"scaling | providers answering {when}: {what}"
      for when in ("in 50 ms", "at once")
      for what in ("callbacks/s, 1 worker", "callbacks/s, 2 workers", "2 workers ÷ 1 worker")),
    "memory | ingress peak RSS MiB",
    "memory | worker peak RSS MiB (largest of 2)",
    "durability | IXOPAY callbacks/s, appendfsync everysec",
    "durability | IXOPAY callbacks/s, appendfsync always",
    "durability | always ÷ everysec (median of rounds)",
)
TARGETS = ("ratio to the bare handler", "acknowledgement latency p99 ms", "ingress peak RSS",
           "worker peak RSS")


def _value(table: str, figure: str) -> tuple[float, str]:
    row = re.search(rf"^\| {re.escape(figure)} \| ([\d,]+\.\d+) \| (.*) \|$", table, re.M)
    assert row is not None, (figure, table)
    return float(row.group(1).replace(",", "")), row.group(2)


def test_quick_suite_delivers_every_callback_and_reports_every_figure(
    tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    code = bench.run(bench.Options(results=tmp_path / "results").quickened())

    out = capsys.readouterr().out
    assert code == 0, out
    table = (tmp_path / "results" / "results.md").read_text(encoding="utf-8")
    assert table in out
    for figure in FIGURES:
        value, target = _value(table, figure)
        assert math.isfinite(value) and value > 0, (figure, table)
        if any(name in figure for name in TARGETS):
            assert re.fullmatch(r"[≥≤] [\d.]+( ms| MB)?: (met|NOT met)", target), (figure, table)
    assert "Checks: every callback was acknowledged and its events delivered" in table
    assert "- Cores: CPU" in table and "- Machine: " in table
    png = tmp_path / "results" / "bench.png"
    if importlib.util.find_spec("matplotlib") is not None:
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert "![End-to-end latency and scaling](bench.png)" in table
    else:
        assert not png.exists()
        assert "Plot: not drawn, matplotlib is not installed" in table


def test_interleave_spreads_providers_by_weight() -> None:
    assert interleave({"a": 1, "b": 1}, 4) == ["a", "b", "a", "b"]
    order = interleave({"a": 3, "b": 1}, 8)
    assert order.count("a") == 6 and order.count("b") == 2
    assert "b" in order[:4] and "b" in order[4:]


def test_options_are_parsed_and_checked() -> None:
    assert bench.parse_mix("ixopay=3,payex=1,netaxept=0") == {"ixopay": 3, "payex": 1}
    assert bench.parse_counts("8,1,2,2") == (1, 2, 8)
    assert bench.parse_shares("0.5,0.9") == (0.5, 0.9)
    for parse, text in ((bench.parse_mix, "stripe=1"), (bench.parse_mix, "ixopay=0"),
                        (bench.parse_counts, "0,1"), (bench.parse_counts, "two"),
                        (bench.parse_shares, "2")):
        with pytest.raises(ValueError, match=re.escape(repr(text))):
            parse(text)


def test_command_rejects_a_bad_mix_before_starting_anything(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["bench", "all", "--mix", "ixopay=x"]) == 2
    assert "'ixopay=x': expected PROVIDER=WEIGHT" in capsys.readouterr().err
