"""The comparison with Celery and dramatiq (tests/bench/compare.py), run in its quick form:
every callback of every run delivered with a signature that verifies, every figure printed
as a number, every ratio and target reported. Speeds are not asserted: this is no timed test.
Also the process-tree accounting it relies on (tests/bench/peers.py)."""

from __future__ import annotations

import math
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.bench import compare, peers

QUICK_N = compare.Options().quickened().concurrency
ROWS = (r"payhooks \(concurrency \d+\)\*?", rf"Celery threads \({QUICK_N}\)",
        "dramatiq 1 thread", rf"dramatiq {QUICK_N} threads")
MULTI_ROW = rf"payhooks, {compare.PROCESSES} processes \(concurrency \d+ each\)"
TARGETS = 7
NUMBER = r"\d[\d,]*\.\d+"


def _cells(out: str, row: str) -> list[str]:
    found = re.search(rf"^\| {row} \| (.*) \|$", out, re.MULTILINE)
    assert found is not None, (row, out)
    return found.group(1).split(" | ")


def _finite(text: str) -> bool:
    return re.fullmatch(NUMBER, text) is not None and math.isfinite(float(text.replace(",", "")))


def test_quick_comparison_delivers_every_callback_and_prints_every_figure(
    capsys: pytest.CaptureFixture[str],
) -> None:
    code = compare.run(compare.Options().quickened())

    out = capsys.readouterr().out
    assert code == 0, out
    assert "checks: every callback delivered, every signature verifies" in out
    for row in ROWS:  # callbacks/s at once and at 50 ms; three figures at once / at 50 ms
        rates, pairs = _cells(out, row)[:2], _cells(out, row)[2:]
        assert all(_finite(rate) for rate in rates), (row, out)
        assert len(pairs) == 3 and all(
            all(_finite(part) for part in pair.split(" / ")) for pair in pairs), (row, out)
    multi = _cells(out, MULTI_ROW)  # at once only
    assert _finite(multi[0]) and multi[1] == "-", out
    assert all(_finite(pair.split(" / ")[0]) for pair in multi[2:]), out
    ratios = re.search(r"^ratios \(payhooks ÷ peer.*$", out, re.MULTILINE)
    assert ratios is not None and len(re.findall(
        rf"(?:50 ms|at once) {NUMBER}", ratios.group(0))) == 6, out
    targets = re.findall(rf"^target: .* [<>]= [\d.]+: {NUMBER}: (?:met|NOT met)$", out,
                         re.MULTILINE)
    assert len(targets) == TARGETS, out
    runs = re.findall(r"^.*, provider (?:at once|50 ms), round 1: .* callbacks/s .*$", out,
                      re.MULTILINE)
    assert len(runs) == 2 * len(ROWS) + 1, out


def test_process_tree_counts_every_descendant_and_its_cpu() -> None:
    busy = ("import time\nend = time.process_time() + 0.3\n"
            "while time.process_time() < end: pass\ntime.sleep(60)")
    parent = subprocess.Popen(
        [sys.executable, "-c", f"import subprocess, sys; subprocess.run([sys.executable, "
                               f"'-c', {busy!r}])"], start_new_session=True)
    try:
        deadline = time.monotonic() + 30
        while not (len(peers.tree([parent.pid])) == 2
                   and peers.cpu_seconds(peers.tree([parent.pid])) >= 0.3):
            assert time.monotonic() < deadline, peers.tree([parent.pid])
            time.sleep(0.05)
        assert peers.peak_rss_mb(peers.tree([parent.pid])) > 1
        [child] = set(peers.tree([parent.pid])) - {parent.pid}
    finally:
        peers.stop_group(parent)
    assert parent.returncode is not None
    deadline = time.monotonic() + 10  # the child got the session's SIGTERM too
    while Path(f"/proc/{child}").exists():
        assert time.monotonic() < deadline, f"process {child} outlived its session's stop"
        time.sleep(0.05)
