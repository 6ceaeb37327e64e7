"""The ingress through a real aiohttp server and a real Redis: every route and status code."""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import json
import zlib
from typing import Any

import pytest
import redis
from aiohttp.test_utils import TestClient

from ingress import keys as app_keys
from ingress.app import create_app
from shared.settings import Settings
from tests.helpers import (
    IFTHENPAY_KEY,
    IXOPAY_SECRET,
    NETAXEPT_AUTH,
    PAYEX_BODIES,
    SECRETS,
    basic,
    ixopay_body,
    ixopay_headers,
    make_settings,
    queued_callbacks,
    raw,
)

Client = TestClient[Any, Any]
IXOPAY = "/callbacks/shop-eu/ixopay"
IFTHENPAY = "/callbacks/shop-eu/ifthenpay"
NETAXEPT = "/callbacks/shop-eu/netaxept"
PAYEX = "/callbacks/shop-eu/payex"
IFTHENPAY_QUERY = (f"?key={IFTHENPAY_KEY}&orderId=1887&amount=33.61"
                   "&requestId=i2szvoUfPYBMWdSxqO3n&payment_datetime=03-01-2024%2015:15:16")


async def test_ixopay_callback_is_stored_byte_exact_then_answered_ok(
    client: Client, redis_client: redis.Redis
) -> None:
    body = ixopay_body() + b"\n"  # a trailing newline is part of what was signed
    uri = f"{IXOPAY}?orderId=77&x=%20y"
    response = await client.post(uri, data=body, headers=ixopay_headers(body, uri))
    assert response.status == 200
    assert response.content_type == "text/plain"
    assert await response.text() == "OK"
    [callback] = queued_callbacks(redis_client)
    assert callback.body == body
    assert (callback.merchant, callback.provider, callback.method) == ("shop-eu", "ixopay", "POST")
    assert callback.uri == uri
    assert callback.headers["x-signature"] == ixopay_headers(body, uri)["X-Signature"]
    assert callback.reference == json.loads(body)["uuid"]
    assert callback.source == "127.0.0.1"


async def test_ixopay_md5_variant_is_accepted(client: Client, redis_client: redis.Redis) -> None:
    body = ixopay_body()
    response = await client.post(IXOPAY, data=body,
                                 headers=ixopay_headers(body, IXOPAY, body_hash="md5"))
    assert response.status == 200
    assert len(queued_callbacks(redis_client)) == 1


@pytest.mark.parametrize("case", ["forged", "tampered", "unsigned", "other uri"])
async def test_ixopay_bad_signatures_get_401_and_nothing_is_stored(
    client: Client, redis_client: redis.Redis, case: str
) -> None:
    body = ixopay_body()
    headers = ixopay_headers(body, IXOPAY, secret="guessed" if case == "forged" else IXOPAY_SECRET)
    if case == "tampered":
        body = body.replace(b"9.99", b"0.01")
    if case == "unsigned":
        del headers["X-Signature"]
    uri = IXOPAY + ("?orderId=1" if case == "other uri" else "")
    response = await client.post(uri, data=body, headers=headers)
    assert response.status == 401
    assert await response.text() == "unauthorized"
    assert queued_callbacks(redis_client) == []


async def test_ifthenpay_callback_is_stored_without_its_key(
    client: Client, redis_client: redis.Redis
) -> None:
    response = await client.get(IFTHENPAY + IFTHENPAY_QUERY)
    assert response.status == 200
    [callback] = queued_callbacks(redis_client)
    assert callback.reference == "i2szvoUfPYBMWdSxqO3n"
    assert IFTHENPAY_KEY not in callback.model_dump_json()
    assert callback.uri == IFTHENPAY + IFTHENPAY_QUERY.replace(IFTHENPAY_KEY, "redacted")


@pytest.mark.parametrize(
    ("query", "status"),
    [(IFTHENPAY_QUERY.replace(IFTHENPAY_KEY, "forged-key-value"), 401),
     (IFTHENPAY_QUERY.replace(f"key={IFTHENPAY_KEY}&", ""), 401)],
    ids=["forged", "unsigned"],
)
async def test_ifthenpay_bad_callbacks_are_refused(
    client: Client, redis_client: redis.Redis, query: str, status: int
) -> None:
    response = await client.get(IFTHENPAY + query)
    assert response.status == status
    assert queued_callbacks(redis_client) == []


async def test_netaxept_callback_with_credentials_is_stored_without_them(
    client: Client, redis_client: redis.Redis
) -> None:
    body = b'{"TransactionId":"24ec55519f34457ea42f4c5251d7ec45"}'
    response = await client.post(NETAXEPT, data=body, headers=NETAXEPT_AUTH)
    assert response.status == 200
    [callback] = queued_callbacks(redis_client)
    assert callback.reference == "24ec55519f34457ea42f4c5251d7ec45"
    assert "authorization" not in callback.headers


@pytest.mark.parametrize(
    ("headers", "body", "status"),
    [({"Authorization": basic("netaxept-callback", "guess")}, b'{"TransactionId":"abc"}', 401),
     ({}, b'{"TransactionId":"abc"}', 401)],
    ids=["forged", "unsigned"],
)
async def test_netaxept_bad_callbacks_are_refused(
    client: Client, redis_client: redis.Redis, headers: dict[str, str], body: bytes, status: int
) -> None:
    response = await client.post(NETAXEPT, data=body, headers=headers)
    assert response.status == status
    assert queued_callbacks(redis_client) == []


@pytest.mark.parametrize(
    ("path", "headers", "body"),
    [(IFTHENPAY + IFTHENPAY_QUERY.replace("33.61", "33,61"), {}, b""),
     (NETAXEPT, NETAXEPT_AUTH, b'{"TransactionId":"abc/../../x"}')],
    ids=["ifthenpay amount with a comma", "netaxept id with slashes"],
)
async def test_proven_callbacks_we_cannot_read_are_stored_not_refused(
    client: Client, redis_client: redis.Redis, path: str, headers: dict[str, str], body: bytes
) -> None:
    """The key or credentials prove the provider sent it: 200 and stored (the worker records
    it as unsupported). Without the proof, the same content is refused with 400."""
    method = "GET" if "ifthenpay" in path else "POST"
    response = await client.request(method, path, data=body, headers=headers)
    assert response.status == 200
    [callback] = queued_callbacks(redis_client)
    assert callback.reference == "unreadable"
    assert IFTHENPAY_KEY not in callback.model_dump_json()
    if method == "POST":
        open_shop = path.replace("shop-eu", "open-shop")
        assert (await client.post(open_shop, data=body)).status == 400
        assert len(queued_callbacks(redis_client)) == 1


@pytest.mark.parametrize("shape", PAYEX_BODIES)
async def test_payex_callbacks_of_each_shape_are_stored(
    client: Client, redis_client: redis.Redis, shape: str
) -> None:
    body = json.dumps(PAYEX_BODIES[shape]).encode()
    response = await client.post(PAYEX, data=body, headers={"Content-Type": "application/json"})
    assert response.status == 200
    [callback] = queued_callbacks(redis_client)
    assert callback.body == body


@pytest.mark.parametrize(
    "body",
    [{"payment": {"id": "https://evil.example/psp/creditcard/payments/x"}},
     {"payment": {"id": "//evil.example/psp/creditcard/payments/x"}}, {}],
    ids=["forged absolute url", "tampered host", "unsigned empty"],
)
async def test_payex_bodies_that_could_redirect_a_worker_get_400(
    client: Client, redis_client: redis.Redis, body: dict[str, Any]
) -> None:
    response = await client.post(PAYEX, json=body)
    assert response.status == 400
    assert queued_callbacks(redis_client) == []


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [("POST", "/callbacks/no-such-shop/ixopay", 404),
     ("POST", "/callbacks/open-shop/ixopay", 404),
     ("GET", "/callbacks/shop-eu/nosuchprovider", 404),
     ("GET", IXOPAY, 405), ("POST", IFTHENPAY, 405), ("PUT", NETAXEPT, 405),
     ("HEAD", IFTHENPAY + IFTHENPAY_QUERY, 405), ("GET", PAYEX, 405)],
)
async def test_routing_answers(
    client: Client, redis_client: redis.Redis, method: str, path: str, status: int
) -> None:
    response = await client.request(method, path, data=b"{}")
    assert response.status == status
    assert queued_callbacks(redis_client) == []


async def test_netaxept_without_configured_credentials_needs_none(
    client: Client, redis_client: redis.Redis
) -> None:
    response = await client.post("/callbacks/open-shop/netaxept", json={"TransactionId": "abc"})
    assert response.status == 200


async def test_allowed_ips_gives_403_to_other_sources(
    client: Client, redis_client: redis.Redis
) -> None:
    refused = await client.post("/callbacks/walled-shop/payex", json=PAYEX_BODIES["instrument"])
    assert refused.status == 403
    allowed = await client.post("/callbacks/walled-shop/netaxept", json={"TransactionId": "a"})
    assert allowed.status == 200
    assert len(queued_callbacks(redis_client)) == 1


async def test_a_body_over_max_body_bytes_gets_413(
    client: Client, redis_client: redis.Redis
) -> None:
    body = b'{"TransactionId":"abc","pad":"' + b"x" * 70000 + b'"}'
    response = await client.post(NETAXEPT, data=body, headers=NETAXEPT_AUTH)
    assert response.status == 413

    async def trickle() -> Any:
        for _ in range(70):
            yield b"x" * 1024

    chunked = await client.post(NETAXEPT, data=trickle(), headers=NETAXEPT_AUTH)
    assert chunked.status == 413
    assert queued_callbacks(redis_client) == []


async def test_a_trusted_proxy_supplies_the_original_uri_and_client_address(
    redis_url: str, redis_client: redis.Redis, aiohttp_client: Any
) -> None:
    settings = make_settings(redis_url, ingress={"trusted_proxies": ["127.0.0.0/8"]})
    client = await aiohttp_client(create_app(settings))
    body = ixopay_body()
    original = "/shop/payhooks/callbacks/shop-eu/ixopay?orderId=9"
    headers = ixopay_headers(body, original) | {
        "X-Original-URI": original, "X-Forwarded-For": "198.51.100.7, 10.0.0.2"}
    response = await client.post(IXOPAY, data=body, headers=headers)
    assert response.status == 200
    [callback] = queued_callbacks(redis_client)
    assert (callback.uri, callback.source) == (original, "10.0.0.2")


async def test_an_untrusted_peer_cannot_supply_the_uri(
    client: Client, redis_client: redis.Redis
) -> None:
    body = ixopay_body()
    original = "/elsewhere"
    headers = ixopay_headers(body, original) | {"X-Original-URI": original}
    response = await client.post(IXOPAY, data=body, headers=headers)
    assert response.status == 401


async def test_health_readiness_and_metrics(client: Client, redis_client: redis.Redis) -> None:
    assert (await client.get("/healthz")).status == 200
    assert (await client.get("/readyz")).status == 200
    await client.get(IFTHENPAY + IFTHENPAY_QUERY)
    await client.get(IFTHENPAY + IFTHENPAY_QUERY.replace(IFTHENPAY_KEY, "forged-key-value"))
    metrics = await (await client.get("/metrics")).text()
    assert ('payhooks_callbacks_total{merchant="shop-eu",outcome="accepted",'
            'provider="ifthenpay"} 1.0') in metrics
    assert ('payhooks_callbacks_total{merchant="shop-eu",outcome="unauthorized",'
            'provider="ifthenpay"} 1.0') in metrics
    assert 'payhooks_queue_depth{queue="callbacks"} 1.0' in metrics
    assert 'payhooks_ack_seconds_count{provider="ifthenpay"} 1.0' in metrics


async def test_many_concurrent_callbacks_each_get_their_own_job(
    client: Client, redis_client: redis.Redis
) -> None:
    import asyncio

    async def send(n: int) -> int:
        body = json.dumps({"TransactionId": f"tx-{n}"}).encode()
        return (await client.post(NETAXEPT, data=body, headers=NETAXEPT_AUTH)).status

    statuses = await asyncio.gather(*(send(n) for n in range(300)))
    assert statuses == [200] * 300
    references = sorted(c.reference for c in queued_callbacks(redis_client))
    assert references == sorted(f"tx-{n}" for n in range(300))


async def test_no_secret_reaches_the_queue(client: Client, redis_client: redis.Redis) -> None:
    body = ixopay_body()
    await client.post(IXOPAY, data=body, headers=ixopay_headers(body, IXOPAY))
    await client.get(IFTHENPAY + IFTHENPAY_QUERY)
    await client.post(NETAXEPT, data=b'{"TransactionId":"a"}', headers=NETAXEPT_AUTH)
    dump = b"".join(
        raw(value) for key in redis_client.keys("*") if redis_client.type(key) == b"hash"
        for value in redis_client.hgetall(key).values()
    )
    stored = json.dumps([c.model_dump(mode="json") for c in queued_callbacks(redis_client)])
    assert len(queued_callbacks(redis_client)) == 3
    for secret in SECRETS:
        assert secret not in stored
        assert secret.encode() not in dump


def test_settings_fixture_builds_every_provider(settings: Settings) -> None:
    assert list(settings.merchants["shop-eu"].providers()) == [
        "ixopay", "ifthenpay", "netaxept", "payex"]


async def test_a_job_store_flusher_that_died_is_started_again(
    client: Client, redis_client: redis.Redis
) -> None:
    """The ingress's one Redis writer: had it ever ended, every later callback would have
    waited forever, with /readyz at 200."""
    store = client.app[app_keys.STORE]
    task = store._task
    assert task is not None
    task.cancel()  # as if it had died of an error nobody expected
    with contextlib.suppress(asyncio.CancelledError):
        await task
    body = ixopay_body()
    async with asyncio.timeout(10):  # it waited forever
        response = await client.post(IXOPAY, data=body, headers=ixopay_headers(body, IXOPAY))
    assert response.status == 200
    assert len(queued_callbacks(redis_client)) == 1


@pytest.mark.parametrize("encoding", ["gzip", "deflate", "x-gzip"])
async def test_a_compressed_callback_is_inflated_and_a_bomb_stops_at_the_limit(
    client: Client, redis_client: redis.Redis, encoding: str
) -> None:
    """aiohttp inflated a whole 64 KB gzip bomb (64 MiB) before its size check; we stop
    inflating at max_body_bytes."""
    def compress(data: bytes) -> bytes:
        return gzip.compress(data) if "gzip" in encoding else zlib.compress(data)

    body = ixopay_body()
    headers = {**ixopay_headers(body, IXOPAY), "Content-Encoding": encoding}
    response = await client.post(IXOPAY, data=compress(body), headers=headers)
    assert response.status == 200
    [callback] = queued_callbacks(redis_client)
    assert callback.body == body
    bomb = compress(b"\0" * (64 * 1024 * 1024))
    assert len(bomb) < 65536  # it passes the size check as sent
    response = await client.post(IXOPAY, data=bomb, headers=headers)
    assert (response.status, await response.text()) == (413, "body too large")
    assert len(queued_callbacks(redis_client)) == 1


@pytest.mark.parametrize("encoding", ["br", "compress", "zstd", "gzip;q=1"])
async def test_an_encoding_no_provider_uses_is_refused(
    client: Client, redis_client: redis.Redis, encoding: str
) -> None:
    body = ixopay_body()
    headers = {**ixopay_headers(body, IXOPAY), "Content-Encoding": encoding}
    response = await client.post(IXOPAY, data=body, headers=headers)
    assert response.status == 400
    assert "is not one payhooks reads" in await response.text()
    assert queued_callbacks(redis_client) == []
