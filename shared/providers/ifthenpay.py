"""ifthenpay (Portugal: Multibanco, MB WAY, Payshop, card, Cofidis, PIX, Pay-by-Link).

Docs: ifthenpay.com/docs/en/guides/callback; the official Magento 2, PrestaShop, OpenCart
and WHMCS modules and the webdados WooCommerce plugin show what arrives in practice.

ifthenpay calls a URL template with GET, filling `[PLACEHOLDERS]` in the query. There is
no body and no signature: the only proof is the anti-phishing key the merchant put in the
template, compared here in constant time (a shop with several ifthenpay accounts may have
several keys). The parameter names are the merchant's choice, so we accept the names of
the docs' example and of every official plugin (see `_ALIASES`); the README gives a
template to paste. Quirks:
- amounts are dot decimals (`21.50`), dates `dd-MM-yyyy HH:mm:ss`, where the legacy
  `[DATA_HORA_PAGAMENTO]` may arrive without the space (`dd-MM-yyyyHH:mm:ss`);
- a request id may contain `+`, which arrives unencoded and so decodes as a space
  (webdados restores it; so do we);
- `status` is `PAGO` (paid) or `DEVOLVIDO` (refunded); no status means paid.
The key is a secret carried in the URL: it is redacted before the request target is
stored, and the ingress never logs query strings. A static key is weak proof, so the
worker confirms a payment with the payments API (`POST /v2/payments/read`) when the
merchant configures a `backoffice_key`. That API lists completed payments only: a paid
callback it does not list yet is retried later, not trusted. Refunds are not listed there
and rest on the key. Amounts are euros; times are Lisbon time.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, tzinfo
from decimal import Decimal
from typing import Any, ClassVar
from urllib.parse import parse_qsl, quote, unquote_plus
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from shared.errors import Malformed, ProviderRejected, ProviderUnavailable, Unauthorized
from shared.models import Callback, EventType, Fact
from shared.money import to_minor
from shared.providers.base import Accepted, FollowUp, Incoming, join_url, same_secret
from shared.settings import IfthenpaySettings

REDACTED = "redacted"

# canonical field -> the query-parameter names it goes by in the docs and the plugins
_ALIASES: dict[str, tuple[str, ...]] = {
    "key": ("key", "apk", "chave", "phish_key", "anti_phishing_key"),
    "order_id": ("orderId", "oid", "id", "order_id"),
    "amount": ("amount", "val", "valor"),
    "request_id": ("requestId", "tid", "request_id", "idpedido", "id_pedido", "id_transacao",
                   "transaction_id"),
    "entity": ("entity", "ent", "entidade"),
    "reference": ("reference", "ref", "referencia"),
    "payment_datetime": ("payment_datetime", "datahorapag"),
    "payment_method": ("payment_method", "pm", "pmt"),
    "status": ("status", "estado"),
    "fee": ("fee", "ifthenpayfee"),
}
_FIELD_OF = {alias: field for field, aliases in _ALIASES.items() for alias in aliases}

_AMOUNT = re.compile(r"[0-9]{1,10}(?:\.[0-9]{1,2})?")
_FORMATS: dict[str, re.Pattern[str]] = {
    "order_id": re.compile(r"[A-Za-z0-9_.:/-]{1,64}"),
    "amount": _AMOUNT,
    "fee": _AMOUNT,
    "request_id": re.compile(r"[A-Za-z0-9+/=_-]{1,64}"),
    "entity": re.compile(r"[0-9]{5}|[A-Z]{2,10}"),
    "reference": re.compile(r"[A-Za-z0-9-]{1,40}"),
    "payment_method": re.compile(r"[A-Za-z0-9_-]{1,32}"),
    # ASCII: under Unicode rules "DEVOLV\u0130DO" (a dotted capital I) matches, and .upper()
    # leaves it unequal to DEVOLVIDO, so a refund would be read as a payment
    "status": re.compile(r"PAGO|DEVOLVIDO", re.IGNORECASE | re.ASCII),
}
_DATETIME_FORMATS = ("%d-%m-%Y %H:%M:%S", "%d-%m-%Y%H:%M:%S")
try:
    _LISBON: tzinfo = ZoneInfo("Europe/Lisbon")
except ZoneInfoNotFoundError:  # no tz database on this host: Lisbon is UTC in winter
    _LISBON = UTC


class Ifthenpay:
    name: ClassVar[str] = "ifthenpay"
    method: ClassVar[str] = "GET"
    ack_body: ClassVar[str] = "ok"

    def __init__(self, settings: IfthenpaySettings) -> None:
        self._keys = [key.get_secret_value().encode() for key in settings.anti_phishing_key]
        self._settings = settings
        self.allowed_ips = settings.allowed_ips

    def verify(self, request: Incoming) -> Accepted:
        fields = parse_fields(request.query)
        key = fields.pop("key", None)
        if key is None:
            raise Unauthorized("no anti-phishing key")
        matched = False
        for expected in self._keys:  # no early exit
            matched |= same_secret(key, expected)
        if not matched:
            raise Unauthorized("wrong anti-phishing key")
        _check_formats(fields)
        reference = fields.get("request_id") or fields.get("reference") or fields.get("order_id")
        if reference is None:
            raise Malformed("no order id, request id or reference")
        if "amount" not in fields:
            raise Malformed("no amount")
        return Accepted(reference, redact_key(request.uri), {})


    def follow_up(self, callback: Callback, context: FollowUp) -> list[Fact]:
        fields = parse_fields(callback.uri.partition("?")[2])
        status = (fields.get("status") or "PAGO").upper()
        kind = EventType.REFUNDED if status == "DEVOLVIDO" else EventType.CAPTURED
        if kind is EventType.CAPTURED and self._settings.backoffice_key is not None:
            self._confirm(fields, context)
        payment_id = fields.get("request_id") or fields.get("reference") or fields["order_id"]
        method = fields.get("payment_method") or (
            "multibanco" if fields.get("entity", "").isdigit() else None)
        when = fields.get("payment_datetime")
        return [Fact(
            type=kind,
            key=f"{status}:{fields['amount']}:{when or ''}",
            payment_id=payment_id,
            transaction_id=payment_id,
            order_id=fields.get("order_id"),
            amount_minor=to_minor(fields["amount"], "EUR"),
            currency="EUR",
            payment_method=method.lower() if method else None,
            occurred_at=parse_datetime(when).replace(tzinfo=_LISBON) if when else None,
            provider_status={k: v for k, v in fields.items() if k != "key"},
        )]

    def _confirm(self, fields: dict[str, str], context: FollowUp) -> None:
        """ProviderUnavailable unless the payments API lists this payment with this amount."""
        assert self._settings.backoffice_key is not None
        query: dict[str, Any] = {"boKey": self._settings.backoffice_key.get_secret_value()}
        for field, name in (("request_id", "requestId"), ("reference", "reference"),
                            ("order_id", "orderId")):
            if field in fields:
                query[name] = fields[field]
                break
        url = join_url(self._settings.base_url, "/v2/payments/read")
        response = context.send("POST", url, "ifthenpay payments API", json=query)
        try:
            answer = response.json()
        except ValueError:
            raise ProviderUnavailable("ifthenpay payments API: not JSON") from None
        if response.status_code != 200 or answer.get("status") != 200:
            raise ProviderRejected(f"ifthenpay payments API refused: {answer.get('message')!r}")
        amount = Decimal(fields["amount"])
        for payment in answer.get("payments") or []:
            if Decimal(str(payment.get("amount"))) == amount:
                return
        raise ProviderUnavailable("ifthenpay payments API does not list the payment yet")


def parse_fields(query: str) -> dict[str, str]:
    """The known fields of an ifthenpay query, by canonical name; Malformed if ambiguous."""
    try:
        pairs = parse_qsl(query, keep_blank_values=True, errors="strict", max_num_fields=64)
    except (ValueError, UnicodeDecodeError):
        raise Malformed("query string cannot be decoded") from None
    fields: dict[str, str] = {}
    for name, value in pairs:
        field = _FIELD_OF.get(name)
        if field is None:
            continue  # plugin bookkeeping such as ec, mv, wc-api, terminal, type
        if field in fields:
            raise Malformed(f"{field} is given more than once")
        fields[field] = value.replace(" ", "+") if field == "request_id" else value
    return fields


def _check_formats(fields: dict[str, str]) -> None:
    for field, value in fields.items():
        pattern = _FORMATS.get(field)
        if pattern is not None and not pattern.fullmatch(value):
            raise Malformed(f"{field} is not in the expected format")
    if "payment_datetime" in fields:
        parse_datetime(fields["payment_datetime"])


def parse_datetime(value: str) -> datetime:
    """`dd-MM-yyyy HH:mm:ss` (or the legacy form without the space), naive local time."""
    for form in _DATETIME_FORMATS:
        try:
            return datetime.strptime(value, form)
        except ValueError:
            continue
    raise Malformed("payment_datetime is not dd-MM-yyyy HH:mm:ss")


def redact_key(uri: str) -> str:
    """The request target with the value of every anti-phishing-key parameter replaced."""
    path, _, query = uri.partition("?")
    if not query:
        return uri
    parts = []
    for part in query.split("&"):
        name, sep, _ = part.partition("=")
        if _FIELD_OF.get(unquote_plus(name, errors="replace")) == "key":
            part = f"{name}{sep or '='}{quote(REDACTED)}"
        parts.append(part)
    return f"{path}?{'&'.join(parts)}"
