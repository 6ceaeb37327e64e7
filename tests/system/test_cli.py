"""The `payhooks` command as a user runs it: check-config, and the ingress as a process."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest
import redis

from shared.sandbox.redis_server import free_port
from tests.helpers import (
    IFTHENPAY_KEY,
    IXOPAY_SECRET,
    NETAXEPT_AUTH,
    http_answers,
    ixopay_body,
    ixopay_headers,
    wait_until,
)

CONFIG = f"""
[ingress]
host = "127.0.0.1"
port = PORT

[logging]
format = "json"

[merchants.shop-eu.ixopay]
shared_secret = "${{IXO_SECRET}}"

[merchants.shop-eu.ifthenpay]
anti_phishing_key = "{IFTHENPAY_KEY}"

[merchants.shop-eu.netaxept]
merchant_id = "12002835"
token = "netaxept-token-for-tests"
callback_username = "netaxept-callback"
callback_password = "netaxept-password-for-tests"
"""


def payhooks(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "shared.cli", *args], capture_output=True,
                          text=True, env=env, timeout=60, check=False)


def test_check_config_summarises_a_good_file(tmp_path: Path) -> None:
    path = tmp_path / "payhooks.toml"
    path.write_text(CONFIG.replace("PORT", "8080"))
    result = payhooks("check-config", "--config", str(path), env={"IXO_SECRET": "x" * 12})
    assert result.returncode == 0, result.stderr
    assert "shop-eu: ixopay, ifthenpay, netaxept; 0 hooks" in result.stdout


def test_check_config_names_the_key_and_hides_the_secret(tmp_path: Path) -> None:
    path = tmp_path / "payhooks.toml"
    path.write_text(CONFIG.replace("PORT", "8080").replace(f'"{IFTHENPAY_KEY}"', '"short1"'))
    result = payhooks("check-config", "--config", str(path), env={"IXO_SECRET": "x" * 12})
    assert result.returncode == 2
    assert "merchants.shop-eu.ifthenpay.anti_phishing_key" in result.stderr
    assert "short1" not in result.stderr + result.stdout


def test_payhooks_config_env_is_read_and_a_missing_variable_stops_start_up(
    tmp_path: Path,
) -> None:
    path = tmp_path / "elsewhere.toml"
    path.write_text(CONFIG.replace("PORT", "8080"))
    result = payhooks("ingress", env={"PAYHOOKS_CONFIG": str(path)})
    assert result.returncode == 2
    assert "merchants.shop-eu.ixopay.shared_secret: environment variable IXO_SECRET" in (
        result.stderr)


@pytest.mark.usefixtures("redis_client")
def test_the_ingress_process_serves_logs_without_secrets_and_stops_on_sigterm(
    tmp_path: Path, redis_url: str
) -> None:
    port = free_port()
    path = tmp_path / "payhooks.toml"
    path.write_text(CONFIG.replace("PORT", str(port)))
    env = {"IXO_SECRET": IXOPAY_SECRET, "PAYHOOKS_REDIS_URL": redis_url}
    process = subprocess.Popen([sys.executable, "-m", "shared.cli", "ingress", "--config",
                                str(path)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               env=env, text=True)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: http_answers(f"{base}/healthz"), 15, "the server did not answer")
        body = ixopay_body()
        uri = "/callbacks/shop-eu/ixopay"
        requests = [
            urllib.request.Request(base + uri, data=body, headers=ixopay_headers(body, uri)),
            urllib.request.Request(f"{base}/callbacks/shop-eu/ifthenpay?key={IFTHENPAY_KEY}"
                                   "&orderId=1&amount=1.00"),
            urllib.request.Request(f"{base}/callbacks/shop-eu/netaxept", headers=NETAXEPT_AUTH,
                                   data=b'{"TransactionId":"cli-1"}'),
        ]
        for request in requests:
            with urllib.request.urlopen(request, timeout=5) as response:
                assert response.status == 200
        process.send_signal(signal.SIGTERM)
        output, _ = process.communicate(timeout=20)
    finally:
        process.kill()
    assert process.returncode == 0
    lines = [json.loads(line) for line in output.splitlines() if line.startswith("{")]
    received = [line for line in lines if line["event"] == "callback_received"]
    assert sorted(line["provider"] for line in received) == ["ifthenpay", "ixopay", "netaxept"]
    assert all(line["status"] == 200 and line["callback_id"] for line in received)
    for secret in (IXOPAY_SECRET, IFTHENPAY_KEY, "netaxept-password-for-tests",
                   NETAXEPT_AUTH["Authorization"].split()[1]):
        assert secret not in output
    assert redis.Redis.from_url(redis_url).llen("rq:queue:callbacks") == 3




def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    from importlib.metadata import version

    from shared.cli import main

    with pytest.raises(SystemExit) as stopped:
        main(["--version"])
    assert stopped.value.code == 0
    assert capsys.readouterr().out.strip() == f"payhooks {version('payhooks')}"
