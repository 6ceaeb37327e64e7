"""The simulators' admin API under `/_sim/`: set up data and faults from another process.

`payhooks dev`, the benchmarks and tests in another process drive the simulators with it
(`shared.sandbox.simulators.client.SimulatorClient` wraps every endpoint). Bodies and answers are
JSON; a bad body is HTTP 400 `{"error": "..."}`, an unknown id 404. Data endpoints create
(or, where the provider's own id is given, replace) one object and answer the stored view,
including the GUIDs and numbers the server assigned. Admin requests are not counted in the
per-provider statistics and are never slowed or failed by fault injection.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from typing import Any

from aiohttp import web
from aiohttp.typedefs import Handler

from shared.sandbox.simulators import ifthenpay, ixopay, netaxept, payex, paymentorders
from shared.sandbox.simulators.fields import BadRequest, Fields
from shared.sandbox.simulators.state import PROVIDERS, STATE, Faults, IxopayCredentials

_FAULT_FIELDS = tuple(Faults.__dataclass_fields__)


def add_routes(app: web.Application) -> None:
    routes = [
        ("POST", "/_sim/reset", reset),
        ("GET", "/_sim/faults", get_faults),
        ("POST", "/_sim/faults", set_faults),
        ("GET", "/_sim/stats", stats),
        ("POST", "/_sim/netaxept/credentials", netaxept_credentials),
        ("POST", "/_sim/netaxept/transactions", netaxept_transaction),
        ("POST", "/_sim/payex/tokens", payex_token),
        ("POST", "/_sim/payex/payments", payex_payment),
        ("POST", "/_sim/payex/payments/{id}/transactions", payex_transaction),
        ("POST", "/_sim/payex/paymentorders", payex_order),
        ("POST", "/_sim/payex/paymentorders/{id}/financialtransactions", payex_financial),
        ("POST", "/_sim/ixopay/credentials", ixopay_credentials),
        ("POST", "/_sim/ixopay/transactions", ixopay_transaction),
        ("POST", "/_sim/ifthenpay/backoffice", ifthenpay_backoffice),
        ("POST", "/_sim/ifthenpay/payments", ifthenpay_payment),
    ]
    for method, path, handler in routes:
        app.router.add_route(method, path, handler)


@web.middleware
async def admin_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Turn a `BadRequest` from reading an admin body into HTTP 400."""
    try:
        return await handler(request)
    except BadRequest as exc:
        return web.json_response({"error": str(exc)}, status=400)


async def _fields(request: web.Request) -> Fields:
    raw = await request.read()
    try:
        return Fields(json.loads(raw) if raw.strip() else {})
    except ValueError:
        raise BadRequest("body is not JSON") from None


def _not_found(what: str) -> web.Response:
    return web.json_response({"error": f"no such {what}"}, status=404)


async def reset(request: web.Request) -> web.Response:
    state = request.app[STATE]
    with state.lock:
        state.reset()
    return web.json_response({"reset": True})


def _faults_view(request: web.Request) -> dict[str, Any]:
    state = request.app[STATE]
    with state.lock:
        return {name: asdict(state.faults[name]) for name in PROVIDERS}


async def get_faults(request: web.Request) -> web.Response:
    return web.json_response(_faults_view(request))


async def set_faults(request: web.Request) -> web.Response:
    fields = await _fields(request)
    provider = fields.text("provider", default="all")
    if provider not in (*PROVIDERS, "all"):
        raise BadRequest(f"provider must be one of {', '.join(PROVIDERS)} or all")
    changes = {name: float(fields.decimal(name)) for name in _FAULT_FIELDS
               if fields.raw(name) is not None}
    state = request.app[STATE]
    with state.lock:
        state.set_faults(provider, **changes)
    return web.json_response(_faults_view(request))


async def stats(request: web.Request) -> web.Response:
    return web.json_response(request.app[STATE].stats())


async def netaxept_credentials(request: web.Request) -> web.Response:
    fields = await _fields(request)
    merchant_id = fields.text("merchant_id", "merchantId")
    token = fields.text("token")
    state = request.app[STATE]
    with state.lock:
        state.netaxept_credentials[merchant_id] = token
    return web.json_response({"merchant_id": merchant_id})


async def netaxept_transaction(request: web.Request) -> web.Response:
    transaction = netaxept.transaction_from_json(await _fields(request))
    state = request.app[STATE]
    with state.lock:
        state.netaxept_transactions[transaction.id] = transaction
        return web.json_response(netaxept.transaction_to_json(transaction))


async def payex_token(request: web.Request) -> web.Response:
    token = (await _fields(request)).text("token")
    state = request.app[STATE]
    with state.lock:
        state.payex_tokens.add(token)
        count = len(state.payex_tokens)
    return web.json_response({"tokens": count})


async def payex_payment(request: web.Request) -> web.Response:
    fields = await _fields(request)
    state = request.app[STATE]
    with state.lock:
        return web.json_response(payex.payment_to_json(payex.add_payment(state, fields)))


async def payex_transaction(request: web.Request) -> web.Response:
    fields = await _fields(request)
    state = request.app[STATE]
    with state.lock:
        payment = state.payex_payments.get(request.match_info["id"])
        if payment is None:
            return _not_found("payment")
        transaction = payex.add_transaction(state, payment, fields)
        return web.json_response(payex.transaction_to_json(payment, transaction))


async def payex_order(request: web.Request) -> web.Response:
    fields = await _fields(request)
    state = request.app[STATE]
    with state.lock:
        order = paymentorders.add_order(state, fields)
        return web.json_response(paymentorders.order_to_json(order))


async def payex_financial(request: web.Request) -> web.Response:
    fields = await _fields(request)
    state = request.app[STATE]
    with state.lock:
        order = state.payex_orders.get(request.match_info["id"])
        if order is None:
            return _not_found("payment order")
        paymentorders.add_financial(state, order, fields)
        return web.json_response(paymentorders.order_to_json(order))


async def ixopay_credentials(request: web.Request) -> web.Response:
    fields = await _fields(request)
    api_key = fields.text("api_key", "apiKey")
    credentials = IxopayCredentials(fields.text("username"), fields.text("password"))
    state = request.app[STATE]
    with state.lock:
        state.ixopay_credentials[api_key] = credentials
    return web.json_response({"api_key": api_key})


async def ixopay_transaction(request: web.Request) -> web.Response:
    transaction = ixopay.transaction_from_json(await _fields(request))
    state = request.app[STATE]
    with state.lock:
        state.ixopay_transactions[transaction.uuid] = transaction
    return web.json_response(ixopay.status_body(transaction))


async def ifthenpay_backoffice(request: web.Request) -> web.Response:
    bo_key = (await _fields(request)).text("bo_key", "boKey")
    state = request.app[STATE]
    with state.lock:
        state.ifthenpay_keys.add(bo_key)
        count = len(state.ifthenpay_keys)
    return web.json_response({"keys": count})


async def ifthenpay_payment(request: web.Request) -> web.Response:
    payment = ifthenpay.payment_from_json(await _fields(request))
    state = request.app[STATE]
    with state.lock:
        state.ifthenpay_payments.append(payment)
    return web.json_response(ifthenpay.payment_to_json(payment))
