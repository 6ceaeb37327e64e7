"""`payhooks dev` as a newcomer runs it: everything up, a callback of each provider simulated,
each event seen at the sample merchant endpoint, rq-dashboard answering, Ctrl-C stopping all."""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
import redis
from standardwebhooks import Webhook

from shared.sandbox.redis_server import free_port
from shared.sandbox.simulate import simulate
from shared.sandbox.simulators.merchant import MerchantEndpoint
from tests.helpers import HOOK_SECRET, ROOT, secrets_in, wait_until


def test_payhooks_dev_brings_up_everything_and_simulated_callbacks_arrive(
        tmp_path: Path, redis_url: str) -> None:
    ports = {name: free_port() for name in ("ingress", "simulators", "merchant", "dashboard",
                                            "console")}
    project = ROOT
    process = subprocess.Popen(
        [sys.executable, "-m", "shared.cli", "dev", "--port", str(ports["ingress"]),
         "--simulators-port", str(ports["simulators"]), "--merchant-port",
         str(ports["merchant"]), "--dashboard-port", str(ports["dashboard"]),
         "--console-port", str(ports["console"])],
        cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env={**os.environ, "PAYHOOKS_REDIS_URL": redis_url,
             "PYTHONPATH": str(project)})
    output: list[str] = []
    stdout = process.stdout
    assert stdout is not None
    threading.Thread(target=lambda: output.extend(iter(stdout.readline, "")), daemon=True).start()
    try:
        wait_until_output(lambda: any("payhooks dev is up" in line for line in output), output)
        ingress = f"http://127.0.0.1:{ports['ingress']}"
        simulators = f"http://127.0.0.1:{ports['simulators']}"
        for provider in ("ixopay", "ifthenpay", "netaxept", "payex"):
            assert simulate(provider, ingress=ingress, simulators=simulators) == 0
        assert simulate("ixopay", status="chargeback_reversed", ingress=ingress,
                        simulators=simulators) == 0
        wait_until_output(lambda: sum("merchant endpoint received" in line for line in output) >= 7,
                 output)
        received = [line for line in output if "merchant endpoint received" in line]
        for provider in ("ixopay", "ifthenpay", "netaxept", "payex"):
            assert any(f"demo/{provider}" in line and "payment.captured" in line
                       and "(signature verified)" in line for line in received), provider
        assert any("payment.chargeback_reversed" in line for line in received)
        dashboard = httpx.get(f"http://127.0.0.1:{ports['dashboard']}/", timeout=10)
        assert dashboard.status_code == 200
        from shared.sandbox.dev import DEMO_CONSOLE_TOKEN

        found = httpx.get(f"http://127.0.0.1:{ports['console']}/api/events?provider=payex",
                          headers={"Authorization": f"Bearer {DEMO_CONSOLE_TOKEN}"}, timeout=10)
        assert found.status_code == 200 and found.json()["events"]  # the console's view
        metrics = httpx.get(f"{ingress}/metrics", timeout=10).text
        assert metrics.count('outcome="accepted"') == 4
        assert (tmp_path / ".payhooks-dev" / "payhooks.toml").exists()
    finally:
        process.send_signal(signal.SIGINT)
        process.wait(timeout=30)
    assert process.returncode == 0
    assert secrets_in("".join(output)) == []  # every process's log lines, in this terminal
    for port in ports.values():
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"http://127.0.0.1:{port}/", timeout=2)


def wait_until_output(condition: Callable[[], bool], output: list[str],
                      timeout: float = 60.0) -> None:
    wait_until(condition, timeout, lambda: "timed out; output:\n" + "".join(output[-60:]))


@pytest.mark.parametrize(("provider", "missing"), [("netaxept", "provider simulators"),
                                                    ("ixopay", "ingress")])
def test_simulate_with_nothing_listening_says_what_to_start(provider: str, missing: str) -> None:
    """Before: 60 lines of httpx traceback."""
    nothing = f"http://127.0.0.1:{free_port()}"
    done = subprocess.run(
        [sys.executable, "-m", "shared.cli", "simulate", provider, "--ingress", nothing,
         "--simulators", nothing], capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert done.returncode == 2
    assert done.stderr.strip() == (done.stderr.strip().splitlines() or [""])[0]  # one line
    assert f"no {missing} answer" in done.stderr and "payhooks dev" in done.stderr
    assert "Traceback" not in done.stderr + done.stdout


def start_dev(tmp_path: Path, redis_url: str | None, ports: dict[str, int], *options: str
              ) -> tuple[subprocess.Popen[str], list[str]]:
    """`payhooks dev` in `tmp_path`, on these ports; with `redis_url` None, on a Redis of
    its own (at ports["redis"])."""
    env = {k: v for k, v in os.environ.items() if k != "PAYHOOKS_REDIS_URL"}
    if redis_url is not None:
        env["PAYHOOKS_REDIS_URL"] = redis_url
    process = subprocess.Popen(
        [sys.executable, "-m", "shared.cli", "dev", "--port", str(ports["ingress"]),
         "--simulators-port", str(ports["simulators"]), "--merchant-port",
         str(ports["merchant"]), "--dashboard-port", str(ports["dashboard"]), "--workers", "1",
         "--console-port", str(ports["console"]),
         *(["--redis-port", str(ports["redis"])] if "redis" in ports else []), *options],
        cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env={**env, "PYTHONPATH": str(ROOT)})
    output: list[str] = []
    stdout = process.stdout
    assert stdout is not None
    threading.Thread(target=lambda: output.extend(iter(stdout.readline, "")), daemon=True).start()
    return process, output


def listening(port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) == 0


@pytest.mark.parametrize("signum", [signal.SIGHUP, signal.SIGTERM])
def test_closing_the_terminal_or_sigterm_stops_everything_dev_started(
        tmp_path: Path, redis_url: str, signum: int) -> None:
    """Before, SIGHUP left seven processes holding the ports, and the next run failed."""
    ports = {name: free_port() for name in ("ingress", "simulators", "merchant", "dashboard",
                                            "console")}
    process, output = start_dev(tmp_path, redis_url, ports)
    try:
        wait_until_output(lambda: any("payhooks dev is up" in line for line in output), output)
        assert all(listening(port) for port in ports.values())
    finally:
        process.send_signal(signum)
        process.wait(timeout=40)
    wait_until(lambda: not any(listening(port) for port in ports.values()), 20,
               lambda: f"still listening: {[p for p in ports.values() if listening(p)]}")


def test_a_taken_port_is_named_before_anything_starts(tmp_path: Path, redis_url: str) -> None:
    ports = {name: free_port() for name in ("ingress", "simulators", "merchant", "dashboard",
                                            "console")}
    with socket.create_server(("127.0.0.1", ports["merchant"])):
        process, output = start_dev(tmp_path, redis_url, ports)
        assert process.wait(timeout=30) == 2
    text = "".join(output)
    assert f"port {ports['merchant']} (merchant) is taken; choose another with " \
           "--merchant-port N" in text
    assert "payhooks dev is up" not in text and "Traceback" not in text
    assert not any(listening(port) for port in ports.values())


def test_dev_has_its_own_redis_keeps_an_edited_config_and_forwards_to_your_app(
        tmp_path: Path) -> None:
    """Before: db 0 of whatever Redis answered on 6379, the config rewritten at every start
    (a hook the user added, lost), and no way to deliver to the user's own app."""
    ports = {name: free_port() for name in ("ingress", "simulators", "merchant", "dashboard",
                                            "console", "redis")}
    config = tmp_path / ".payhooks-dev" / "payhooks.toml"
    with MerchantEndpoint() as app, MerchantEndpoint() as mine:
        forward = f"{app.url}/webhooks"
        process, output = start_dev(tmp_path, None, ports, "--forward-to", forward)
        try:
            wait_until_output(lambda: any("payhooks dev is up" in line for line in output),
                              output)
            banner = "".join(output)
            assert f"redis://127.0.0.1:{ports['redis']}/0 (started here" in banner
            assert redis.Redis(port=ports["redis"]).ping()
            secret = re.search(r"verify with (whsec_\S+)\)", banner)
            assert secret is not None and f"forward-to     {forward}" in banner
            run = re.search(r"try            (.+) simulate ixopay", banner)
            assert run is not None and (shutil.which(run[1]) or Path(run[1]).exists())
            assert send(ports, "ixopay") == 0
            wait_until_output(lambda: len(app.requests_to("/webhooks")) == 1, output)
            request = app.requests_to("/webhooks")[0]
            headers = {k.lower(): v for k, v in request.headers.items()}
            event = Webhook(secret[1]).verify(request.body, headers)
            assert event["type"] == "payment.captured" and event["data"]["merchant"] == "demo"
        finally:
            process.send_signal(signal.SIGINT)
            process.wait(timeout=30)
        assert not listening(ports["redis"])  # it stopped the Redis it started
        assert list((tmp_path / ".payhooks-dev" / "redis").iterdir())  # its data is kept

        # the user adds a hook of their own: the next start keeps it and delivers to it
        edited = config.read_text() + (
            f'\n[[merchants.demo.hooks]]\nid = "mine"\nurl = "{mine.url}/mine"\n'
            f'secret = "{HOOK_SECRET}"\n')
        config.write_text(edited)
        process, output = start_dev(tmp_path, None, ports, "--forward-to", forward)
        try:
            wait_until_output(lambda: any("payhooks dev is up" in line for line in output),
                              output)
            assert f"verify with {secret[1]})" in "".join(output)  # the same secret
            assert send(ports, "payex") == 0
            wait_until_output(lambda: len(mine.requests_to("/mine")) >= 1, output)
            wait_until_output(lambda: len(app.requests_to("/webhooks")) >= 2, output)
        finally:
            process.send_signal(signal.SIGINT)
            process.wait(timeout=30)
        assert config.read_text() == edited

    # an edited file that says other ports than asked for is not silently overruled
    process, output = start_dev(tmp_path, None, {**ports, "ingress": free_port()})
    assert process.wait(timeout=30) == 2
    told = "".join(output)
    assert "was edited, so it is kept" in told and "ports, --forward-to" in told
    assert config.read_text() == edited


def send(ports: dict[str, int], provider: str) -> int:
    return simulate(provider, ingress=f"http://127.0.0.1:{ports['ingress']}",
                    simulators=f"http://127.0.0.1:{ports['simulators']}")


def test_simulate_names_the_statuses_a_provider_has() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "shared.cli", "simulate", "netaxept", "--status",
         "chargeback_reversed"], capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert done.returncode == 2
    assert done.stderr.strip() == ("simulate: netaxept has no 'chargeback_reversed' callback; "
                                   "it has: captured, authorized, pending, refunded, voided, "
                                   "failed")
