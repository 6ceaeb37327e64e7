"""Correct callbacks, as each provider sends them, aimed at `/callbacks/{merchant}/{provider}`.

- IXOPAY (ixopay_ifthenpay.md §1.4, §1.6): POST of compact JSON, signed with
  `shared.providers.ixopay.sign` over the exact request target and an RFC 7231 `Date`,
  SHA-512 body hash by default (MD5 for connectors on the legacy postback format).
- ifthenpay (§2.2, §2.3, §2.10): GET with the docs' parameter names (`key`, `orderId`,
  `amount`, `requestId`, `entity`, `reference`, `payment_datetime`, `payment_method`,
  `status`), every value percent-encoded (a space as %20, `+` as %2B), no body.
- Netaxept (netaxept_payex.md §1.5): POST of `{"TransactionId": "..."}`, with HTTP Basic
  credentials when the merchant protects the URL.
- PayEx / Swedbank Pay (§2.2): POST of JSON in shape (a) payment + transaction, (b)
  paymentOrder + payment + transaction (v2/v3.0) or (c) orderReference + paymentOrder (v3.1).
`send` delivers one for real; `OutgoingCallback.to_incoming` builds the `Incoming` a
provider's `verify` takes, exactly as the ingress would.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from email.utils import formatdate
from typing import Any
from urllib.parse import quote

import httpx
from multidict import CIMultiDict

from shared.providers import ixopay
from shared.providers.base import Incoming

_JSON = "application/json"


@dataclass(frozen=True, slots=True)
class OutgoingCallback:
    method: str
    path: str  # the request target: path and query, percent-encoded
    headers: dict[str, str]
    body: bytes

    @property
    def query(self) -> str:
        return self.path.partition("?")[2]

    def to_incoming(self, source: str = "127.0.0.1") -> Incoming:
        """The request as the ingress hands it to a provider's `verify`."""
        return Incoming(self.method, self.path, self.query, CIMultiDict(self.headers),
                        self.body, source)


def _path(merchant: str, provider: str) -> str:
    return f"/callbacks/{quote(merchant, safe='')}/{provider}"


def _json(data: dict[str, Any]) -> bytes:
    return json.dumps(data, separators=(",", ":")).encode()


def ixopay_callback(
    merchant: str,
    shared_secret: str,
    *,
    uuid: str,
    merchant_transaction_id: str,
    transaction_type: str = "DEBIT",
    result: str = "OK",
    amount: str = "9.99",
    currency: str = "EUR",
    extra: dict[str, Any] | None = None,
    body_hash: ixopay.BodyHash = "sha512",
    date: str | None = None,
) -> OutgoingCallback:
    """An IXOPAY JSON callback with a valid `X-Signature` (`date` defaults to now)."""
    body = _json({
        "result": result,
        "uuid": uuid,
        "merchantTransactionId": merchant_transaction_id,
        "purchaseId": f"{datetime.now(UTC):%Y%m%d}-{uuid}",
        "transactionType": transaction_type,
        "paymentMethod": "Creditcard",
        "amount": amount,
        "currency": currency,
        **(extra or {}),
    })
    path = _path(merchant, "ixopay")
    date = date or formatdate(usegmt=True)
    signature = ixopay.sign(shared_secret, body, date, path, body_hash=body_hash)
    headers = {"Content-Type": ixopay.JSON_CONTENT_TYPE, "Date": date, "X-Signature": signature}
    return OutgoingCallback("POST", path, headers, body)


def ifthenpay_callback(
    merchant: str,
    key: str,
    *,
    order_id: str,
    amount: str | Decimal,
    request_id: str | None = None,
    reference: str | None = None,
    entity: str | None = None,
    status: str | None = None,
    payment_datetime: datetime | str | None = None,
    payment_method: str | None = None,
) -> OutgoingCallback:
    """An ifthenpay GET callback with the docs' parameter names, percent-encoded."""
    if isinstance(payment_datetime, datetime):
        payment_datetime = payment_datetime.strftime("%d-%m-%Y %H:%M:%S")
    params = {
        "key": key,
        "orderId": order_id,
        "amount": f"{amount:.2f}" if isinstance(amount, Decimal) else amount,
        "requestId": request_id,
        "entity": entity,
        "reference": reference,
        "payment_datetime": payment_datetime,
        "payment_method": payment_method,
        "status": status,
    }
    query = "&".join(f"{name}={quote(value, safe='')}"
                     for name, value in params.items() if value is not None)
    return OutgoingCallback("GET", f"{_path(merchant, 'ifthenpay')}?{query}", {}, b"")


def netaxept_callback(
    merchant: str, transaction_id: str, username: str | None = None, password: str | None = None
) -> OutgoingCallback:
    """A Netaxept callback: only the transaction id, with Basic credentials if given."""
    headers = {"Content-Type": _JSON}
    if username is not None and password is not None:
        token = base64.b64encode(f"{username}:{password}".encode()).decode()
        headers["Authorization"] = f"Basic {token}"
    body = _json({"TransactionId": transaction_id})
    return OutgoingCallback("POST", _path(merchant, "netaxept"), headers, body)


def payex_callback(
    merchant: str,
    *,
    payment_id: str | None = None,
    transaction_id: str | None = None,
    payment_order_id: str | None = None,
    order_reference: str | None = None,
    number: int | None = None,
    instrument: str | None = None,
    payment_number: int | None = None,
) -> OutgoingCallback:
    """A Swedbank Pay callback; ids are the relative `/psp/...` paths.

    Shape (a) from `payment_id` + `transaction_id`; (b) when `payment_order_id` comes
    with them; (c) from `payment_order_id` alone (with `order_reference`, v3.1). `number`
    is the transaction's number in (a) and (b) and the payment order's in (c).
    """
    for path in (payment_id, transaction_id, payment_order_id):
        if path is not None and not path.startswith("/psp/"):
            raise ValueError(f"{path!r} is not a relative /psp/ resource path")
    data: dict[str, Any] = {}
    if payment_order_id is not None and payment_id is None:
        if order_reference is not None:
            data["orderReference"] = order_reference
        data["paymentOrder"] = _node(payment_order_id, instrument=instrument, number=number)
    elif payment_id is not None:
        if payment_order_id is not None:
            data["paymentOrder"] = _node(payment_order_id, instrument=instrument)
        data["payment"] = _node(payment_id, number=payment_number)
        if transaction_id is not None:
            data["transaction"] = _node(transaction_id, number=number)
    else:
        raise ValueError("a payex callback names payment_id or payment_order_id")
    return OutgoingCallback("POST", _path(merchant, "payex"), {"Content-Type": _JSON},
                            _json(data))


def _node(resource_id: str, **fields: str | int | None) -> dict[str, Any]:
    return {"id": resource_id, **{k: v for k, v in fields.items() if v is not None}}


def send(ingress_base_url: str, callback: OutgoingCallback, timeout: float = 10) -> tuple[int, str]:
    """Deliver the callback for real; the answer's status code and body."""
    url = httpx.URL(ingress_base_url.rstrip("/") + callback.path)
    response = httpx.request(callback.method, url, headers=callback.headers,
                             content=callback.body or None, timeout=timeout)
    return response.status_code, response.text
