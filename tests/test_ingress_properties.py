"""Property-based bad input on every route: only 4xx answers, and nothing is ever enqueued.

The ingress runs on a real port in a thread; requests go out over raw HTTP/1.1
(http.client) so that methods, headers, query strings and bodies can be anything a broken
or hostile client could send. No generated request carries a valid signature, key or
credential, or a well-formed body where credentials are given, so every one is bad input.
Profiles: `ci` (default, 150 examples a test) and `long` (HYPOTHESIS_PROFILE=long, 2,500
a test, over 10,000 in all).
"""

from __future__ import annotations

import asyncio
import http.client
import json
import os
import threading
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

import pytest
import redis
from aiohttp import web
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ingress.app import create_app
from shared.providers.netaxept import TRANSACTION_ID
from shared.redis_server import free_port
from tests.conftest import make_settings
from tests.helpers import NETAXEPT_AUTH, ORDER, PAYMENT

settings.register_profile("ci", max_examples=150, deadline=None,
                          suppress_health_check=[HealthCheck.function_scoped_fixture])
settings.register_profile("long", max_examples=2500, deadline=None,
                          suppress_health_check=[HealthCheck.function_scoped_fixture])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


@pytest.fixture(scope="module")
def ingress_port(redis_url: str) -> Iterator[int]:
    port = free_port()
    loop = asyncio.new_event_loop()
    runner = web.AppRunner(create_app(make_settings(redis_url)), access_log=None)
    loop.run_until_complete(runner.setup())
    loop.run_until_complete(web.TCPSite(runner, "127.0.0.1", port).start())
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    yield port
    asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(timeout=10)
    loop.call_soon_threadsafe(loop.stop)
    thread.join(timeout=10)


@pytest.fixture(scope="module")
def queue(redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url)
    client.flushdb()
    yield client
    client.flushdb()
    client.close()


def send(port: int, method: str, target: str, headers: dict[str, str], body: bytes) -> int:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        connection.putrequest(method, target, skip_accept_encoding=True)
        for name, value in headers.items():
            connection.putheader(name, value)
        connection.putheader("Content-Length", str(len(body)))
        connection.endheaders(body)
        return connection.getresponse().status
    finally:
        connection.close()


def assert_refused(port: int, queue: redis.Redis, method: str, target: str,
                   headers: dict[str, str], body: bytes) -> None:
    status = send(port, method, target, headers, body)
    assert 400 <= status < 500, (status, method, target)
    assert queue.llen("rq:queue:callbacks") == 0


header_text = st.text(st.characters(min_codepoint=32, max_codepoint=255), max_size=80).map(
    str.strip)
header_name = st.sampled_from(["X-Signature", "Date", "X-Date", "Authorization", "Content-Type",
                               "X-Authorization", "X-Original-URI", "X-Forwarded-For",
                               "Transfer-Encoding-X", "X-Junk"])
headers = st.dictionaries(header_name, header_text, max_size=5)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=40),
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.text(max_size=12), children, max_size=4),
    max_leaves=12,
)
bodies = st.one_of(
    st.binary(max_size=512),
    json_values.map(lambda v: json.dumps(v).encode()),
    st.just(b"\xef\xbb\xbf{}"),
    st.just(b"{" * 5000),
    st.integers(0, 200_000).map(lambda n: b"x" * n),
)
routes = st.sampled_from(["ixopay", "ifthenpay", "netaxept", "payex"])
merchants = st.sampled_from(["shop-eu", "open-shop", "walled-shop", "nobody", "SHOP-EU", "a%2Fb"])
methods = st.sampled_from(["GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"])
query = st.lists(
    st.tuples(st.sampled_from(["key", "apk", "orderId", "amount", "requestId", "status", "id",
                               "chave", "valor", "payment_datetime", "x"]),
              st.text(max_size=30)),
    max_size=6,
).map(lambda pairs: "&".join(f"{quote(k)}={quote(v)}" for k, v in pairs))


@given(route=routes, merchant=merchants, method=methods, query=query, headers=headers,
       body=bodies)
def test_anything_without_valid_credentials_is_refused_with_4xx(
    ingress_port: int, queue: redis.Redis, route: str, merchant: str, method: str, query: str,
    headers: dict[str, str], body: bytes,
) -> None:
    if merchant == "open-shop" and route == "netaxept":
        merchant = "nobody"  # needs no credentials; see the test of its bodies below
    target = f"/callbacks/{merchant}/{route}" + (f"?{query}" if query else "")
    assert_refused(ingress_port, queue, method, target, headers, body)


transaction_ids = st.one_of(
    st.text(max_size=80).filter(lambda s: not TRANSACTION_ID.fullmatch(s)),
    st.integers(), st.none(), st.lists(st.text(max_size=3), max_size=2),
    st.text(min_size=65, max_size=100, alphabet="abc"),
)


@given(transaction_id=transaction_ids, extra=st.dictionaries(st.text(max_size=8), json_values,
                                                              max_size=3))
def test_netaxept_with_credentials_but_no_well_formed_id_is_400(
    ingress_port: int, queue: redis.Redis, transaction_id: Any, extra: dict[str, Any]
) -> None:
    body = json.dumps({**extra, "TransactionId": transaction_id}).encode()
    assert_refused(ingress_port, queue, "POST", "/callbacks/open-shop/netaxept", NETAXEPT_AUTH,
                   body)


_tricks = ["https://evil.example", "//evil.example", "/..", "/%2e%2e", "%2F", "\\", "?x=1", "#",
           "/psp/../", " ", "\n", "\u2215", "@evil.example", "http:"]
bad_paths = st.one_of(
    st.text(max_size=120),
    st.tuples(st.sampled_from([PAYMENT, ORDER]), st.sampled_from(_tricks),
              st.booleans()).map(lambda t: t[0] + t[1] if t[2] else t[1] + t[0]),
)


@given(path=bad_paths, shape=st.sampled_from(["payment", "paymentOrder", "transaction"]))
def test_payex_paths_of_any_other_form_are_400(
    ingress_port: int, queue: redis.Redis, path: str, shape: str
) -> None:
    body = json.dumps({shape: {"id": path, "number": 1}}).encode()
    assert_refused(ingress_port, queue, "POST", "/callbacks/shop-eu/payex",
                   {"Content-Type": "application/json"}, body)
