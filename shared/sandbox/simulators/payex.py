"""PayEx / Swedbank Pay, payment-instrument API (v1): payments and their transactions.

Imitates `GET /psp/{instrument}/payments/{id}` (netaxept_payex.md §2.4, portal
`_includes/payment-resource.md`), its `transactions` list and single transactions (§2.5,
`_includes/transaction.md`, `transaction-list-response.md`) and the typed collections
(`authorizations`, `captures`, `cancellations`, `reversals`, `sales`, `verifications`),
whose items wrap the generic transaction the way the portal's capture example does:
`{"payment": ..., "capture": {"id": ".../captures/<id>", "transaction": {...}}}`.
Requests need `Authorization: Bearer <token>` with a registered token: without one the
answer is 401, with an unknown one 403; an unknown id is 404. Errors are RFC 7807
`application/problem+json` with `type` `https://api.payex.com/psp/errordetail/<kind>`
(§2.1, `_includes/problems/problems.md`). Every `id` is a relative path; ids are GUIDs.
`?$expand=transactions` inlines the list. The remaining amounts are left out when nothing
remains, which is what the official plugins take as "fully captured/reversed" (§2.4, §2.9).
Payment orders live in `shared.sandbox.simulators.paymentorders`.
"""

from __future__ import annotations

import hmac
from collections import Counter
from collections.abc import Iterable
from datetime import datetime
from typing import Any

from aiohttp import web

from shared.sandbox.simulators.fields import BadRequest, Fields
from shared.sandbox.simulators.state import STATE, PayexPayment, PayexTransaction, State, guid

# collection path segment -> (singular name, transaction type)
KINDS = {
    "authorizations": ("authorization", "Authorization"),
    "captures": ("capture", "Capture"),
    "cancellations": ("cancellation", "Cancellation"),
    "reversals": ("reversal", "Reversal"),
    "sales": ("sale", "Sale"),
    "verifications": ("verification", "Verification"),
}
_TITLES = {401: "Unauthorized", 403: "Forbidden", 404: "Not Found"}
_INSTRUMENT = r"{instrument:[a-z]+}"


def add_routes(app: web.Application) -> None:
    base = f"/psp/{_INSTRUMENT}/payments/{{payment_id}}"
    for suffix in ("", "/"):
        app.router.add_get(base + suffix, get_payment, allow_head=False)
        app.router.add_get(f"{base}/{{kind}}{suffix}", get_collection, allow_head=False)
        app.router.add_get(f"{base}/{{kind}}/{{transaction_id}}{suffix}", get_transaction,
                           allow_head=False)


def problem(request: web.Request, status: int, kind: str, detail: str) -> web.Response:
    """An RFC 7807 problem as Swedbank Pay sends it."""
    body = {
        "type": f"https://api.payex.com/psp/errordetail/{kind}",
        "title": _TITLES.get(status, "Error"),
        "status": status,
        "detail": detail,
        "instance": guid(),
        "problems": [{"name": request.path, "description": detail}] if status == 404 else [],
    }
    return web.json_response(body, status=status, content_type="application/problem+json")


def refuse(request: web.Request, state: State) -> web.Response | None:
    """401 without a Bearer token, 403 with an unknown one, else None. Hold the lock."""
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return problem(request, 401, "unauthorized", "An access token is required")
    given = token.strip().encode()
    known = False
    for expected in state.payex_tokens:
        known |= hmac.compare_digest(given, expected.encode())
    if not known:
        return problem(request, 403, "forbidden", "The access token is not valid")
    return None


def expansions(request: web.Request) -> set[str]:
    return {part.strip().lower() for part in request.query.get("$expand", "").split(",")}


def iso(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def remaining_amounts(done: Counter[str]) -> dict[str, int]:
    """remainingCapture/Cancellation/ReversalAmount from completed amounts by type."""
    open_authorization = done["Authorization"] - done["Capture"] - done["Cancellation"]
    reversible = done["Capture"] + done["Sale"] - done["Reversal"]
    amounts: dict[str, int] = {}
    if open_authorization > 0:
        amounts["remainingCaptureAmount"] = open_authorization
        amounts["remainingCancellationAmount"] = open_authorization
    if reversible > 0:
        amounts["remainingReversalAmount"] = reversible
    return amounts


def payment_path(payment: PayexPayment) -> str:
    return f"/psp/{payment.instrument}/payments/{payment.id}"


def _lookup(request: web.Request, state: State) -> PayexPayment | web.Response:
    """The payment the path names, or the 401/403/404 problem to answer with."""
    refused = refuse(request, state)
    if refused is not None:
        return refused
    payment = state.payex_payments.get(request.match_info["payment_id"])
    if payment is None or payment.instrument != request.match_info["instrument"]:
        return problem(request, 404, "notfound", "The payment was not found")
    return payment


async def get_payment(request: web.Request) -> web.Response:
    state = request.app[STATE]
    with state.lock:
        found = _lookup(request, state)
        if isinstance(found, web.Response):
            return found
        body = payment_body(found, "transactions" in expansions(request))
    return web.json_response(body)


async def get_collection(request: web.Request) -> web.Response:
    kind = request.match_info["kind"]
    state = request.app[STATE]
    with state.lock:
        found = _lookup(request, state)
        if isinstance(found, web.Response):
            return found
        if kind != "transactions" and kind not in KINDS:
            return problem(request, 404, "notfound", "No such resource")
        body = {"payment": payment_path(found), kind: collection(found, kind)}
    return web.json_response(body)


async def get_transaction(request: web.Request) -> web.Response:
    kind = request.match_info["kind"]
    state = request.app[STATE]
    with state.lock:
        found = _lookup(request, state)
        if isinstance(found, web.Response):
            return found
        transaction = next(
            (t for t in _of_kind(found, kind) if t.id == request.match_info["transaction_id"]),
            None,
        )
        if transaction is None:
            return problem(request, 404, "notfound", "The transaction was not found")
        body: dict[str, Any] = {"payment": payment_path(found)}
        if kind == "transactions":
            body["transaction"] = transaction_body(found, transaction)
        else:
            body[KINDS[kind][0]] = typed_body(found, transaction, kind)
    return web.json_response(body)


def _of_kind(payment: PayexPayment, kind: str) -> Iterable[PayexTransaction]:
    if kind == "transactions":
        return payment.transactions
    if kind not in KINDS:
        return ()
    return [t for t in payment.transactions if t.type == KINDS[kind][1]]


def payment_body(payment: PayexPayment, expand_transactions: bool) -> dict[str, Any]:
    """The payment resource (§2.4), with the transaction list inlined when expanded."""
    path = payment_path(payment)
    done: Counter[str] = Counter()
    for t in payment.transactions:
        if t.state == "Completed":
            done[t.type] += t.amount
    links = ["prices", "payeeInfo", "payers", "urls", "transactions"]
    links += (["sales", "reversals"] if payment.intent == "Sale"
              else ["authorizations", "captures", "reversals", "cancellations"])
    body: dict[str, Any] = {
        "id": path, "number": payment.number,
        "created": iso(payment.created), "updated": iso(payment.updated),
        "state": payment.state, "operation": payment.operation, "intent": payment.intent,
        "currency": payment.currency, "amount": payment.amount,
        **remaining_amounts(done),
        "description": payment.description, "language": "sv-SE",
        **{name: {"id": f"{path}/{name}"} for name in links},
    }
    if expand_transactions:
        body["transactions"] = collection(payment, "transactions")
    return {"payment": body, "operations": []}


def collection(payment: PayexPayment, kind: str) -> dict[str, Any]:
    """A transaction list: `transactionList`, or `<singular>List` of typed items."""
    path = f"{payment_path(payment)}/{kind}"
    if kind == "transactions":
        items = [transaction_body(payment, t) for t in payment.transactions]
        return {"id": path, "transactionList": items}
    typed = [typed_body(payment, t, kind) for t in _of_kind(payment, kind)]
    return {"id": path, f"{KINDS[kind][0]}List": typed}


def typed_body(payment: PayexPayment, t: PayexTransaction, kind: str) -> dict[str, Any]:
    return {"id": f"{payment_path(payment)}/{kind}/{t.id}",
            "transaction": transaction_body(payment, t)}


def transaction_body(payment: PayexPayment, t: PayexTransaction) -> dict[str, Any]:
    """The generic transaction object (§2.5)."""
    return {
        "id": f"{payment_path(payment)}/transactions/{t.id}",
        "created": iso(t.created), "updated": iso(t.updated),
        "type": t.type, "state": t.state, "number": t.number,
        "amount": t.amount, "vatAmount": t.vat_amount,
        "description": t.description, "payeeReference": t.payee_reference,
        "failedReason": t.failed_reason,
        "isOperational": t.state in ("Initialized", "AwaitingActivity"),
        "operations": [],
    }


def typed_collection(transaction_type: str) -> str:
    """The typed collection a transaction type lives in: Capture -> captures."""
    for kind, (_singular, type_name) in KINDS.items():
        if type_name == transaction_type:
            return kind
    return "transactions"


TRANSACTION_TYPES = ("Authorization", "Capture", "Reversal", "Cancellation", "Sale",
                     "Verification")
TRANSACTION_STATES = ("Initialized", "Completed", "Failed", "AwaitingActivity")


def one_of(value: str, allowed: tuple[str, ...], name: str) -> str:
    if value not in allowed:
        raise BadRequest(f"{name} must be one of {', '.join(allowed)}")
    return value


def add_transaction(state: State, payment: PayexPayment, fields: Fields) -> PayexTransaction:
    """Append a transaction from the admin API's JSON; the server picks id and number."""
    transaction = PayexTransaction(
        id=guid(),
        type=one_of(fields.text("type"), TRANSACTION_TYPES, "type"),
        state=one_of(fields.text("state", default="Completed"), TRANSACTION_STATES, "state"),
        number=state.next_number(),
        amount=fields.integer("amount", default=payment.amount),
        vat_amount=fields.integer("vat_amount", "vatAmount", default=0),
        description=fields.text("description", default=""),
        payee_reference=fields.text("payee_reference", "payeeReference", default=""),
        failed_reason=fields.text("failed_reason", "failedReason", default=""),
    )
    payment.transactions.append(transaction)
    payment.updated = transaction.updated
    return transaction


def add_payment(state: State, fields: Fields) -> PayexPayment:
    """Create a payment, with its transactions, from the admin API's JSON."""
    payment = PayexPayment(
        id=guid(),
        instrument=fields.text("instrument", default="creditcard").lower(),
        number=state.next_number(),
        currency=fields.text("currency", default="SEK"),
        amount=fields.integer("amount"),
        intent=fields.text("intent", default="Authorization"),
        state=fields.text("state", default="Ready"),
        description=fields.text("description", default=""),
    )
    for item in fields.items("transactions"):
        add_transaction(state, payment, item)
    state.payex_payments[payment.id] = payment
    return payment


def payment_to_json(payment: PayexPayment) -> dict[str, Any]:
    """The admin API's view: GUIDs, paths and numbers, for building callbacks."""
    return {
        "id": payment.id, "path": payment_path(payment), "number": payment.number,
        "instrument": payment.instrument, "currency": payment.currency,
        "amount": payment.amount, "intent": payment.intent, "state": payment.state,
        "transactions": [transaction_to_json(payment, t) for t in payment.transactions],
    }


def transaction_to_json(payment: PayexPayment, t: PayexTransaction) -> dict[str, Any]:
    path = payment_path(payment)
    return {
        "id": t.id, "path": f"{path}/transactions/{t.id}",
        "typed_path": f"{path}/{typed_collection(t.type)}/{t.id}",
        "number": t.number, "type": t.type, "state": t.state, "amount": t.amount,
    }
