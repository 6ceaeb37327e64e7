"""ifthenpay list-of-payments REST API: `POST /v2/payments/read`.

Imitates the API of ixopay_ifthenpay.md §2.8 (1) (ifthenpay.com/docs/en/api/list-of-payments-rest;
`https://api.ifthenpay.com/v2/payments/read`). The JSON body names the backoffice key
(`boKey`) and optional filters `entity`, `subEntity`, `reference`, `orderId`, `amount`,
`requestId`, `dateStart`, `dateEnd` (`dd-MM-yyyy HH:mm:ss`); null means no filter. The
status travels in the body: a wrong key is HTTP 200 with `"status": 403` and no payments.
Only completed payments are listed, newest first, at most 1,000, so a missing payment may
be pending or unknown. Amounts are JSON numbers with a dot; dates `dd-MM-yyyy HH:mm:ss`,
`procDate` `yyyyMMdd`.
"""

from __future__ import annotations

import hmac
import json
import secrets
import string
from datetime import datetime
from decimal import Decimal
from typing import Any

from aiohttp import web

from shared.sandbox.simulators.fields import BadRequest, Fields
from shared.sandbox.simulators.state import STATE, IfthenpayPayment, State

DATE_FORMAT = "%d-%m-%Y %H:%M:%S"
LIMIT = 1000
_TEXT_FILTERS = {"entity": "entity", "subEntity": "sub_entity", "reference": "reference",
                 "orderId": "order_id", "requestId": "request_id"}


def add_routes(app: web.Application) -> None:
    app.router.add_post("/v2/payments/read", read)


def _reply(message: str, status: int, payments: list[dict[str, Any]],
           http_status: int = 200) -> web.Response:
    body = {"message": message, "status": status, "payments": payments}
    return web.json_response(body, status=http_status)


async def read(request: web.Request) -> web.Response:
    """The payments the backoffice key may see that match every non-null filter."""
    try:
        fields = Fields(json.loads(await request.read()))
        bo_key = fields.text("boKey", default="")
        wanted = _filters(fields)
    except (ValueError, BadRequest) as exc:
        return _reply(f"Invalid request: {exc}", 400, [], http_status=400)
    state = request.app[STATE]
    with state.lock:
        if not _known_key(state, bo_key):
            return _reply("Invalid backoffice key", 403, [])
        found = [p for p in state.ifthenpay_payments
                 if p.bo_key in (None, bo_key) and wanted(p)]
    found.sort(key=lambda p: p.payment_date, reverse=True)
    return _reply("OK", 200, [payment_body(p) for p in found[:LIMIT]])


def _known_key(state: State, given: str) -> bool:
    known = False
    for key in state.ifthenpay_keys:
        known |= hmac.compare_digest(given.encode(), key.encode())
    return known


class _Filter:
    def __init__(self, texts: dict[str, str], amount: Decimal | None,
                 start: datetime | None, end: datetime | None) -> None:
        self.texts, self.amount, self.start, self.end = texts, amount, start, end

    def __call__(self, payment: IfthenpayPayment) -> bool:
        if any(getattr(payment, attr) != value for attr, value in self.texts.items()):
            return False
        if self.amount is not None and payment.amount != self.amount:
            return False
        if self.start is not None and payment.payment_date < self.start:
            return False
        return self.end is None or payment.payment_date <= self.end


def _filters(fields: Fields) -> _Filter:
    texts = {attr: fields.text(name) for name, attr in _TEXT_FILTERS.items()
             if fields.raw(name) is not None}
    amount = None if fields.raw("amount") is None else fields.decimal("amount")
    return _Filter(texts, amount, _date(fields, "dateStart"), _date(fields, "dateEnd"))


def _date(fields: Fields, name: str) -> datetime | None:
    value = fields.optional_text(name)
    if value is None:
        return None
    try:
        return datetime.strptime(value, DATE_FORMAT)
    except ValueError:
        raise BadRequest(f"{name} is not dd-MM-yyyy HH:mm:ss") from None


def payment_body(p: IfthenpayPayment) -> dict[str, Any]:
    return {
        "amount": float(p.amount),
        "entity": p.entity,
        "fee": float(p.fee),
        "netAmount": float(p.amount - p.fee),
        "orderId": p.order_id,
        "paymentDate": p.payment_date.strftime(DATE_FORMAT),
        "procDate": p.payment_date.strftime("%Y%m%d"),
        "reference": p.reference,
        "requestId": p.request_id,
        "subEntity": p.sub_entity,
        "terminal": p.terminal,
    }


def request_id() -> str:
    """A 20-character RequestId like ifthenpay's (`i2szvoUfPYBMWdSxqO3n`)."""
    alphabet = string.ascii_letters + string.digits
    return "".join(secrets.choice(alphabet) for _ in range(20))


def payment_from_json(fields: Fields) -> IfthenpayPayment:
    """A payment from the admin API's JSON (camelCase as the API, or snake_case)."""
    when = fields.optional_text("paymentDate", "payment_date")
    try:
        moment = (datetime.now().replace(microsecond=0) if when is None
                  else datetime.strptime(when, DATE_FORMAT))
    except ValueError:
        moment = fields.timestamp("paymentDate", "payment_date", default=datetime.now())
    return IfthenpayPayment(
        order_id=fields.text("orderId", "order_id"),
        amount=fields.decimal("amount"),
        entity=fields.text("entity", default="MB"),
        sub_entity=fields.text("subEntity", "sub_entity", default=""),
        reference=fields.text("reference", default=""),
        request_id=fields.text("requestId", "request_id", default=request_id()),
        fee=fields.decimal("fee", default=Decimal("0")),
        terminal=fields.text("terminal", default=""),
        payment_date=moment,
        bo_key=fields.optional_text("boKey", "bo_key"),
    )


def payment_to_json(p: IfthenpayPayment) -> dict[str, Any]:
    return {**payment_body(p), "boKey": p.bo_key}
