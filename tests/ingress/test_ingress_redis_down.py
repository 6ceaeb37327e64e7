"""With Redis stopped every callback gets 503 and nothing is acknowledged; it recovers alone."""

from __future__ import annotations

import json
from typing import Any

import redis

from ingress.app import create_app
from shared.sandbox.redis_server import RedisServer
from tests.helpers import (
    IFTHENPAY_KEY,
    NETAXEPT_AUTH,
    PAYEX_BODIES,
    ixopay_body,
    ixopay_headers,
    make_settings,
    raw,
)


def requests() -> list[tuple[str, str, bytes, dict[str, str]]]:
    body = ixopay_body()
    uri = "/callbacks/shop-eu/ixopay"
    return [
        ("POST", uri, body, ixopay_headers(body, uri)),
        ("GET", f"/callbacks/shop-eu/ifthenpay?key={IFTHENPAY_KEY}&orderId=7&amount=1.00",
         b"", {}),
        ("POST", "/callbacks/shop-eu/netaxept", b'{"TransactionId":"down-1"}', NETAXEPT_AUTH),
        ("POST", "/callbacks/shop-eu/payex", json.dumps(PAYEX_BODIES["instrument"]).encode(),
         {"Content-Type": "application/json"}),
    ]


async def test_redis_down_means_503_for_every_provider_and_recovery_without_restart(
    aiohttp_client: Any,
) -> None:
    server = RedisServer(appendonly=True, appendfsync="always").start()
    try:
        client = await aiohttp_client(create_app(make_settings(server.url)))
        before = await client.post("/callbacks/shop-eu/netaxept", data=b'{"TransactionId":"up-1"}',
                                   headers=NETAXEPT_AUTH)
        assert before.status == 200

        server.stop()
        for method, path, body, headers in requests():
            response = await client.request(method, path, data=body, headers=headers)
            assert response.status == 503, path
        assert (await client.get("/readyz")).status == 503
        assert (await client.get("/healthz")).status == 200

        server.start()
        after = await client.post("/callbacks/shop-eu/netaxept", data=b'{"TransactionId":"up-2"}',
                                  headers=NETAXEPT_AUTH)
        assert after.status == 200
        assert (await client.get("/readyz")).status == 200

        stored = redis.Redis.from_url(server.url)
        job_ids = stored.lrange("rq:queue:callbacks", 0, -1)
        descriptions = [stored.hget(b"rq:job:" + raw(job_id), "description") for job_id in job_ids]
        stored.close()
        assert len(job_ids) == 2, descriptions  # the two acknowledged, none of the 503s
    finally:
        server.close()
