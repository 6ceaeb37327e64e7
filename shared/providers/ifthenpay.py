"""ifthenpay (Portugal: Multibanco, MB WAY, Payshop, card, Cofidis, PIX, Pay-by-Link).

Docs: ifthenpay.com/docs/en/guides/callback; the official Magento 2, PrestaShop, OpenCart
and WHMCS modules and the webdados WooCommerce plugin show what arrives in practice.

ifthenpay calls a URL template with GET, filling `[PLACEHOLDERS]` in the query. There is
no body and no signature: the only proof is the anti-phishing key the merchant put in the
template, compared here in constant time (a shop with several ifthenpay accounts may have
several keys). The parameter names are the merchant's choice, so by default we accept the
names of the docs' example and of the official plugins (see `_ALIASES`); the README gives a
template to paste. The plugins do not agree on what a name means (`ref` is the Multibanco
reference in one and the order in another), so a merchant names its plugin (`plugin`, the
templates in `PLUGINS`) or its own names (`parameters`). Quirks:
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
from collections.abc import Collection, Mapping
from datetime import UTC, datetime, tzinfo
from decimal import Decimal
from typing import Any, ClassVar
from urllib.parse import parse_qsl, quote, unquote_plus
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from shared.errors import (
    Malformed,
    ProviderRejected,
    ProviderUnavailable,
    Unauthorized,
    UnsupportedEvent,
)
from shared.models import Callback, EventType, Fact
from shared.money import to_minor
from shared.providers.base import Accepted, FollowUp, Incoming, join_url, proven, same_secret
from shared.settings import IfthenpayField, IfthenpayPlugin, IfthenpaySettings

REDACTED = "redacted"

# canonical field -> the query-parameter names it goes by in the docs and the plugins, where
# they do not conflict: the default for a merchant that names neither plugin nor parameters
_ALIASES: dict[IfthenpayField, tuple[str, ...]] = {
    "key": ("key", "apk", "chave", "phish_key", "anti_phishing_key"),
    "order_id": ("orderId", "oid", "id", "order_id"),
    "amount": ("amount", "val", "valor", "amt"),
    "request_id": ("requestId", "tid", "request_id", "idpedido", "id_pedido", "id_transacao",
                   "transaction_id"),
    "entity": ("entity", "ent", "entidade"),
    "reference": ("reference", "ref", "referencia"),
    "payment_datetime": ("payment_datetime", "datahorapag"),
    "payment_method": ("payment_method", "pm", "pmt"),
    "status": ("status", "estado"),
    "fee": ("fee", "ifthenpayfee"),
}
Names = dict[str, IfthenpayField]  # query parameter -> what it means
DEFAULT_NAMES: Names = {alias: field
                        for field, aliases in _ALIASES.items() for alias in aliases}

# Each official plugin's callback URL templates, as query parameter -> meaning (the README
# has the templates and the files they were read from). Where one plugin gives a name two
# meanings (webdados' `referencia`: the Multibanco reference, or the order in its MB WAY
# template), it has one template per method, told apart by a parameter only that one has:
# (that parameter, names); the last template, with None, takes every other callback.
# Parameters a template does not name are plugin bookkeeping (ec, mv, p, route, scp, ...).
_WEBDADOS_NEW: Names = {
    "key": "key", "id": "order_id", "orderId": "order_id", "amount": "amount",
    "payment_datetime": "payment_datetime", "status": "status",
    "payment_method": "payment_method", "request_id": "request_id",
    "requestId": "request_id", "ifthenpayfee": "fee"}
_LEGACY: Names = {"chave": "key", "valor": "amount", "datahorapag": "payment_datetime",
                  "estado": "status", "ifthenpayfee": "fee"}
_MODULES: Names = {"apk": "key", "oid": "order_id", "ent": "entity", "ref": "reference",
                   "tid": "request_id", "val": "amount", "fee": "fee", "pm": "payment_method"}
_BY_REFERENCE: Names = {"apk": "key", "amount": "amount", "reference": "order_id"}
_GATEWAY_LINK: Names = {"apk": "key", "ref": "order_id", "val": "amount",
                        "mtd": "payment_method", "req": "request_id"}
PLUGINS: dict[IfthenpayPlugin, tuple[tuple[str | None, Names], ...]] = {
    "webdados": (
        ("entidade", {**_LEGACY, "entidade": "entity", "referencia": "reference"}),
        ("id_cliente", {**_LEGACY, "id_cliente": "order_id", "id_transacao": "request_id",
                        "referencia": "reference"}),
        ("idpedido", {**_LEGACY, "referencia": "order_id", "idpedido": "request_id"}),
        (None, _WEBDADOS_NEW)),
    "magento2": ((None, {k: v for k, v in _MODULES.items() if k not in ("pm", "fee")}),),
    "whmcs": ((None, _MODULES),),
    "prestashop": ((None, _MODULES),),
    "prestashop16": (
        ("entidade", {**_LEGACY, "entidade": "entity", "referencia": "reference"}),
        (None, {**_LEGACY, "referencia": "order_id", "idpedido": "request_id"})),
    "opencart3": ((None, _MODULES),),
    "opencart4": ((None, {"phish_key": "key", "order_id": "order_id", "amount": "amount",
                          "reference": "reference", "transaction_id": "request_id",
                          "pmt": "payment_method"}),),
    "virtuemart": ((None, {"apk": "key", "oid": "order_id", "amt": "amount",
                           "pmt": "payment_method"}),),
    "odoo": ((None, _BY_REFERENCE),),
    "moodle": ((None, _BY_REFERENCE),),
    "surecart": ((None, {**_GATEWAY_LINK, "order_id": "order_id", "amount": "amount",
                         "request_id": "request_id", "entity": "entity",
                         "reference": "reference", "paid_at": "payment_datetime"}),),
    "memberpress": ((None, _GATEWAY_LINK),),
}

_REFERENCES = ("request_id", "reference", "order_id")  # the stored reference: the first there
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
        self._templates: tuple[tuple[str | None, Names], ...] = (
            PLUGINS[settings.plugin] if settings.plugin else
            ((None, settings.parameters or DEFAULT_NAMES),))
        self._key_names = frozenset(name for _, names in self._templates
                                    for name, field in names.items() if field == "key")
        # redacted under every name a key goes by, the merchant's and the default ones
        self._redacted_names = self._key_names | set(_ALIASES["key"])
        self._markers = [(re.compile(rf"(?:^|&){re.escape(marker)}="), names)
                         for marker, names in self._templates[:-1] if marker is not None]
        self.allowed_ips = settings.allowed_ips

    def _names(self, query: str) -> Names:
        """The template this callback was made from: the first whose marking parameter it
        carries, else the last."""
        for marker, names in self._markers:
            if marker.search(query):
                return names
        return self._templates[-1][1]

    def verify(self, request: Incoming) -> Accepted:
        pairs, unreadable = query_pairs(request.query)  # parsed once, for the key and the rest
        key = key_of(pairs, self._key_names)
        matched = False
        for expected in self._keys:  # no early exit
            matched |= same_secret(key, expected)
        if not matched:
            raise Unauthorized("wrong anti-phishing key")
        return proven(lambda: self._reference(request.query, pairs, unreadable),
                      redact_key(request.uri, self._redacted_names), {})

    def _reference(self, query: str, pairs: Pairs, unreadable: str | None) -> str:
        fields = self._fields(query, pairs, unreadable)
        return next(fields[name] for name in _REFERENCES if name in fields)

    def _fields(self, query: str, pairs: Pairs | None = None,
                unreadable: str | None = None) -> dict[str, str]:
        """The callback's fields by meaning, checked; Malformed if unreadable. `pairs` and
        `unreadable`: the query already parsed by `query_pairs`."""
        if pairs is None:
            pairs, unreadable = query_pairs(query)
        if unreadable is not None:
            raise Malformed(unreadable)
        fields = fields_of(pairs, self._names(query))
        fields.pop("key", None)
        _check_formats(fields)
        if fields.keys().isdisjoint(_REFERENCES):
            raise Malformed("no order id, request id or reference")
        if "amount" not in fields:
            raise Malformed("no amount")
        return fields

    def follow_up(self, callback: Callback, context: FollowUp) -> list[Fact]:
        try:  # the key proved the sender: a query we cannot read is unsupported
            fields = self._fields(callback.uri.partition("?")[2])
        except Malformed as exc:
            raise UnsupportedEvent(f"ifthenpay: {exc.reason}") from None
        status = (fields.get("status") or "PAGO").upper()
        kind = EventType.REFUNDED if status == "DEVOLVIDO" else EventType.CAPTURED
        if kind is EventType.CAPTURED and self._settings.backoffice_key is not None:
            self._confirm(fields, context)
        payment_id = next(fields[name] for name in _REFERENCES if name in fields)
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


Pairs = list[tuple[str, str]]


def query_pairs(query: str) -> tuple[Pairs, str | None]:
    """The query's name-value pairs, and why the query cannot be read, if it cannot (not
    UTF-8, too many parameters): then the pairs are decoded leniently, good for finding
    the key and nothing else."""
    try:
        return parse_qsl(query, keep_blank_values=True, errors="strict",
                         max_num_fields=64), None
    except (ValueError, UnicodeDecodeError):
        return (parse_qsl(query, keep_blank_values=True, errors="replace"),
                "query string cannot be decoded")


def parse_fields(query: str, names: Mapping[str, str] = DEFAULT_NAMES) -> dict[str, str]:
    """The known fields of an ifthenpay query, by meaning (`names`: parameter -> meaning);
    Malformed if it cannot be read or is ambiguous."""
    pairs, unreadable = query_pairs(query)
    if unreadable is not None:
        raise Malformed(unreadable)
    return fields_of(pairs, names)


def fields_of(pairs: Pairs, names: Mapping[str, str]) -> dict[str, str]:
    """The pairs by meaning. An empty value counts as absent (a placeholder ifthenpay does
    not fill for this method), and two parameters of one meaning must agree."""
    fields: dict[str, str] = {}
    for name, value in pairs:
        field = names.get(name)
        if field is None or (value == "" and field != "key"):
            continue  # plugin bookkeeping such as ec, mv, wc-api, terminal, type
        if field == "request_id":
            value = value.replace(" ", "+")
        if fields.get(field, value) != value:
            raise Malformed(f"{field} is given more than once, with different values")
        fields[field] = value
    return fields


def key_of(pairs: Pairs, key_names: Collection[str]) -> str:
    """The anti-phishing key among the query's pairs, read apart from the other parameters
    (which may be unreadable); Unauthorized unless there is exactly one non-empty value."""
    keys = {value for name, value in pairs if name in key_names and value}
    if len(keys) != 1:
        raise Unauthorized("no anti-phishing key" if not keys else "two anti-phishing keys")
    return keys.pop()


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


def redact_key(uri: str, key_names: Collection[str] = _ALIASES["key"]) -> str:
    """The request target with the value of every anti-phishing-key parameter replaced
    (`key_names`: the names the merchant's templates give the key)."""
    path, _, query = uri.partition("?")
    if not query:
        return uri
    parts = []
    for part in query.split("&"):
        name, sep, _ = part.partition("=")
        if unquote_plus(name, errors="replace") in key_names:
            part = f"{name}{sep or '='}{quote(REDACTED)}"
        parts.append(part)
    return f"{path}?{'&'.join(parts)}"
