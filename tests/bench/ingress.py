"""`payhooks bench ingress`: callbacks/s of one ingress process, next to a bare aiohttp handler.

Per provider, 1,000 distinct valid callbacks (fresh ids; IXOPAY's signed) are cycled by
`wrk` through a Lua script: first against a bare aiohttp server on uvloop that reads the
body and answers `OK`, right after against the real ingress (`payhooks ingress`, canonical
log line on, JSON, to /dev/null). The ratio of the two throughputs is the share of a core's
plain HTTP capacity the ingress keeps while it verifies, builds the RQ job and waits for
Redis. Each run follows a 1 s warm-up; latencies are wrk's, per request, under that load.

Cores: both servers are pinned to the first CPU (only one is loaded at a time); wrk and a
Redis of our own (no persistence) share the second, so the server's core runs nothing but
the Python process under test, and Redis counts as I/O wait, as on another host.

Exit code 1 when any answer is not 2xx, a socket error occurs, or `rq:queue:callbacks`
holds fewer jobs than the ingress answered 2xx: every request is valid. The speed target
(IXOPAY ratio >= 0.50, p99 <= 10 ms) is reported, not enforced.
"""

from __future__ import annotations

import contextlib
import functools
import http.client
import json
import os
import platform
import re
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from email.utils import formatdate
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import redis
from aiohttp import web

from shared.providers import ixopay
from shared.sandbox.processes import clean_env, stop
from shared.sandbox.redis_server import RedisServer, free_port
from shared.settings import load_settings, settings_from_dict

MERCHANT = "bench"
IXOPAY_SECRET = "bench-ixopay-shared-secret"
IFTHENPAY_KEY = "bench-anti-phishing-key"
REQUESTS_PER_PROVIDER = 1000
WARMUP_SECONDS = 1.0
TARGET_RATIO, TARGET_P99_MS = 0.50, 10.0
_PROJECT = Path(__file__).resolve().parents[2]
_UNIT_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0, "h": 3_600_000.0}
_LUA_SCRIPT = """\
local requests, count, index = {}, 0, 0
function init(args)
   for i, r in ipairs(dofile(args[1])) do requests[i] = wrk.format(r[1], r[2], r[3], r[4]) end
   count = #requests
end
function request()
   index = index % count + 1
   return requests[index]
end
"""


class BenchError(RuntimeError):
    """The benchmark could not run: a server did not start, or wrk failed."""


@dataclass(frozen=True, slots=True)
class Request:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes | None


@dataclass(frozen=True, slots=True)
class WrkResult:
    requests: int
    rps: float
    p50_ms: float
    p99_ms: float
    non_2xx: int
    socket_errors: int

    @property
    def answered_2xx(self) -> int:
        return self.requests - self.non_2xx

    @property
    def ok(self) -> bool:
        return self.requests > 0 and self.non_2xx == 0 and self.socket_errors == 0


@dataclass(frozen=True, slots=True)
class Row:
    provider: str
    bare: WrkResult
    ingress: WrkResult
    stored: int  # LLEN rq:queue:callbacks after the ingress run

    @property
    def ok(self) -> bool:
        return self.bare.ok and self.ingress.ok and self.stored >= self.ingress.answered_2xx


@dataclass(frozen=True, slots=True)
class Setup:
    wrk: list[str]  # wrk and the options every run shares
    load_cpu: int
    bare_url: str
    ingress_url: str
    redis: redis.Redis
    directory: Path


def _ixopay(n: int) -> Request:
    body = json.dumps({
        "result": "OK", "uuid": secrets.token_hex(10), "merchantTransactionId": f"order-{n}",
        "purchaseId": f"20240103-{secrets.token_hex(10)}", "transactionType": "DEBIT",
        "paymentMethod": "Creditcard", "amount": "9.99", "currency": "EUR",
    }, separators=(",", ":")).encode()
    path, date = f"/callbacks/{MERCHANT}/ixopay", formatdate(usegmt=True)
    headers = {"Content-Type": ixopay.JSON_CONTENT_TYPE, "Date": date,
               "X-Signature": ixopay.sign(IXOPAY_SECRET, body, date, path)}
    return Request("POST", path, headers, body)


def _ifthenpay(n: int) -> Request:
    query = (f"key={IFTHENPAY_KEY}&orderId={n}&amount=12.34&requestId={secrets.token_hex(10)}"
             "&payment_datetime=03-01-2024%2015:15:16")
    return Request("GET", f"/callbacks/{MERCHANT}/ifthenpay?{query}", {}, None)


def _json_post(provider: str, data: dict[str, Any]) -> Request:
    body = json.dumps(data, separators=(",", ":")).encode()
    return Request("POST", f"/callbacks/{MERCHANT}/{provider}",
                   {"Content-Type": "application/json"}, body)


def _netaxept(n: int) -> Request:
    return _json_post("netaxept", {"TransactionId": uuid.uuid4().hex})


def _payex(n: int) -> Request:
    payment = f"/psp/creditcard/payments/{uuid.uuid4()}"
    return _json_post("payex", {"payment": {"id": payment, "number": n + 1},
                                "transaction": {"id": f"{payment}/captures/{uuid.uuid4()}",
                                                "number": n + 2}})


BUILDERS: dict[str, Callable[[int], Request]] = {
    "ixopay": _ixopay, "ifthenpay": _ifthenpay, "netaxept": _netaxept, "payex": _payex,
}


def _lua(data: str | bytes) -> str:
    data = data.encode() if isinstance(data, str) else data
    return '"' + "".join(chr(b) if 32 <= b < 127 and b not in b'\\"' else f"\\{b:03d}"
                         for b in data) + '"'


def write_requests(requests: Sequence[Request], path: Path) -> None:
    """A Lua chunk returning {method, path, headers, body} tables, for the wrk script."""
    lines = ["return {"]
    for r in requests:
        headers = ", ".join(f"[{_lua(k)}] = {_lua(v)}" for k, v in r.headers.items())
        body = "nil" if r.body is None else _lua(r.body)
        lines.append(f"{{{_lua(r.method)}, {_lua(r.path)}, {{{headers}}}, {body}}},")
    path.write_text("\n".join([*lines, "}", ""]), encoding="ascii")


def _toml(table: dict[str, Any], name: str = "") -> list[str]:
    """TOML for nested tables of strings (json.dumps quotes a string as TOML does)."""
    lines = [f"{key} = {json.dumps(value)}" for key, value in table.items()
             if not isinstance(value, dict)]
    if name and lines:
        lines.insert(0, f"[{name}]")
    for key, value in table.items():
        if isinstance(value, dict):
            lines += _toml(value, f"{name}.{key}" if name else key)
    return lines


def write_config(redis_url: str, path: Path, min_replicas: int = 0) -> None:
    """The ingress config: one merchant with all four providers, JSON log lines at info."""
    raw: dict[str, Any] = {
        "redis_url": redis_url,
        "ingress": {"min_replicas": min_replicas},
        "logging": {"level": "info", "format": "json"},
        "merchants": {MERCHANT: {
            "ixopay": {"shared_secret": IXOPAY_SECRET},
            "ifthenpay": {"anti_phishing_key": IFTHENPAY_KEY},
            "netaxept": {"merchant_id": "12002835", "token": "bench-netaxept-token"},
            "payex": {"token": "bench-payex-token"},
        }},
    }
    settings = settings_from_dict(raw, environ={})
    path.write_text("\n".join([*_toml(raw), ""]), encoding="utf-8")
    if load_settings(path, environ={}) != settings:
        raise BenchError(f"{path} does not read back as the settings it was written from")


def ensure_wrk() -> str | None:
    """The path of wrk, installing Debian's package when root and it is missing."""
    found = shutil.which("wrk")
    if found or os.geteuid() != 0 or not shutil.which("apt-get"):
        return found
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for argv in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", "wrk"]):
        subprocess.run(argv, env=env, stdout=subprocess.DEVNULL, check=False)
    return shutil.which("wrk")


def pin(cpu: int) -> Callable[[], None]:
    return functools.partial(os.sched_setaffinity, 0, {cpu})


def _healthy(port: int) -> bool:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=1.0)
    try:
        connection.request("GET", "/healthz")
        return connection.getresponse().status == 200
    except OSError:
        return False
    finally:
        connection.close()


def start_server(stack: contextlib.ExitStack, argv: list[str], cpu: int, log: Path) -> str:
    """Start a server pinned to `cpu` (its last argument is its port); its URL once healthy."""
    with log.open("wb") as stderr:
        process = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=stderr,
                                   env=clean_env(), cwd=_PROJECT, preexec_fn=pin(cpu))
    stack.callback(stop, process)
    port, deadline = int(argv[-1]), time.monotonic() + 30
    while not _healthy(port):
        if process.poll() is not None or time.monotonic() > deadline:
            tail = log.read_text(errors="replace")[-2000:]
            raise BenchError(f"{' '.join(argv[2:4])} did not start on port {port}:\n{tail}")
        time.sleep(0.1)
    return f"http://127.0.0.1:{port}"


def parse_wrk(output: str) -> WrkResult:
    """The figures of wrk's report (run with --latency), latencies in ms."""
    rps = re.search(r"^Requests/sec:\s+([\d.]+)", output, re.MULTILINE)
    total = re.search(r"^\s*(\d+) requests in ", output, re.MULTILINE)
    latency = {p: float(v) * _UNIT_MS[u] for p, v, u in
               re.findall(r"^\s+(50|99)(?:\.0+)?%\s+([\d.]+)(us|ms|s|m|h)\s*$", output, re.M)}
    if rps is None or total is None or set(latency) != {"50", "99"}:
        raise BenchError(f"cannot read wrk's report:\n{output}")
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)",
                       output)
    return WrkResult(
        requests=int(total.group(1)), rps=float(rps.group(1)),
        p50_ms=latency["50"], p99_ms=latency["99"],
        non_2xx=int(non_2xx.group(1)) if non_2xx else 0,
        socket_errors=sum(int(n) for n in errors.groups()) if errors else 0,
    )


def run_wrk(setup: Setup, url: str, requests: Path, seconds: float) -> WrkResult:
    argv = [*setup.wrk, f"-d{max(1, round(seconds))}s", url, "--", str(requests)]  # whole s
    done = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 60,
                          preexec_fn=pin(setup.load_cpu), check=False)
    if done.returncode != 0:
        raise BenchError(f"wrk exited with {done.returncode}:\n{done.stdout}{done.stderr}")
    return parse_wrk(done.stdout)


def bench_provider(setup: Setup, provider: str, seconds: float, rounds: int) -> Row:
    """Warm both servers up, empty the queue, then measure bare and ingress back to back,
    `rounds` times; each figure is the median of the rounds (this VM's speed drifts)."""
    requests = setup.directory / f"{provider}.lua"
    write_requests([BUILDERS[provider](n) for n in range(REQUESTS_PER_PROVIDER)], requests)
    run_wrk(setup, setup.bare_url, requests, WARMUP_SECONDS)
    run_wrk(setup, setup.ingress_url, requests, WARMUP_SECONDS)
    time.sleep(0.2)  # let the warm-up's last requests land before the queue is emptied
    setup.redis.flushdb()
    bare, ingress = [], []
    for _ in range(rounds):
        bare.append(run_wrk(setup, setup.bare_url, requests, seconds))
        ingress.append(run_wrk(setup, setup.ingress_url, requests, seconds))
    return Row(provider, median_result(bare), median_result(ingress),
               int(setup.redis.llen("rq:queue:callbacks")))


def median_result(results: list[WrkResult]) -> WrkResult:
    """Median rate and latencies of several runs; requests and errors added up."""
    return WrkResult(
        requests=sum(r.requests for r in results),
        rps=statistics.median(r.rps for r in results),
        p50_ms=statistics.median(r.p50_ms for r in results),
        p99_ms=statistics.median(r.p99_ms for r in results),
        non_2xx=sum(r.non_2xx for r in results),
        socket_errors=sum(r.socket_errors for r in results),
    )


def package_version(package: str) -> str:
    try:
        return version(package)
    except PackageNotFoundError:
        return "not installed"


def cpu_model() -> str:
    """The processor's name, as /proc/cpuinfo gives it."""
    model = re.search(r"^model name\s*:\s*(.+)$", Path("/proc/cpuinfo").read_text(), re.M)
    return model.group(1) if model else "unknown CPU"


def _persistence(client: redis.Redis) -> str:
    config = client.config_get("appendonly")
    if config.get("appendonly") != "yes":
        return "no persistence"
    return f"AOF, appendfsync {client.config_get('appendfsync')['appendfsync']}"


def _replicas(client: redis.Redis) -> str:
    count = int(client.info("replication").get("connected_slaves", 0))
    return f", {count} replica(s), min_replicas = {count}" if count else ""


def header(setup: Setup, seconds: float, connections: int, server_cpu: int, rounds: int) -> str:
    return (
        f"payhooks ingress benchmark: {connections} connections, medians of {rounds} rounds of "
        f"{seconds:g} s (bare, then ingress), wrk "
        f"on CPU {setup.load_cpu}, server on CPU {server_cpu}, Redis "
        f"{setup.redis.info('server')['redis_version']} ({_persistence(setup.redis)}, on CPU "
        f"{setup.load_cpu}){_replicas(setup.redis)}"
        f"\nmachine: {os.cpu_count()} cores, {cpu_model()}, "
        f"Python {platform.python_version()}, aiohttp {package_version('aiohttp')}, uvloop "
        f"{package_version('uvloop')}; {REQUESTS_PER_PROVIDER} distinct requests per provider\n"
        f"{'provider':<10}{'bare req/s':>12}{'ingress req/s':>15}{'ratio':>7}{'p50 ms':>8}"
        f"{'p99 ms':>8}{'bare p99 ms':>13}  stored"
    )


def format_row(row: Row) -> str:
    b, i = row.bare, row.ingress
    ratio = i.rps / b.rps if b.rps else 0.0
    stored = "ok" if row.stored >= i.answered_2xx else "MISSING"
    failures = "".join(f"; {label}: {r.non_2xx} non-2xx, {r.socket_errors} socket errors"
                       for label, r in (("bare", b), ("ingress", i)) if not r.ok)
    return (f"{row.provider:<10}{b.rps:>12.1f}{i.rps:>15.1f}{ratio:>7.2f}{i.p50_ms:>8.2f}"
            f"{i.p99_ms:>8.2f}{b.p99_ms:>13.2f}  {row.stored}/{i.answered_2xx} {stored}{failures}")


def summary(rows: list[Row]) -> list[str]:
    """The stored check, and the target when IXOPAY was measured."""
    short = [r.provider for r in rows if r.stored < r.ingress.answered_2xx]
    lines = [f"stored check: LLEN rq:queue:callbacks >= ingress 2xx answers for every provider: "
             f"{'ok' if not short else 'JOBS MISSING for ' + ', '.join(short)}"]
    for row in rows:
        if row.provider == "ixopay" and row.bare.rps:
            met = (row.ingress.rps / row.bare.rps >= TARGET_RATIO
                   and row.ingress.p99_ms <= TARGET_P99_MS)
            lines.append(f"target: ixopay ratio >= {TARGET_RATIO:.2f} and p99 <= "
                         f"{TARGET_P99_MS:g} ms: {'met' if met else 'NOT met'}")
    return lines


def start(stack: contextlib.ExitStack, wrk: list[str], cpus: tuple[int, int],
           appendfsync: str | None, replicas: int = 0) -> Setup:
    """Redis (with `replicas` replicas, and the ingress waiting for them all), the ingress
    and the bare server, each stopped when `stack` closes."""
    directory = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="payhooks-bench-")))
    server = RedisServer(appendonly=appendfsync is not None,
                         appendfsync=appendfsync or "everysec")
    processes = [stack.enter_context(server).process]
    for _ in range(replicas):
        processes.append(stack.enter_context(RedisServer(replica_of=server.port)).process)
    for process in processes:  # pin every thread: Redis starts its I/O threads early
        if process is not None:
            for task in Path(f"/proc/{process.pid}/task").iterdir():
                os.sched_setaffinity(int(task.name), {cpus[1]})
    client = stack.enter_context(redis.Redis.from_url(server.url))
    wait_for_replicas(client, replicas)
    write_config(server.url, directory / "payhooks.toml", min_replicas=replicas)
    (directory / "requests.lua").write_text(_LUA_SCRIPT, encoding="ascii")
    ingress = start_server(stack, [sys.executable, "-m", "shared.cli", "ingress", "--config",
                                   str(directory / "payhooks.toml"), "--host", "127.0.0.1",
                                   "--port", str(free_port())], cpus[0], directory / "ingress.log")
    bare = start_server(stack, [sys.executable, "-m", "tests.bench.ingress", "--bare",
                                str(free_port())], cpus[0], directory / "bare.log")
    wrk = [*wrk, "--latency", "-s", str(directory / "requests.lua")]
    return Setup(wrk, cpus[1], bare, ingress, client, directory)


def wait_for_replicas(client: redis.Redis, replicas: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        info = client.info("replication")
        if sum(info.get(f"slave{n}", {}).get("state") == "online"
               for n in range(replicas)) == replicas:
            return
        if time.monotonic() > deadline:
            raise BenchError(f"{replicas} replicas did not come in sync")
        time.sleep(0.1)


def run(duration: float, connections: int, providers: list[str], rounds: int = 3,
        appendfsync: str | None = None, replicas: int = 0) -> int:
    """Run the benchmark and print its table; 0 when every request was answered and stored."""
    unknown = [p for p in providers if p not in BUILDERS]
    if unknown or not providers:
        print(f"bench: unknown providers {unknown}; choose from {', '.join(BUILDERS)}",
              file=sys.stderr)
        return 2
    wrk = ensure_wrk()
    if wrk is None:
        print("bench: the load generator wrk is not installed and could not be installed "
              "(as root: apt-get install wrk)", file=sys.stderr)
        return 2
    allowed = sorted(os.sched_getaffinity(0))
    cpus = (allowed[0], allowed[-1])  # the same CPU on a one-CPU machine
    rows: list[Row] = []
    try:
        with contextlib.ExitStack() as stack:
            setup = start(stack, [wrk, "-t1", f"-c{connections}"], cpus, appendfsync,
                          replicas)
            print(header(setup, duration, connections, cpus[0], rounds), flush=True)
            for provider in providers:
                rows.append(bench_provider(setup, provider, duration, rounds))
                print(format_row(rows[-1]), flush=True)
    except (BenchError, redis.RedisError) as exc:
        print(f"bench: {exc.__class__.__name__}: {exc}", file=sys.stderr)
        return 1
    print("\n".join(summary(rows)))
    return 0 if all(row.ok for row in rows) else 1


def serve_bare(port: int) -> None:
    """The baseline: aiohttp on uvloop, as the ingress runs, reading the body and answering OK."""

    async def answer(request: web.Request) -> web.Response:
        await request.read()
        return web.Response(text="OK", content_type="text/plain")

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", answer)
    try:
        import uvloop
    except ImportError:  # as the ingress does: the standard loop where uvloop is missing
        loop = None
    else:
        loop = uvloop.new_event_loop()
    web.run_app(app, host="127.0.0.1", port=port, access_log=None, print=None, loop=loop)


if __name__ == "__main__":
    if sys.argv[1:2] != ["--bare"] or len(sys.argv) != 3:
        sys.exit("usage: python -m tests.bench.ingress --bare PORT")
    serve_bare(int(sys.argv[2]))
