"""Slow clients, against the ingress as a process (`payhooks ingress`), read_timeout 1 s.

A client that sends its headers and then trickles its body (a byte every half second of
the 1000 its Content-Length promises) gets 408 once read_timeout has passed, then the
connection is closed; a client that trickles its headers, or sends nothing, is cut off
too. Nothing of theirs is stored. While fifty such clients hold connections, another
client's callbacks keep getting their 200 at once. The bounds asserted are generous (the
ingress answers in milliseconds): they tell "cut off by the timeout" from "never".
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass

import aiohttp
import pytest
import redis

from shared.sandbox.processes import stop
from shared.sandbox.redis_server import free_port
from tests.helpers import MERCHANT_CONFIG, ROOT, queued_callbacks, to_toml, wait_until_healthy

READ_TIMEOUT = 1.0
NETAXEPT = "/callbacks/open-shop/netaxept"  # no credentials: a whole body would be stored
BODY = b'{"TransactionId":"slow-1"}'.ljust(1000)  # valid JSON, padded with spaces
HEAD = (f"POST {NETAXEPT} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(BODY)}\r\n\r\n").encode()
BOUND = 10.0  # seconds: "promptly cut off", against read_timeout 1 s and minutes of trickling


@pytest.fixture(scope="module")
def ingress(redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    """`payhooks ingress` on a free port, with read_timeout 1 s; its port."""
    port, directory = free_port(), tmp_path_factory.mktemp("slow-clients")
    config = directory / "payhooks.toml"
    config.write_text(to_toml({"redis_url": redis_url, "ingress": {"read_timeout": "1s"},
                               "logging": {"format": "json"}, "merchants": MERCHANT_CONFIG}))
    log = directory / "ingress.log"
    with log.open("wb") as output:
        process = subprocess.Popen(
            [sys.executable, "-m", "shared.cli", "ingress", "--config", str(config), "--host",
             "127.0.0.1", "--port", str(port)],
            stdout=output, stderr=subprocess.STDOUT, cwd=ROOT,
            env={**os.environ, "PAYHOOKS_REDIS_URL": redis_url})
    try:
        wait_until_healthy(port, process, log)
        yield port
    finally:
        stop(process, timeout=20)




@dataclass
class Cut:
    """What a slow client got: the ingress's answer (empty: closed without one), after how
    long it came and the connection was closed, and how much of its trickle it sent."""

    answer: bytes
    answered_after: float
    closed_after: float
    sent: int

    @property
    def status(self) -> bytes:
        return self.answer.partition(b"\r\n")[0]


async def trickle(port: int, at_once: bytes, slowly: bytes,
                  ready: asyncio.Event | None = None) -> Cut:
    """Send `at_once`, then `slowly` a byte every half second, until the ingress answers or
    closes the connection; then read until it closes."""
    loop = asyncio.get_running_loop()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    started = loop.time()
    writer.write(at_once)
    await writer.drain()
    if ready is not None:
        ready.set()
    first = asyncio.ensure_future(_read(reader))
    sent = 0
    try:
        while sent < len(slowly) and not (await asyncio.wait({first}, timeout=0.5))[0]:
            writer.write(slowly[sent:sent + 1])
            sent += 1
        answer = await asyncio.wait_for(first, timeout=BOUND)
        answered_after = loop.time() - started
        while answer and (more := await asyncio.wait_for(_read(reader), timeout=BOUND)):
            answer += more
        return Cut(answer, answered_after, loop.time() - started, sent)
    finally:
        writer.close()


async def _read(reader: asyncio.StreamReader) -> bytes:
    """The next bytes; empty once the connection is closed, or reset."""
    try:
        return await reader.read(4096)
    except ConnectionError:
        return b""


async def test_a_trickled_body_gets_408_after_read_timeout_then_the_connection_closes(
    ingress: int, redis_client: redis.Redis
) -> None:
    cut = await trickle(ingress, HEAD, BODY)
    assert cut.status == b"HTTP/1.1 408 Request Timeout"
    assert b"Connection: close" in cut.answer
    assert READ_TIMEOUT * 0.9 <= cut.answered_after < BOUND
    assert cut.closed_after < BOUND
    assert cut.sent < len(BODY)
    assert redis_client.llen("rq:queue:callbacks") == 0


@pytest.mark.parametrize(
    ("at_once", "slowly"),
    [(HEAD[:len(HEAD) // 2], HEAD[len(HEAD) // 2:] + BODY), (b"", HEAD + BODY), (b"", b"")],
    ids=["half the headers, then the rest slowly", "everything slowly", "nothing"],
)
async def test_a_client_slow_with_its_headers_is_cut_off_after_read_timeout(
    ingress: int, redis_client: redis.Redis, at_once: bytes, slowly: bytes
) -> None:
    cut = await trickle(ingress, at_once, slowly)
    assert cut.answer == b""  # closed: there is no request to answer
    assert READ_TIMEOUT * 0.9 <= cut.closed_after < BOUND
    assert redis_client.llen("rq:queue:callbacks") == 0


async def test_fifty_slow_clients_do_not_hold_up_the_callbacks_of_another(
    ingress: int, redis_client: redis.Redis
) -> None:
    ready = [asyncio.Event() for _ in range(50)]
    slow = [asyncio.ensure_future(trickle(ingress, HEAD, BODY, ready[n])) for n in range(25)]
    slow += [asyncio.ensure_future(trickle(ingress, HEAD[:40], HEAD[40:] + BODY, ready[n]))
             for n in range(25, 50)]
    await asyncio.wait_for(asyncio.gather(*(event.wait() for event in ready)), timeout=BOUND)

    loop = asyncio.get_running_loop()
    answers: list[tuple[int, float, int]] = []  # status, seconds, slow clients still held
    connector = aiohttp.TCPConnector(force_close=True)  # a connection each, as providers do
    async with aiohttp.ClientSession(f"http://127.0.0.1:{ingress}", connector=connector) as http:
        while not all(client.done() for client in slow) and len(answers) < 200:
            body = json.dumps({"TransactionId": f"prompt-{len(answers)}"})
            started = loop.time()
            async with http.post(NETAXEPT, data=body) as response:
                answers.append((response.status, loop.time() - started,
                                sum(not client.done() for client in slow)))
            await asyncio.sleep(0.05)  # a steady trickle of callbacks, until the slow are gone
    cuts = await asyncio.gather(*slow)

    assert [status for status, _, _ in answers] == [200] * len(answers)
    assert max(seconds for _, seconds, _ in answers) < 2.0
    assert answers[0][2] == 50  # answered while all fifty held their connections
    assert [cut.status for cut in cuts] == [b"HTTP/1.1 408 Request Timeout"] * 25 + [b""] * 25
    assert [c.reference for c in queued_callbacks(redis_client)] == [
        f"prompt-{n}" for n in range(len(answers))]
