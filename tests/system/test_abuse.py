"""Abuse, end to end: forged and replayed callbacks, callbacks that try to send a worker to
another host, and hook URLs that lead to private addresses.

Everything goes through the real ingress (an aiohttp server), a real RQ worker (RQ's
SimpleWorker in burst mode on `callbacks` and `deliveries`, running the product's jobs),
the provider simulators and a merchant endpoint, all on 127.0.0.1. An "attacker" listens
on 127.0.0.1 and ::1, on ports of its own, and counts every connection it gets; the
worker's HTTP client (the product's, with an event hook) records every request it sends.
The module ends with one line of figures:

- forged callbacks tried, and forged accepted: answered 2xx where 401 was due (forgeries,
  and IXOPAY replays outside `max_date_skew`), or turned into an event or a delivery
  (must be 0);
- replays tried, and replays delivered under a new id: an event id the merchant had not
  seen before the replay (must be 0);
- host-escape attempts tried, and requests to other hosts: connections the attacker got
  plus worker requests to anything but the simulators (must be 0).

Covered elsewhere, not repeated here: each provider's forged, tampered and unsigned input
at the unit level (tests/providers/); the follow-up cap that keeps a flood of forged
Netaxept or PayEx callbacks from spending a merchant's API quota
(`max_follow_ups_per_minute`, tests/workers/test_tasks.py::
test_a_flood_of_callbacks_cannot_spend_the_merchants_api_quota); a hook at 127.0.0.1
refused (tests/workers/test_delivery.py::test_private_addresses_are_refused_unless_allowed).
Secrets in logs and in Redis are searched after every test of the suite (tests/conftest.py).
"""

from __future__ import annotations

import base64
import contextlib
import json
import logging
import selectors
import socket
import threading
import time
import zlib
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field, replace
from email.utils import formatdate
from typing import Any, cast
from urllib.parse import quote

import httpx
import pytest
import redis
import structlog
from aiohttp.test_utils import TestClient
from rq import Queue, SimpleWorker
from rq.job import Job, JobStatus
from rq.serializers import JSONSerializer

from ingress.app import create_app
from shared.http import make_client
from shared.keys import attempts_key
from shared.models import PaymentEvent, callback_json, new_callback_id, utcnow
from shared.providers import ifthenpay as ifthenpay_module
from shared.providers import netaxept as netaxept_module
from shared.queue import CALLBACK_JOB_OPTIONS, CALLBACKS, DELIVERIES, PROCESS_CALLBACK
from shared.sandbox.simulators import Simulators
from shared.sandbox.simulators import callbacks as build
from shared.sandbox.simulators.callbacks import OutgoingCallback
from shared.sandbox.simulators.client import SimulatorClient
from shared.sandbox.simulators.merchant import MerchantEndpoint
from shared.settings import Settings, settings_from_dict
from tests.helpers import (
    HOOK_SECRET,
    IFTHENPAY_KEY,
    IXOPAY_API_KEY,
    IXOPAY_SECRET,
    MERCHANT_CONFIG,
    NETAXEPT_AUTH,
    NETAXEPT_PASSWORD,
    NETAXEPT_USER,
    ORDER,
    OTHER_SHOP,
    PAYMENT,
    SecretWatch,
    queued_callbacks,
    worker_config,
)
from workers import runtime as runtimes
from workers.listing import recent_events
from workers.runtime import Runtime

GUID = "0b5e7c7e-3c5f-4c1e-9a3e-6f1d2c3b4a59"
NETAXEPT_MERCHANT = MERCHANT_CONFIG["shop-eu"]["netaxept"]["merchant_id"]


@dataclass
class Tally:
    forged: int = 0
    forged_accepted: int = 0
    replays: int = 0
    replays_new_id: int = 0
    escapes: int = 0
    other_hosts: int = 0


@pytest.fixture(scope="module")
def tally(request: pytest.FixtureRequest) -> Iterator[Tally]:
    figures = Tally()
    yield figures
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    capture = request.config.pluginmanager.get_plugin("capturemanager")
    if reporter is not None:
        with capture.global_and_fixture_disabled() if capture else contextlib.nullcontext():
            reporter.write_line(
                f"abuse: forged callbacks tried {figures.forged}, forged accepted "
                f"{figures.forged_accepted}; replays tried {figures.replays}, replays "
                f"delivered under a new id {figures.replays_new_id}; host-escape attempts "
                f"tried {figures.escapes}, requests to other hosts {figures.other_hosts}")


class Attacker:
    """Another host, as far as a worker is concerned: sockets on 127.0.0.1 and (where the
    machine has IPv6) ::1, on ports of their own, that accept and count every connection."""

    def __init__(self) -> None:
        self._sockets = [socket.create_server(("127.0.0.1", 0))]
        with contextlib.suppress(OSError):
            self._sockets.append(socket.create_server(("::1", 0), family=socket.AF_INET6))
        self.connections: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._accept, name="attacker", daemon=True)
        self._thread.start()

    @property
    def host(self) -> str:
        """`127.0.0.1:<port>`."""
        return f"127.0.0.1:{self._sockets[0].getsockname()[1]}"

    @property
    def port(self) -> int:
        return int(self._sockets[0].getsockname()[1])

    @property
    def v6_port(self) -> int | None:
        return int(self._sockets[1].getsockname()[1]) if len(self._sockets) > 1 else None

    def _accept(self) -> None:
        with selectors.DefaultSelector() as selector:
            for listening in self._sockets:
                listening.setblocking(False)
                selector.register(listening, selectors.EVENT_READ)
            while not self._stop.is_set():
                for key, _ in selector.select(timeout=0.05):
                    with contextlib.suppress(OSError):
                        connection, peer = cast(socket.socket, key.fileobj).accept()
                        self.connections.append(str(peer))
                        connection.close()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        for listening in self._sockets:
            listening.close()


@pytest.fixture
def attacker() -> Iterator[Attacker]:
    host = Attacker()
    yield host
    host.close()




class BurstWorker(SimpleWorker):
    """RQ's SimpleWorker without its command channel (pub/sub), which a burst run in a test
    never uses: RQ stops that channel's thread with a join that waits up to a second."""

    def subscribe(self) -> None:
        pass


@dataclass
class System:
    """The ingress, a worker to run on demand, the simulators and the merchant endpoint."""

    settings: Settings
    client: TestClient[Any, Any]
    redis: redis.Redis
    endpoint: MerchantEndpoint
    sims_url: str
    requests: list[httpx.URL] = field(default_factory=list)  # every one the worker sent

    async def send(self, callback: OutgoingCallback) -> int:
        response = await self.client.request(callback.method, callback.path,
                                             data=callback.body, headers=callback.headers)
        return response.status

    def queued(self) -> int:
        return int(self.redis.llen(f"rq:queue:{CALLBACKS}"))

    def work(self) -> None:
        """Run every queued job, callbacks then deliveries, until none is left, with the
        worker's provider requests recorded."""
        http = make_client()
        http.event_hooks["request"] = [lambda request: self.requests.append(request.url)]
        previous = runtimes.current()
        runtimes.install(Runtime(self.settings, previous.redis, http))
        try:
            queues = [Queue(name, connection=self.redis, serializer=JSONSerializer)
                      for name in (CALLBACKS, DELIVERIES)]
            BurstWorker(queues, connection=self.redis, serializer=JSONSerializer).work(
                burst=True, with_scheduler=False)
        finally:
            runtimes.install(previous)
            http.close()

    def events(self, merchant: str = "shop-eu") -> list[PaymentEvent]:
        return recent_events(self.redis, merchant, limit=1000)

    def delivered(self) -> list[tuple[str, str]]:
        """(hook path, event id) of every request the merchant endpoint received."""
        return [(r.path, r.headers["webhook-id"]) for r in self.endpoint.received]

    def other_hosts(self) -> list[str]:
        sims = httpx.URL(self.sims_url)
        return [str(url) for url in self.requests if (url.host, url.port) != (sims.host,
                                                                               sims.port)]


Config = dict[str, Any]
Start = Callable[..., Awaitable[System]]


@pytest.fixture
async def start(worker_runtime: Runtime, admin: SimulatorClient, sims: Simulators,
                endpoint: MerchantEndpoint, redis_client: redis.Redis,
                aiohttp_client: Any) -> Start:
    """Builds a System: shop-eu and strict-eu as in worker_config, other-shop with secrets
    of its own, every hook at the endpoint (`/<merchant>/<hook>`); `edit` changes the
    config first."""
    other = OTHER_SHOP
    admin.netaxept_credentials(other["netaxept"]["merchant_id"], other["netaxept"]["token"])
    admin.payex_token(other["payex"]["token"])

    async def build_system(edit: Callable[[Config], None] | None = None) -> System:
        config = worker_config(worker_runtime.settings.redis_url, sims.url)
        config["merchants"]["other-shop"] = {
            **{name: {**section, "base_url": sims.url} for name, section in other.items()},
            "hooks": [{"id": "orders", "url": "http://127.0.0.1:9/", "secret": HOOK_SECRET}]}
        for merchant_id, merchant in config["merchants"].items():
            for hook in merchant["hooks"]:
                hook["url"] = f"{endpoint.url}/{merchant_id}/{hook['id']}"
        if edit is not None:
            edit(config)
        settings = settings_from_dict(config, environ={})
        client = await aiohttp_client(create_app(settings))
        return System(settings, client, redis_client, endpoint, sims.url)

    return build_system


@pytest.fixture
async def system(start: Start) -> System:
    return await start()


def retarget(callback: OutgoingCallback, merchant: str) -> OutgoingCallback:
    """The same request, headers and body, sent to another merchant's URL."""
    provider = callback.path.split("?")[0].rsplit("/", 1)[1]
    _, _, query = callback.path.partition("?")
    path = f"/callbacks/{merchant}/{provider}" + (f"?{query}" if query else "")
    return replace(callback, path=path)


def ixopay(merchant: str = "shop-eu", secret: str = IXOPAY_SECRET, uuid: str = "ixo-1",
           date: str | None = None) -> OutgoingCallback:
    return build.ixopay_callback(merchant, secret, uuid=uuid, merchant_transaction_id="order-9",
                                 amount="12.34", date=date)


def ifthenpay(merchant: str = "shop-eu", key: str = IFTHENPAY_KEY) -> OutgoingCallback:
    return build.ifthenpay_callback(merchant, key, order_id="4711", amount="12.34",
                                    request_id="abuseRequest1",
                                    payment_datetime="03-01-2024 15:15:16")


async def test_forged_callbacks_are_refused_and_reach_no_merchant(
        system: System, admin: SimulatorClient, tally: Tally) -> None:
    admin.netaxept_transaction("forged-1", NETAXEPT_MERCHANT, 1000, currency="NOK",
                               authorized=True)  # an event, if a forgery got through
    genuine = ixopay()
    without_signature = {k: v for k, v in genuine.headers.items() if k != "X-Signature"}
    no_key = ifthenpay()
    forged = {
        "ixopay signed with another merchant's secret":
            ixopay(secret=OTHER_SHOP["ixopay"]["shared_secret"]),
        "ixopay: another merchant's genuine callback": retarget(ixopay("other-shop",
            OTHER_SHOP["ixopay"]["shared_secret"]), "shop-eu"),
        "ixopay: a genuine callback of a merchant with the same secret":
            retarget(ixopay("strict-eu"), "shop-eu"),  # the request URI is signed
        "ixopay with the body changed": replace(genuine,
                                                body=genuine.body.replace(b"12.34", b"0.01")),
        "ixopay with a query added": replace(genuine, path=genuine.path + "?amount=0.01"),
        "ixopay unsigned": replace(genuine, headers=without_signature),
        "ifthenpay with a wrong key": ifthenpay(key="guessed-anti-phishing-key"),
        "ifthenpay: another merchant's genuine callback":
            retarget(ifthenpay("other-shop", OTHER_SHOP["ifthenpay"]["anti_phishing_key"]),
                     "shop-eu"),
        "ifthenpay without a key": replace(no_key, path=no_key.path.replace(
            f"key={IFTHENPAY_KEY}&", "")),
        "netaxept without credentials": build.netaxept_callback("shop-eu", "forged-1"),
        "netaxept with a guessed password": build.netaxept_callback(
            "shop-eu", "forged-1", NETAXEPT_USER, "guessed-password"),
        "netaxept with a wrong user name": build.netaxept_callback(
            "shop-eu", "forged-1", "other-shop", NETAXEPT_PASSWORD),
    }
    statuses = {name: await system.send(callback) for name, callback in forged.items()}
    tally.forged += len(forged)
    tally.forged_accepted += sum(status != 401 for status in statuses.values())
    assert statuses == dict.fromkeys(forged, 401)
    assert system.queued() == 0

    system.work()
    tally.forged_accepted += len(system.events()) + len(system.delivered())
    assert system.events() == [] and system.delivered() == []
    assert system.requests == []  # nothing stored, so nothing asked


async def test_a_forged_id_the_provider_does_not_know_yields_no_event_and_no_delivery(
        system: System, admin: SimulatorClient, redis_client: redis.Redis,
        tally: Tally) -> None:
    """Netaxept's and PayEx's callbacks carry no proof: the ingress stores them, and the
    worker asks the provider, which knows nothing of them (here even with Netaxept's
    callback credentials, as if they had leaked)."""
    unknown = f"/psp/creditcard/payments/{GUID}"
    forged = [
        build.netaxept_callback("shop-eu", "never-registered", NETAXEPT_USER, NETAXEPT_PASSWORD),
        build.payex_callback("shop-eu", payment_id=unknown,
                             transaction_id=f"{unknown}/captures/{GUID}", number=1),
        build.payex_callback("shop-eu", payment_order_id=f"/psp/paymentorders/{GUID}",
                             payment_id=unknown, transaction_id=f"{unknown}/sales/{GUID}"),
        build.payex_callback("shop-eu", payment_order_id=f"/psp/paymentorders/{GUID}",
                             order_reference="549213", number=1),
    ]
    statuses = [await system.send(callback) for callback in forged]
    assert statuses == [200] * len(forged)  # the ingress cannot tell
    system.work()
    tally.forged += len(forged)
    tally.forged_accepted += len(system.events()) + len(system.delivered())
    assert system.events() == [] and system.delivered() == []
    # Netaxept's "Unable to find transaction": rejected for good. PayEx's 404: retried for
    # an hour after the callback (its API may lag behind), then rejected; none gives events.
    assert [(job.get_status(), job.retries_left) for job in callback_jobs(redis_client)] == [
        (JobStatus.FAILED, 0)] + [(JobStatus.SCHEDULED, 11)] * (len(forged) - 1)
    assert admin.stats()["requests"] == {"netaxept": 1, "payex": 3, "ixopay": 0,
                                         "ifthenpay": 0}  # one query each
    assert system.other_hosts() == []


def callback_jobs(client: redis.Redis) -> list[Job]:
    """Every callback job in Redis, whatever its state, oldest first."""
    return sorted((Job.fetch(key.decode().removeprefix("rq:job:"), connection=client,
                             serializer=JSONSerializer)
                   for key in client.scan_iter("rq:job:cb_*")), key=lambda job: job.id)


async def test_a_callback_naming_another_merchants_payment_yields_nothing_for_this_one(
        system: System, admin: SimulatorClient, tally: Tally) -> None:
    """A Netaxept transaction belongs to a merchant id: shop-eu's Query credentials do not
    find other-shop's. (IXOPAY and ifthenpay: the other merchant's signature or key does not
    verify, see above. The PayEx simulator does not scope payments by token, so a PayEx
    payment of another merchant is not tried.)"""
    theirs = OTHER_SHOP["netaxept"]["merchant_id"]
    admin.netaxept_transaction("theirs-1", theirs, 5000, currency="NOK", authorized=True,
                               captured=5000)
    to_shop = build.netaxept_callback("shop-eu", "theirs-1", NETAXEPT_USER, NETAXEPT_PASSWORD)
    assert await system.send(to_shop) == 200
    assert await system.send(build.netaxept_callback("other-shop", "theirs-1")) == 200
    system.work()
    tally.forged += 1
    tally.forged_accepted += len(system.events("shop-eu"))
    assert system.events("shop-eu") == []
    assert sorted(e.type.value for e in system.events("other-shop")) == [
        "payment.authorized", "payment.captured"]
    assert {path for path, _ in system.delivered()} == {"/other-shop/orders"}


def genuine_callback(provider: str, admin: SimulatorClient) -> OutgoingCallback:
    """A genuine callback of each provider, with the provider's state behind it."""
    if provider == "ixopay":
        return ixopay(uuid="replayed-1")
    if provider == "ifthenpay":
        return ifthenpay()
    if provider == "netaxept":
        admin.netaxept_transaction("replayed-1", NETAXEPT_MERCHANT, 5000, currency="NOK",
                                   authorized=True, captured=5000)
        return build.netaxept_callback("shop-eu", "replayed-1", NETAXEPT_USER,
                                       NETAXEPT_PASSWORD)
    payment = admin.payex_payment(1500, transactions=[
        {"type": "Authorization", "state": "Completed", "amount": 1500},
        {"type": "Capture", "state": "Completed", "amount": 1500}])
    capture = payment["transactions"][1]
    return build.payex_callback("shop-eu", payment_id=payment["path"],
                                transaction_id=capture["typed_path"], number=capture["number"])


@pytest.mark.parametrize("provider", ["ixopay", "ifthenpay", "netaxept", "payex"])
async def test_a_replayed_callback_gives_the_same_event_ids_and_no_new_delivery(
        provider: str, system: System, admin: SimulatorClient, tally: Tally) -> None:
    callback = genuine_callback(provider, admin)
    assert await system.send(callback) == 200
    assert await system.send(callback) == 200  # replayed at once
    system.work()
    events = sorted(e.id for e in system.events())
    first = system.delivered()
    assert len(events) == (2 if provider in ("netaxept", "payex") else 1)
    assert sorted(first) == [("/shop-eu/orders", event) for event in events]  # each once

    replays = [callback]  # later, after the events were delivered
    if provider == "ixopay":  # as IXOPAY retries: signed again, with a new Date
        replays.append(ixopay(uuid="replayed-1", date=formatdate(time.time() + 1,
                                                                 usegmt=True)))
    for replay in replays:
        assert await system.send(replay) == 200
    system.work()
    tally.replays += 1 + len(replays)
    seen = {event for _, event in first}
    tally.replays_new_id += len({event for _, event in system.delivered()} - seen)
    assert sorted(e.id for e in system.events()) == events
    assert system.delivered() == first  # nothing new at all
    assert system.other_hosts() == []


async def test_an_ixopay_callback_replayed_with_an_old_date_is_refused_with_max_date_skew(
        start: Start, tally: Tally) -> None:
    system = await start(lambda config: config["merchants"]["shop-eu"]["ixopay"].update(
        max_date_skew="15m"))
    assert await system.send(ixopay(uuid="skewed-1")) == 200
    system.work()
    [(_, event)] = system.delivered()
    captured_earlier = formatdate(time.time() - 20 * 60, usegmt=True)
    post_dated = formatdate(time.time() + 20 * 60, usegmt=True)
    replays = [ixopay(uuid="skewed-1", date=captured_earlier),
               ixopay(uuid="skewed-2", date=captured_earlier),
               ixopay(uuid="skewed-3", date=post_dated)]
    statuses = [await system.send(replay) for replay in replays]
    tally.replays += len(replays)
    tally.forged_accepted += sum(status != 401 for status in statuses)
    assert statuses == [401] * len(replays)
    assert system.queued() == 0
    system.work()
    assert system.delivered() == [("/shop-eu/orders", event)]


def escape_paths(host: str) -> list[str]:
    """A payment's `id` as a request target that leaves the provider's host or its /psp/
    paths, every way we know: absolute URLs, `//host`, userinfo, backslashes, `..`, percent-
    and Unicode-encoded separators and dots, a query, a fragment, CR LF."""
    good = f"/psp/creditcard/payments/{GUID}"
    dotted = host.replace(".", "\u3002")  # ideographic full stop: a dot after IDNA mapping
    return [
        f"http://{host}{good}", f"https://{host}{good}", f"HTTP://{host}{good}",
        f"//{host}{good}", f"///{host}{good}", f"@{host}{good}", f"/@{host}{good}",
        f"{good}@{host}", f"{good}%40{host}", f"\\\\{host}{good}", f"/\\{host}{good}",
        f"\\/{host}{good}", f"http:{host}{good}", f"http:\\\\{host}{good}",
        f"%2f%2f{host}{good}", f"/%2f{host}{good}", f"/%5c{host}{good}",
        f"{good}/../../../../x", f"{good}/..", f"{good}/.", f"/psp/../{host}{good}",
        f"{good}/%2e%2e/%2e%2e/%2e%2e/x", f"/psp/%2e%2e/%2e%2e/{host}{good}",
        f"{good}%2f..%2f..%2fx", f"{good}%252e%252e%252f", f"{good}\\..\\..\\x",
        f"{good}?@{host}", f"{good}#@{host}", f"{good}?x=1", f"{good}\r\nHost: {host}",
        f"{good}%0d%0aHost:%20{host}", f"{good}\t", f" {good}", f"{good}%00",
        f"//{dotted}{good}", f"//{host.replace('.', chr(0xFF0E))}{good}",
        f"/psp/creditcard/payments/{GUID.replace('-', chr(0x2010))}",
        "/psp/creditcard/payments/" + GUID.replace("5", "\uff15", 1),
        f"/psp/creditcard/payments/{GUID}\u2025", f"/psp/creditcard/payments/{GUID}\uff0e\uff0e",
    ]


def escape_bodies(host: str) -> list[bytes]:
    """Every path of escape_paths, as a payment, as a transaction and as a payment order."""
    bodies = []
    for path in escape_paths(host):
        order = path.replace("creditcard/payments", "paymentorders")
        for data in (
            {"payment": {"id": path, "number": 1},
             "transaction": {"id": f"{PAYMENT}/captures/{GUID}", "number": 2}},
            {"payment": {"id": PAYMENT, "number": 1},
             "transaction": {"id": path.replace(f"payments/{GUID}",
                                                f"payments/{PAYMENT.rsplit('/', 1)[1]}/"
                                                f"captures/{GUID}"), "number": 2}},
            {"orderReference": "549213", "paymentOrder": {"id": order, "number": 3}},
            {"paymentOrder": {"id": ORDER}, "payment": {"id": path},
             "transaction": {"id": f"{path}/captures/{GUID}"}},
        ):
            bodies.append(json.dumps(data).encode())
    return bodies


def enqueue_as_stored(client: redis.Redis, body: bytes) -> None:
    """A PayEx callback job with this body, as if the ingress had stored it."""
    callback = json.loads(callback_json(
        id=new_callback_id(), merchant="shop-eu", provider="payex", method="POST",
        uri="/callbacks/shop-eu/payex", headers={"content-type": "application/json"},
        body=body, source="127.0.0.1", received_at=utcnow(), reference="stored"))
    options = dict(CALLBACK_JOB_OPTIONS)
    Queue(CALLBACKS, connection=client, serializer=JSONSerializer).enqueue(
        PROCESS_CALLBACK, callback, job_id=callback["id"], job_timeout=options.pop("timeout"),
        **options)


async def test_payex_paths_cannot_send_a_worker_to_another_host(
        system: System, admin: SimulatorClient, attacker: Attacker,
        redis_client: redis.Redis, tally: Tally) -> None:
    bodies = escape_bodies(attacker.host)
    statuses = []
    for body in bodies:
        response = await system.client.post("/callbacks/shop-eu/payex", data=body,
                                            headers={"Content-Type": "application/json"})
        statuses.append(response.status)
    assert statuses == [400] * len(bodies)  # refused before anything is stored
    assert system.queued() == 0

    # The worker checks again: the same bodies, stored as if the ingress had let them pass,
    # next to one genuine callback (the control: its requests are recorded).
    for body in bodies:
        enqueue_as_stored(redis_client, body)
    payment = admin.payex_payment(100, transactions=[
        {"type": "Sale", "state": "Completed", "amount": 100}])
    assert await system.send(build.payex_callback(
        "shop-eu", payment_id=payment["path"],
        transaction_id=payment["transactions"][0]["typed_path"])) == 200
    system.work()
    tally.escapes += 2 * len(bodies)
    tally.other_hosts += len(attacker.connections) + len(system.other_hosts())
    assert attacker.connections == []
    assert system.other_hosts() == []
    assert [url.path for url in system.requests] == [payment["path"]]  # the control only
    assert [e.type.value for e in system.events()] == ["payment.captured"]
    outcomes = Counter((job.get_status(), job.retries_left) for job in
                       callback_jobs(redis_client))  # the stored ones: refused for good
    assert outcomes == {(JobStatus.FAILED, 0): len(bodies), (JobStatus.FINISHED, 12): 1}


async def test_an_ixopay_uuid_cannot_steer_the_status_api_request(
        system: System, admin: SimulatorClient, attacker: Attacker, tally: Tally) -> None:
    """With `verify_with_status_api` (strict-eu) the worker asks IXOPAY's status API about the
    callback's uuid: a signed callback, but its uuid still must not pick the host, the path
    or the query of a request that carries the merchant's credentials."""
    host = attacker.host
    uuids = [f"http://{host}/x", f"//{host}/x", f"@{host}", f"../../../../../{host}",
             "x/../../../..", "..", ".", "x?merchantTransactionId=1", "x#y", f"x\\..\\{host}",
             f"%2e%2e%2f%2e%2e%2f{host}", "x%2f..%2f..", "\u3002\u3002"]
    admin.ixopay_transaction("ixo-real", "order-9", transactionType="DEBIT",
                             transactionStatus="SUCCESS", amount="12.34", currency="EUR")
    for uuid in [*uuids, "ixo-real"]:
        assert await system.send(ixopay("strict-eu", uuid=uuid)) == 200  # signed: genuine
    system.work()
    tally.escapes += len(uuids)
    tally.other_hosts += len(attacker.connections) + len(system.other_hosts())
    assert attacker.connections == []
    assert system.other_hosts() == []
    prefix = f"/api/v3/status/{IXOPAY_API_KEY}/getByUuid/"
    asked = [url.raw_path.decode() for url in system.requests]
    assert asked == [f"{prefix}ixo-real"], asked  # the others were refused unasked
    assert [e.type.value for e in system.events("strict-eu")] == ["payment.captured"]


def private_hook_urls(attacker: Attacker) -> list[str]:
    """Hook URLs whose host is this machine, written every way a URL parser accepts."""
    port, v6 = attacker.port, attacker.v6_port
    urls = [f"http://{host}:{port}/hook" for host in (
        "localhost", "LOCALHOST", "127.0.0.1", "127.1", "2130706433",
        "0177.0.0.1", "0x7f.0.0.1", "0x7f000001", "0", "0.0.0.0",  # noqa: S104 - a URL, not a bind
        "127\u30020\u30020\u30021", "\uff11\uff12\uff17.0.0.1", "[::ffff:127.0.0.1]",
        "[::ffff:7f00:1]")]
    if v6 is not None:
        urls += [f"http://{host}:{v6}/hook" for host in ("[::1]", "[0:0:0:0:0:0:0:1]", "[::]")]
    return urls


async def test_hook_urls_that_lead_to_private_addresses_are_never_connected(
        start: Start, admin: SimulatorClient, attacker: Attacker, redis_client: redis.Redis,
        tally: Tally) -> None:
    urls = private_hook_urls(attacker)

    def hooks_at(urls: list[str], allow: bool) -> Callable[[Config], None]:
        def edit(config: Config) -> None:
            config["delivery"]["allow_private_networks"] = allow
            config["merchants"]["shop-eu"]["hooks"] = [
                {"id": f"hook-{n}", "url": url, "secret": HOOK_SECRET}
                for n, url in enumerate(urls)]
        return edit

    system = await start(hooks_at(urls, allow=False))
    admin.netaxept_transaction("hooked-1", NETAXEPT_MERCHANT, 100, authorized=True)
    assert await system.send(build.netaxept_callback("shop-eu", "hooked-1", NETAXEPT_USER,
                                                     NETAXEPT_PASSWORD)) == 200
    system.work()
    tally.escapes += len(urls)
    tally.other_hosts += len(attacker.connections)
    assert attacker.connections == []
    [event] = system.events()
    errors = [[json.loads(a)["error"] for a in redis_client.lrange(
        attempts_key(event.id, f"hook-{n}"), 0, -1)] for n in range(len(urls))]
    assert all(len(e) == 1 and e[0].startswith("refused") for e in errors), errors

    # The control: allowed, the same kind of URL does reach the attacker.
    allowed = await start(hooks_at([f"http://localhost:{attacker.port}/hook"], allow=True))
    admin.netaxept_transaction("hooked-2", NETAXEPT_MERCHANT, 100, authorized=True)
    assert await allowed.send(build.netaxept_callback("shop-eu", "hooked-2", NETAXEPT_USER,
                                                      NETAXEPT_PASSWORD)) == 200
    allowed.work()
    assert len(attacker.connections) >= 1


async def test_the_anti_phishing_key_is_stored_redacted_under_every_name_it_goes_by(
        system: System, redis_client: redis.Redis) -> None:
    names = ["key", "apk", "chave", "phish_key", "anti_phishing_key", "%6Bey", "ch%61ve"]
    for n, name in enumerate(names):
        uri = (f"/callbacks/shop-eu/ifthenpay?{name}={quote(IFTHENPAY_KEY)}"
               f"&orderId=key-{n}&amount=1.00")
        assert (await system.client.get(uri)).status == 200, name
    stored = [c.uri for c in queued_callbacks(redis_client)]
    assert len(stored) == len(names)
    assert all(IFTHENPAY_KEY not in uri and "=redacted&" in uri for uri in stored), stored
    system.work()
    assert len(system.events()) == len(names)
    assert all("key" not in e.data.provider_status for e in system.events())


async def test_an_unexpected_error_while_verifying_is_logged_without_any_secret(
        system: System, secret_watch: SecretWatch, monkeypatch: pytest.MonkeyPatch) -> None:
    """The one catch-all of the ingress logs the exception with its traceback: the frames'
    local variables (the key just compared, the credentials) must not be in it."""
    def broken(*args: object) -> None:
        raise RuntimeError("unexpected")

    monkeypatch.setattr(ifthenpay_module, "_check_formats", broken)
    monkeypatch.setattr(netaxept_module, "load_json_object", broken)
    secret_watch.take_lines()
    response = await system.client.get(
        f"/callbacks/shop-eu/ifthenpay?key={IFTHENPAY_KEY}&orderId=1&amount=1.00")
    assert response.status == 503
    response = await system.client.post("/callbacks/shop-eu/netaxept", headers=NETAXEPT_AUTH,
                                        data=b'{"TransactionId": "x"}')
    assert response.status == 503
    lines = secret_watch.take_lines()
    failures = [line for line in lines if '"callback_failed"' in line]
    assert len(failures) == 2 and all("RuntimeError" in line for line in failures), lines
    assert secret_watch.problems_in(lines) == []


def test_the_secret_check_finds_a_secret_in_a_log_line_and_in_a_stored_job(
        secret_watch: SecretWatch, redis_client: redis.Redis, redis_url: str) -> None:
    """The check after every test (tests/conftest.py) can fail: a secret in a structlog
    line, in a standard-library line (RQ's), and inside a job's compressed data, base64
    within JSON, are each found."""
    secret_watch.take_lines()
    token = MERCHANT_CONFIG["shop-eu"]["netaxept"]["token"]
    structlog.get_logger("payhooks.test").info("leaked", token=token)
    logging.getLogger("rq.worker").warning("job with %s", NETAXEPT_AUTH["Authorization"])
    assert len(secret_watch.check_lines()) == 2

    body = base64.urlsafe_b64encode(json.dumps({"key": IFTHENPAY_KEY}).encode()).decode()
    data = zlib.compress(json.dumps([PROCESS_CALLBACK, None, [{"body": body}], {}]).encode())
    redis_client.hset("rq:job:cb_leak", mapping={"data": data, "status": "queued"})
    found = secret_watch.check_redis(redis_url)
    redis_client.delete("rq:job:cb_leak")
    assert len(found) == 1 and "rq:job:cb_leak" in found[0]
