"""The admin API with real Redis, a real merchant endpoint on 127.0.0.1 and real RQ workers:
tokens and what each may see, the actions an operator takes after a hook broke, forms
that only the console's own pages can send, and no secret in any answer."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import redis
from aiohttp.test_utils import TestClient
from rq import Queue, SimpleWorker
from rq.serializers import JSONSerializer

from console.app import create_app
from shared.queue import DELIVERIES
from shared.sandbox.simulators.client import SimulatorClient
from shared.sandbox.simulators.merchant import Answer, MerchantEndpoint
from shared.settings import Settings, settings_from_dict
from tests.helpers import config_for, netaxept, secrets_in
from workers import runtime as runtimes
from workers.listing import recent_events
from workers.runtime import Runtime
from workers.tasks import process_callback

OPERATOR = "operator-token-for-the-console-tests-0001"
MERCHANT = "merchant-token-for-strict-eu-only-0000002"


def console_config(redis_url: str, sims_url: str, endpoint_url: str) -> dict[str, Any]:
    config = config_for(redis_url, sims_url, endpoint_url,
                        retry_schedule=["100s", "200s"], pause_after=1)
    config["console"] = {"tokens": {"alice": OPERATOR}}
    config["merchants"]["strict-eu"]["console_tokens"] = {"web": MERCHANT}
    return config




@pytest.fixture
def settings(worker_runtime: Runtime, endpoint: MerchantEndpoint, sims: Any
             ) -> Iterator[Settings]:
    settings = settings_from_dict(console_config(worker_runtime.settings.redis_url, sims.url,
                                                 endpoint.url), environ={})
    runtimes.install(Runtime(settings, worker_runtime.redis, worker_runtime.http))
    yield settings
    runtimes.install(worker_runtime)


@pytest.fixture
async def console(settings: Settings, aiohttp_client: Any) -> TestClient[Any, Any]:
    client: TestClient[Any, Any] = await aiohttp_client(create_app(settings))
    return client


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def deliver(client: redis.Redis) -> None:
    queue = Queue(DELIVERIES, connection=client, serializer=JSONSerializer)
    SimpleWorker([queue], connection=client, serializer=JSONSerializer).work(
        burst=True, with_scheduler=True)


async def test_every_call_needs_a_token_and_a_merchant_token_sees_its_merchant_only(
        console: TestClient[Any, Any], admin: SimulatorClient,
        redis_client: redis.Redis) -> None:
    process_callback(netaxept(admin, "c-1", authorized=True))
    [event] = recent_events(redis_client, "shop-eu")
    assert (await console.get("/api/overview")).status == 401
    assert (await console.get("/api/overview", headers=bearer("wrong" * 6))).status == 401
    page = await console.get("/events", allow_redirects=False)
    assert page.status == 303 and page.headers["Location"].startswith("/login?next=")

    seen = await (await console.get("/api/overview", headers=bearer(OPERATOR))).json()
    assert seen["queues"]["deliveries"]["waiting"] == 1  # to orders (refunds takes refunds)
    mine = bearer(MERCHANT)
    assert (await console.get(f"/api/events/{event.id}", headers=mine)).status == 404
    assert (await console.get("/api/events?merchant=shop-eu", headers=mine)).status == 400
    assert (await (await console.get("/api/events", headers=mine)).json())["events"] == []
    hooks = (await (await console.get("/api/hooks", headers=mine)).json())["hooks"]
    assert {h["merchant"] for h in hooks} == {"strict-eu"}
    resume = await console.post("/api/hooks/shop-eu/orders/resume", headers=mine)
    assert resume.status == 404
    merchant_view = await (await console.get("/api/overview", headers=mine)).json()
    assert merchant_view["queues"] == {} and merchant_view["workers"] is None
    found = await console.get("/api/events?order=nope&type=payment.bogus",
                              headers=bearer(OPERATOR))
    assert found.status == 400 and "matches no event type" in (await found.json())["error"]


async def test_an_operator_finds_a_payment_pauses_resumes_resends_and_tests_a_hook(
        console: TestClient[Any, Any], admin: SimulatorClient, endpoint: MerchantEndpoint,
        redis_client: redis.Redis) -> None:
    endpoint.script("/orders", default=Answer(500, body=b"upstream down"))
    process_callback(netaxept(admin, "c-2", authorized=True, captured=4200))
    deliver(redis_client)
    ops = bearer(OPERATOR)
    texts = []
    found = await console.get("/api/events?payment=c-2", headers=ops)
    texts.append(await found.text())
    events = (await found.json())["events"]
    assert sorted(e["type"] for e in events) == ["payment.authorized", "payment.captured"]
    stories = [await (await console.get(f"/api/events/{e['id']}", headers=ops)).json()
               for e in events]
    texts.append(str(stories))
    assert [e["data"]["sequence"] for e in stories[0]["story"]] == [1, 2]
    # the first delivery failed and paused the hook: the other stepped aside, unattempted
    [story] = [s for s in stories if s["deliveries"]["orders"]["attempts"]]
    [attempt] = story["deliveries"]["orders"]["attempts"]
    assert (attempt["status"], attempt["answer"]) == (500, "upstream down")
    assert story["callbacks"][0]["outcome"] == "recorded"

    hooks = {h["hook"]: h for h in (await (await console.get("/api/hooks", headers=ops))
                                    .json())["hooks"] if h["merchant"] == "shop-eu"}
    assert hooks["orders"]["state"].startswith("paused")
    endpoint.script("/orders", default=Answer(200))
    resumed = await console.post("/api/hooks/shop-eu/orders/resume", headers=ops)
    assert (await resumed.json())["due_now"] == 2  # the failed one and the one that waited
    deliver(redis_client)
    assert len(endpoint.requests_to("/orders")) == 3

    resent = await console.post(f"/api/events/{events[0]['id']}/resend", headers=ops,
                                json={"hook": "orders"})
    assert (await resent.json())["hooks"] == {"orders": "queued"}
    deliver(redis_client)
    assert [r.headers["webhook-id"] for r in endpoint.requests_to("/orders")].count(
        events[0]["id"]) == 2

    tested = await (await console.post("/api/hooks/shop-eu/orders/test", headers=ops,
                                       json={"type": "payment.refunded"})).json()
    assert tested["ok"] and tested["event_id"].startswith("evt_test_")
    assert endpoint.requests_to("/orders")[-1].headers["webhook-id"] == tested["event_id"]
    bad = await console.post("/api/hooks/shop-eu/orders/pause", headers=ops,
                             json={"for": "soon"})
    assert bad.status == 400
    for path in ("/api/overview", "/api/hooks", "/api/callbacks", "/"):
        texts.append(await (await console.get(path, headers=ops)).text())
    assert secrets_in("\n".join(texts)) == []


async def test_a_form_needs_the_sessions_token_and_comes_from_the_console(
        console: TestClient[Any, Any]) -> None:
    refused = await console.post("/login", data={"token": "no" * 20}, allow_redirects=False)
    assert refused.status == 401
    signed = await console.post("/login", data={"token": OPERATOR, "next": "/hooks"},
                                allow_redirects=False)
    assert signed.status == 303 and signed.headers["Location"] == "/hooks"
    cookie = signed.cookies["payhooks_console"]
    assert cookie["httponly"] and cookie["samesite"] == "Strict"
    page = await console.get("/hooks")
    html = await page.text()
    assert page.status == 200 and "shop-eu/orders" in html
    assert page.headers["Content-Security-Policy"].startswith("default-src 'none'")
    csrf = html.split('name="csrf" value="')[1].split('"')[0]
    without = await console.post("/api/hooks/shop-eu/orders/pause",
                                 data={"next": "/hooks"}, allow_redirects=False)
    assert without.status == 403
    elsewhere = await console.post("/api/hooks/shop-eu/orders/pause", allow_redirects=False,
                                   data={"csrf": csrf, "next": "/hooks"},
                                   headers={"Origin": "https://evil.example"})
    assert elsewhere.status == 403
    done = await console.post("/api/hooks/shop-eu/orders/pause", allow_redirects=False,
                              data={"csrf": csrf, "next": "//evil.example/x"})
    assert done.status == 303 and done.headers["Location"].startswith("/?done=")


HOSTILE_PATHS = [
    "/api/events/../../etc/passwd", "/api/events/%00", "/api/events/" + "e" * 5000,
    "/api/events?limit=-1", "/api/events?limit=abc", "/api/events?limit=99999999999999999999",
    "/api/events?since=yesterday", "/api/events?until=%ff%fe", "/api/events?type=[",
    "/api/events?provider=stripe", "/api/events?order=" + "%" * 300,
    "/api/callbacks?outcome=lost", "/api/callbacks/cb_%2e%2e", "/api/callbacks/" + "c" * 5000,
    "/api/hooks?merchant=nobody", "/api/hooks/../../x/resume", "/events?since=garbage",
    "/events/evt_<script>", "/callbacks/<script>alert(1)</script>", "/events?limit=0",
    "/events?event=x%0d%0aSet-Cookie:%20a=b", "/events?event=../../hooks",
]
HOSTILE_POSTS: list[tuple[str, dict[str, Any]]] = [
    ("/api/hooks/shop-eu/orders/pause", {"data": b"\xff\xfe{not json"}),
    ("/api/hooks/shop-eu/orders/pause", {"json": [1, 2, 3]}),
    ("/api/hooks/shop-eu/orders/pause", {"json": {"for": "9" * 400}}),
    ("/api/hooks/shop-eu/orders/test", {"json": {"type": "payment.nothing"}}),
    ("/api/hooks/nobody/none/resume", {}),
    ("/api/events/evt_nope/resend", {"json": {"hook": "orders"}}),
    ("/api/hooks/shop-eu/orders/pause", {"data": b"x" * (100 * 1024),
                                         "headers": {"Content-Type": "application/json"}}),
    ("/api/callbacks/cb_nope/retry", {}),
    ("/login", {"data": {"token": "\x00" * 30}}),
]


async def test_no_input_makes_the_console_answer_500(console: TestClient[Any, Any]) -> None:
    ops = bearer(OPERATOR)
    for path in HOSTILE_PATHS:
        got = await console.get(path, headers=ops, allow_redirects=False)
        assert got.status < 500, (path, got.status, await got.text())
        assert "<script>" not in await got.text(), path
    for path, options in HOSTILE_POSTS:
        headers = {**ops, **options.pop("headers", {})}
        got = await console.post(path, headers=headers, allow_redirects=False, **options)
        assert 400 <= got.status < 500, (path, options, got.status, await got.text())


async def test_a_hook_made_through_the_api_gets_the_next_event_signed_with_its_secret(
        console: TestClient[Any, Any], admin: SimulatorClient, endpoint: MerchantEndpoint,
        redis_client: redis.Redis) -> None:
    from standardwebhooks import Webhook

    ops = bearer(OPERATOR)
    made = await console.post("/api/hooks/shop-eu", headers=ops, json={
        "id": "crm", "url": f"{endpoint.url}/crm", "events": ["payment.captured"]})
    assert made.status == 201
    created = await made.json()
    secret = created["secret"]
    assert secret.startswith("whsec_") and secret not in str(created["hook"])
    listed = await (await console.get("/api/hooks?merchant=shop-eu", headers=ops)).text()
    assert '"hook":"crm"' in listed and secret not in listed

    process_callback(netaxept(admin, "c-9", authorized=True, captured=100))
    deliver(redis_client)
    [request] = endpoint.requests_to("/crm")  # the captured event only, as its filter says
    headers = {k.lower(): v for k, v in request.headers.items()}
    assert Webhook(secret).verify(request.body, headers)["type"] == "payment.captured"

    rotated = await (await console.post("/api/hooks/shop-eu/crm/rotate", headers=ops,
                                        json={"retire_after": "1h"})).json()
    assert rotated["secret"] != secret
    off = await console.patch("/api/hooks/shop-eu/crm", headers=ops, json={"enabled": False})
    assert (await off.json())["hook"]["enabled"] is False
    refused = await console.patch("/api/hooks/shop-eu/orders", headers=ops,
                                  json={"enabled": False})
    assert refused.status == 409  # a config file's hook is read-only here
    taken = await console.post("/api/hooks/shop-eu", headers=ops,
                               json={"id": "orders", "url": f"{endpoint.url}/x"})
    assert taken.status == 409
    bad = await console.post("/api/hooks/shop-eu", headers=ops,
                             json={"id": "x", "url": "not a url"})
    assert bad.status == 400 and "url" in (await bad.json())["error"]
    elsewhere = await console.post("/api/hooks/shop-eu", headers=bearer(MERCHANT),
                                   json={"id": "mine", "url": f"{endpoint.url}/m"})
    assert elsewhere.status == 404  # strict-eu's token, shop-eu's hooks
    gone = await console.delete("/api/hooks/shop-eu/crm", headers=ops)
    assert (await gone.json())["deleted"] == "shop-eu/crm"
    assert (await console.delete("/api/hooks/shop-eu/crm", headers=ops)).status == 404
