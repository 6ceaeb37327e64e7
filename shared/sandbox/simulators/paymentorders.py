"""PayEx / Swedbank Pay payment orders (Checkout v2/v3.x, Payment Menu): status API.

Imitates `GET /psp/paymentorders/{id}` with optional `?$expand=paid` (and
`financialtransactions`), `GET .../paid` and `GET .../financialtransactions`, as in
netaxept_payex.md §2.6 (portal `checkout-v3/get-started/validate-status.md`,
`_includes/checkout-v3-status-models.md`, `checkout-v3-resource-models.md`). The
`status` is one of Initialized, Paid, Failed, Cancelled, Reversed, Aborted; partial
captures and reversals show only in the remaining amounts and the financial transactions.
The top-level key of sub-resources is `paymentOrder` (the docs also write `paymentorder`).
Payment-order answers carry `Content-Type: application/json; charset=utf-8; version=3.1`
and `api-supported-versions: 3.1`, like the portal's example. Authentication and problems
are those of `shared.sandbox.simulators.payex`.
"""

from __future__ import annotations

import json
from collections import Counter
from typing import Any

from aiohttp import web

from shared.sandbox.simulators.fields import Fields
from shared.sandbox.simulators.payex import (
    expansions,
    iso,
    one_of,
    problem,
    refuse,
    remaining_amounts,
)
from shared.sandbox.simulators.state import (
    STATE,
    PayexFinancialTransaction,
    PayexPaid,
    PayexPaymentOrder,
    State,
    guid,
)

_LINKS = ("orderItems", "urls", "payeeInfo", "payer", "history", "failed", "aborted",
          "cancelled", "failedAttempts", "postPurchaseFailedAttempts", "metadata")
_HEADERS = {"api-supported-versions": "3.1"}
_CONTENT_TYPE = "application/json; charset=utf-8; version=3.1"


def add_routes(app: web.Application) -> None:
    base = "/psp/paymentorders/{order_id}"
    for suffix in ("", "/"):
        app.router.add_get(base + suffix, get_order, allow_head=False)
        app.router.add_get(f"{base}/paid{suffix}", get_paid, allow_head=False)
        app.router.add_get(f"{base}/financialtransactions{suffix}", get_financial,
                           allow_head=False)


def order_path(order: PayexPaymentOrder) -> str:
    return f"/psp/paymentorders/{order.id}"


def _answer(body: dict[str, Any]) -> web.Response:
    response = web.Response(body=json.dumps(body).encode(), headers=_HEADERS)
    response.headers["Content-Type"] = _CONTENT_TYPE
    return response


def _lookup(request: web.Request, state: State) -> PayexPaymentOrder | web.Response:
    refused = refuse(request, state)
    if refused is not None:
        return refused
    order = state.payex_orders.get(request.match_info["order_id"])
    if order is None:
        return problem(request, 404, "notfound", "The payment order was not found")
    return order


async def get_order(request: web.Request) -> web.Response:
    state = request.app[STATE]
    with state.lock:
        found = _lookup(request, state)
        if isinstance(found, web.Response):
            return found
        body = order_body(found, expansions(request))
    return _answer(body)


async def get_paid(request: web.Request) -> web.Response:
    state = request.app[STATE]
    with state.lock:
        found = _lookup(request, state)
        if isinstance(found, web.Response):
            return found
        body = {"paymentOrder": order_path(found), "paid": paid_body(found)}
    return _answer(body)


async def get_financial(request: web.Request) -> web.Response:
    state = request.app[STATE]
    with state.lock:
        found = _lookup(request, state)
        if isinstance(found, web.Response):
            return found
        body = {"paymentOrder": order_path(found),
                "financialTransactions": financial_body(found)}
    return _answer(body)


def _done(order: PayexPaymentOrder) -> Counter[str]:
    """Amounts by transaction type: the paid transaction plus the financial ones.

    A one-phase (Sale) order lists its sale among the financial transactions as well,
    so that entry is not counted twice.
    """
    done: Counter[str] = Counter()
    paid_type = None if order.paid is None else order.paid.transaction_type
    if order.paid is not None:
        done[order.paid.transaction_type] += order.paid.amount
    for item in order.financial_transactions:
        if not (item.type == "Sale" and paid_type == "Sale"):
            done[item.type] += item.amount
    return done


def order_body(order: PayexPaymentOrder, expand: set[str]) -> dict[str, Any]:
    """The payment order resource (§2.6), with `paid` and financial transactions expandable."""
    path = order_path(order)
    body: dict[str, Any] = {
        "id": path,
        "created": iso(order.created), "updated": iso(order.updated),
        "operation": order.operation, "status": order.status,
        "currency": order.currency, "amount": order.amount, "vatAmount": order.vat_amount,
        **remaining_amounts(_done(order)),
        "description": order.description,
        **({"orderReference": order.order_reference} if order.order_reference else {}),
        "language": "sv-SE",
        **{name: {"id": f"{path}/{name}"} for name in _LINKS},
        "paid": paid_body(order) if "paid" in expand else {"id": f"{path}/paid"},
        "financialTransactions": (
            financial_body(order) if "financialtransactions" in expand
            else {"id": f"{path}/financialtransactions"}
        ),
    }
    return {"paymentOrder": body, "operations": []}


def paid_body(order: PayexPaymentOrder) -> dict[str, Any]:
    """The `paid` sub-resource; only its `id` until the order is paid."""
    paid: PayexPaid | None = order.paid
    body: dict[str, Any] = {"id": f"{order_path(order)}/paid"}
    if paid is None:
        return body
    body.update({
        "number": paid.number, "instrument": paid.instrument,
        "payeeReference": paid.payee_reference, "transactionType": paid.transaction_type,
        "amount": paid.amount, "submittedAmount": paid.amount, "feeAmount": 0,
        "discountAmount": 0, "paymentTokenGenerated": False, "details": {},
    })
    return body


def financial_body(order: PayexPaymentOrder) -> dict[str, Any]:
    path = f"{order_path(order)}/financialtransactions"
    return {"id": path,
            "financialTransactionsList": [_financial(path, t)
                                          for t in order.financial_transactions]}


def _financial(path: str, t: PayexFinancialTransaction) -> dict[str, Any]:
    return {
        "id": f"{path}/{t.id}", "created": iso(t.created), "updated": iso(t.updated),
        "type": t.type, "number": t.number, "amount": t.amount, "vatAmount": t.vat_amount,
        "description": t.description, "payeeReference": t.payee_reference,
        "orderItems": {"id": f"{path}/{t.id}/orderitems"},
    }


STATUSES = ("Initialized", "Paid", "Failed", "Cancelled", "Reversed", "Aborted")
FINANCIAL_TYPES = ("Capture", "Reversal", "Sale", "Cancellation")


def add_financial(state: State, order: PayexPaymentOrder,
                  fields: Fields) -> PayexFinancialTransaction:
    """Append a financial transaction from the admin API's JSON (optionally a new status)."""
    item = PayexFinancialTransaction(
        id=guid(),
        type=one_of(fields.text("type"), FINANCIAL_TYPES, "type"),
        number=state.next_number(),
        amount=fields.integer("amount", default=order.amount),
        vat_amount=fields.integer("vat_amount", "vatAmount", default=0),
        description=fields.text("description", default=""),
        payee_reference=fields.text("payee_reference", "payeeReference", default=""),
    )
    order.financial_transactions.append(item)
    if fields.raw("status") is not None:
        order.status = one_of(fields.text("status"), STATUSES, "status")
    order.updated = item.updated
    return item


def add_order(state: State, fields: Fields) -> PayexPaymentOrder:
    """Create a payment order from the admin API's JSON; ids and numbers are assigned."""
    amount = fields.integer("amount")
    paid = fields.nested("paid")
    order = PayexPaymentOrder(
        id=guid(),
        status=one_of(fields.text("status", default="Initialized"), STATUSES, "status"),
        currency=fields.text("currency", default="SEK"),
        amount=amount,
        vat_amount=fields.integer("vat_amount", "vatAmount", default=0),
        order_reference=fields.optional_text("order_reference", "orderReference"),
        description=fields.text("description", default=""),
        paid=None if paid is None else PayexPaid(
            transaction_type=one_of(
                paid.text("transactionType", "transaction_type", default="Authorization"),
                ("Authorization", "Sale"), "paid.transactionType"),
            instrument=paid.text("instrument", default="CreditCard"),
            amount=paid.integer("amount", default=amount),
            number=state.next_number(),
            payee_reference=paid.text("payeeReference", "payee_reference", default=""),
        ),
    )
    for item in fields.items("financial_transactions", "financialTransactions"):
        add_financial(state, order, item)
    state.payex_orders[order.id] = order
    return order


def order_to_json(order: PayexPaymentOrder) -> dict[str, Any]:
    """The admin API's view: GUIDs, paths and numbers, for building callbacks."""
    path = order_path(order)
    paid = order.paid
    return {
        "id": order.id, "path": path, "status": order.status, "currency": order.currency,
        "amount": order.amount, "order_reference": order.order_reference,
        "paid": None if paid is None else {
            "transaction_type": paid.transaction_type, "instrument": paid.instrument,
            "amount": paid.amount, "number": paid.number,
        },
        "financial_transactions": [
            {"id": t.id, "path": f"{path}/financialtransactions/{t.id}", "number": t.number,
             "type": t.type, "amount": t.amount}
            for t in order.financial_transactions
        ],
    }
