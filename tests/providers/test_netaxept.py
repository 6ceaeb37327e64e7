"""Netaxept verification: the `{"TransactionId"}` body and the optional Basic credentials."""

from __future__ import annotations

import pytest
from multidict import CIMultiDict

from shared.errors import Malformed, Unauthorized
from shared.providers.base import Incoming
from shared.providers.netaxept import Netaxept
from shared.settings import NetaxeptSettings
from tests.helpers import basic

USER, PASSWORD = "nets", "callback-password"


def provider(credentials: bool = True) -> Netaxept:
    extra = {"callback_username": USER, "callback_password": PASSWORD} if credentials else {}
    return Netaxept(NetaxeptSettings.model_validate(
        {"merchant_id": "12002835", "token": "t", **extra}))


def request(body: bytes, authorization: str | None = basic(USER, PASSWORD)) -> Incoming:
    headers = CIMultiDict({"Content-Type": "application/json"})
    if authorization is not None:
        headers["Authorization"] = authorization
    return Incoming("POST", "/callbacks/shop/netaxept", "", headers, body, "127.0.0.1")


@pytest.mark.parametrize(
    "transaction_id",
    ["19a2540f-89c9-43bc-b8c4-870712789b5d", "24ec55519f34457ea42f4c5251d7ec45",
     "fdm-medlem-0000025"],
)
def test_accepts_the_ids_netaxept_uses(transaction_id: str) -> None:
    body = f'{{"TransactionId":"{transaction_id}"}}'.encode()
    accepted = provider().verify(request(body))
    assert accepted.reference == transaction_id
    assert "authorization" not in accepted.headers


@pytest.mark.parametrize(
    "authorization",
    [None, basic(USER, "wrong"), basic("other", PASSWORD), "Bearer x", "Basic !!!",
     "Basic " + "bm9jb2xvbg=="],
    ids=["unsigned", "wrong password", "wrong user", "bearer", "not base64", "no colon"],
)
def test_rejects_missing_or_wrong_credentials(authorization: str | None) -> None:
    with pytest.raises(Unauthorized):
        provider().verify(request(b'{"TransactionId":"abc"}', authorization))


def test_without_configured_credentials_none_are_needed() -> None:
    assert provider(credentials=False).verify(request(b'{"TransactionId":"abc"}', None))


@pytest.mark.parametrize(
    "body",
    [b"", b"{}", b"[]", b'{"TransactionId": 5}', b'{"TransactionId": ""}',
     b'{"transactionId": "abc"}', b'{"TransactionId": "../../etc"}',
     b'{"TransactionId": "a b"}', b'{"TransactionId": "' + b"a" * 65 + b'"}',
     b'{"TransactionId": "abc\\n"}', b"\xff\xfe"],
)
def test_rejects_a_body_that_is_not_a_well_formed_id(body: bytes) -> None:
    """Without callback credentials nothing proves Netaxept sent it: 400. With them, it is
    stored as unreadable (a 4xx would lose a callback Netaxept proved it sent)."""
    with pytest.raises(Malformed):
        provider(credentials=False).verify(request(body, None))
    accepted = provider().verify(request(body))
    assert (accepted.reference, bool(accepted.unreadable)) == ("unreadable", True)
