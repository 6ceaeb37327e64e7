"""Fixtures: a real Redis, test settings, an ingress on a real aiohttp server, the provider
simulators (real HTTP servers on 127.0.0.1) and a worker runtime pointed at them.

Redis: `PAYHOOKS_TEST_REDIS_URL` if set; else a redis-server this session starts on a free
port (installed with apt-get when missing and running as root), so that test runs, other
projects and benchmarks on the same machine never share data; else, if none can be
started, database 13 of the server on 127.0.0.1:6379. It is flushed around each test.

Secrets (design.md §7.5): the session logs as the product does (`configure_logging`, JSON
lines at `info`), and `SecretWatch` reads every line written in this process, structlog's
and the standard library's (RQ, httpx, aiohttp), as it is written. After each test it
searches them, and every key and value in the test Redis database, for the secrets of the
test configurations (tests.helpers.SECRETS) and of the settings the test ran with. A secret
found fails the test. The session ends with one line: lines and jobs searched, secrets found.
"""

from __future__ import annotations

import logging
import os
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import httpx
import pytest
import redis
import structlog
from aiohttp.test_utils import TestClient

from ingress.app import create_app
from shared.logging import configure_logging
from shared.sandbox.redis_server import RedisServer, answers
from shared.sandbox.simulators import Simulators
from shared.sandbox.simulators.client import SimulatorClient
from shared.sandbox.simulators.merchant import MerchantEndpoint
from shared.settings import LoggingSettings, Settings, settings_from_dict
from tests.helpers import (
    SECRETS,
    SecretWatch,
    make_settings,
    secrets_of,
    worker_config,
)
from workers import runtime as runtimes
from workers.runtime import Runtime


@pytest.fixture
def endpoint() -> Iterator[MerchantEndpoint]:
    """A merchant endpoint on 127.0.0.1 that records what it receives (script its answers
    with `endpoint.script`)."""
    with MerchantEndpoint() as server:
        yield server


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    url = os.environ.get("PAYHOOKS_TEST_REDIS_URL")
    if url:
        yield url
        return
    try:
        server = RedisServer().start()
    except RuntimeError:
        if not answers("redis://127.0.0.1:6379/13"):
            raise
        yield "redis://127.0.0.1:6379/13"
        return
    try:
        yield server.url
    finally:
        server.close()


@pytest.fixture
def redis_client(redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url)
    client.flushdb()
    yield client
    client.flushdb()
    client.close()




@pytest.fixture
def settings(redis_url: str, redis_client: redis.Redis) -> Settings:
    return make_settings(redis_url)


@pytest.fixture
async def client(settings: Settings, aiohttp_client: Any) -> AsyncIterator[TestClient[Any, Any]]:
    yield await aiohttp_client(create_app(settings))


@pytest.fixture(scope="session")
def running() -> Iterator[Simulators]:
    with Simulators(seed=7) as simulators:
        yield simulators


@pytest.fixture(scope="session")
def session_admin(running: Simulators) -> Iterator[SimulatorClient]:
    with SimulatorClient(running.url) as client:
        yield client


@pytest.fixture(scope="session")
def session_http(running: Simulators) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=running.url, timeout=5) as client:
        yield client


@pytest.fixture
def sims(running: Simulators) -> Simulators:
    with running.state.lock:
        running.state.reset()
    return running


@pytest.fixture
def admin(sims: Simulators, session_admin: SimulatorClient) -> SimulatorClient:
    return session_admin


@pytest.fixture
def http(sims: Simulators, session_http: httpx.Client) -> httpx.Client:
    return session_http


@pytest.fixture
def worker_settings(redis_url: str, redis_client: redis.Redis, sims: Simulators) -> Settings:
    """Merchants whose provider APIs are the simulators, and the credentials registered."""
    return settings_from_dict(worker_config(redis_url, sims.url), environ={})


@pytest.fixture
def worker_runtime(worker_settings: Settings, admin: SimulatorClient) -> Iterator[Runtime]:
    """The runtime jobs use in this process, pointed at the simulators."""
    for merchant in worker_settings.merchants.values():
        if merchant.netaxept:
            admin.netaxept_credentials(merchant.netaxept.merchant_id,
                                       merchant.netaxept.token.get_secret_value())
        if merchant.payex:
            admin.payex_token(merchant.payex.token.get_secret_value())
        if merchant.ixopay and merchant.ixopay.api_key and merchant.ixopay.password:
            admin.ixopay_credentials(merchant.ixopay.api_key, merchant.ixopay.username or "",
                                     merchant.ixopay.password.get_secret_value())
        if merchant.ifthenpay and merchant.ifthenpay.backoffice_key:
            admin.ifthenpay_backoffice(merchant.ifthenpay.backoffice_key.get_secret_value())
    runtime = Runtime.from_settings(worker_settings)
    runtimes.install(runtime)
    yield runtime
    runtimes.install(None)
    runtime.close()


# Secrets in log lines and in Redis ------------------------------------------------------









class _WatchedLogger:
    """structlog's final output: each rendered line to the watch, then as configured."""

    def __init__(self, inner: Any, watch: SecretWatch) -> None:
        self._inner, self._watch = inner, watch

    def msg(self, message: str) -> None:
        self._watch.write(message)
        self._inner.msg(message)

    debug = info = warning = warn = error = critical = exception = fatal = msg


class _WatchedFactory:
    def __init__(self, inner: Callable[..., Any], watch: SecretWatch) -> None:
        self._inner, self._watch = inner, watch

    def __call__(self, *args: Any) -> _WatchedLogger:
        return _WatchedLogger(self._inner(*args), self._watch)


class _WatchedFormatter(logging.Formatter):
    """The standard library's final output (RQ, httpx, aiohttp): each formatted line."""

    def __init__(self, inner: logging.Formatter, watch: SecretWatch) -> None:
        super().__init__()
        self._inner, self._watch = inner, watch

    def format(self, record: logging.LogRecord) -> str:
        line = self._inner.format(record)
        self._watch.write(line)
        return line


WATCH = SecretWatch(SECRETS)


def pytest_configure(config: pytest.Config) -> None:
    """Log as the product does, with every line going past the watch."""
    # not cached: structlog's capture_logs must see every logger, whenever it was first used
    configure_logging(LoggingSettings(level="info", format="json"), cache=False)
    _watch_logging()


def _watch_logging() -> None:
    """Put the watch in front of structlog's and the root handlers' output, unless it is
    there (a test that calls configure_logging itself replaces both)."""
    factory = structlog.get_config()["logger_factory"]
    if not isinstance(factory, _WatchedFactory):
        structlog.configure(logger_factory=_WatchedFactory(factory, WATCH))
    for handler in logging.getLogger().handlers:  # ours, not pytest's own capture
        if isinstance(handler.formatter, structlog.stdlib.ProcessorFormatter):
            handler.setFormatter(_WatchedFormatter(handler.formatter, WATCH))


@pytest.fixture
def secret_watch() -> SecretWatch:
    return WATCH


def _settings_in(item: pytest.Item) -> Iterator[Settings]:
    """The settings the test ran with: its fixtures' and the runtime its jobs used."""
    values = [*getattr(item, "funcargs", {}).values(), runtimes._current]
    for value in values:
        if isinstance(value, Runtime):
            value = value.settings
        if isinstance(value, Settings):
            yield value


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    _watch_logging()
    WATCH.learn(())


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Any:
    """After the test passed, and before its fixtures flush Redis: search for secrets."""
    result = yield
    WATCH.learn(secret for settings in _settings_in(item) for secret in secrets_of(settings))
    problems = WATCH.check_lines()
    fixtures = getattr(item, "funcargs", {})  # every fixture the test used, and their own
    if "redis_url" in fixtures:
        problems += WATCH.check_redis(fixtures["redis_url"])
    _fail_on(problems)
    return result


@pytest.hookimpl(wrapper=True)
def pytest_runtest_teardown(item: pytest.Item, nextitem: pytest.Item | None) -> Any:
    result = yield
    _fail_on(WATCH.check_lines())  # lines written while fixtures were torn down
    return result


def _fail_on(problems: list[str]) -> None:
    WATCH.found += len(problems)
    if problems:
        pytest.fail("secrets found:\n" + "\n".join(problems[:20]), pytrace=False)


_OUTSIDE_TESTS: list[str] = []


@pytest.hookimpl(tryfirst=True)
def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Lines written outside any test (session fixtures' teardown): a secret in them fails
    the run, since no test can."""
    _OUTSIDE_TESTS[:] = WATCH.check_lines()
    WATCH.found += len(_OUTSIDE_TESTS)
    if _OUTSIDE_TESTS:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter: Any) -> None:
    for problem in _OUTSIDE_TESTS[:20]:
        terminalreporter.write_line(f"secret found outside the tests: {problem}", red=True)
    terminalreporter.write_line(
        f"secret check: {WATCH.lines} log lines searched, {WATCH.jobs} jobs searched "
        f"({WATCH.values} Redis keys and values), {WATCH.found} secrets found")
