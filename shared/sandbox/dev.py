"""`payhooks dev`: the whole system on one machine, without Docker, for trying it out.

Redis: its own redis-server on 127.0.0.1 (`--redis-port`, default 6390; redis-server from
PATH, Debian's package when root, or the `embedded-redis` extra), keeping its data in
`.payhooks-dev/redis/` between runs, so that it never writes into someone's Redis; or the
one given by `--redis-url` (or `PAYHOOKS_REDIS_URL`). The banner says which.

Then, as child processes sharing this terminal: the provider simulators, a sample merchant
endpoint that prints every event it receives, the ingress, two workers, the console
(`payhooks console`, with the token `dev` of the configuration) and (with the `dev` extra)
rq-dashboard. The sample configuration has a merchant `demo` with all four providers
pointed at the simulators and one hook at the sample endpoint; with
`--forward-to URL`, a second hook delivers every event, signed, to that URL (the user's own
app), with a secret kept between runs and printed to verify with.

The configuration is `.payhooks-dev/payhooks.toml`, written on the first run. It is the
user's to edit: an edited file is used as it is (a hook added there stays); one never
edited is written again when the options change. `payhooks simulate PROVIDER` sends a
correct callback through it. Ctrl-C, SIGTERM or closing the terminal stops everything it
started. The secrets below are for trying it out only.
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import hashlib
import importlib.util
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from shared.lifetime import stop_with_this_process
from shared.redis_client import without_password
from shared.sandbox.redis_server import RedisServer, answers
from shared.sandbox.simulators.client import SimulatorClient
from shared.settings import load_settings

DEMO_SECRETS = {
    "DEMO_IXOPAY_SECRET": "demo-ixopay-shared-secret",
    "DEMO_IXOPAY_PASSWORD": "demo-ixopay-api-password",
    "DEMO_IFTHENPAY_KEY": "demo-anti-phishing-key",
    "DEMO_NETAXEPT_TOKEN": "demo-netaxept-token",
    "DEMO_PAYEX_TOKEN": "demo-payex-token",
}
DEMO_HOOK_SECRET = "whsec_ZGVtby1ob29rLXNlY3JldC1rZXk="  # noqa: S105 - the demo's, published
DEMO_CONSOLE_TOKEN = "demo-console-token-for-trying-it-out"  # noqa: S105 - published too


@dataclass(frozen=True)
class Ports:
    ingress: int = 8080
    simulators: int = 8090
    merchant: int = 8091
    dashboard: int = 9181
    console: int = 9180
    redis: int = 6390  # of the Redis it starts (none with --redis-url)


SAMPLE_CONFIG = """\
# Written by `payhooks dev`: a merchant `demo` with all four providers pointed at the
# simulators and one hook at the sample merchant endpoint. Demo secrets, for trying it out.
redis_url = "{redis_url}"

[ingress]
host = "127.0.0.1"
port = {ports.ingress}

[logging]
format = "console"

[console]
port = {ports.console}
tokens = {{ dev = "{console_token}" }}   # sign in to the console with it

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

FORWARD_HOOK = """
# --forward-to: every event, signed, to your own app
[[merchants.demo.hooks]]
id = "forward"
url = "{url}"
secret = "{secret}"
"""

HOME = Path(".payhooks-dev")
CONFIG_PATH = HOME / "payhooks.toml"
STATE_PATH = HOME / "written.json"  # what was written, for what: to tell an edit apart


@dataclass(frozen=True)
class Written:
    """What `payhooks dev` wrote the configuration for."""

    ports: Ports
    redis_url: str
    forward_to: str | None
    forward_secret: str


def sample_config(written: Written) -> str:
    text = SAMPLE_CONFIG.format(ports=written.ports, hook_secret=DEMO_HOOK_SECRET,
                                secrets=DEMO_SECRETS, redis_url=written.redis_url,
                                console_token=DEMO_CONSOLE_TOKEN)
    if written.forward_to:
        text += FORWARD_HOOK.format(url=written.forward_to, secret=written.forward_secret)
    return text


def prepare_config(path: Path, wanted: Written) -> tuple[Path, str | None]:
    """Write the configuration unless the user edited it; the path and, when an edited
    file does not say what the options ask for, why it cannot be used."""
    state_path = path.parent / STATE_PATH.name
    state = _read_state(state_path)
    if path.exists() and state is not None and _digest(path.read_text()) != state["digest"]:
        before = Written(Ports(**state["ports"]), state["redis_url"], state["forward_to"],
                         state["forward_secret"])
        if before != wanted:
            changed = [name for name, old, new in (
                ("ports", before.ports, wanted.ports), ("Redis", before.redis_url,
                                                       wanted.redis_url),
                ("--forward-to", before.forward_to, wanted.forward_to)) if old != new]
            return path, (f"payhooks dev: {path} was edited, so it is kept as it is, but it "
                          f"was written for other {', '.join(changed)} than you ask for now; "
                          "run payhooks dev with the options of its first run, or edit the "
                          "file to match, or delete it to have it written again")
        return path, None  # edited, and what the options ask for: the user's file
    if path.exists() and state is None:
        return path, None  # a file the user put there: theirs
    text = sample_config(wanted)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    state_path.write_text(json.dumps({
        "digest": _digest(text), "ports": dataclasses.asdict(wanted.ports),
        "redis_url": wanted.redis_url, "forward_to": wanted.forward_to,
        "forward_secret": wanted.forward_secret}, indent=2))
    return path, None


def forward_secret(home: Path) -> str:
    """The --forward-to hook's secret: made once, kept between runs (the app keeps it)."""
    state = _read_state(home / STATE_PATH.name)
    if state is not None and state.get("forward_secret"):
        return str(state["forward_secret"])
    return "whsec_" + base64.b64encode(secrets.token_bytes(24)).decode()


def _read_state(path: Path) -> dict[str, Any] | None:
    try:
        state = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return state if isinstance(state, dict) and "digest" in state else None


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def register_demo(simulators_url: str) -> None:
    """Give the simulators the demo merchant's credentials."""
    with SimulatorClient(simulators_url) as admin:
        admin.netaxept_credentials("12002835", DEMO_SECRETS["DEMO_NETAXEPT_TOKEN"])
        admin.payex_token(DEMO_SECRETS["DEMO_PAYEX_TOKEN"])
        admin.ixopay_credentials("demo-api-key", "demo-api-user",
                                 DEMO_SECRETS["DEMO_IXOPAY_PASSWORD"])


PORT_OPTIONS = {"ingress": "--port", "simulators": "--simulators-port",
                "merchant": "--merchant-port", "dashboard": "--dashboard-port",
                "console": "--console-port",
                "redis": "--redis-port"}


def taken_ports(ports: Ports, own_redis: bool = True) -> list[str]:
    """A line for each port something else listens on, with the option to choose another."""
    lines = []
    for name, option in PORT_OPTIONS.items():
        if name == "redis" and not own_redis:
            continue
        port = getattr(ports, name)
        with socket.socket() as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the servers do
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                lines.append(f"payhooks dev: port {port} ({name}) is taken; choose another "
                             f"with {option} N")
    return lines


def run(ports: Ports | None = None, workers: int = 2, redis_url: str | None = None,
        forward_to: str | None = None) -> int:
    """Start everything and wait; Ctrl-C, SIGTERM, SIGHUP (the terminal closed) or any of
    its processes ending stops it all. `redis_url`: use that Redis instead of starting one."""
    ports = ports or Ports()
    redis_url = redis_url or os.environ.get("PAYHOOKS_REDIS_URL") or None
    taken = taken_ports(ports, own_redis=redis_url is None)
    if taken:
        print("\n".join(taken), file=sys.stderr)
        return 2
    if redis_url is not None and not answers(redis_url):
        print(f"payhooks dev: no Redis answers at {without_password(redis_url)}; leave out "
              "--redis-url (and PAYHOOKS_REDIS_URL) to have one started here", file=sys.stderr)
        return 2
    own = f"redis://127.0.0.1:{ports.redis}/0"
    wanted = Written(ports, redis_url or own, forward_to, forward_secret(HOME))
    config, problem = prepare_config(CONFIG_PATH, wanted)
    if problem:
        print(problem, file=sys.stderr)
        return 2
    load_settings(config)  # a problem in it (an edit, --forward-to) is told now, in full
    for signum in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, lambda *_: sys.exit(0))  # unwinds: the children are stopped
    with contextlib.ExitStack() as stack:
        if redis_url is None:
            data = HOME / "redis"
            data.mkdir(parents=True, exist_ok=True)
            stack.enter_context(RedisServer(port=ports.redis, appendonly=True,
                                            directory=data.resolve()))
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
        processes.append(_start([python, "-m", "shared.cli", "console", "--config",
                                 str(config)], env))
        dashboard = _start_dashboard(wanted.redis_url, ports.dashboard, env)
        if dashboard is not None:
            processes.append(dashboard)
        _wait_for(f"http://127.0.0.1:{ports.ingress}/healthz")
        _wait_for(f"http://127.0.0.1:{ports.console}/healthz")
        _print_urls(ports, wanted, config, dashboard is not None)
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


def command() -> str:
    """How to run `payhooks` from this shell: plain when it is on PATH, else the path of
    the script beside this Python (`.venv/bin/payhooks`), else through the module."""
    script = Path(sys.executable).parent / "payhooks"
    found = shutil.which("payhooks")
    if found and Path(found).resolve() == script.resolve():
        return "payhooks"
    if script.exists():
        try:
            return str(script.relative_to(Path.cwd()))
        except ValueError:
            return str(script)
    return f"{sys.executable} -m shared.cli"


def _print_urls(ports: Ports, wanted: Written, config: Path, dashboard: bool) -> None:
    own = wanted.redis_url == f"redis://127.0.0.1:{ports.redis}/0"
    where = f" (started here, data in {HOME / 'redis'})" if own else " (given)"
    run = command()
    lines = [
        f"Redis          {without_password(wanted.redis_url)}{where}",
        f"ingress        http://127.0.0.1:{ports.ingress}/callbacks/demo/<provider>",
        f"metrics        http://127.0.0.1:{ports.ingress}/metrics",
        f"simulators     http://127.0.0.1:{ports.simulators}/_sim/stats",
        f"merchant       http://127.0.0.1:{ports.merchant}/events (prints what it receives)",
        (f"forward-to     {wanted.forward_to} (every event, signed; verify with "
         f"{wanted.forward_secret})") if wanted.forward_to else "",
        f"console        http://127.0.0.1:{ports.console} (sign in with [console] tokens.dev "
        f"of {config})",
        f"rq-dashboard   http://127.0.0.1:{ports.dashboard}" if dashboard else "",
        f"config         {config} (yours to edit: an edited file is kept)",
        f"try            {run} simulate ixopay   (or ifthenpay, netaxept, payex)",
        f"then           {run} events --config {config}",
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
