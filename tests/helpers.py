"""Test configuration and helpers that build correct callbacks, as a provider would send them."""

from __future__ import annotations

import base64
import binascii
import contextlib
import json
import os
import re
import shutil
import subprocess
import threading
import time
import tomllib
import urllib.request
import uuid
import zlib
from collections.abc import Callable, Iterable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
import redis
from pydantic import BaseModel, SecretStr
from rq import Queue, Retry, SimpleWorker, get_current_job
from rq.job import Job, JobStatus
from rq.registry import ScheduledJobRegistry
from rq.serializers import JSONSerializer

from shared.models import Callback
from shared.providers import ixopay
from shared.queue import CALLBACK_JOB_OPTIONS, CALLBACKS, DELIVERIES, PROCESS_CALLBACK
from shared.sandbox import dev, processes
from shared.sandbox.simulators import callbacks as build
from shared.sandbox.simulators.client import SimulatorClient
from shared.settings import Settings, settings_from_dict
from workers import runtime as runtimes
from workers import worker as worker_main
from workers.runtime import Runtime

ROOT = Path(__file__).resolve().parents[1]  # the checkout
IXOPAY_SECRET = "ixopay-shared-secret-for-tests"
IXOPAY_API_KEY = "api-key-for-tests"
IFTHENPAY_KEY = "anti-phishing-key-for-tests"
NETAXEPT_USER = "netaxept-callback"
NETAXEPT_PASSWORD = "netaxept-password-for-tests"
DATE = "Thu, 23 Mar 2023 10:34:47 GMT"

MERCHANT_CONFIG: dict[str, Any] = {
    "shop-eu": {
        "ixopay": {"shared_secret": IXOPAY_SECRET, "api_key": IXOPAY_API_KEY},
        "ifthenpay": {"anti_phishing_key": IFTHENPAY_KEY},
        "netaxept": {
            "merchant_id": "12002835",
            "token": "netaxept-token-for-tests",
            "callback_username": NETAXEPT_USER,
            "callback_password": NETAXEPT_PASSWORD,
        },
        "payex": {"token": "payex-token-for-tests"},
        "hooks": [{"id": "orders", "url": "http://127.0.0.1:9/hook",
                   "secret": "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"}],
    },
    "open-shop": {
        "netaxept": {"merchant_id": "1", "token": "netaxept-token-for-tests"},
    },
    "walled-shop": {
        "payex": {"token": "payex-token-for-tests", "allowed_ips": ["20.91.170.120/29"]},
        "netaxept": {"merchant_id": "2", "token": "netaxept-token-for-tests",
                     "allowed_ips": ["127.0.0.1"]},
    },
}

def ixopay_body(result: str = "OK", transaction_type: str = "DEBIT", **extra: Any) -> bytes:
    data = {
        "result": result,
        "uuid": uuid.uuid4().hex[:20],
        "merchantTransactionId": f"order-{uuid.uuid4().hex[:8]}",
        "transactionType": transaction_type,
        "paymentMethod": "Creditcard",
        "amount": "9.99",
        "currency": "EUR",
        **extra,
    }
    return json.dumps(data, separators=(",", ":")).encode()


def ixopay_headers(
    body: bytes, uri: str, secret: str = IXOPAY_SECRET, body_hash: ixopay.BodyHash = "sha512",
    date: str = DATE,
) -> dict[str, str]:
    return {
        "Content-Type": ixopay.JSON_CONTENT_TYPE,
        "Date": date,
        "X-Signature": ixopay.sign(secret, body, date, uri, body_hash=body_hash),
    }


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


NETAXEPT_AUTH = {"Authorization": basic(NETAXEPT_USER, NETAXEPT_PASSWORD)}

PAYMENT = "/psp/creditcard/payments/5adc265f-f87f-4313-577e-08d3dca1a26c"
CAPTURE = f"{PAYMENT}/captures/12345678-1234-1234-1234-123456789012"
ORDER = "/psp/paymentorders/34761895-d1e4-412a-0a30-08dc43423140"
PAYEX_BODIES: dict[str, dict[str, Any]] = {
    "instrument": {"payment": {"id": PAYMENT, "number": 222222222},
                   "transaction": {"id": CAPTURE, "number": 333333333}},
    "payment order v3.0": {"paymentOrder": {"id": ORDER, "instrument": "CreditCard"},
                           "payment": {"id": PAYMENT, "number": 222222222},
                           "transaction": {"id": CAPTURE, "number": 333333333}},
    "payment order v3.1": {"orderReference": "549213",
                           "paymentOrder": {"id": ORDER, "instrument": "CreditCard",
                                            "number": 12345678}},
}


def raw(value: object) -> bytes:
    """A value read from Redis (decode_responses off): always bytes."""
    assert isinstance(value, bytes)
    return value


def queued_callbacks(client: redis.Redis) -> list[Callback]:
    """The callbacks on the `callbacks` queue, oldest first, read as a worker would."""
    callbacks = []
    for job_id in client.lrange("rq:queue:callbacks", 0, -1):
        data = raw(client.hget(b"rq:job:" + raw(job_id), "data"))
        _func, _instance, args, _kwargs = json.loads(zlib.decompress(data))
        callbacks.append(Callback.model_validate_json(json.dumps(args[0])))
    return callbacks


IXOPAY_USER, IXOPAY_PASSWORD = "ixopay-api-user", "ixopay-api-password"
BACKOFFICE_KEY = "1111-2222-3333-4444"
HOOK_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"


def worker_config(redis_url: str, simulators_url: str,
                  hook_url: str = "http://127.0.0.1:9/hook") -> dict[str, Any]:
    """Two merchants whose provider APIs are the simulators: shop-eu trusts signed and keyed
    callbacks, strict-eu confirms them with IXOPAY's status API and ifthenpay's payments API."""
    providers = MERCHANT_CONFIG["shop-eu"]
    shop: dict[str, Any] = {
        "ixopay": {**providers["ixopay"], "username": IXOPAY_USER,
                   "password": IXOPAY_PASSWORD, "base_url": simulators_url},
        "ifthenpay": {**providers["ifthenpay"], "base_url": simulators_url},
        "netaxept": {**providers["netaxept"], "base_url": simulators_url},
        "payex": {**providers["payex"], "base_url": simulators_url},
        "hooks": [
            {"id": "orders", "url": hook_url, "secret": HOOK_SECRET},
            {"id": "refunds", "url": hook_url, "secret": HOOK_SECRET,
             "events": ["payment.refunded", "payment.chargeback*"]},
        ],
    }
    strict = {
        "ixopay": {**shop["ixopay"], "verify_with_status_api": True},
        "ifthenpay": {**shop["ifthenpay"], "backoffice_key": BACKOFFICE_KEY},
        "hooks": [{"id": "all", "url": hook_url, "secret": HOOK_SECRET}],
    }
    return {
        "redis_url": redis_url,
        "delivery": {"allow_private_networks": True, "retry_schedule": ["1s", "2s"]},
        "merchants": {"shop-eu": shop, "strict-eu": strict},
    }


def stored_callback(outgoing: Any, merchant: str, provider: str) -> dict[str, Any]:
    """What the ingress stores for this callback (verified by the provider module first)."""
    from shared.models import callback_json, new_callback_id, utcnow
    from shared.providers import PROVIDERS
    from shared.settings import MerchantSettings

    section = MERCHANT_CONFIG["shop-eu"][provider]
    provider_class = PROVIDERS[provider]
    settings = MerchantSettings.model_validate({provider: section})
    accepted = provider_class(getattr(settings, provider)).verify(outgoing.to_incoming())
    incoming = outgoing.to_incoming()
    data: dict[str, Any] = json.loads(callback_json(
        id=new_callback_id(), merchant=merchant, provider=provider, method=incoming.method,
        uri=accepted.uri, headers=accepted.headers, body=incoming.body, source="127.0.0.1",
        received_at=utcnow(), reference=accepted.reference))
    return data


def faketime_binary() -> str:
    """Debian's faketime (libfaketime: one process's clock, shifted), installed with
    apt-get when missing and we are root; else the test is skipped."""
    found = shutil.which("faketime")
    if found is None and os.geteuid() == 0 and shutil.which("apt-get"):
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run(["apt-get", "install", "-y", "-qq", "faketime"], env=env,
                       stdout=subprocess.DEVNULL, check=False)
        found = shutil.which("faketime")
    if found is None:
        pytest.skip("faketime is not installed (apt-get install faketime)")
    return found


def run_callback_job(client: redis.Redis, callback: dict[str, Any]
                     ) -> tuple[Job, datetime, datetime]:
    """Enqueue the callback as the ingress does (its job options) and have a real RQ worker
    run it once; the job afterwards, and when the worker started and was done (whatever
    the job scheduled, it scheduled between the two)."""
    started = datetime.now(UTC)
    queue = Queue(CALLBACKS, connection=client, serializer=JSONSerializer)
    job = queue.enqueue(PROCESS_CALLBACK, callback, job_timeout=60,
                        retry=CALLBACK_JOB_OPTIONS["retry"])
    SimpleWorker([queue], connection=client, serializer=JSONSerializer).work(
        burst=True, with_scheduler=False)
    finished = datetime.now(UTC)
    job.refresh()
    return job, started, finished


def seconds_until_due(client: redis.Redis, job: Job, since: datetime) -> float:
    """How long after `since` RQ's scheduler brings the job back."""
    registry = ScheduledJobRegistry(job.origin, connection=client, serializer=JSONSerializer)
    return (registry.get_scheduled_time(job) - since).total_seconds()


def to_toml(table: dict[str, Any], prefix: str = "") -> str:
    """A TOML rendering of a config dict, enough for payhooks' config in tests."""
    scalars = [(k, v) for k, v in table.items() if not isinstance(v, dict)
               and not (isinstance(v, list) and v and isinstance(v[0], dict))]
    lines = [f"{key} = {json.dumps(value)}" for key, value in scalars]
    for key, value in table.items():
        name = f"{prefix}.{key}" if prefix else key
        if isinstance(value, dict):
            lines += [f"\n[{name}]", to_toml(value, name)]
        elif isinstance(value, list) and value and isinstance(value[0], dict):
            for item in value:
                lines += [f"\n[[{name}]]", to_toml(item, name)]
    return "\n".join(lines)


# Other merchant: its own secrets, for callbacks that name another merchant's payment
# (tests/system/test_abuse.py). Its Netaxept merchant id and PayEx token are its own too.
OTHER_SHOP: dict[str, Any] = {
    "ixopay": {"shared_secret": "other-shop-ixopay-secret"},
    "ifthenpay": {"anti_phishing_key": "other-shop-anti-phishing-key"},
    "netaxept": {"merchant_id": "77000077", "token": "other-shop-netaxept-token"},
    "payex": {"token": "other-shop-payex-token"},
}


def secrets_of(value: object) -> Iterator[str]:
    """Every secret in these settings, as it would show if it leaked: the value of every
    `SecretStr` (a hook's `whsec_` secret by its key, which covers the whole), and the
    Basic credentials built from a user name and password, base64-encoded as sent."""
    if isinstance(value, SecretStr):
        yield value.get_secret_value().removeprefix("whsec_")
    elif isinstance(value, BaseModel):
        fields = {name: getattr(value, name) for name in type(value).model_fields}
        for user, password in (("username", "password"),
                               ("callback_username", "callback_password")):
            if fields.get(user) and isinstance(fields.get(password), SecretStr):
                credentials = f"{fields[user]}:{fields[password].get_secret_value()}"
                yield base64.b64encode(credentials.encode()).decode()
        for field in fields.values():
            yield from secrets_of(field)
    elif isinstance(value, dict):
        for item in value.values():
            yield from secrets_of(item)
    elif isinstance(value, tuple | list):
        for item in value:
            yield from secrets_of(item)


def leak_forms(secrets: Iterable[str]) -> tuple[str, ...]:
    """The secrets, and the forms they take percent-encoded or inside a JSON string (a
    base64 value without its padding, so that it is found with or without)."""
    forms: dict[str, None] = {}
    for secret in secrets:
        secret = secret.rstrip("=")  # base64 padding: also found where it was dropped
        for form in (secret, quote(secret, safe=""), json.dumps(secret)[1:-1]):
            forms[form] = None
    return tuple(forms)


def _test_configs() -> list[Settings]:
    """Every configuration the tests use: MERCHANT_CONFIG, worker_config with OTHER_SHOP,
    and the sample configuration `payhooks dev` writes."""
    unused = "redis://127.0.0.1:1/0"
    workers = worker_config(unused, "http://127.0.0.1:1")
    workers["merchants"]["other-shop"] = OTHER_SHOP
    sample = tomllib.loads(dev.SAMPLE_CONFIG.format(
        ports=dev.Ports(), hook_secret=dev.DEMO_HOOK_SECRET, secrets=dev.DEMO_SECRETS,
        redis_url=unused, console_token=dev.DEMO_CONSOLE_TOKEN))
    return [settings_from_dict(raw, environ={}) for raw in (
        {"redis_url": unused, "merchants": MERCHANT_CONFIG}, workers, sample)]


# Every secret of every test configuration: none may appear in a log line, a job or any
# other value in Redis (tests/conftest.py searches them after each test).
SECRETS: tuple[str, ...] = leak_forms(
    secret for settings in _test_configs() for secret in secrets_of(settings))


def secrets_in(text: str) -> list[str]:
    """The known secrets that appear in this text: for a process's output, which the
    check in tests/conftest.py does not see."""
    return [secret for secret in SECRETS if secret in text]


def make_settings(redis_url: str, **overrides: Any) -> Settings:
    raw: dict[str, Any] = {"redis_url": redis_url, "merchants": MERCHANT_CONFIG}
    raw.update(overrides)
    return settings_from_dict(raw, environ={})


class SecretWatch:
    """Searches log lines and Redis for known secrets (see the module docstring)."""

    def __init__(self, secrets: Iterable[str]) -> None:
        self.base = tuple(secrets)
        self.lines = self.jobs = self.values = self.found = 0
        self._pending: list[str] = []
        self._lock = threading.Lock()
        self._redis: dict[str, redis.Redis] = {}
        self.learn(())

    def learn(self, secrets: Iterable[str]) -> None:
        """Search for these too (until the next call), besides the base secrets."""
        known = {*self.base, *(s for s in leak_forms(secrets) if len(s) >= 8)}
        alternation = "|".join(re.escape(s) for s in sorted(known, key=len, reverse=True))
        self._text = re.compile(alternation)
        self._bytes = re.compile(alternation.encode())

    def write(self, line: str) -> None:
        """A line as the process writes it (any thread); searched at the next check."""
        with self._lock:
            self._pending.append(line)

    def take_lines(self) -> list[str]:
        """The lines written since the last take (counted as searched)."""
        with self._lock:
            lines, self._pending = self._pending, []
        self.lines += len(lines)
        return lines

    def problems_in(self, lines: Iterable[str]) -> list[str]:
        return [f"log line: {self._show(line)}" for line in lines if self._text.search(line)]

    def check_lines(self) -> list[str]:
        return self.problems_in(self.take_lines())

    def check_redis(self, url: str) -> list[str]:
        """Every key and value in the database at `url`: job hashes field by field, with
        their zlib data and the base64 in it (callback bodies), RQ results (streams),
        events, attempts, indexes."""
        client = self._redis.get(url)
        if client is None:
            client = self._redis[url] = redis.Redis.from_url(url)
        keys = list(client.scan_iter(count=1000))
        pipe = client.pipeline(transaction=False)
        for key in keys:
            pipe.type(key)
        kinds = pipe.execute()
        for key, kind in zip(keys, kinds, strict=True):
            _REDIS_READERS.get(kind, lambda pipe, key: pipe.exists(key))(pipe, key)
        problems = []
        for key, kind, value in zip(keys, kinds, pipe.execute(raise_on_error=False),
                                    strict=True):
            self.jobs += key.startswith(b"rq:job:") and kind == b"hash"
            for blob in (key, *_blobs(value)):
                self.values += 1
                for text in _expand(blob):
                    if self._bytes.search(text):
                        problems.append(f"Redis {key.decode(errors='replace')}: "
                                        f"{self._show(text.decode(errors='replace'))}")
                        break
        return problems

    def _show(self, text: str) -> str:
        """Where the secret was, the secret itself replaced."""
        match = self._text.search(text)
        start = max(0, match.start() - 120) if match else 0
        return self._text.sub("<SECRET>", text[start:start + 400])


def _blobs(value: object) -> Iterator[bytes]:
    if isinstance(value, bytes):
        yield value
    elif isinstance(value, dict):
        for pair in value.items():
            yield from _blobs(pair)
    elif isinstance(value, list | tuple | set):
        for item in value:
            yield from _blobs(item)


def _expand(blob: bytes, depth: int = 0) -> Iterator[bytes]:
    """The value, and what it holds zlib-compressed or base64-encoded (two levels deep)."""
    yield blob
    if depth == 2:
        return
    if blob[:1] == b"x":
        try:
            yield from _expand(zlib.decompress(blob), depth + 1)
            return
        except zlib.error:
            pass
    for run in _BASE64_RUN.findall(blob):
        run = run.replace(b"-", b"+").replace(b"_", b"/")
        try:
            decoded = base64.b64decode(run + b"=" * (-len(run) % 4), validate=True)
        except (binascii.Error, ValueError):
            continue
        yield from _expand(decoded, depth + 1)


MERCHANT_ID = "12002835"


NETAXEPT_CREDENTIALS = (NETAXEPT_USER, NETAXEPT_PASSWORD)


def netaxept(admin: SimulatorClient, transaction_id: str, **state: Any) -> dict[str, Any]:
    admin.netaxept_transaction(transaction_id, MERCHANT_ID, state.pop("amount", 10000),
                               currency="NOK", order_number="order-77", **state)
    return netaxept_callback(transaction_id)


def netaxept_callback(transaction_id: str) -> dict[str, Any]:
    """The stored callback of Netaxept's `{"TransactionId"}`, with shop-eu's credentials."""
    outgoing = build.netaxept_callback("shop-eu", transaction_id, *NETAXEPT_CREDENTIALS)
    return stored_callback(outgoing, "shop-eu", "netaxept")


OLD_SECRET = "whsec_" + "b2xkLXNlY3JldC1rZXktMTIzNDU2"  # base64 of a 21-byte key


def config_for(redis_url: str, sims_url: str, endpoint_url: str, **delivery: Any
               ) -> dict[str, Any]:
    """shop-eu's hooks at the endpoint: orders (two secrets, rotating) and refunds."""
    config = worker_config(redis_url, sims_url)
    config["delivery"].update(delivery)
    orders, refunds = config["merchants"]["shop-eu"]["hooks"]
    orders.update(url=f"{endpoint_url}/orders", secret=[HOOK_SECRET, OLD_SECRET])
    refunds.update(url=f"{endpoint_url}/refunds")
    return config


@contextlib.contextmanager
def runtime_with(worker_runtime: Runtime, config: dict[str, Any], path: Path | None = None
                 ) -> Iterator[Runtime]:
    """The runtime the jobs in this process use, on this configuration (written to `path`
    too, for the CLI), sharing the worker runtime's Redis and HTTP clients; the worker
    runtime again afterwards."""
    if path is not None:
        path.write_text(to_toml(config))
    runtime = Runtime(settings_from_dict(config, environ={}), worker_runtime.redis,
                      worker_runtime.http)
    runtimes.install(runtime)
    try:
        yield runtime
    finally:
        runtimes.install(worker_runtime)


def settings_for(redis_url: str, sims_url: str, endpoint_url: str, **delivery: Any) -> Settings:
    return settings_from_dict(config_for(redis_url, sims_url, endpoint_url, **delivery),
                              environ={})


def work(runtime: Runtime) -> None:
    queue = Queue(DELIVERIES, connection=runtime.redis, serializer=JSONSerializer)
    SimpleWorker([queue], connection=runtime.redis, serializer=JSONSerializer).work(
        burst=True, with_scheduler=False)


RUNS = "test:runs"


def slow_job(seconds: float) -> None:
    job = get_current_job()
    assert job is not None
    job.connection.incr(RUNS)
    time.sleep(seconds)


def wait_until(condition: Callable[[], bool], seconds: float,
               what: str | Callable[[], str]) -> None:
    """Wait for `condition`, at most `seconds`; else fail saying `what` (or what it gives):
    the sandbox's and the tools' own wait, failing as a test does."""
    processes.wait_until(condition, seconds, what, AssertionError)


def http_answers(url: str) -> bool:
    """Whether a GET of `url` gets any HTTP answer."""
    try:
        with urllib.request.urlopen(url, timeout=1):
            return True
    except urllib.error.HTTPError:
        return True
    except OSError:
        return False


def enqueue(url: str, seconds: float) -> Job:
    queue = Queue("callbacks", connection=redis.Redis.from_url(url), serializer=JSONSerializer)
    return queue.enqueue(slow_job, seconds, retry=Retry(max=2, interval=1), job_timeout=60)


def finished(job: Job) -> bool:
    return job.get_status(refresh=True) == JobStatus.FINISHED


def fork_worker(url: str) -> int:
    pid = os.fork()
    if pid == 0:  # the child: a worker until SIGTERM, as `payhooks worker`
        code = 1
        try:
            code = worker_main.work(make_settings(url, logging={"level": "warning"}))
        finally:
            os._exit(code)
    return pid


def wait_until_healthy(port: int, process: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and process.poll() is None:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1):
                return
        except OSError:
            time.sleep(0.1)
    raise AssertionError(f"the ingress did not start:\n{log.read_text()[-2000:]}")


_BASE64_RUN = re.compile(rb"[A-Za-z0-9+/_-]{16,}")


_REDIS_READERS = {
    b"string": lambda pipe, key: pipe.get(key),
    b"hash": lambda pipe, key: pipe.hgetall(key),
    b"list": lambda pipe, key: pipe.lrange(key, 0, -1),
    b"set": lambda pipe, key: pipe.smembers(key),
    b"zset": lambda pipe, key: pipe.zrange(key, 0, -1),
    b"stream": lambda pipe, key: pipe.xrange(key),
}
