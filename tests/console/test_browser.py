"""The console in a real browser: Debian's Chromium driven by Playwright, against the real
stack: the ingress and the console as processes, a callback sent through the ingress, real
RQ workers, the provider simulators and a merchant endpoint on 127.0.0.1.

An operator finds the payment by its order id, sees the failed attempt, resumes the hook
that paused and resends the event from the pages; a merchant's token sees its merchant
only; no page holds a secret. With PAYHOOKS_SCREENSHOTS=DIR the main pages are saved there
(docs/console-*.png were made so)."""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
from rq import Queue, SimpleWorker
from rq.serializers import JSONSerializer

from shared.queue import CALLBACKS, DELIVERIES
from shared.sandbox.redis_server import free_port
from shared.sandbox.simulate import simulate
from shared.sandbox.simulators.merchant import Answer, MerchantEndpoint
from shared.settings import Settings, settings_from_dict
from tests.console.test_api import MERCHANT, OPERATOR, console_config
from tests.helpers import ROOT, http_answers, secrets_in, to_toml, wait_until
from workers import runtime as runtimes
from workers.listing import recent_events
from workers.runtime import Runtime

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
if CHROMIUM is None:
    if os.environ.get("CI"):  # .ci/test installs it: missing there is a failure
        raise RuntimeError("chromium is not installed (apt-get install chromium)")
    pytest.skip("chromium is not installed (apt-get install chromium)",
                allow_module_level=True)
sync_api = pytest.importorskip("playwright.sync_api")




@pytest.fixture
def stack(worker_runtime: Runtime, endpoint: MerchantEndpoint, sims: Any, tmp_path: Path
          ) -> Iterator[tuple[Settings, str, str]]:
    """The ingress and the console as processes on one configuration; the settings, the
    ingress's URL and the console's."""
    config = console_config(worker_runtime.settings.redis_url, sims.url, endpoint.url)
    path = tmp_path / "payhooks.toml"
    path.write_text(to_toml(config))
    settings = settings_from_dict(config, environ={})
    runtimes.install(Runtime(settings, worker_runtime.redis, worker_runtime.http))
    ports = {"ingress": free_port(), "console": free_port()}
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    logs = tmp_path / "processes.log"
    with logs.open("w") as out:
        processes = [subprocess.Popen([sys.executable, "-m", "shared.cli", name, "--config",
                                       str(path), "--port", str(port)], env=env, stdout=out,
                                      stderr=subprocess.STDOUT)
                     for name, port in ports.items()]
    try:
        for port in ports.values():
            url = f"http://127.0.0.1:{port}/healthz"
            wait_until(functools.partial(http_answers, url), 30,
                       lambda: logs.read_text()[-2000:])
        yield (settings, f"http://127.0.0.1:{ports['ingress']}",
               f"http://127.0.0.1:{ports['console']}")
    finally:
        for process in processes:
            process.terminate()
            process.wait(timeout=20)
        runtimes.install(worker_runtime)
        assert secrets_in(logs.read_text()) == []
        assert OPERATOR not in logs.read_text() and MERCHANT not in logs.read_text()


def work(client: redis.Redis) -> None:
    """A real worker on both queues, with RQ's scheduler, until nothing is due."""
    queues = [Queue(name, connection=client, serializer=JSONSerializer)
              for name in (CALLBACKS, DELIVERIES)]
    SimpleWorker(queues, connection=client, serializer=JSONSerializer).work(
        burst=True, with_scheduler=True)


@pytest.fixture
def browser() -> Iterator[Any]:
    with sync_api.sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=CHROMIUM,
                                              args=["--no-sandbox", "--disable-gpu"])
        try:
            yield launched
        finally:
            launched.close()


class Pages:
    """One signed-in browser context, keeping every page's HTML to search for secrets."""

    def __init__(self, browser: Any, base: str, token: str) -> None:
        self.base = base
        self.page = browser.new_context(viewport={"width": 1280, "height": 800}).new_page()
        self.seen: list[str] = []
        self.open("/login")
        self.page.fill("input[name=token]", token)
        self.page.click("button[type=submit]")
        self.keep()

    def open(self, path: str) -> Any:
        answer = self.page.goto(self.base + path)
        self.keep()
        return answer

    def keep(self) -> None:
        self.page.wait_for_load_state()
        self.seen.append(self.page.content())

    def shot(self, name: str) -> None:
        folder = os.environ.get("PAYHOOKS_SCREENSHOTS")
        if folder:
            self.page.screenshot(path=str(Path(folder) / f"console-{name}.png"), full_page=True)


def test_an_operator_follows_a_payment_and_mends_its_hook_in_the_pages(
        stack: tuple[Settings, str, str], browser: Any, endpoint: MerchantEndpoint,
        redis_client: redis.Redis) -> None:
    settings, ingress, console = stack
    endpoint.script("/orders", default=Answer(503, body=b"maintenance"))
    made = httpx.post(f"{console}/api/hooks/shop-eu", timeout=10,
                      headers={"Authorization": f"Bearer {OPERATOR}"},
                      json={"id": "crm", "url": f"{endpoint.url}/crm"})
    assert made.status_code == 201  # a hook made through the API, while workers run
    sims = str(settings.merchants["shop-eu"].netaxept.base_url)  # type: ignore[union-attr]
    assert simulate("netaxept", merchant="shop-eu", ingress=ingress, simulators=sims,
                    settings=settings) == 0
    work(redis_client)
    events = recent_events(redis_client, "shop-eu")
    order = events[0].data.order_id
    assert order is not None and len(events) == 2  # authorized, captured
    crm = [r.headers["webhook-id"] for r in endpoint.requests_to("/crm")]
    assert sorted(crm) == sorted(e.id for e in events)  # it got them, no restart needed

    ops = Pages(browser, console, OPERATOR)
    assert "Overview" in ops.page.title()
    ops.shot("overview")
    ops.open("/events")
    ops.page.fill("input[name=order]", order)
    ops.page.click("text=Search")
    ops.keep()
    rows = ops.page.locator("table tr")
    assert rows.count() == 3  # the header and the payment's two events
    ops.shot("events")
    ops.page.click(f"a[href='/events/{events[-1].id}']")  # the first: authorized
    ops.keep()
    body = ops.page.inner_text("main")
    assert "The payment's story" in body and "payment.captured" in body
    assert "503" in body and "maintenance" in body  # the attempt, with its answer
    ops.shot("event")

    ops.open("/hooks")
    assert "paused" in ops.page.inner_text("main") and "shop-eu/crm" in ops.page.content()
    ops.shot("hooks")
    endpoint.script("/orders", default=Answer(200))
    ops.page.click("text=Resume")  # the only paused hook: shop-eu/orders
    ops.keep()
    assert "Done: resumed shop-eu/orders" in ops.page.inner_text("main")
    work(redis_client)
    delivered = [r.headers["webhook-id"] for r in endpoint.requests_to("/orders")]
    assert sorted(set(delivered)) == sorted(e.id for e in events)

    ops.open(f"/events/{events[0].id}")
    ops.page.click("text=Resend to every hook")
    ops.keep()
    assert "queued" in ops.page.inner_text("main")
    work(redis_client)
    again = [r.headers["webhook-id"] for r in endpoint.requests_to("/orders")]
    assert again.count(events[0].id) == delivered.count(events[0].id) + 1

    shop = Pages(browser, console, MERCHANT)  # strict-eu's token
    answer = shop.open(f"/events/{events[0].id}")
    assert answer.status == 404
    shop.open("/events")
    assert "No event matches" in shop.page.inner_text("main")
    shop.open("/hooks")
    assert "strict-eu/all" in shop.page.inner_text("main")
    assert "shop-eu" not in shop.page.inner_text("main")

    html = "\n".join(ops.seen + shop.seen)
    assert secrets_in(html) == []
    assert OPERATOR not in html and MERCHANT not in html
