"""A merchant's webhook endpoint: records every request it receives and answers as scripted.

The tests and benchmarks deliver to it; `payhooks dev` runs it as the sample endpoint that
prints each event. Any path works. By default every request gets 200; `script(path, ...)`
queues answers for a path (status, headers, a delay before answering, a drip), used in
order and then the path's default. An answer with `drip` set sends its status and headers
at once, then its body a byte every `drip` seconds, never ending within any sane timeout
(shared/sandbox/simulators/drip.py): a hook that only a deadline on the whole attempt cuts off.
With `verify_secret` set it checks the Standard Webhooks signature (with the
`standardwebhooks` package) and answers 401 when it does not verify.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import defaultdict, deque
from collections.abc import Callable
from dataclasses import dataclass, field

from aiohttp import web

from shared.sandbox.simulators.drip import drip
from shared.sandbox.simulators.server import BackgroundServer


@dataclass(frozen=True, slots=True)
class Answer:
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0
    body: bytes = b"ok"
    drip: float | None = None  # seconds between the body's bytes, sent after the headers


@dataclass(frozen=True, slots=True)
class Received:
    path: str
    headers: dict[str, str]
    body: bytes
    at: float


class MerchantEndpoint(BackgroundServer):
    name = "merchant endpoint"

    def __init__(self, port: int = 0, *, on_request: Callable[[Received], None] | None = None,
                 verify_secret: str | None = None) -> None:
        super().__init__(port)
        self.received: list[Received] = []
        self._scripts: defaultdict[str, deque[Answer]] = defaultdict(deque)
        self._defaults: dict[str, Answer] = {}
        self._lock = threading.Lock()
        self._on_request = on_request
        self._verify_secret = verify_secret

    def script(self, path: str, *answers: Answer, default: Answer | None = None) -> None:
        """Answer the next requests to `path` with `answers`, then with `default`."""
        with self._lock:
            self._scripts[path].extend(answers)
            if default is not None:
                self._defaults[path] = default

    def requests_to(self, path: str) -> list[Received]:
        with self._lock:
            return [r for r in self.received if r.path == path]

    def make_app(self) -> web.Application:
        app = web.Application(client_max_size=10 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        return app

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        received = Received(request.path, dict(request.headers), await request.read(),
                            time.time())
        with self._lock:
            self.received.append(received)
            queued = self._scripts[request.path]
            answer = queued.popleft() if queued else self._defaults.get(request.path, Answer())
        if self._on_request is not None:
            self._on_request(received)
        if self._verify_secret is not None and not self._verifies(received):
            return web.Response(status=401, text="signature does not verify")
        if answer.delay:
            await asyncio.sleep(answer.delay)
        if answer.drip is not None:
            return await drip(request, answer.status, answer.headers, answer.body, answer.drip)
        return web.Response(status=answer.status, body=answer.body, headers=answer.headers)

    def _verifies(self, received: Received) -> bool:
        from standardwebhooks import Webhook
        from standardwebhooks.webhooks import WebhookVerificationError

        assert self._verify_secret is not None
        try:
            Webhook(self._verify_secret).verify(received.body, received.headers)
        except WebhookVerificationError:
            return False
        return True


def describe(received: Received, secret: str | None) -> str:
    """One line about a delivery, as the sample endpoint prints it."""
    import json

    try:
        event = json.loads(received.body)
        data = event["data"]
        what = (f"{event['type']} {event['id']} {data.get('merchant')}/{data.get('provider')} "
                f"{data.get('amount') or '-'} {data.get('currency') or ''} "
                f"order {data.get('order_id') or '-'} sequence {data.get('sequence')}")
    except (ValueError, KeyError, TypeError):
        what = f"{len(received.body)} bytes that are not an event"
    verified = ""
    if secret is not None:
        from standardwebhooks import Webhook
        from standardwebhooks.webhooks import WebhookVerificationError

        try:
            Webhook(secret).verify(received.body, received.headers)
            verified = " (signature verified)"
        except WebhookVerificationError:
            verified = " (SIGNATURE DOES NOT VERIFY)"
    return f"merchant endpoint received {what}{verified}"


def main(argv: list[str] | None = None) -> int:
    """Serve a sample merchant endpoint that prints every event it receives."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m shared.sandbox.simulators.merchant",
                                     description=main.__doc__)
    parser.add_argument("--port", type=int, default=8091)
    parser.add_argument("--secret", help="a whsec_ secret: check each signature with it")
    args = parser.parse_args(argv)
    print(f"merchant endpoint: http://127.0.0.1:{args.port}/", flush=True)
    endpoint = MerchantEndpoint(args.port, on_request=lambda received: print(
        describe(received, args.secret), flush=True))
    web.run_app(endpoint.make_app(), host="127.0.0.1", port=args.port, print=None,
                access_log=None)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
