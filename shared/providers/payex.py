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
percent-encoding, a query) is refused with 400 before it is stored. Numbers may be JSON
numbers or digit strings (the .NET SDK types them as strings).
"""

from __future__ import annotations

import re
from typing import Any, ClassVar

from shared.errors import Malformed
from shared.providers.base import Accepted, Incoming, load_json_object
from shared.settings import PayexSettings

_GUID = r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}"
PAYMENT_ORDER_PATH = re.compile(rf"/psp/paymentorders/{_GUID}")
PAYMENT_PATH = re.compile(rf"/psp/(?!paymentorders/)[a-z]{{2,32}}/payments/{_GUID}")
TRANSACTION_PATH = re.compile(rf"(?P<payment>{PAYMENT_PATH.pattern})/[a-z]{{2,32}}/{_GUID}")
_INSTRUMENT = re.compile(r"[A-Za-z][A-Za-z0-9]{0,31}")
_ORDER_REFERENCE = re.compile(r"[A-Za-z0-9_.:/-]{1,50}")
_KEPT_HEADERS = ("content-type",)


class Payex:
    name: ClassVar[str] = "payex"
    method: ClassVar[str] = "POST"
    ack_body: ClassVar[str] = "OK"

    def __init__(self, settings: PayexSettings) -> None:
        self.allowed_ips = settings.allowed_ips

    def verify(self, request: Incoming) -> Accepted:
        data = load_json_object(request.body)
        reference = check_shape(data)
        headers = {k: request.headers[k] for k in _KEPT_HEADERS if k in request.headers}
        return Accepted(reference, request.uri, headers)


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


def _is_number(value: object) -> bool:
    if isinstance(value, bool):
        return False
    if isinstance(value, int):
        return 0 <= value < 10**20
    return isinstance(value, str) and value.isascii() and value.isdigit() and len(value) <= 20
