"""`payhooks ingress` started under a low soft limit on open files (256 here, 1024 on many
hosts) raises it to the hard limit: before, that many idle connections locked genuine
callbacks out, silently."""

from __future__ import annotations

import os
import resource
import socket
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from shared.processes import stop
from shared.redis_server import free_port
from tests.helpers import MERCHANT_CONFIG, to_toml
from tests.test_ingress_slow import _wait_until_healthy

SOFT = 256


def _low_soft_limit() -> None:
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (SOFT, hard))


def test_the_ingress_raises_its_soft_file_limit_and_serves_past_the_old_one(
        redis_url: str, tmp_path: Path) -> None:
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard <= SOFT + 200:
        pytest.skip(f"the hard limit ({hard}) leaves no room above {SOFT}")
    port = free_port()
    config = tmp_path / "payhooks.toml"
    config.write_text(to_toml({"redis_url": redis_url, "logging": {"format": "json"},
                               "merchants": MERCHANT_CONFIG}))
    log = tmp_path / "ingress.log"
    with log.open("wb") as output:
        process = subprocess.Popen(
            [sys.executable, "-m", "shared.cli", "ingress", "--config", str(config), "--host",
             "127.0.0.1", "--port", str(port)], stdout=output, stderr=subprocess.STDOUT,
            cwd=Path(__file__).parents[1], env={**os.environ, "PAYHOOKS_REDIS_URL": redis_url},
            preexec_fn=_low_soft_limit)
    idle: list[socket.socket] = []
    try:
        _wait_until_healthy(port, process, log)
        limits = Path(f"/proc/{process.pid}/limits").read_text()
        [line] = [text for text in limits.splitlines() if text.startswith("Max open files")]
        assert line.split()[3] != str(SOFT)  # the soft limit was raised
        for _ in range(SOFT + 100):  # more idle connections than the old limit allowed
            idle.append(socket.create_connection(("127.0.0.1", port), timeout=5))
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as answer:
            assert answer.status == 200
    finally:
        for connection in idle:
            connection.close()
        stop(process, timeout=20)
    assert '"event":"ingress.file_limit"' in log.read_text().replace(" ", "")
