"""Netaxept (Nets / Nexi, classic API).

Docs: developer.nexigroup.com/netaxept/en-EU/docs/callback and /docs/query-call; Nets'
reference backend (Nets-mobile-acceptance/Netaxept-Sample-Backend).

The callback is a POST of `{"TransactionId": "<id>"}` and nothing else: no status, no
signature. The merchant may protect the URL with a user name and password entered in
Netaxept Admin (sent as HTTP Basic credentials, checked here in constant time) and may
allow-list Netaxept's source addresses (`allowed_ips`). Since the body proves nothing, the
worker asks the Query API (`Netaxept/Query.aspx`) for the transaction's state; a forged id
can cost a query but never produces an event. The id is opaque: 32 hex digits from
Register, a GUID in Nets' sample, or the merchant's own id.

The Query answer is XML, always HTTP 200; errors come as an `<Exception>` root whose
`Error` names its type. It is parsed by element name, never by position: the order of
elements changes between answers and new ones appear. The state is cumulative
(`Summary`: Authorized, AmountCaptured, AmountCredited, Annulled, and its misspelled twin
Annuled), so every answer yields every fact so far: authorized, captured up to N, credited
up to M, annulled, or failed (an `Error` before any authorization). A capture is reported by
its new total; the step amount is what the total grew by since the last recorded one.
Amounts are minor units.
"""

from __future__ import annotations

import base64
import binascii
import re
from dataclasses import replace
from datetime import datetime
from typing import ClassVar
from xml.etree.ElementTree import Element

from defusedxml import ElementTree
from defusedxml.common import DefusedXmlException

from shared.errors import (
    Malformed,
    ProviderRejected,
    ProviderUnavailable,
    Unauthorized,
    UnsupportedEvent,
)
from shared.models import Callback, EventType, Fact
from shared.providers.base import (
    Accepted,
    FollowUp,
    Incoming,
    join_url,
    keep_headers,
    load_json_object,
    proven,
    same_secret,
)
from shared.settings import NetaxeptSettings

TRANSACTION_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_XSI_TYPE = "{http://www.w3.org/2001/XMLSchema-instance}type"
_NOT_FOUND = "Unable to find transaction"
_PERMANENT = {"AuthenticationException", "SecurityException", "ValidationException",
              "NotSupportedException", "MerchantTranslationException"}
_KEPT_HEADERS = ("content-type",)


class Netaxept:
    name: ClassVar[str] = "netaxept"
    method: ClassVar[str] = "POST"
    ack_body: ClassVar[str] = "OK"

    def __init__(self, settings: NetaxeptSettings) -> None:
        self._credentials: tuple[bytes, bytes] | None = None
        if settings.callback_username is not None and settings.callback_password is not None:
            self._credentials = (
                settings.callback_username.encode(),
                settings.callback_password.get_secret_value().encode(),
            )
        self._settings = settings
        self.allowed_ips = settings.allowed_ips

    def follow_up(self, callback: Callback, context: FollowUp) -> list[Fact]:
        try:  # stored unreadable only when the credentials proved the sender
            transaction_id = transaction_id_of(callback.body)
        except Malformed as exc:
            raise UnsupportedEvent(f"netaxept: {exc.reason}") from None
        settings = self._settings
        response = context.send(
            "GET", join_url(settings.base_url, "/Netaxept/Query.aspx"),
            "netaxept Query",
            params={"merchantId": settings.merchant_id,
                    "token": settings.token.get_secret_value(),
                    "transactionId": transaction_id},
        )
        context.check(response, "netaxept Query")  # it answers 200, errors in the XML
        return payment_facts(_parse(response.content), transaction_id)

    def check_credentials(self, authorization: str | None) -> None:
        """Unauthorized unless the Basic credentials match (when the merchant set them)."""
        if self._credentials is None:
            return
        if authorization is None:
            raise Unauthorized("no credentials")
        user, password = _basic_credentials(authorization)
        expected_user, expected_password = self._credentials
        user_ok = same_secret(user, expected_user)
        password_ok = same_secret(password, expected_password)
        if not (user_ok and password_ok):
            raise Unauthorized("wrong credentials")

    def verify(self, request: Incoming) -> Accepted:
        self.check_credentials(request.headers.get("authorization"))
        headers = keep_headers(request.headers, _KEPT_HEADERS)
        if self._credentials is not None:  # the credentials prove the sender
            return proven(lambda: transaction_id_of(request.body), request.uri, headers)
        return Accepted(transaction_id_of(request.body), request.uri, headers)


def transaction_id_of(body: bytes) -> str:
    """The `TransactionId` of a callback body, or Malformed."""
    transaction_id = load_json_object(body).get("TransactionId")
    if not isinstance(transaction_id, str):
        raise Malformed("TransactionId is missing or not a string")
    if not TRANSACTION_ID.fullmatch(transaction_id):
        raise Malformed("TransactionId is not a well-formed id")
    return transaction_id


def _parse(content: bytes) -> Element:
    try:
        root: Element = ElementTree.fromstring(content)
    except (ElementTree.ParseError, DefusedXmlException, ValueError):
        raise ProviderUnavailable("netaxept Query: not XML") from None
    if root.tag == "Exception":
        error = root.find("Error")
        kind = error.get(_XSI_TYPE, "") if error is not None else ""
        message = _text(root, "Error/Message")
        if message == _NOT_FOUND:
            raise ProviderRejected(f"netaxept: unknown transaction ({kind})")
        if kind in _PERMANENT:
            raise ProviderRejected(f"netaxept: {kind}: {message!r}")
        raise ProviderUnavailable(f"netaxept: {kind}: {message!r}")
    if root.tag != "PaymentInfo":
        raise ProviderUnavailable(f"netaxept Query: unexpected root {root.tag!r}")
    return root


def payment_facts(info: Element, transaction_id: str) -> list[Fact]:
    """Every fact a PaymentInfo reports, oldest first."""
    if info.find("Summary") is None:  # every answer has one: this one is broken
        raise ProviderUnavailable("netaxept Query: a PaymentInfo without Summary")
    summary = {child.tag: (child.text or "").strip() for child in info.findall("Summary/*")}
    authorized = summary.get("Authorized") == "true"
    annulled = "true" in (summary.get("Annulled"), summary.get("Annuled"))
    captured = _int(summary.get("AmountCaptured"))
    credited = _int(summary.get("AmountCredited"))
    amount = _int(_text(info, "OrderInformation/Amount"))
    base = Fact(
        type=EventType.PENDING, key="registered", payment_id=transaction_id,
        transaction_id=transaction_id, amount_minor=amount,
        order_id=_text(info, "OrderInformation/OrderNumber") or None,
        currency=_text(info, "OrderInformation/Currency") or None,
        payment_method=_text(info, "CardInformation/PaymentMethod").lower() or None,
        provider_status={k: v for k, v in summary.items() if k != "AuthorizationId"},
    )
    facts: list[Fact] = []
    error = info.find("Error")
    if error is not None and not authorized and not captured:
        when = _text(error, "DateTime")
        key = f"failed:{_text(error, 'ResponseCode') or '?'}:{when}"
        facts.append(replace(base, type=EventType.FAILED, key=key, occurred_at=_when(when)))
    elif not authorized and not captured and not annulled:
        facts.append(base)
    if authorized:
        facts.append(replace(base, type=EventType.AUTHORIZED, key="authorized",
                             occurred_at=_history_time(info, "Auth")))
    if captured:
        facts.append(replace(base, type=EventType.CAPTURED, key=f"captured:{captured}",
                             amount_minor=None, total_minor=captured,
                             occurred_at=_history_time(info, "Capture")))
    if credited:
        facts.append(replace(base, type=EventType.REFUNDED, key=f"credited:{credited}",
                             amount_minor=None, total_minor=credited,
                             occurred_at=_history_time(info, "Credit")))
    if annulled:
        facts.append(replace(base, type=EventType.VOIDED, key="annulled",
                             occurred_at=_history_time(info, "Annul")))
    if not facts:
        raise UnsupportedEvent("netaxept: the transaction is in no state we report")
    return facts


def _text(element: Element, path: str) -> str:
    found = element.find(path)
    return (found.text or "").strip() if found is not None else ""


def _int(value: str | None) -> int:
    try:
        return max(0, int(value or 0))
    except ValueError:
        return 0


def _history_time(info: Element, operation: str) -> datetime | None:
    times = [_text(line, "DateTime") for line in info.findall("History/TransactionLogLine")
             if _text(line, "Operation") == operation]
    return _when(times[-1]) if times else None


def _when(value: str) -> datetime | None:
    try:
        return datetime.fromisoformat(value) if value else None
    except ValueError:
        return None


def _basic_credentials(authorization: str) -> tuple[bytes, bytes]:
    scheme, _, encoded = authorization.strip().partition(" ")
    if scheme.lower() != "basic":
        raise Unauthorized("not Basic credentials")
    try:
        decoded = base64.b64decode(encoded.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise Unauthorized("credentials are not base64") from None
    user, colon, password = decoded.partition(b":")
    if not colon:
        raise Unauthorized("credentials have no password")
    return user, password
