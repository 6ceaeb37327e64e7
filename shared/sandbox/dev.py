"""`payhooks dev`: the whole system on one machine, without Docker, for trying it out.

It uses the Redis at `PAYHOOKS_REDIS_URL` (default 127.0.0.1:6379) when one answers, else
starts one (redis-server from PATH, Debian's package when root, or the `embedded-redis`
extra), then starts, as child processes sharing this terminal: the provider simulators, a
sample merchant endpoint that prints every event it receives, the ingress, two workers and
(with the `dev` extra) rq-dashboard. The sample configuration has a merchant `demo` with
all four providers pointed at the simulators and one hook at the sample endpoint; it is
written to `.payhooks-dev/payhooks.toml`, so that `payhooks events --config` can read it.
`payhooks simulate PROVIDER` then sends a correct callback through it. Ctrl-C stops
everything it started. The secrets below are for trying it out only.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx

from shared.lifetime import stop_with_this_process
from shared.sandbox.redis_server import RedisServer, answers
from shared.sandbox.simulators.client import SimulatorClient

DEMO_SECRETS = {
    "DEMO_IXOPAY_SECRET": "demo-ixopay-shared-secret",
    "DEMO_IXOPAY_PASSWORD": "demo-ixopay-api-password",
    "DEMO_IFTHENPAY_KEY": "demo-anti-phishing-key",
    "DEMO_NETAXEPT_TOKEN": "demo-netaxept-token",
    "DEMO_PAYEX_TOKEN": "demo-payex-token",
}
DEMO_HOOK_SECRET = "whsec_ZGVtby1ob29rLXNlY3JldC1rZXk="  # noqa: S105 - the demo's, published


@dataclass(frozen=True)
class Ports:
    ingress: int = 8080
    simulators: int = 8090
    merchant: int = 8091
    dashboard: int = 9181


SAMPLE_CONFIG = """\
# Written by `payhooks dev`: a merchant `demo` with all four providers pointed at the
# simulators and one hook at the sample merchant endpoint. Demo secrets, for trying it out.
redis_url = "{redis_url}"

[ingress]
host = "127.0.0.1"
port = {ports.ingress}

[logging]
format = "console"

[delivery]
allow_private_networks = true   # the sample endpoint is on 127.0.0.1
retry_schedule = ["5s", "30s", "2m"]

[merchants.demo.ixopay]
shared_secret = "{secrets[DEMO_IXOPAY_SECRET]}"
api_key = "demo-api-key"
username = "demo-api-user"
password = "{secrets[DEMO_IXOPAY_PASSWORD]}"
base_url = "http://127.0.0.1:{ports.simulators}"

[merchants.demo.ifthenpay]
anti_phishing_key = "{secrets[DEMO_IFTHENPAY_KEY]}"
base_url = "http://127.0.0.1:{ports.simulators}"

[merchants.demo.netaxept]
merchant_id = "12002835"
token = "{secrets[DEMO_NETAXEPT_TOKEN]}"
base_url = "http://127.0.0.1:{ports.simulators}"

[merchants.demo.payex]
token = "{secrets[DEMO_PAYEX_TOKEN]}"
base_url = "http://127.0.0.1:{ports.simulators}"

[[merchants.demo.hooks]]
id = "sample"
url = "http://127.0.0.1:{ports.merchant}/events"
secret = "{hook_secret}"
"""


CONFIG_PATH = Path(".payhooks-dev") / "payhooks.toml"


def write_config(path: Path, ports: Ports, redis_url: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(SAMPLE_CONFIG.format(ports=ports, hook_secret=DEMO_HOOK_SECRET,
                                         secrets=DEMO_SECRETS, redis_url=redis_url))
    return path


def register_demo(simulators_url: str) -> None:
    """Give the simulators the demo merchant's credentials."""
    with SimulatorClient(simulators_url) as admin:
        admin.netaxept_credentials("12002835", DEMO_SECRETS["DEMO_NETAXEPT_TOKEN"])
        admin.payex_token(DEMO_SECRETS["DEMO_PAYEX_TOKEN"])
        admin.ixopay_credentials("demo-api-key", "demo-api-user",
                                 DEMO_SECRETS["DEMO_IXOPAY_PASSWORD"])


PORT_OPTIONS = {"ingress": "--port", "simulators": "--simulators-port",
                "merchant": "--merchant-port", "dashboard": "--dashboard-port"}


def taken_ports(ports: Ports) -> list[str]:
    """A line for each port something else listens on, with the option to choose another."""
    lines = []
    for name, option in PORT_OPTIONS.items():
        port = getattr(ports, name)
        with socket.socket() as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the servers do
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                lines.append(f"payhooks dev: port {port} ({name}) is taken; choose another "
                             f"with {option} N")
    return lines


def run(ports: Ports | None = None, workers: int = 2) -> int:
    """Start everything and wait; Ctrl-C, SIGTERM, SIGHUP (the terminal closed) or any of
    its processes ending stops it all."""
    ports = ports or Ports()
    taken = taken_ports(ports)
    if taken:
        print("\n".join(taken), file=sys.stderr)
        return 2
    for signum in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, lambda *_: sys.exit(0))  # unwinds: the children are stopped
    with contextlib.ExitStack() as stack:
        redis_url = os.environ.get("PAYHOOKS_REDIS_URL", "redis://127.0.0.1:6379/0")
        started_redis = not answers(redis_url)
        if started_redis:
            redis_url = stack.enter_context(RedisServer()).url
        config = write_config(CONFIG_PATH, ports, redis_url)
        env = {k: v for k, v in os.environ.items() if k != "PAYHOOKS_REDIS_URL"}
        processes = stack.enter_context(_children())
        python = sys.executable
        processes.append(_start([python, "-m", "shared.sandbox.simulators", "--port",
                                 str(ports.simulators)], env))
        processes.append(_start([python, "-m", "shared.sandbox.simulators.merchant", "--port",
                                 str(ports.merchant), "--secret", DEMO_HOOK_SECRET], env))
        _wait_for(f"http://127.0.0.1:{ports.simulators}/_sim/stats")
        register_demo(f"http://127.0.0.1:{ports.simulators}")
        processes.append(_start([python, "-m", "shared.cli", "ingress", "--config",
                                 str(config)], env))
        for _ in range(workers):
            processes.append(_start([python, "-m", "shared.cli", "worker", "--config",
                                     str(config)], env))
        dashboard = _start_dashboard(redis_url, ports.dashboard, env)
        if dashboard is not None:
            processes.append(dashboard)
        _wait_for(f"http://127.0.0.1:{ports.ingress}/healthz")
        _print_urls(ports, redis_url, started_redis, config, dashboard is not None)
        return _wait(processes)
    return 0


@contextlib.contextmanager
def _children() -> Iterator[list[subprocess.Popen[bytes]]]:
    processes: list[subprocess.Popen[bytes]] = []
    try:
        yield processes
    finally:
        for process in processes:
            if process.poll() is None:
                process.terminate()
        for process in processes:
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()


def _start(argv: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(argv, env=env, start_new_session=True,
                            preexec_fn=stop_with_this_process())  # on Linux


def _start_dashboard(redis_url: str, port: int, env: dict[str, str]
                     ) -> subprocess.Popen[bytes] | None:
    if importlib.util.find_spec("rq_dashboard") is None:
        print("payhooks dev: rq-dashboard is not installed (pip install -e '.[dev]')")
        return None
    return _start([sys.executable, "-m", "rq_dashboard", "--bind", "127.0.0.1", "--port",
                   str(port), "--redis-url", redis_url, "--json"], env)


def _wait_for(url: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            httpx.get(url, timeout=1.0)
            return
        except httpx.HTTPError:
            if time.monotonic() > deadline:
                raise RuntimeError(f"payhooks dev: {url} did not answer") from None
            time.sleep(0.1)


def _print_urls(ports: Ports, redis_url: str, started: bool, config: Path,
                dashboard: bool) -> None:
    lines = [
        f"Redis          {redis_url}{' (started here)' if started else ''}",
        f"ingress        http://127.0.0.1:{ports.ingress}/callbacks/demo/<provider>",
        f"metrics        http://127.0.0.1:{ports.ingress}/metrics",
        f"simulators     http://127.0.0.1:{ports.simulators}/_sim/stats",
        f"merchant       http://127.0.0.1:{ports.merchant}/events (prints what it receives)",
        f"rq-dashboard   http://127.0.0.1:{ports.dashboard}" if dashboard else "",
        f"config         {config}",
        "try            payhooks simulate ixopay   (or ifthenpay, netaxept, payex)",
        f"then           payhooks events --config {config}",
        "stop           Ctrl-C",
    ]
    print("\npayhooks dev is up:\n  " + "\n  ".join(line for line in lines if line) + "\n",
          flush=True)


def _wait(processes: list[subprocess.Popen[bytes]]) -> int:
    try:
        while all(process.poll() is None for process in processes):
            time.sleep(0.5)
    except KeyboardInterrupt:
        return 0
    print("payhooks dev: a process stopped; stopping the others", file=sys.stderr)
    return 1
