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
`shared.sandbox.simulators.callbacks`.

`Simulators` runs the app on 127.0.0.1 in a background thread with its own event loop, for
tests and benchmarks in the same process (which may also use `Simulators.state` directly);
`python -m shared.sandbox.simulators --port P` serves it in the foreground, for `payhooks dev`.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from aiohttp import web

from shared.sandbox.redis_server import free_port
from shared.sandbox.simulators import (
    admin,
    faults,
    ifthenpay,
    ixopay,
    netaxept,
    payex,
    paymentorders,
)
from shared.sandbox.simulators.server import BackgroundServer
from shared.sandbox.simulators.state import STATE, State

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


class Simulators(BackgroundServer):
    """The simulators on 127.0.0.1 in a background thread; `start()` returns once serving."""

    name = "simulators"

    def __init__(self, port: int = 0, *, seed: int = 0, state: State | None = None) -> None:
        super().__init__(port)
        self.state = state if state is not None else State(seed)

    def make_app(self) -> web.Application:
        return create_app(self.state)


def main(argv: Sequence[str] | None = None) -> int:
    """Serve the simulators in the foreground until interrupted."""
    parser = argparse.ArgumentParser(
        prog="python -m shared.sandbox.simulators",
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
