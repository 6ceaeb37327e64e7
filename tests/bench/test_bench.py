"""The ingress benchmark, run briefly: it must complete with every callback answered and stored.

It needs wrk, which `tests.bench.ingress` installs with apt-get when running as root (as CI does).
"""

from __future__ import annotations

import re

import pytest

from tests.bench import ingress as bench


def test_short_benchmark_stores_every_callback_and_prints_figures(
    capsys: pytest.CaptureFixture[str],
) -> None:
    code = bench.run(duration=1.0, connections=8, providers=["ixopay", "ifthenpay"], rounds=2)

    out = capsys.readouterr().out
    assert code == 0, out
    for provider in ("ixopay", "ifthenpay"):
        row = re.search(rf"^{provider}\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)"
                        rf"\s+([\d.]+)\s+(\d+)/(\d+) ok$", out, re.MULTILINE)
        assert row is not None, out
        bare_rps, ingress_rps = float(row.group(1)), float(row.group(2))
        assert bare_rps > 0 and ingress_rps > 0
        assert int(row.group(7)) >= int(row.group(8)) > 0
    assert "stored check: LLEN rq:queue:callbacks >= ingress 2xx answers" in out


def test_parse_wrk_reads_units_and_errors() -> None:
    report = """Running 1s test @ http://127.0.0.1:1
  Latency Distribution
     50%  812.00us
     75%    1.20ms
     90%    2.00ms
     99%    1.05s
  1000 requests in 1.00s, 100.00KB read
  Socket errors: connect 0, read 2, write 0, timeout 1
  Non-2xx or 3xx responses: 7
Requests/sec:   1000.50
"""
    result = bench.parse_wrk(report)

    assert result == bench.WrkResult(requests=1000, rps=1000.5, p50_ms=0.812, p99_ms=1050.0,
                                     non_2xx=7, socket_errors=3)
    assert result.answered_2xx == 993 and not result.ok
