"""IXOPAY status API (Transaction API v3): `getByUuid` and `getByMerchantTransactionId`.

Imitates `GET /api/v3/status/{apiKey}/getByUuid/{uuid}` and
`GET /api/v3/status/{apiKey}/getByMerchantTransactionId/{merchantTransactionId}` as in
ixopay_ifthenpay.md §1.9 (documentation.ixopay.com /api/transaction/status-by-*;
gateway.ixopay.com/documentation/apiv3). HTTP Basic credentials of the API user are
required (wrong or missing: 401 with a JSON error). The answer is HTTP 200 JSON with
`success: true` and `transactionStatus` SUCCESS|PENDING|REDIRECT|CANCELLED|ERROR, and
`transactionType` in lower case as the docs' example has it; an unknown transaction is
HTTP 200 too (the docs list only 200 and 429) with `success: false`, errorCode 8001.
Rate limits, both over rolling 60 s: `rate_limit_per_minute` (60) per API user and
`rate_limit_per_transaction` (10) per merchantTransactionId; over either one the answer is
HTTP 429 with errorCode 1009. The request signature (`X-Signature`) is not checked.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import math
from collections.abc import Callable
from typing import Any

from aiohttp import web

from shared.sandbox.simulators.fields import Fields
from shared.sandbox.simulators.state import STATE, IxopayTransaction, State

BASE = "/api/v3/status/{api_key}"


def add_routes(app: web.Application) -> None:
    app.router.add_get(f"{BASE}/getByUuid/{{uuid}}", by_uuid, allow_head=False)
    app.router.add_get(f"{BASE}/getByMerchantTransactionId/{{merchant_transaction_id}}",
                       by_merchant_transaction_id, allow_head=False)


def error(
    message: str, code: int, status: int = 200, headers: dict[str, str] | None = None
) -> web.Response:
    body = {"success": False, "errorMessage": message, "errorCode": code}
    return web.json_response(body, status=status, headers=headers)


async def by_uuid(request: web.Request) -> web.Response:
    uuid = request.match_info["uuid"]
    return _status(request, lambda t: t.uuid == uuid, uuid)


async def by_merchant_transaction_id(request: web.Request) -> web.Response:
    wanted = request.match_info["merchant_transaction_id"]
    return _status(request, lambda t: t.merchant_transaction_id == wanted, wanted)


def _status(
    request: web.Request, matches: Callable[[IxopayTransaction], bool], asked: str
) -> web.Response:
    api_key = request.match_info["api_key"]
    state = request.app[STATE]
    with state.lock:
        if not _authenticated(state, api_key, request.headers.get("Authorization", "")):
            return error("Invalid API credentials", 1001, status=401)
        found = next((t for t in state.ixopay_transactions.values()
                      if matches(t) and t.api_key in (None, api_key)), None)
        limited = _limit(state, api_key, found.merchant_transaction_id if found else asked)
        if limited is not None:
            return limited
        if found is None:
            return error("Transaction not found", 8001)
        body = status_body(found)
    return web.json_response(body)


def _authenticated(state: State, api_key: str, authorization: str) -> bool:
    expected = state.ixopay_credentials.get(api_key)
    scheme, _, encoded = authorization.partition(" ")
    if expected is None or scheme.lower() != "basic":
        return False
    try:
        user, _, password = base64.b64decode(encoded.strip(), validate=True).partition(b":")
    except (binascii.Error, ValueError):
        return False
    user_ok = hmac.compare_digest(user, expected.username.encode())
    password_ok = hmac.compare_digest(password, expected.password.encode())
    return user_ok and password_ok


def _limit(state: State, api_key: str, transaction: str) -> web.Response | None:
    faults = state.faults["ixopay"]
    wait = state.take_call(f"user:{api_key}", faults.rate_limit_per_minute)
    if wait is None:
        wait = state.take_call(f"transaction:{api_key}:{transaction}",
                               faults.rate_limit_per_transaction)
    if wait is None:
        return None
    return error("Too many requests, rate limit exceeded", 1009, status=429,
                 headers={"Retry-After": str(max(1, math.ceil(wait)))})


def status_body(t: IxopayTransaction) -> dict[str, Any]:
    """The status response of a known transaction (§1.9)."""
    return {
        "success": True,
        "transactionStatus": t.transaction_status,
        "uuid": t.uuid,
        "merchantTransactionId": t.merchant_transaction_id,
        "purchaseId": t.purchase_id,
        "transactionType": t.transaction_type.lower(),
        "paymentMethod": t.payment_method,
        "amount": t.amount,
        "currency": t.currency,
        **t.extra,
    }


_KNOWN = {"uuid", "merchantTransactionId", "merchant_transaction_id", "transactionType",
          "transaction_type", "transactionStatus", "transaction_status", "amount", "currency",
          "paymentMethod", "payment_method", "purchaseId", "purchase_id", "apiKey", "api_key"}


def transaction_from_json(fields: Fields) -> IxopayTransaction:
    """A transaction from the admin API's JSON; unknown keys are answered verbatim."""
    uuid = fields.text("uuid")
    amount = fields.raw("amount")
    return IxopayTransaction(
        uuid=uuid,
        merchant_transaction_id=fields.text("merchantTransactionId", "merchant_transaction_id"),
        transaction_type=fields.text("transactionType", "transaction_type", default="DEBIT"),
        transaction_status=fields.text("transactionStatus", "transaction_status",
                                       default="SUCCESS").upper(),
        amount="9.99" if amount is None else str(amount),
        currency=fields.text("currency", default="EUR"),
        payment_method=fields.text("paymentMethod", "payment_method", default="Creditcard"),
        purchase_id=fields.text("purchaseId", "purchase_id", default=f"sim-{uuid}"),
        api_key=fields.optional_text("apiKey", "api_key"),
        extra={k: v for k, v in fields.data.items() if k not in _KNOWN},
    )
