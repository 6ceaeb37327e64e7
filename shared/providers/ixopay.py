"""IXOPAY (and its white labels): signed JSON callbacks, legacy signed XML callbacks.

Docs: documentation.ixopay.com/docs/guides/production/additional-security and
/docs/reference/integration/callbacks; the official PHP SDK (ixopay/php-ixopay,
`Client::validateCallback`, `CurlClient::createSignature`) is the reference we match.

Verification is an HMAC-SHA512, keyed with the connector's shared secret, over five lines
joined by "\\n": the method, the hex hash of the body, the content type, the `Date` header
verbatim and the request URI (path and query, as requested). Base64 of the digest arrives
in `X-Signature`. Quirks, all from the SDK:
- The body hash is SHA-512, or MD5 for connectors on the legacy "postback format"; the SDK
  signs its own requests with MD5, so SDK users usually get MD5 callbacks. Both are accepted.
- The content type in the signed text is always `application/json; charset=utf-8`,
  whatever header arrives: the SDK hard-codes it, so a signature over any other content
  type is one the SDK rejects, and so do we.
- `Date` is used verbatim; the docs give `X-Date` precedence, the SDK takes `Date` first,
  so either is tried. The age of the date is not checked unless the merchant sets
  `max_date_skew`: IXOPAY retries a callback for more than seven days.
- Legacy XML callbacks are read by element name, whatever their namespace: IXOPAY's is
  `http://gateway.ixopay.com/Schema/V2/Callback`, each white-label platform has its own.
- A result of ERROR, of any transaction type, is `payment.failed`: a failed CAPTURE, REFUND
  or VOID leaves the payment as it was, and `provider_status` says which step failed.
- A signed callback payhooks cannot read (fields missing, a body that is not JSON) is
  stored and acknowledged all the same, and recorded as unsupported with the reason.
- Legacy XML callbacks sign six lines (an empty "custom headers" line before the URI) over
  `text/xml; charset=utf-8` and send `Authorization: Gateway <apiKey>:<signature>`; the
  older `IxoPay <apiKey>:` prefix is accepted with the MD5 body hash only.
The callback is signed, so it is authoritative; with `verify_with_status_api` the worker
asks the status API (`/api/v3/status/{apiKey}/getByUuid/{uuid}`, Basic auth) and the
status it reports wins. That API allows 60 requests a minute per API user: the worker keeps
to that budget itself and retries later when it is spent or when IXOPAY answers 429.
Chargebacks arrive as new transactions with an auto-generated merchantTransactionId; they
belong to the order in `chargebackData.originalMerchantTransactionId`.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
from collections.abc import Mapping
from datetime import UTC, datetime
from email.utils import formatdate, parsedate_to_datetime
from typing import Any, ClassVar, Literal
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
from shared.money import to_minor
from shared.providers.base import (
    Accepted,
    FollowUp,
    Incoming,
    join_url,
    keep_headers,
    load_json_object,
    proven,
)
from shared.settings import IxopaySettings

JSON_CONTENT_TYPE = "application/json; charset=utf-8"
XML_CONTENT_TYPE = "text/xml; charset=utf-8"
_KEPT_HEADERS = ("content-type", "date", "x-date", "x-signature", "authorization",
                 "x-authorization")

_TYPES: dict[tuple[str, str], EventType] = {
    ("DEBIT", "OK"): EventType.CAPTURED,
    ("CAPTURE", "OK"): EventType.CAPTURED,
    ("PREAUTHORIZE", "OK"): EventType.AUTHORIZED,
    ("REFUND", "OK"): EventType.REFUNDED,
    ("VOID", "OK"): EventType.VOIDED,
    ("CHARGEBACK", "OK"): EventType.CHARGEBACK,
    ("CHARGEBACK-REVERSAL", "OK"): EventType.CHARGEBACK_REVERSED,
    ("DEBIT", "PENDING"): EventType.PENDING,
    ("PREAUTHORIZE", "PENDING"): EventType.PENDING,
}
# A transaction that ended in ERROR, of any type, is a failed step: a failed DEBIT or
# PREAUTHORIZE is a failed payment; a failed CAPTURE, REFUND or VOID leaves the payment as it
# was (authorized, captured), and `provider_status.transactionType` says which step failed.
_FAILED_RESULT = "ERROR"
# the status API's transactionStatus, as the callback's result
_STATUS_RESULTS = {"SUCCESS": "OK", "PENDING": "PENDING", "REDIRECT": "PENDING",
                   "ERROR": "ERROR", "CANCELLED": "ERROR"}
_STATUS_API_PER_MINUTE = 60
# A uuid as the status API path takes it: one segment, never `.` or `..`, no `?` or `#`.
# It comes from the callback, and the request carries the merchant's credentials.
_STATUS_API_UUID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")

BodyHash = Literal["sha512", "md5"]
_BODY_HASHES: tuple[BodyHash, ...] = ("sha512", "md5")


def sign(
    secret: str,
    body: bytes,
    date: str,
    uri: str,
    *,
    body_hash: BodyHash = "sha512",
    content_type: str = JSON_CONTENT_TYPE,
    method: str = "POST",
    legacy_xml: bool = False,
) -> str:
    """The signature IXOPAY puts on a callback (and the SDK on a request)."""
    digest = _body_digest(body, body_hash)
    keyed = hmac.new(secret.encode(), digestmod=hashlib.sha512)
    return _signature(keyed, method, digest, content_type, date, uri, legacy_xml).decode()


def _signature(
    keyed: hmac.HMAC, method: str, digest: str, content_type: str, date: str, uri: str,
    legacy_xml: bool,
) -> bytes:
    lines = [method, digest, content_type, date, *([""] if legacy_xml else []), uri]
    mac = keyed.copy()
    mac.update("\n".join(lines).encode("utf-8", "surrogateescape"))
    return base64.b64encode(mac.digest())


def _body_digest(body: bytes, kind: BodyHash) -> str:
    if kind == "sha512":
        return hashlib.sha512(body).hexdigest()
    return hashlib.md5(body, usedforsecurity=False).hexdigest()


class Ixopay:
    name: ClassVar[str] = "ixopay"
    method: ClassVar[str] = "POST"
    ack_body: ClassVar[str] = "OK"

    def __init__(self, settings: IxopaySettings) -> None:
        secret = settings.shared_secret.get_secret_value().encode()
        self._keyed = hmac.new(secret, digestmod=hashlib.sha512)  # copied for each signature
        self._api_key = settings.api_key
        self._max_skew = settings.max_date_skew
        self._settings = settings
        self.allowed_ips = settings.allowed_ips

    def verify(self, request: Incoming) -> Accepted:
        headers = request.headers
        dates = _dates(headers)
        if "x-signature" in headers:
            self._check_json_signature(request, headers["x-signature"], dates)
            read = _json_reference
        elif authorization := headers.get("authorization") or headers.get("x-authorization"):
            self._check_xml_signature(request, authorization, dates)
            read = _xml_reference
        else:
            raise Unauthorized("no X-Signature or Authorization header")
        self._check_date_skew(dates)
        return proven(lambda: read(request.body), request.uri,
                      keep_headers(headers, _KEPT_HEADERS))

    def follow_up(self, callback: Callback, context: FollowUp) -> list[Fact]:
        try:  # signed, so a body we cannot read is unsupported, never refused
            data = _callback_fields(callback.body)
        except Malformed as exc:
            raise UnsupportedEvent(f"ixopay: {exc.reason}") from None
        result = str(data.get("result", ""))
        if self._settings.verify_with_status_api:
            result = self._status_api_result(str(data.get("uuid", "")), context)
        transaction_type = str(data.get("transactionType", "")).upper()
        kind = EventType.FAILED if result == _FAILED_RESULT else _TYPES.get(
            (transaction_type, result))
        if kind is None:
            raise UnsupportedEvent(f"ixopay {data.get('transactionType')!r} {result!r}")
        try:
            return [_fact(data, kind, result, self._settings.order_id_pattern)]
        except ValueError as exc:  # an amount that is not one
            raise UnsupportedEvent(f"ixopay: {exc}") from None

    def _status_api_result(self, uuid: str, context: FollowUp) -> str:
        settings = self._settings
        if not (settings.api_key and settings.username and settings.password):
            raise ProviderRejected("verify_with_status_api needs api_key, username, password")
        if not _STATUS_API_UUID.fullmatch(uuid):
            raise ProviderRejected(f"ixopay: {uuid[:64]!r} is not a uuid the status API takes")
        context.limit(f"ixopay:{settings.api_key}", _STATUS_API_PER_MINUTE)
        path = f"/api/v3/status/{settings.api_key}/getByUuid/{uuid}"
        date = formatdate(usegmt=True)
        response = context.send(
            "GET", join_url(settings.base_url, path), "ixopay status API",
            auth=(settings.username, settings.password.get_secret_value()),
            headers={"Date": date, "Content-Type": JSON_CONTENT_TYPE,
                     "X-Signature": _signature(self._keyed, "GET", _body_digest(b"", "sha512"),
                                               JSON_CONTENT_TYPE, date, path, False).decode()},
        )
        if response.status_code in (401, 403):
            raise ProviderRejected(f"ixopay status API: HTTP {response.status_code}, "
                                   "check username and password")
        try:
            status = response.json()
        except ValueError:
            raise ProviderUnavailable("ixopay status API: not JSON") from None
        if not status.get("success"):
            if status.get("errorCode") == 1009:
                raise ProviderUnavailable("ixopay status API: rate limited", retry_after=60)
            raise ProviderRejected(f"ixopay status API: {status.get('errorMessage')!r} "
                                   f"(code {status.get('errorCode')!r})")
        result = _STATUS_RESULTS.get(str(status.get("transactionStatus")))
        if result is None:
            raise UnsupportedEvent(f"ixopay status {status.get('transactionStatus')!r}")
        return result

    def _check_json_signature(self, request: Incoming, given: str, dates: list[str]) -> None:
        # Each candidate is compared in constant time; stopping at a match tells a caller
        # only which variant its own, valid, signature used.
        given_bytes = given.encode("utf-8", "surrogateescape")
        for kind in _BODY_HASHES:
            digest = _body_digest(request.body, kind)
            for date in dates:
                expected = _signature(self._keyed, "POST", digest, JSON_CONTENT_TYPE, date,
                                      request.uri, False)
                if hmac.compare_digest(given_bytes, expected):
                    return
        raise Unauthorized("X-Signature does not match")

    def _check_xml_signature(self, request: Incoming, given: str, dates: list[str]) -> None:
        if self._api_key is None:
            raise Unauthorized("legacy XML callback, but no api_key is configured")
        given_bytes = given.strip().removeprefix("Authorization:").strip().encode(
            "utf-8", "surrogateescape")
        key = self._api_key.encode()
        for kind in _BODY_HASHES:
            digest = _body_digest(request.body, kind)
            prefixes = (b"Gateway ", b"IxoPay ") if kind == "md5" else (b"Gateway ",)
            for date in dates:
                signature = _signature(self._keyed, "POST", digest, XML_CONTENT_TYPE, date,
                                       request.uri, True)
                for prefix in prefixes:
                    if hmac.compare_digest(given_bytes, prefix + key + b":" + signature):
                        return
        raise Unauthorized("Authorization signature does not match")

    def _check_date_skew(self, dates: list[str]) -> None:
        if self._max_skew is None:
            return
        now = datetime.now(UTC)
        for date in dates:
            try:
                sent = parsedate_to_datetime(date)
            except (TypeError, ValueError, OverflowError):  # a year of 20 digits overflows
                continue
            if sent.tzinfo is None:
                sent = sent.replace(tzinfo=UTC)
            if abs((now - sent).total_seconds()) <= self._max_skew:
                return
        raise Unauthorized("Date is missing or outside max_date_skew")


def _dates(headers: Mapping[str, str]) -> list[str]:
    """X-Date (the docs' precedence), then Date (the SDK's); an absent one signs as ''."""
    dates = [headers[name] for name in ("x-date", "date") if name in headers]
    return list(dict.fromkeys(dates)) or [""]


def _json_reference(body: bytes) -> str:
    data = load_json_object(body)
    for field in ("result", "transactionType"):
        if not isinstance(data.get(field), str) or not data[field]:
            raise Malformed(f"{field} is missing or not a string")
    return _first_id(data, ("uuid", "merchantTransactionId"))


def _xml_reference(body: bytes) -> str:
    root = _xml_root(body)
    if _local_name(root.tag) != "callback":
        raise Malformed("the XML root is not an IXOPAY callback")
    fields = _xml_fields(root)
    for field in ("result", "transactionType"):
        if not fields.get(field):
            raise Malformed(f"{field} is missing")
    return _first_id(fields, ("referenceId", "transactionId"))


def _xml_root(body: bytes) -> Element:
    try:
        root: Element = ElementTree.fromstring(body)
    except (ElementTree.ParseError, DefusedXmlException, ValueError, LookupError):
        # LookupError: an encoding the XML declaration names that Python does not know
        raise Malformed("body is not well-formed XML") from None
    return root


def _local_name(tag: str) -> str:
    """An element's name without its namespace: IXOPAY's is
    `http://gateway.ixopay.com/Schema/V2/Callback`, each white label has its own, and the
    SDK reads elements by name alone."""
    return tag.rpartition("}")[2]


def _xml_fields(root: Element) -> dict[str, str]:
    """The callback's top-level elements by local name (the first of a repeated one)."""
    fields: dict[str, str] = {}
    for child in root:
        fields.setdefault(_local_name(child.tag), (child.text or "").strip())
    return fields


def _callback_fields(body: bytes) -> dict[str, Any]:
    """The callback's fields, from JSON or from the legacy XML (renamed as in JSON)."""
    if body.lstrip().startswith(b"<"):
        fields: dict[str, Any] = _xml_fields(_xml_root(body))
        fields["uuid"] = fields.pop("referenceId", "")
        fields["merchantTransactionId"] = fields.pop("transactionId", "")
        return fields
    return load_json_object(body)


def order_id_in(merchant_transaction_id: str, pattern: re.Pattern[str] | None) -> str | None:
    """The shop's order in a merchantTransactionId, by the merchant's `order_id_pattern`."""
    match = pattern.fullmatch(merchant_transaction_id) if pattern else None
    return (match.group("order") if match else merchant_transaction_id) or None


def _fact(data: dict[str, Any], kind: EventType, result: str,
          order_pattern: re.Pattern[str] | None = None) -> Fact:
    transaction_type = str(data.get("transactionType", "")).upper()
    # The ingress takes a callback that has merchantTransactionId without uuid: it is the
    # transaction's id then (else every such callback of a merchant is one payment, and a
    # second order's capture a duplicate of the first's).
    uuid = str(data.get("uuid") or "") or f"mtid:{data.get('merchantTransactionId') or ''}"
    chargeback = data.get("chargebackData") or data.get("chargebackReversalData") or {}
    if not isinstance(chargeback, dict):
        chargeback = {}
    original = chargeback.get("originalUuid") or data.get("referenceUuid") or uuid
    currency = str(chargeback.get("currency") or data.get("currency") or "") or None
    amount = chargeback.get("amount", data.get("amount"))
    method = data.get("paymentMethod")
    return Fact(
        type=kind,
        key=f"{uuid}:{transaction_type}:{result}",
        payment_id=str(original),
        transaction_id=uuid,
        order_id=order_id_in(str(chargeback.get("originalMerchantTransactionId")
                               or data.get("merchantTransactionId") or ""), order_pattern),
        amount_minor=to_minor(amount, currency) if amount not in (None, "") else None,
        currency=currency,
        payment_method=str(method).lower() if method else None,
        occurred_at=_datetime(chargeback.get("chargebackDateTime")
                              or chargeback.get("reversalDateTime")),
        provider_status={k: data[k] for k in ("result", "transactionType", "uuid", "code",
                                              "message", "adapterCode") if k in data},
    )


def _datetime(value: object) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        return datetime.fromisoformat(value)
    except ValueError:
        return None


def _first_id(data: Mapping[str, Any], names: tuple[str, ...]) -> str:
    for name in names:
        value = data.get(name)
        if isinstance(value, str) and 0 < len(value) <= 128 and value.isprintable():
            return value
    raise Malformed(f"none of {', '.join(names)} is a usable id")
