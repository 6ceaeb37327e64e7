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
"""

from __future__ import annotations

import base64
import binascii
import re
from typing import ClassVar

from shared.errors import Malformed, Unauthorized
from shared.providers.base import Accepted, Incoming, load_json_object, same_secret
from shared.settings import NetaxeptSettings

TRANSACTION_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
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
        self.allowed_ips = settings.allowed_ips

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
        data = load_json_object(request.body)
        transaction_id = data.get("TransactionId")
        if not isinstance(transaction_id, str):
            raise Malformed("TransactionId is missing or not a string")
        if not TRANSACTION_ID.fullmatch(transaction_id):
            raise Malformed("TransactionId is not a well-formed id")
        headers = {k: request.headers[k] for k in _KEPT_HEADERS if k in request.headers}
        return Accepted(transaction_id, request.uri, headers)


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
