"""PayEx / Swedbank Pay: the three documented shapes, and every path kept to /psp/... form."""

from __future__ import annotations

import json
from typing import Any

import pytest
from multidict import CIMultiDict

from shared.errors import Malformed
from shared.providers.base import Incoming
from shared.providers.payex import Payex
from shared.settings import PayexSettings
from tests.helpers import CAPTURE, ORDER, PAYEX_BODIES, PAYMENT


def verify(body: dict[str, Any] | bytes) -> str:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    provider = Payex(PayexSettings.model_validate({"token": "t"}))
    incoming = Incoming("POST", "/callbacks/shop/payex", "", CIMultiDict(), raw, "127.0.0.1")
    return provider.verify(incoming).reference


@pytest.mark.parametrize("body", PAYEX_BODIES.values(), ids=PAYEX_BODIES.keys())
def test_accepts_the_three_documented_shapes(body: dict[str, Any]) -> None:
    assert verify(body) == (ORDER if "paymentOrder" in body else PAYMENT)


def test_numbers_may_be_strings_and_unknown_fields_are_ignored() -> None:
    body = {"payment": {"id": PAYMENT, "number": "222222222"},
            "transaction": {"id": CAPTURE, "number": "333333333"}, "future": {"x": 1}}
    assert verify(body) == PAYMENT


GUID = "5adc265f-f87f-4313-577e-08d3dca1a26c"
BAD_PATHS = [
    f"https://evil.example/psp/creditcard/payments/{GUID}",
    f"//evil.example/psp/creditcard/payments/{GUID}",
    f"/psp/creditcard/payments/{GUID}/../../../admin",
    f"/psp/creditcard/payments/{GUID[:-1]}%36",
    f"/psp/creditcard/payments/{GUID}?x=1",
    f"/psp/creditcard/payments/{GUID}#x",
    f"/psp/creditcard/payments/{GUID}/",
    f"/psp/creditcard/payments/{GUID}\n",
    f"psp/creditcard/payments/{GUID}",
    f"/psp/credit card/payments/{GUID}",
    f"/psp/creditcard/payments/{GUID[:-2]}",
    f"/psp/creditcard/other/{GUID}",
    f"/psp/paymentorders/payments/{GUID}",
    f"\\\\evil/psp/creditcard/payments/{GUID}",
    "/psp/creditcard/payments/" + GUID.replace("5", "\uff15", 1),
]


@pytest.mark.parametrize("path", BAD_PATHS)
def test_rejects_any_payment_path_not_of_the_expected_form(path: str) -> None:
    with pytest.raises(Malformed):
        verify({"payment": {"id": path, "number": 1}})


@pytest.mark.parametrize(
    "order_path",
    ["https://evil.example/psp/paymentorders/" + GUID, "/psp/paymentorders/../x",
     f"/psp/paymentorders/{GUID}/paid", f"/psp/creditcard/payments/{GUID}"],
)
def test_rejects_any_payment_order_path_not_of_the_expected_form(order_path: str) -> None:
    with pytest.raises(Malformed):
        verify({"paymentOrder": {"id": order_path}})


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"transaction": {"id": CAPTURE}},
        {"payment": {"id": PAYMENT}, "transaction": {"id": CAPTURE.replace("5adc", "6adc")}},
        {"payment": {"id": PAYMENT}, "transaction": {"id": PAYMENT}},
        {"payment": PAYMENT},
        {"payment": {"id": PAYMENT, "number": True}},
        {"payment": {"id": PAYMENT, "number": -1}},
        {"payment": {"id": PAYMENT, "number": "12a"}},
        {"paymentOrder": {"id": ORDER, "instrument": "../x"}},
        {"paymentOrder": {"id": ORDER}, "orderReference": 5},
        {"paymentOrder": {"id": ORDER}, "orderReference": "a" * 51},
    ],
)
def test_rejects_bodies_outside_the_documented_shapes(body: dict[str, Any]) -> None:
    with pytest.raises(Malformed):
        verify(body)


@pytest.mark.parametrize("raw", [b"", b"null", b"[]", b"{", b'"x"', b"\xff"])
def test_rejects_a_body_that_is_not_a_json_object(raw: bytes) -> None:
    with pytest.raises(Malformed):
        verify(raw)
