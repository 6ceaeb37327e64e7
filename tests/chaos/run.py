"""`payhooks chaos`: the real system under faults, then an account of every callback.

What runs, all on 127.0.0.1: a Redis of our own with AOF (`appendfsync always` unless
`--appendfsync` says otherwise), the provider simulators (`python -m shared.sandbox.simulators`),
`payhooks ingress` and W `payhooks worker` processes; in this process, a merchant endpoint
that checks each event's Standard Webhooks signature, the sender, and the faults.

The sender sends the callbacks (the four providers in turn, each payment registered with
the simulators first) open-loop at `rate`. It behaves as a provider does: an answer other
than 200 or 4xx (503 while Redis is down, a refused connection) is sent again after a
pause, and a share of the callbacks is sent a second time later (providers retry when
unsure). A share of the Netaxept payments is refunded a little later and called back
again, so a payment's facts change while its earlier callbacks are still being retried
and processed. A share is forged: IXOPAY with a wrong signature and ifthenpay with a wrong key
(the ingress must refuse them), Netaxept and PayEx with ids the provider does not know
(the ingress cannot tell; the worker's follow-up must find nothing).

The faults, while the callbacks go out: a worker SIGKILLed every few seconds and another
started in its place (as a supervisor would), Redis restarted twice (first stopped
cleanly, then SIGKILLed) and stalled once (SIGSTOP, then SIGCONT), the providers answering
5xx, timing out or dripping (headers, then a byte a second) on a share of the follow-up
queries, and the merchant endpoint down (connections refused) for a stretch. Beside the
merchant's main hook (`orders`), a second one (`drip`, taking `payment.refunded`) is an
endpoint that answers every delivery with its status and then a byte a second, forever.

Then it waits until every acknowledged callback's events have arrived (dead letters are
replayed with `payhooks replay`, as an operator would) or until nothing has moved for
`settle` seconds, and counts: every acknowledged callback must have all its events at
the endpoint, each fact under exactly one event id, no event for a forged callback, no
answer 500 from the ingress, and no secret of the config in any log line or Redis value.
The hostile cases have counts of their own: every request in flight while Redis stalled
answered within `SLOW_ANSWER` seconds (the ingress promises a 503 within 2 s whatever
Redis does); every refund delivered to the main hook has a delivery record for the
dripping one, each of whose attempts ended as a timeout by the deadline. The exit code is
1 when any count is off.

The quick form (`--quick`, in CI) keeps the hooks from ever pausing (`pause_after` is
high), so deliveries run out of retries while the endpoint is down and go through dead
letters and replay, and the dripping hook's deliveries are tried one at a time until
dead-lettered (they are not replayed). The long form keeps the default circuit breaker,
which pauses both hooks. Every hostile case is on in both forms.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import zlib
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import httpx
import orjson
import redis
from standardwebhooks import Webhook
from yarl import URL

from shared.keys import attempts_key, delivery_key
from shared.redis_client import connect
from shared.sandbox.processes import answers, clean_env, stop, wait_until
from shared.sandbox.redis_server import RedisServer, SentinelCluster, free_port
from shared.sandbox.simulators import callbacks as build
from shared.sandbox.simulators.callbacks import OutgoingCallback
from shared.sandbox.simulators.client import SimulatorClient
from shared.sandbox.simulators.merchant import Answer, MerchantEndpoint

MERCHANT, NETAXEPT_ID = "chaos", "12002835"
EVENTS = {"netaxept": 2, "payex": 1, "ixopay": 1, "ifthenpay": 1}  # events per callback
PROVIDERS = tuple(EVENTS)
SECRETS = {
    "ixopay": "chaos-ixopay-" + "shared-secret-3f9a",
    "ifthenpay": "chaos-ifthenpay-" + "anti-phishing-77c1",
    "netaxept_token": "chaos-netaxept-" + "token-b20e",
    "netaxept_password": "chaos-netaxept-" + "callback-password-5d4c",
    "payex": "chaos-payex-" + "token-e81d",
    "hook": "whsec_" + "Y2hhb3MtaG9vay1zZWNyZXQtMjAyNg==",
    "drip_hook": "whsec_" + "Y2hhb3MtZHJpcC1ob29rLXNlY3JldA==",
}
HOOK, DRIP_HOOK = "orders", "drip"  # the main hook, and the one whose endpoint drips
SLOW_ANSWER = 3.0  # seconds: an ingress answer slower than this while Redis stalls is a failure
HOOK_TIMEOUT = 5.0  # [delivery] timeout: each attempt to the dripping hook lasts this long
NETAXEPT_USER = "chaos-callbacks"
CONFIG = """\
redis_url = "{redis}"
logging = {{ level = "info", format = "json" }}

[delivery]
allow_private_networks = true
retry_schedule = ["1s", "1s", "2s"]
pause_after = {pause_after}
timeout = "{hook_timeout}s"

[merchants.{merchant}]
ixopay = {{ shared_secret = "{ixopay}", base_url = "{sims}" }}
ifthenpay = {{ anti_phishing_key = "{ifthenpay}", base_url = "{sims}" }}
payex = {{ token = "{payex}", base_url = "{sims}" }}

[[merchants.{merchant}.hooks]]
id = "orders"
url = "{endpoint}/events"
secret = "{hook}"

[[merchants.{merchant}.hooks]]
id = "drip"
url = "{drip_endpoint}/refunds"
secret = "{drip_hook}"
events = ["payment.refunded"]

[merchants.{merchant}.netaxept]
merchant_id = "{netaxept_id}"
token = "{netaxept_token}"
base_url = "{sims}"
callback_username = "{netaxept_user}"
callback_password = "{netaxept_password}"
"""
_PROJECT = Path(__file__).resolve().parents[2]
Key = tuple[str, str]  # provider, payment id
Fact = tuple[str, str, str]  # provider, payment id, event type


class ChaosError(Exception):
    """The system could not be set up or did not come up."""


@dataclass(frozen=True, slots=True)
class Plan:
    callbacks: int = 5000
    rate: float = 10.0  # callbacks a second
    workers: int = 8  # mostly waiting on providers: 5% of follow-ups hold one for 10 s, 5% for 15
    seed: int | None = None
    duplicate_share: float = 0.2  # callbacks sent a second time, later
    refund_share: float = 0.2  # Netaxept payments refunded later, then called back again
    forged_share: float = 0.05  # forged callbacks, on top of `callbacks`
    error_rate: float = 0.05  # follow-up queries answered 5xx...
    timeout_rate: float = 0.05  # ...or left to time out (the workers wait 10 s)...
    drip_rate: float = 0.05  # ...or dripped, a byte a second (cut off at the 15 s deadline)
    kill_every: tuple[float, float] = (3.0, 8.0)  # seconds between worker kills
    redis_down: float = 2.0  # seconds Redis stays down at each restart
    redis_stall: float = 6.0  # seconds Redis is stopped (SIGSTOP) once; 0: never
    hook_timeout: float = HOOK_TIMEOUT
    endpoint_down: float = 60.0  # seconds the merchant endpoint refuses connections
    pause_after: int = 5  # the hook's circuit breaker (the quick form never lets it trip)
    settle: float = 600.0  # give up when nothing moved for this long after sending
    keep_logs: bool = False  # keep the logs folder even when every count is right
    appendfsync: str = "always"  # Redis's AOF fsync policy: always, everysec or no
    # a primary, two replicas and three Sentinels instead of one Redis, min_replicas = 1,
    # and the primary SIGKILLed twice (the Sentinels promote a replica; it comes back as one)
    failover: bool = False

    @classmethod
    def quick(cls, seed: int | None = None) -> Plan:
        return cls(callbacks=400, rate=10.0, workers=8, seed=seed, endpoint_down=20.0,
                   pause_after=10_000, settle=180.0)

    @property
    def seconds(self) -> float:
        return self.callbacks / self.rate


@dataclass
class Outgoing:
    key: Key
    callback: OutgoingCallback
    forged: bool = False
    order: str = ""
    statuses: list[int] = field(default_factory=list)  # every answer, resends included
    events: int = 0  # the events its payment must give (see EVENTS; one more if refunded)

    def __post_init__(self) -> None:
        self.events = self.events or EVENTS[self.key[0]]

    @property
    def acknowledged(self) -> bool:
        return 200 in self.statuses


@dataclass
class Tally:
    """What happened, counted as it happened."""

    requests: int = 0
    statuses: Counter[int] = field(default_factory=Counter)
    refused: int = 0  # requests the ingress did not answer (connection errors)
    duplicates: int = 0
    refunds: int = 0
    kills: int = 0
    redis_restarts: list[str] = field(default_factory=list)
    endpoint_down_s: float = 0.0
    replayed: int = 0
    dripped: int = 0  # follow-up answers the simulators dripped
    stalls: list[tuple[float, float]] = field(default_factory=list)  # monotonic, from, to
    # every request to the ingress: when it was sent (monotonic), seconds to its answer,
    # and its status (None: no answer)
    answers: list[tuple[float, float, int | None]] = field(default_factory=list)

    def during_stalls(self) -> list[tuple[float, int | None]]:
        """Seconds and status of each request in flight while Redis was stalled."""
        return [(seconds, status) for sent, seconds, status in self.answers
                if any(sent < until and sent + seconds > begin for begin, until in self.stalls)]


@dataclass
class DripHook:
    """How the deliveries to the dripping hook ended, from their records in Redis."""

    expected: int = 0  # refunds delivered to the main hook: each has a delivery here too
    deliveries: int = 0  # delivery records (payhooks:delivery:<event>:drip)
    states: Counter[str] = field(default_factory=Counter)
    requests: int = 0  # requests the dripping endpoint received
    attempts: int = 0  # attempts recorded (payhooks:attempts:<event>:drip)
    timeouts: int = 0
    longest_ms: float = 0.0


@dataclass
class Account:
    """The final count (see `problems`)."""

    genuine: int
    acknowledged: int
    refused: int  # genuine callbacks answered 4xx
    expected_events: int
    delivered_events: int
    lost: list[Key]
    split_facts: list[Fact]  # facts that came under two or more event ids
    forged: int
    forged_acknowledged: int
    forged_events: int
    unverified: int  # requests at the endpoint whose signature does not verify
    secrets_found: list[str]
    log_lines: int
    redis_values: int
    drip: DripHook = field(default_factory=DripHook)
    hook_timeout: float = HOOK_TIMEOUT

    def problems(self, tally: Tally) -> list[str]:
        found = []
        if self.lost:
            found.append(f"{len(self.lost)} acknowledged callbacks lost, e.g. {self.lost[:3]}")
        if self.refused:
            found.append(f"{self.refused} genuine callbacks refused with a 4xx")
        if self.split_facts:
            found.append(f"{len(self.split_facts)} facts under two event ids, "
                         f"e.g. {self.split_facts[:3]}")
        if self.forged_events:
            found.append(f"{self.forged_events} events from forged callbacks")
        if self.unverified:
            found.append(f"{self.unverified} deliveries whose signature does not verify")
        if self.secrets_found:
            found.append(f"secrets in logs or Redis: {', '.join(self.secrets_found)}")
        if errors := sum(n for status, n in tally.statuses.items() if status >= 500
                         and status != 503):
            found.append(f"{errors} answers 5xx other than 503 from the ingress")
        stalled = tally.during_stalls()
        if slow := sum(seconds > SLOW_ANSWER or status is None for seconds, status in stalled):
            found.append(f"{slow} requests answered after {SLOW_ANSWER:g} s or not at all while "
                         f"Redis stalled (slowest {max(s for s, _ in stalled):.1f} s)")
        drip = self.drip
        if drip.deliveries < drip.expected:
            found.append(f"{drip.expected - drip.deliveries} refunds without a delivery record "
                         f"for the dripping hook")
        if drip.attempts != drip.timeouts:
            found.append(f"{drip.attempts - drip.timeouts} attempts to the dripping hook that "
                         f"did not end as timeouts")
        if drip.longest_ms > (self.hook_timeout + 1.0) * 1000:
            found.append(f"an attempt to the dripping hook took {drip.longest_ms:.0f} ms, "
                         f"the deadline being {self.hook_timeout:g} s")
        return found


@dataclass
class System:
    directory: Path
    config: Path
    server: RedisServer | None  # None with --failover: the cluster's primary changes
    redis: redis.Redis
    admin: SimulatorClient
    endpoint: MerchantEndpoint
    drip_endpoint: MerchantEndpoint | None = None  # the dripping hook's
    cluster: SentinelCluster | None = None  # with --failover
    ingress: str = ""
    workers: list[subprocess.Popen[bytes]] = field(default_factory=list)
    spawned: int = 0

    def spawn(self, stack: contextlib.ExitStack, *argv: str) -> subprocess.Popen[bytes]:
        self.spawned += 1
        log = self.directory / f"{argv[0]}-{self.spawned}.log"
        with log.open("wb") as out:
            process = subprocess.Popen(
                [sys.executable, "-m", "shared.cli", *argv, "--config", str(self.config)],
                stdout=out, stderr=subprocess.STDOUT, cwd=_PROJECT, env=clean_env())
        stack.callback(stop, process)
        return process

    def start_worker(self, stack: contextlib.ExitStack) -> None:
        self.workers.append(self.spawn(stack, "worker"))


def _wait(ready: Callable[[], bool], seconds: float, what: str) -> None:
    wait_until(ready, seconds, what, ChaosError)


def start(stack: contextlib.ExitStack, plan: Plan) -> System:
    """Redis, the simulators (with their faults), the endpoint, the ingress and the workers."""
    directory = Path(tempfile.mkdtemp(prefix="payhooks-chaos-"))
    server: RedisServer | None = None
    cluster: SentinelCluster | None = None
    if plan.failover:
        cluster = SentinelCluster(directory, appendonly=True, appendfsync=plan.appendfsync)
        stack.callback(cluster.stop)
        cluster.start()
        redis_url = cluster.url
    else:
        server = stack.enter_context(RedisServer(appendonly=True, appendfsync=plan.appendfsync))
        redis_url = server.url
    sims_port = free_port()
    with (directory / "simulators.log").open("wb") as out:
        sims = subprocess.Popen([sys.executable, "-m", "shared.sandbox.simulators", "--port",
                                 str(sims_port)], stdout=out, stderr=subprocess.STDOUT,
                                cwd=_PROJECT, env=clean_env())
    stack.callback(stop, sims)
    sims_url = f"http://127.0.0.1:{sims_port}"
    _wait(lambda: answers(f"{sims_url}/_sim/faults"), 30, "the simulators did not start")
    endpoint = stack.enter_context(MerchantEndpoint(verify_secret=SECRETS["hook"]))
    drip_endpoint = stack.enter_context(MerchantEndpoint(verify_secret=SECRETS["drip_hook"]))
    drip_endpoint.script("/refunds", default=Answer(drip=1.0))
    config = directory / "payhooks.toml"
    config.write_text(CONFIG.format(
        redis=redis_url, sims=sims_url, endpoint=endpoint.url, merchant=MERCHANT,
        drip_endpoint=drip_endpoint.url, drip_hook=SECRETS["drip_hook"],
        hook_timeout=plan.hook_timeout,
        pause_after=plan.pause_after, ixopay=SECRETS["ixopay"], ifthenpay=SECRETS["ifthenpay"],
        payex=SECRETS["payex"], hook=SECRETS["hook"], netaxept_id=NETAXEPT_ID,
        netaxept_token=SECRETS["netaxept_token"], netaxept_user=NETAXEPT_USER,
        netaxept_password=SECRETS["netaxept_password"]))
    if plan.failover:  # acknowledged only once a replica has it: a failover loses nothing
        waiting = '[ingress]\nmin_replicas = 1\nreplica_timeout = "100ms"\n\n'
        config.write_text(config.read_text().replace("[delivery]", waiting + "[delivery]", 1))
    admin = stack.enter_context(SimulatorClient(sims_url))
    admin.netaxept_credentials(NETAXEPT_ID, SECRETS["netaxept_token"])
    admin.payex_token(SECRETS["payex"])
    client = stack.enter_context(connect(redis_url, socket_timeout=10))
    system = System(directory, config, server, client, admin, endpoint, drip_endpoint,
                    cluster=cluster)
    port = free_port()
    ingress = system.spawn(stack, "ingress", "--host", "127.0.0.1", "--port", str(port))
    system.ingress = f"http://127.0.0.1:{port}"
    _wait(lambda: ingress.poll() is None and answers(f"{system.ingress}/healthz"), 30,
          "the ingress did not start")
    for _ in range(plan.workers):
        system.start_worker(stack)
    _wait(lambda: client.scard("rq:workers") >= plan.workers, 60, "the workers did not start")
    return system


def outgoing(admin: SimulatorClient, n: int, forged: bool) -> Outgoing:
    """Callback n (the providers in turn), its payment registered with the simulators first,
    unless it is forged."""
    provider, ref = PROVIDERS[n % len(PROVIDERS)], secrets.token_hex(10)
    if provider == "netaxept":
        if not forged:
            admin.netaxept_transaction(ref, NETAXEPT_ID, 5000, currency="NOK", authorized=True,
                                       captured=5000, order_number=f"order-{n}")
        callback = build.netaxept_callback(MERCHANT, ref, NETAXEPT_USER,
                                           SECRETS["netaxept_password"])
        return Outgoing((provider, ref), callback, forged, order=f"order-{n}")
    if provider == "payex":
        if forged:
            path = f"/psp/creditcard/payments/{secrets.token_hex(16)}"
            return Outgoing((provider, path), build.payex_callback(
                MERCHANT, payment_id=path, transaction_id=f"{path}/sales/{ref}", number=1),
                forged)
        payment = admin.payex_payment(1500, transactions=[
            {"type": "Sale", "state": "Completed", "amount": 1500}])
        sale = payment["transactions"][0]
        return Outgoing((provider, payment["path"]), build.payex_callback(
            MERCHANT, payment_id=payment["path"], transaction_id=sale["typed_path"],
            number=sale["number"]), forged)
    if provider == "ixopay":
        secret = "forged-signing-secret" if forged else SECRETS["ixopay"]
        return Outgoing((provider, ref), build.ixopay_callback(
            MERCHANT, secret, uuid=ref, merchant_transaction_id=f"order-{n}"), forged)
    key = "forged-key" if forged else SECRETS["ifthenpay"]
    return Outgoing((provider, ref), build.ifthenpay_callback(
        MERCHANT, key, order_id=str(n), amount="12.34", request_id=ref,
        payment_datetime="03-01-2024 15:15:16"), forged)


async def send_all(url: str, items: list[Outgoing], plan: Plan, rng: random.Random,
                   tally: Tally, admin: SimulatorClient) -> None:
    """Send every callback open-loop at plan.rate, as providers do (see the module doc).
    A share of the Netaxept payments is refunded at the provider a little later, which
    calls back again with the same body: one new fact, the earlier ones unchanged."""

    async def once(session: aiohttp.ClientSession, item: Outgoing) -> int | None:
        callback = item.callback
        tally.requests += 1
        sent = time.monotonic()
        try:
            async with session.request(
                callback.method, URL(url + callback.path, encoded=True),
                data=callback.body or None, headers=callback.headers,
                timeout=aiohttp.ClientTimeout(total=10),
            ) as response:
                await response.read()
        except (TimeoutError, aiohttp.ClientError):
            tally.refused += 1
            tally.answers.append((sent, time.monotonic() - sent, None))
            return None
        tally.answers.append((sent, time.monotonic() - sent, response.status))
        tally.statuses[response.status] += 1
        item.statuses.append(response.status)
        return response.status

    async def deliver(session: aiohttp.ClientSession, item: Outgoing) -> int | None:
        pause = 0.5
        for _ in range(30):  # a provider gives up at some point too
            status = await once(session, item)
            if status is not None and status < 500:
                return status
            await asyncio.sleep(pause)
            pause = min(pause * 2, 5.0)
        return None

    async def refund_later(session: aiohttp.ClientSession, item: Outgoing, delay: float
                           ) -> None:
        await asyncio.sleep(delay)
        await asyncio.to_thread(
            admin.netaxept_transaction, item.key[1], NETAXEPT_ID, 5000, currency="NOK",
            authorized=True, captured=5000, credited=5000, order_number=item.order)
        tally.refunds += 1
        if await deliver(session, item) == 200:  # acknowledged: the refund must arrive too
            item.events += 1

    async def again_later(session: aiohttp.ClientSession, item: Outgoing, delay: float
                          ) -> None:
        await asyncio.sleep(delay)
        tally.duplicates += 1
        await deliver(session, item)

    connector = aiohttp.TCPConnector(limit=200)
    async with aiohttp.ClientSession(connector=connector) as session:
        tasks, begin = [], time.monotonic()
        for n, item in enumerate(items):
            await asyncio.sleep(max(0.0, begin + n / plan.rate - time.monotonic()))
            tasks.append(asyncio.create_task(deliver(session, item)))
            if not item.forged and rng.random() < plan.duplicate_share:
                tasks.append(asyncio.create_task(
                    again_later(session, item, rng.uniform(0.5, 15.0))))
            if item.key[0] == "netaxept" and not item.forged and rng.random() < plan.refund_share:
                tasks.append(asyncio.create_task(
                    refund_later(session, item, rng.uniform(1.0, 20.0))))
        await asyncio.gather(*tasks)


def faults(system: System, stack: contextlib.ExitStack, plan: Plan, rng: random.Random,
           tally: Tally, done: threading.Event, say: Callable[[str], None]) -> None:
    """The faults, on a timeline over the sending (runs in a thread). Workers are killed
    until the sending is `done`; the endpoint goes down late, so that deliveries, which
    wait behind callbacks in a backlog, do meet it, and stays down its whole stretch."""
    seconds = plan.seconds
    timeline: list[tuple[float, str]] = [
        (0.30 * seconds, "redis-stop"), (0.65 * seconds, "redis-kill"),
        (0.75 * seconds, "endpoint-down")]
    if plan.failover:  # the primary killed instead of one Redis stopped, killed, stalled
        timeline = [(0.30 * seconds, "failover"), (0.65 * seconds, "failover"),
                    (0.75 * seconds, "endpoint-down")]
    elif plan.redis_stall:
        timeline.append((0.45 * seconds, "redis-stall"))
    at = rng.uniform(*plan.kill_every)
    while at < seconds:
        timeline.append((at, "kill-worker"))
        at += rng.uniform(*plan.kill_every)
    begin = time.monotonic()
    for moment, action in sorted(timeline):
        if done.wait(max(0.0, begin + moment - time.monotonic())) and action == "kill-worker":
            continue
        if action == "kill-worker":
            victim = rng.choice([w for w in system.workers if w.poll() is None])
            victim.send_signal(signal.SIGKILL)
            victim.wait()
            system.workers.remove(victim)
            system.start_worker(stack)
            tally.kills += 1
        elif action == "failover":
            failover(system, plan, moment, tally, say)
        elif action == "redis-stall":
            say(f"chaos: Redis stalled (SIGSTOP) at {moment:.0f} s for {plan.redis_stall:g} s")
            assert system.server is not None
            stall(system.server, plan.redis_stall, tally)
        elif action.startswith("redis-"):
            assert system.server is not None
            how = "stopped" if action == "redis-stop" else "killed"
            say(f"chaos: Redis {how} at {moment:.0f} s, back after {plan.redis_down:g} s")
            if action == "redis-stop":
                system.server.stop()
            else:
                assert system.server.process is not None
                system.server.process.kill()
                system.server.process.wait()
                system.server.process = None
            time.sleep(plan.redis_down)
            system.server.start()
            tally.redis_restarts.append(how)
        else:
            say(f"chaos: merchant endpoint down at {moment:.0f} s for {plan.endpoint_down:g} s")
            system.endpoint.stop()
            down = time.monotonic()
            time.sleep(plan.endpoint_down)
            system.endpoint.start()
            tally.endpoint_down_s = time.monotonic() - down


def failover(system: System, plan: Plan, moment: float, tally: Tally,
             say: Callable[[str], None]) -> None:
    """SIGKILL the primary the Sentinels name; once they have promoted a replica (and
    `redis_down` has passed), start it again as a replica of the new primary."""
    cluster = system.cluster
    assert cluster is not None
    port = cluster.primary()
    say(f"chaos: Redis primary :{port} SIGKILLed at {moment:.0f} s, back as a replica after "
        f"the failover, {plan.redis_down:g} s at least")
    cluster.kill(port)
    killed = time.monotonic()
    _wait(lambda: _promoted(cluster, port), 60, "the Sentinels promoted no replica")
    time.sleep(max(0.0, plan.redis_down - (time.monotonic() - killed)))
    cluster.start_server(port, replica_of=cluster.primary())
    tally.redis_restarts.append("failover")


def _promoted(cluster: SentinelCluster, old: int) -> bool:
    try:
        return cluster.primary() != old
    except RuntimeError:
        return False


def stall(server: RedisServer, seconds: float, tally: Tally) -> None:
    """Stop the redis-server process (SIGSTOP) for `seconds`, then let it go on (SIGCONT):
    it keeps its connections and answers nothing meanwhile."""
    assert server.process is not None
    os.kill(server.process.pid, signal.SIGSTOP)
    begin = time.monotonic()
    try:
        time.sleep(seconds)
    finally:
        os.kill(server.process.pid, signal.SIGCONT)
        tally.stalls.append((begin, time.monotonic()))


def _callback_jobs_pending(client: redis.Redis) -> int:
    """Callback jobs queued, running or waiting for a retry."""
    return int(client.llen("rq:queue:callbacks") + client.zcard("rq:wip:callbacks")
               + client.zcard("rq:scheduled:callbacks"))


@dataclass
class Arrivals:
    """What the endpoint received, each request read once: every fact's event ids, how
    many facts each payment has, and the requests whose signature does not verify (the
    HMAC over id, timestamp and body; not the timestamp's age, which depends on when this
    runs: the endpoint itself answered 401 to stale ones when they came)."""

    endpoint: MerchantEndpoint
    ids: defaultdict[Fact, set[str]] = field(default_factory=lambda: defaultdict(set))
    facts: Counter[Key] = field(default_factory=Counter)
    unverified: int = 0
    read: int = 0

    def update(self) -> Arrivals:
        webhook = Webhook(SECRETS["hook"])
        received = self.endpoint.received[self.read:]
        self.read += len(received)
        for request in received:
            headers = {name.lower(): value for name, value in request.headers.items()}
            event, data = orjson.loads(request.body), None
            try:
                stamp = datetime.fromtimestamp(int(headers["webhook-timestamp"]), tz=UTC)
                expected = webhook.sign(headers["webhook-id"], stamp, request.body.decode())
                if expected in headers["webhook-signature"].split():
                    data = event["data"]
            except (KeyError, ValueError):
                pass
            if not isinstance(data, dict):
                self.unverified += 1
                continue
            fact = str(data["provider"]), str(data["payment_id"]), str(event["type"])
            self.facts[fact[:2]] += not self.ids[fact]
            self.ids[fact].add(str(event["id"]))
        return self


def settle(system: System, items: list[Outgoing], plan: Plan, tally: Tally,
           say: Callable[[str], None]) -> None:
    """Wait until every acknowledged callback's events arrived and no callback job is left,
    replaying dead letters on the way; or until nothing moved for plan.settle seconds."""
    wanted = {item.key: item.events for item in items
              if item.acknowledged and not item.forged}
    arrivals = Arrivals(system.endpoint)
    last, moved = (-1, -1), time.monotonic()
    while time.monotonic() - moved < plan.settle:
        with contextlib.suppress(redis.RedisError):
            if _dead_letters(system.redis):
                tally.replayed += _replay(system, say)
            facts = arrivals.update().facts
            missing = sum(max(0, n - facts[key]) for key, n in wanted.items())
            pending = _callback_jobs_pending(system.redis)
            if missing == 0 and pending == 0:
                return
            if (missing, pending) != last:
                last, moved = (missing, pending), time.monotonic()
                say(f"chaos: waiting for {missing} events, {pending} callback jobs pending")
        time.sleep(1.0)


def _dead_letters(client: redis.Redis) -> int:
    """The main hook's dead letters (the dripping hook's stay dead: it never gets better)."""
    members: list[bytes] = client.zrange("payhooks:dead", 0, -1)  # type: ignore[assignment]
    return sum(member.endswith(f"|{HOOK}".encode()) for member in members)


def _replay(system: System, say: Callable[[str], None]) -> int:
    """`payhooks replay` of the main hook, as an operator would run it once the endpoint is
    back; how many it replayed."""
    count = _dead_letters(system.redis)
    done = subprocess.run([sys.executable, "-m", "shared.cli", "replay", "--config",
                           str(system.config), "--merchant", MERCHANT, "--hook", HOOK],
                          capture_output=True, text=True, cwd=_PROJECT, env=clean_env(),
                          timeout=120, check=False)
    say(f"chaos: payhooks replay: {done.stdout.strip() or done.stderr.strip()}")
    return count if done.returncode == 0 else 0


def find_secrets(directory: Path, client: redis.Redis) -> tuple[list[str], int, int]:
    """Secrets found in the log files and in every Redis value; lines and values searched."""
    wanted = {name: value.encode() for name, value in SECRETS.items()}
    found: set[str] = set()
    lines = 0
    for log in directory.glob("*.log"):
        text = log.read_bytes()
        lines += text.count(b"\n")
        found |= {f"{name} in {log.name}" for name, value in wanted.items() if value in text}
    values = 0
    for key in client.scan_iter(count=1000):
        for blob in _values(client, key):
            values += 1
            with contextlib.suppress(zlib.error):
                blob = zlib.decompress(blob)  # RQ's job data
            found |= {f"{name} in {key.decode(errors='replace')}"
                      for name, value in wanted.items() if value in blob}
    return sorted(found), lines, values


def _values(client: redis.Redis, key: bytes) -> list[bytes]:
    """Every value under a key, whatever its type (hash fields and values alike)."""
    kind: Any = client.type(key)
    found: Any = []
    if kind == b"string":
        found = [client.get(key) or b""]
    elif kind == b"hash":
        found = [blob for pair in client.hgetall(key).items() for blob in pair]
    elif kind == b"list":
        found = client.lrange(key, 0, -1)
    elif kind == b"set":
        found = client.smembers(key)
    elif kind == b"zset":
        found = client.zrange(key, 0, -1)
    return [bytes(blob) for blob in found]


def drip_hook(system: System, refunds: list[str]) -> DripHook:
    """How the dripping hook's deliveries of these refund events ended, from their records."""
    found = DripHook(expected=len(refunds))
    if system.drip_endpoint is not None:
        found.requests = len(system.drip_endpoint.received)
    pipe = system.redis.pipeline(transaction=False)
    for event in refunds:
        pipe.hget(delivery_key(event, DRIP_HOOK), "state")
        pipe.lrange(attempts_key(event, DRIP_HOOK), 0, -1)
    answers = pipe.execute()
    for state, attempts in zip(answers[::2], answers[1::2], strict=True):
        found.deliveries += state is not None
        found.states[state.decode() if state is not None else "no record"] += 1
        for attempt in map(orjson.loads, attempts):
            found.attempts += 1
            found.timeouts += attempt["error"] == "timeout"
            found.longest_ms = max(found.longest_ms, float(attempt["duration_ms"]))
    return found


def account(system: System, items: list[Outgoing], hook_timeout: float = HOOK_TIMEOUT
            ) -> Account:
    genuine = [item for item in items if not item.forged]
    forged = [item for item in items if item.forged]
    acknowledged = [item for item in genuine if item.acknowledged]
    arrivals = Arrivals(system.endpoint).update()
    ids = arrivals.ids
    lost = [item.key for item in acknowledged if arrivals.facts[item.key] < item.events]
    forged_keys = {item.key for item in forged}
    refunds = [event for fact, event_ids in ids.items() if fact[2] == "payment.refunded"
               and fact[:2] not in forged_keys for event in event_ids]
    drip = drip_hook(system, refunds)
    found, lines, values = find_secrets(system.directory, system.redis)
    return Account(
        genuine=len(genuine), acknowledged=len(acknowledged),
        refused=sum(any(400 <= status < 500 for status in item.statuses) for item in genuine),
        expected_events=sum(item.events for item in acknowledged),
        delivered_events=sum(1 for fact in ids if fact[:2] not in forged_keys),
        lost=lost, split_facts=[fact for fact, event_ids in ids.items() if len(event_ids) > 1],
        forged=len(forged), forged_acknowledged=sum(item.acknowledged for item in forged),
        forged_events=sum(1 for fact in ids if fact[:2] in forged_keys),
        unverified=arrivals.unverified, secrets_found=found, log_lines=lines, redis_values=values,
        drip=drip, hook_timeout=hook_timeout)


def report(plan: Plan, tally: Tally, result: Account, seconds: float) -> list[str]:
    stalled = tally.during_stalls()
    drip = result.drip
    rows = [
        ("callbacks sent (genuine)", result.genuine),
        ("  acknowledged (answered 200)", result.acknowledged),
        ("  refused with a 4xx", result.refused),
        ("  sent again later, as providers do", tally.duplicates),
        ("  Netaxept payments refunded, then called back", tally.refunds),
        ("requests to the ingress, resends included", tally.requests),
        ("  answered 503 (Redis down), then resent", tally.statuses[503]),
        ("  answered 5xx other than 503", sum(n for s, n in tally.statuses.items()
                                              if s >= 500 and s != 503)),
        ("  not answered (connection refused or reset)", tally.refused),
        ("events expected from acknowledged callbacks", result.expected_events),
        ("events delivered, signature verified", result.delivered_events),
        ("dead-lettered deliveries replayed", tally.replayed),
        ("lost (acknowledged, events missing)", len(result.lost)),
        ("facts delivered under two event ids", len(result.split_facts)),
        ("forged callbacks sent", result.forged),
        ("  forged answered 200 (unverifiable ids)", result.forged_acknowledged),
        ("  events from forged callbacks", result.forged_events),
        ("workers SIGKILLed", tally.kills),
        ("primaries SIGKILLed, a replica promoted (min_replicas 1)" if plan.failover
         else f"Redis restarts (AOF, appendfsync {plan.appendfsync})",
         len(tally.redis_restarts)),
        ("Redis stalls (SIGSTOP), seconds in all", round(sum(b - a for a, b in tally.stalls))),
        ("  requests in flight during a stall", len(stalled)),
        ("    answered 503", sum(status == 503 for _, status in stalled)),
        ("    answered 200", sum(status == 200 for _, status in stalled)),
        ("    answered 4xx (forged: refused, not stored)",
         sum(status is not None and 400 <= status < 500 for _, status in stalled)),
        ("    slowest answer, ms", round(max((s for s, _ in stalled), default=0.0) * 1000)),
        (f"    answered after {SLOW_ANSWER:g} s or not at all",
         sum(s > SLOW_ANSWER or status is None for s, status in stalled)),
        ("follow-up answers dripped, cut off, retried", tally.dripped),
        ("deliveries to the dripping hook (refunds)", drip.deliveries),
        ("  requests the dripping endpoint received", drip.requests),
        ("  attempts recorded", drip.attempts),
        ("    ended as timeouts", drip.timeouts),
        ("    longest, ms", round(drip.longest_ms)),
        ("  dead-lettered, retries used up", drip.states["dead"]),
        ("  retrying, next attempt scheduled", drip.states["retrying"]),
        ("  waiting, the hook failing or paused", drip.states["queued"] + drip.states["paused"]),
        ("  delivered", drip.states["delivered"]),
        ("log lines and Redis values searched", result.log_lines + result.redis_values),
        ("secrets found in them", len(result.secrets_found)),
    ]
    header = (f"payhooks chaos: {plan.callbacks} callbacks at {plan.rate:g}/s ({plan.seconds:.0f}"
              f" s), {plan.workers} workers; follow-ups {plan.error_rate:.0%} 5xx, "
              f"{plan.timeout_rate:.0%} timeouts and {plan.drip_rate:.0%} dripping; endpoint "
              f"down {tally.endpoint_down_s:.0f} s; hook timeout {plan.hook_timeout:g} s; "
              f"{seconds:.0f} s in all")
    return [header, *(f"{label:<48}{value:>10}" for label, value in rows)]


def _exit(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)


def run(plan: Plan, say: Callable[[str], None] = print) -> int:
    """Run the chaos test and print its counts; 0 when every count is as it must be."""
    rng = random.Random(plan.seed)
    signal.signal(signal.SIGTERM, _exit)  # stop everything started, as Ctrl-C does
    tally, begin = Tally(), time.monotonic()
    try:
        with contextlib.ExitStack() as stack:
            system = start(stack, plan)
            forged = round(plan.callbacks * plan.forged_share)
            kinds = [False] * plan.callbacks + [True] * forged
            rng.shuffle(kinds)
            items = [outgoing(system.admin, n, forged=kind) for n, kind in enumerate(kinds)]
            system.admin.faults("all", error_rate=plan.error_rate, timeout_rate=plan.timeout_rate,
                                timeout_seconds=12.0, drip_rate=plan.drip_rate)
            say(f"chaos: sending {len(items)} callbacks ({forged} forged) to {system.ingress};"
                f" logs in {system.directory}")
            done = threading.Event()
            chaos = threading.Thread(target=faults, name="faults", daemon=True, args=(
                system, stack, plan, rng, tally, done, say))
            chaos.start()
            asyncio.run(send_all(system.ingress, items, plan, rng, tally, system.admin))
            done.set()
            chaos.join()
            system.admin.faults("all", error_rate=0.0, timeout_rate=0.0, drip_rate=0.0)
            tally.dripped = sum(system.admin.stats()["dripped"].values())
            say("chaos: sent, faults over; waiting for the events")
            settle(system, items, plan, tally, say)
            result = account(system, items, plan.hook_timeout)
    except (ChaosError, redis.RedisError, httpx.HTTPError, OSError) as exc:
        print(f"chaos: {exc.__class__.__name__}: {exc}", file=sys.stderr)
        return 1
    print("\n".join(report(plan, tally, result, time.monotonic() - begin)))
    problems = result.problems(tally)
    print(f"result: {'; '.join(problems) or 'nothing lost, nothing doubled, nothing forged'}")
    if problems or plan.keep_logs:
        print(f"logs kept in {system.directory}")
    else:
        shutil.rmtree(system.directory, ignore_errors=True)
    return 1 if problems else 0
