"""PayEx / Swedbank Pay: payment-instrument payments (v1) and payment orders (v2, v3.x).

Docs: developer.swedbankpay.com, `_includes/callback.md`, `callback-3-0.md`,
`callback-3-1.md`; `checkout-v3/get-started/validate-status.md`.

The callback is a POST whose JSON body names resources, never their state, in one of three
shapes: (a) `payment` + `transaction` for instrument payments; (b) `paymentOrder` +
`payment` + `transaction` for payment orders up to v3.0; (c) `orderReference` +
`paymentOrder` alone for v3.1. There is no signature: the worker GETs the named resource
with the merchant's Bearer token, joined to the merchant's configured `base_url`. Because
those paths decide where a worker sends an authenticated request, each one must be a
relative `/psp/...` path of exactly the documented form (an instrument or `paymentorders`,
GUIDs, a typed transaction collection); anything else (absolute URLs, `//host`, `..`,
percent-encoding, a query) is refused with 400 before it is stored, and checked again
before the worker sends anything. Numbers may be JSON numbers or digit strings.

The worker decides from what it fetches, never from the callback: an instrument payment's
transaction list (`?$expand=transactions`: each transaction's type and state), or a
payment order's status, its `paid` resource and its financial transactions (captures,
reversals, sales). Each transaction number in each state is one fact, so duplicates and
out-of-order callbacks collapse, and every answer reports all facts so far.
"""

from __future__ import annotations

import re
from dataclasses import replace
from datetime import datetime
from typing import Any, ClassVar

from shared.errors import Malformed, ProviderRejected, ProviderUnavailable
from shared.models import Callback, EventType, Fact
from shared.providers.base import (
    Accepted,
    FollowUp,
    Incoming,
    join_url,
    keep_headers,
    load_json_object,
)
from shared.settings import PayexSettings

_GUID = r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}"
PAYMENT_ORDER_PATH = re.compile(rf"/psp/paymentorders/{_GUID}")
PAYMENT_PATH = re.compile(rf"/psp/(?!paymentorders/)[a-z]{{2,32}}/payments/{_GUID}")
TRANSACTION_PATH = re.compile(rf"(?P<payment>{PAYMENT_PATH.pattern})/[a-z]{{2,32}}/{_GUID}")
_INSTRUMENT = re.compile(r"[A-Za-z][A-Za-z0-9]{0,31}")
_ORDER_REFERENCE = re.compile(r"[A-Za-z0-9_.:/-]{1,50}")
_KEPT_HEADERS = ("content-type",)
_TRANSACTIONS: dict[tuple[str, str], EventType] = {
    ("Authorization", "Completed"): EventType.AUTHORIZED,
    ("Sale", "Completed"): EventType.CAPTURED,
    ("Capture", "Completed"): EventType.CAPTURED,
    ("Reversal", "Completed"): EventType.REFUNDED,
    ("Cancellation", "Completed"): EventType.VOIDED,
    ("Authorization", "Failed"): EventType.FAILED,
    ("Sale", "Failed"): EventType.FAILED,
    ("Authorization", "Initialized"): EventType.PENDING,
    ("Authorization", "AwaitingActivity"): EventType.PENDING,
    ("Sale", "Initialized"): EventType.PENDING,
    ("Sale", "AwaitingActivity"): EventType.PENDING,
}
_FINANCIAL = {"Capture": EventType.CAPTURED, "Sale": EventType.CAPTURED,
              "Reversal": EventType.REFUNDED, "Cancellation": EventType.VOIDED}
_ORDER_STATUS = {"Initialized": (EventType.PENDING, "initialized"),
                 "Failed": (EventType.FAILED, "failed"),
                 "Aborted": (EventType.FAILED, "aborted"),
                 "Cancelled": (EventType.VOIDED, "cancelled")}


class Payex:
    name: ClassVar[str] = "payex"
    method: ClassVar[str] = "POST"
    ack_body: ClassVar[str] = "OK"

    def __init__(self, settings: PayexSettings) -> None:
        self._settings = settings
        self.allowed_ips = settings.allowed_ips

    def follow_up(self, callback: Callback, context: FollowUp) -> list[Fact]:
        data = load_json_object(callback.body)
        check_shape(data)
        reference = data.get("orderReference")
        if "paymentOrder" in data:
            return self._order_facts(data, reference, context)
        return self._payment_facts(data["payment"]["id"], reference, context,
                                   data.get("transaction") or {})

    def _get(self, path: str, context: FollowUp, **params: str) -> dict[str, Any]:
        if not (PAYMENT_ORDER_PATH.fullmatch(path.removesuffix("/financialtransactions"))
                or PAYMENT_PATH.fullmatch(path)):
            raise ProviderRejected(f"payex: refusing to fetch {path!r}")
        response = context.send(
            "GET", join_url(self._settings.base_url, path), "payex GET",
            params=params, headers={
                "Authorization": f"Bearer {self._settings.token.get_secret_value()}",
                "Accept": "application/json"},
        )
        context.check(response, f"payex GET {path}")
        try:
            answer: dict[str, Any] = response.json()
        except ValueError:
            raise ProviderUnavailable("payex: answer is not JSON") from None
        return answer

    def _payment_facts(self, path: str, reference: object, context: FollowUp,
                       named: dict[str, Any], order: dict[str, Any] | None = None
                       ) -> list[Fact]:
        """The facts of an instrument payment's transactions; `named` is the transaction
        the callback names (retried until the answer lists it), `order` the payment order
        it belongs to (Checkout v2), if any."""
        payment = self._get(path, context, **{"$expand": "transactions,payeeinfo"}).get(
            "payment") or {}
        transactions = payment.get("transactions")
        if not isinstance(transactions, dict) or not isinstance(
                transactions.get("transactionList"), list):
            raise ProviderUnavailable(f"payex: the transactions of {path} are not expanded")
        listed: list[dict[str, Any]] = [
            item for item in transactions["transactionList"] if isinstance(item, dict)]
        _check_listed(named, listed)
        order = order or {}
        base = Fact(type=EventType.PENDING, key="", payment_id=path, transaction_id="",
                    order_id=_order_id(reference, order, payment),
                    currency=payment.get("currency") or order.get("currency"),
                    payment_method=path.split("/")[2])
        facts = []
        for item in listed:
            kind = _TRANSACTIONS.get((str(item.get("type")), str(item.get("state"))))
            if kind is None:
                continue
            facts.append(replace(
                base, type=kind, key=f"{item.get('number')}:{item.get('state')}",
                transaction_id=str(item.get("id")), amount_minor=_amount(item),
                occurred_at=_when(item.get("updated")),
                provider_status={k: item.get(k) for k in ("type", "state", "number",
                                                         "failedReason") if k in item}))
        return facts

    def _order_facts(self, data: dict[str, Any], reference: object, context: FollowUp
                     ) -> list[Fact]:
        path = data["paymentOrder"]["id"]
        order = self._get(path, context, **{"$expand": "paid,payeeinfo"}).get(
            "paymentOrder") or {}
        if "paid" not in order and "payment" in data:
            # Checkout v2: the order has no paid resource and no financial transactions;
            # what happened is in the transactions of the payment the callback names
            return self._payment_facts(data["payment"]["id"], reference, context,
                                       data.get("transaction") or {}, order)
        paid: dict[str, Any] = order["paid"] if isinstance(order.get("paid"), dict) else {}
        status = str(order.get("status"))
        base = Fact(type=EventType.PENDING, key="", payment_id=path, transaction_id=path,
                    order_id=_order_id(reference, order, paid),
                    currency=order.get("currency"),
                    payment_method=str(paid.get("instrument") or "").lower() or None,
                    provider_status={"status": status})
        facts = []
        if paid.get("number") is not None:
            kind = EventType.CAPTURED if paid.get("transactionType") == "Sale" else (
                EventType.AUTHORIZED)
            suffix = "Sale" if kind is EventType.CAPTURED else "paid"
            facts.append(replace(base, type=kind, key=f"{paid['number']}:{suffix}",
                                 amount_minor=_amount(paid)))
        listed = self._get(f"{path}/financialtransactions", context).get(
            "financialTransactions", {}).get("financialTransactionsList") or []
        for item in listed:
            financial = _FINANCIAL.get(str(item.get("type")))
            if financial is not None:
                key = f"{item.get('number')}:{item['type']}"
                facts.append(replace(base, type=financial, key=key,
                                     transaction_id=str(item.get("id") or path),
                                     amount_minor=_amount(item),
                                     occurred_at=_when(item.get("updated"))))
        if status in _ORDER_STATUS and not any(f.type is _ORDER_STATUS[status][0] for f in facts):
            kind, key = _ORDER_STATUS[status]
            facts.append(replace(base, type=kind, key=key, amount_minor=_amount(order)))
        return facts

    def verify(self, request: Incoming) -> Accepted:
        data = load_json_object(request.body)
        reference = check_shape(data)
        return Accepted(reference, request.uri, keep_headers(request.headers, _KEPT_HEADERS))


def check_shape(data: dict[str, Any]) -> str:
    """Malformed unless `data` is one of the three callback shapes; the main resource path."""
    order = _resource(data, "paymentOrder", PAYMENT_ORDER_PATH)
    payment = _resource(data, "payment", PAYMENT_PATH)
    transaction = _resource(data, "transaction", TRANSACTION_PATH)
    if order is None and payment is None:
        raise Malformed("neither paymentOrder nor payment is present")
    if transaction is not None:
        if payment is None:
            raise Malformed("transaction without payment")
        match = TRANSACTION_PATH.fullmatch(transaction)
        if match is None or match.group("payment") != payment:
            raise Malformed("transaction.id is not a transaction of payment.id")
    if order is not None:
        instrument = data["paymentOrder"].get("instrument")
        if instrument is not None and not (
            isinstance(instrument, str) and _INSTRUMENT.fullmatch(instrument)
        ):
            raise Malformed("paymentOrder.instrument is not an instrument name")
    if "orderReference" in data:
        reference = data["orderReference"]
        if not (isinstance(reference, str) and _ORDER_REFERENCE.fullmatch(reference)):
            raise Malformed("orderReference is not a usable reference")
    return order or payment or ""


def _resource(data: dict[str, Any], name: str, path: re.Pattern[str]) -> str | None:
    node = data.get(name)
    if node is None:
        return None
    if not isinstance(node, dict):
        raise Malformed(f"{name} is not an object")
    resource_id = node.get("id")
    if not isinstance(resource_id, str) or not path.fullmatch(resource_id):
        raise Malformed(f"{name}.id is not a relative /psp/ resource path of the expected form")
    number = node.get("number")
    if number is not None and not _is_number(number):
        raise Malformed(f"{name}.number is not a number")
    return resource_id


def _check_listed(named: dict[str, Any], listed: list[dict[str, Any]]) -> None:
    """ProviderUnavailable unless the callback's transaction is in the list: Swedbank Pay
    calls back as the transaction is made, and its list may not show it yet."""
    if not named:
        return
    guid = str(named.get("id", "")).rsplit("/", 1)[-1]  # a typed path: captures/<guid>
    number = named.get("number")
    for item in listed:
        if str(item.get("id", "")).rsplit("/", 1)[-1] == guid or (
                number is not None and str(item.get("number")) == str(number)):
            return
    raise ProviderUnavailable("payex: the answer does not list the callback's transaction yet")


def _order_id(reference: object, *resources: dict[str, Any]) -> str | None:
    """The merchant's order, as the plugins find it: the callback's `orderReference`, else
    a resource's own, else its `payeeInfo` (expanded): the order reference, then the
    merchant's reference for the payment (`payeeReference`; the transactions' own
    payeeReferences are new for every capture or reversal, so none of them is used)."""
    infos = [r["payeeInfo"] for r in resources if isinstance(r.get("payeeInfo"), dict)]
    candidates = [reference, *(r.get("orderReference") for r in resources),
                  *(info.get("orderReference") for info in infos),
                  *(info.get("payeeReference") for info in infos)]
    return next((str(value) for value in candidates if value), None)


def _amount(item: dict[str, Any]) -> int | None:
    amount = item.get("amount")
    return amount if isinstance(amount, int) and not isinstance(amount, bool) else None


def _when(value: object) -> datetime | None:
    try:
        return datetime.fromisoformat(str(value)) if value else None
    except ValueError:
        return None


def _is_number(value: object) -> bool:
    if isinstance(value, bool):
        return False
    if isinstance(value, int):
        return 0 <= value < 10**20
    return isinstance(value, str) and value.isascii() and value.isdigit() and len(value) <= 20
