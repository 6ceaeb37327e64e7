"""Provider simulators: real HTTP servers imitating the four providers' follow-up APIs.

One aiohttp application serves them all, since their paths do not collide:
- Netaxept Query, `GET|POST /Netaxept/Query.aspx` (`netaxept`);
- Swedbank Pay payments `/psp/{instrument}/payments/...` (`payex`) and payment orders
  `/psp/paymentorders/...` (`paymentorders`);
- IXOPAY status API `/api/v3/status/{apiKey}/...` (`ixopay`);
- ifthenpay list of payments `POST /v2/payments/read` (`ifthenpay`);
- the admin API `/_sim/...` (`admin`; `client.SimulatorClient` drives it over HTTP).
Provider facts and sources: /work/shared/providers/netaxept_payex.md and
ixopay_ifthenpay.md. Correct callbacks, as each provider sends them, come from
`shared.simulators.callbacks`.

`Simulators` runs the app on 127.0.0.1 in a background thread with its own event loop, for
tests and benchmarks in the same process (which may also use `Simulators.state` directly);
`python -m shared.simulators --port P` serves it in the foreground, for `payhooks dev`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import threading
from collections.abc import Sequence

from aiohttp import web

from shared.redis_server import free_port
from shared.simulators import admin, faults, ifthenpay, ixopay, netaxept, payex, paymentorders
from shared.simulators.state import STATE, State

__all__ = ["STATE", "Simulators", "State", "create_app", "main"]


def create_app(state: State | None = None) -> web.Application:
    """One application with the four provider APIs and the admin API."""
    app = web.Application(middlewares=[faults.inject_faults, admin.admin_errors])
    app[STATE] = state if state is not None else State()
    netaxept.add_routes(app)
    paymentorders.add_routes(app)  # before payex: both live under /psp/
    payex.add_routes(app)
    ixopay.add_routes(app)
    ifthenpay.add_routes(app)
    admin.add_routes(app)
    return app


class Simulators:
    """The simulators on 127.0.0.1 in a background thread; `start()` returns once serving."""

    def __init__(self, port: int = 0, *, seed: int = 0, state: State | None = None) -> None:
        self.state = state if state is not None else State(seed)
        self.host = "127.0.0.1"
        self.port = port  # 0: any free port, known after start()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        if self._thread is None:
            raise RuntimeError("the simulators are not running")
        return f"http://{self.host}:{self.port}"

    def start(self, timeout: float = 10.0) -> Simulators:
        if self._thread is not None:
            raise RuntimeError("the simulators are already running")
        started = threading.Event()
        failures: list[BaseException] = []
        self._thread = threading.Thread(
            target=self._serve, args=(started, failures), name="simulators", daemon=True
        )
        self._thread.start()
        if not started.wait(timeout) or failures:
            self.stop()
            cause = failures[0] if failures else None
            raise RuntimeError("the simulators did not start") from cause
        return self

    def stop(self) -> None:
        """Stop serving; requests still waiting (latency, timeouts) are cancelled."""
        thread, loop = self._thread, self._loop
        if thread is None:
            return
        if loop is not None and thread.is_alive():
            loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=10)
        self._thread = self._loop = None

    def __enter__(self) -> Simulators:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def _serve(self, started: threading.Event, failures: list[BaseException]) -> None:
        loop = asyncio.new_event_loop()
        runner = web.AppRunner(create_app(self.state), shutdown_timeout=0.5,
                               handler_cancellation=True, access_log=None)
        try:
            loop.run_until_complete(self._open(runner))
            self._loop = loop
        except BaseException as exc:  # reported by start()
            failures.append(exc)
        started.set()
        try:
            if not failures:
                loop.run_forever()
        finally:
            with contextlib.suppress(Exception):
                loop.run_until_complete(runner.cleanup())
            loop.close()

    async def _open(self, runner: web.AppRunner) -> None:
        await runner.setup()
        await web.TCPSite(runner, self.host, self.port).start()
        self.port = runner.addresses[0][1]


def main(argv: Sequence[str] | None = None) -> int:
    """Serve the simulators in the foreground until interrupted."""
    parser = argparse.ArgumentParser(
        prog="python -m shared.simulators",
        description="Serve the payment-provider simulators and their /_sim/ admin API.",
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--seed", type=int, default=0, help="seed of the fault injection")
    args = parser.parse_args(argv)
    port = args.port or free_port()
    print(f"simulators: http://{args.host}:{port}", flush=True)
    web.run_app(create_app(State(args.seed)), host=args.host, port=port, print=None,
                shutdown_timeout=1.0, handler_cancellation=True, access_log=None)
    return 0
