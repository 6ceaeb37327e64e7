"""`payhooks ingress` and open files.

Started under a low soft limit on open files (256 here, 1024 on many hosts), it raises it
to the hard limit: before, that many idle connections locked genuine callbacks out,
silently. And it keeps its connections under `max_connections` (by default the limit less
a reserve): past it, an idle connection is closed to make room, and when every one is busy
with a request the new one gets 503; both are logged and counted."""

from __future__ import annotations

import contextlib
import json
import os
import resource
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from ingress.connections import RESERVED_FILES
from shared.sandbox.processes import stop
from shared.sandbox.redis_server import free_port
from tests.helpers import (
    MERCHANT_CONFIG,
    ROOT,
    ixopay_body,
    ixopay_headers,
    to_toml,
    wait_until_healthy,
)

SOFT = 256


def _low_soft_limit() -> None:
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (SOFT, hard))


@contextlib.contextmanager
def ingress(redis_url: str, tmp_path: Path, limits: Callable[[], None] | None = None,
            **settings: Any) -> Iterator[tuple[int, subprocess.Popen[bytes], Path]]:
    """`payhooks ingress` in a process of its own: its port, the process and its log."""
    port = free_port()
    config = tmp_path / "payhooks.toml"
    config.write_text(to_toml({"redis_url": redis_url, "logging": {"format": "json"},
                               "ingress": settings, "merchants": MERCHANT_CONFIG}))
    log = tmp_path / "ingress.log"
    with log.open("wb") as output:
        process = subprocess.Popen(
            [sys.executable, "-m", "shared.cli", "ingress", "--config", str(config), "--host",
             "127.0.0.1", "--port", str(port)], stdout=output, stderr=subprocess.STDOUT,
            cwd=ROOT, env={**os.environ, "PAYHOOKS_REDIS_URL": redis_url},
            preexec_fn=limits)
    try:
        wait_until_healthy(port, process, log)
        yield port, process, log
    finally:
        stop(process, timeout=20)


def test_the_ingress_raises_its_soft_file_limit_and_serves_past_the_old_one(
        redis_url: str, tmp_path: Path) -> None:
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard <= SOFT + 200:
        pytest.skip(f"the hard limit ({hard}) leaves no room above {SOFT}")
    idle: list[socket.socket] = []
    with ingress(redis_url, tmp_path, _low_soft_limit) as (port, process, log):
        limits = Path(f"/proc/{process.pid}/limits").read_text()
        [line] = [text for text in limits.splitlines() if text.startswith("Max open files")]
        assert line.split()[3] != str(SOFT)  # the soft limit was raised
        for _ in range(SOFT + 100):  # more idle connections than the old limit allowed
            idle.append(socket.create_connection(("127.0.0.1", port), timeout=5))
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as answer:
            assert answer.status == 200
        for connection in idle:
            connection.close()
    assert '"event":"ingress.file_limit"' in log.read_text().replace(" ", "")


def _both_limits(files: int) -> Callable[[], None]:
    def set_limits() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (files, files))
    return set_limits


def _events(log: Path, name: str) -> list[dict[str, Any]]:
    lines = [json.loads(line) for line in log.read_text().splitlines() if line.startswith("{")]
    return [line for line in lines if line.get("event") == name]


def test_by_default_the_cap_leaves_files_for_redis_and_logs(redis_url: str,
                                                            tmp_path: Path) -> None:
    with ingress(redis_url, tmp_path, _both_limits(600)) as (_, _, log):
        pass
    [listening] = _events(log, "ingress.listening")
    assert listening["max_connections"] == 600 - RESERVED_FILES
    # where it listens and what it serves, at start; that it stopped, at the end
    assert listening["merchants"]["shop-eu"] == ["ifthenpay", "ixopay", "netaxept", "payex"]
    assert listening["port"] > 0
    assert [line["event"] for line in _events(log, "ingress.stopping") +
            _events(log, "ingress.stopped")] == ["ingress.stopping", "ingress.stopped"]


def _signed_callback(port: int) -> int:
    body = ixopay_body()
    uri = "/callbacks/shop-eu/ixopay"
    request = urllib.request.Request(f"http://127.0.0.1:{port}{uri}", data=body,
                                     headers=ixopay_headers(body, uri), method="POST")
    with urllib.request.urlopen(request, timeout=5) as answer:
        return int(answer.status)


def _closed_by_the_server(connection: socket.socket) -> bool:
    connection.settimeout(0.05)
    try:
        return connection.recv(1) == b""
    except TimeoutError:
        return False
    except OSError:
        return True


def test_past_the_cap_idle_connections_make_room_and_busy_ones_get_503(
        redis_url: str, tmp_path: Path) -> None:
    cap = 40
    with ingress(redis_url, tmp_path, max_connections=cap) as (port, _, log):
        idle = [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(cap)]
        time.sleep(0.2)
        assert _signed_callback(port) == 200  # the oldest idle connection made room for it
        assert _closed_by_the_server(idle[0])
        assert sum(map(_closed_by_the_server, idle)) <= 2  # it, and at most one more
        for connection in idle:
            connection.close()
        time.sleep(0.2)
        # every place taken by a request in progress (a body promised, not sent yet)
        busy = []
        for _ in range(cap):
            connection = socket.create_connection(("127.0.0.1", port), timeout=5)
            connection.sendall(b"POST /callbacks/shop-eu/ixopay HTTP/1.1\r\nHost: x\r\n"
                               b"Content-Type: application/json\r\nContent-Length: 900\r\n\r\n")
            busy.append(connection)
        time.sleep(0.3)
        late = socket.create_connection(("127.0.0.1", port), timeout=5)
        late.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        answer = late.recv(1024)
        assert answer.startswith(b"HTTP/1.1 503 ") and b"Retry-After: 1" in answer
        assert not any(map(_closed_by_the_server, busy))  # no request in progress was cut
        for connection in [*busy, late]:
            connection.close()
        time.sleep(0.2)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as page:
            metrics = page.read().decode()
    assert 'payhooks_ingress_connections_at_cap_total{outcome="idle_closed"} 1.0' in metrics
    assert 'payhooks_ingress_connections_at_cap_total{outcome="refused"} 1.0' in metrics
    [warning, *_] = _events(log, "ingress.connections_at_cap")
    assert warning["level"] == "warning" and warning["cap"] == cap
