"""The callback builders: what they build is what the real provider verifiers accept."""

from __future__ import annotations

import asyncio
import json
from datetime import datetime
from decimal import Decimal
from typing import Any

import pytest
import redis
from aiohttp.test_utils import TestClient

from shared.errors import Unauthorized
from shared.providers.ifthenpay import Ifthenpay, parse_fields
from shared.providers.ixopay import Ixopay
from shared.providers.netaxept import Netaxept
from shared.providers.payex import Payex
from shared.sandbox.simulators.callbacks import (
    OutgoingCallback,
    ifthenpay_callback,
    ixopay_callback,
    netaxept_callback,
    payex_callback,
    send,
)
from shared.settings import IfthenpaySettings, IxopaySettings, NetaxeptSettings, PayexSettings
from tests.helpers import (
    IFTHENPAY_KEY,
    IXOPAY_SECRET,
    NETAXEPT_PASSWORD,
    NETAXEPT_USER,
    ORDER,
    PAYEX_BODIES,
    PAYMENT,
    queued_callbacks,
)

CAPTURE = f"{PAYMENT}/captures/12345678-1234-1234-1234-123456789012"


@pytest.mark.parametrize("body_hash", ["sha512", "md5"])
def test_ixopay_callback_is_signed_over_the_request_target(body_hash: Any) -> None:
    callback = ixopay_callback("shop-eu", IXOPAY_SECRET, uuid="d94c0d72f3a36e21f16e",
                               merchant_transaction_id="order-1", body_hash=body_hash,
                               extra={"merchantMetaData": "x"})
    assert callback.method == "POST" and callback.path == "/callbacks/shop-eu/ixopay"
    provider = Ixopay(IxopaySettings.model_validate({"shared_secret": IXOPAY_SECRET}))
    assert provider.verify(callback.to_incoming()).reference == "d94c0d72f3a36e21f16e"
    body = json.loads(callback.body)
    assert body["result"] == "OK" and body["amount"] == "9.99"
    assert body["merchantMetaData"] == "x"
    tampered = OutgoingCallback("POST", callback.path, callback.headers, callback.body + b" ")
    with pytest.raises(Unauthorized):
        provider.verify(tampered.to_incoming())


def test_ifthenpay_callback_percent_encodes_every_value() -> None:
    callback = ifthenpay_callback(
        "shop-eu", IFTHENPAY_KEY, order_id="order-1234", amount=Decimal("1234.5"),
        request_id="ab+cd/ef=", entity="99999", reference="123456789", status="PAGO",
        payment_datetime=datetime(2021, 10, 28, 10, 55, 21), payment_method="MB",
    )
    assert callback.method == "GET" and callback.body == b""
    assert callback.path.startswith(f"/callbacks/shop-eu/ifthenpay?key={IFTHENPAY_KEY}&")
    assert "payment_datetime=28-10-2021%2010%3A55%3A21" in callback.path
    provider = Ifthenpay(IfthenpaySettings.model_validate({"anti_phishing_key": IFTHENPAY_KEY}))
    assert provider.verify(callback.to_incoming()).reference == "ab+cd/ef="
    fields = parse_fields(callback.query)
    assert fields["amount"] == "1234.50" and fields["order_id"] == "order-1234"
    assert fields["payment_datetime"] == "28-10-2021 10:55:21" and fields["status"] == "PAGO"


def test_netaxept_callback_carries_only_the_id_and_the_credentials() -> None:
    callback = netaxept_callback("shop-eu", "24ec55519f34457ea42f4c5251d7ec45",
                                 NETAXEPT_USER, NETAXEPT_PASSWORD)
    assert json.loads(callback.body) == {"TransactionId": "24ec55519f34457ea42f4c5251d7ec45"}
    provider = Netaxept(NetaxeptSettings.model_validate({
        "merchant_id": "1", "token": "t", "callback_username": NETAXEPT_USER,
        "callback_password": NETAXEPT_PASSWORD}))
    assert provider.verify(callback.to_incoming()).reference == (
        "24ec55519f34457ea42f4c5251d7ec45")
    with pytest.raises(Unauthorized):
        provider.verify(netaxept_callback("shop-eu", "abc").to_incoming())


PAYEX_SHAPES: dict[str, dict[str, Any]] = {
    "instrument": dict(payment_id=PAYMENT, transaction_id=CAPTURE, number=333333333,
                       payment_number=222222222),
    "payment order v3.0": dict(payment_order_id=ORDER, payment_id=PAYMENT,
                               transaction_id=CAPTURE, number=333333333,
                               payment_number=222222222, instrument="CreditCard"),
    "payment order v3.1": dict(payment_order_id=ORDER, order_reference="549213",
                               number=12345678, instrument="CreditCard"),
}


@pytest.mark.parametrize("shape", PAYEX_SHAPES, ids=PAYEX_SHAPES.keys())
def test_payex_callback_builds_the_documented_shapes(shape: str) -> None:
    callback = payex_callback("shop-eu", **PAYEX_SHAPES[shape])
    assert json.loads(callback.body) == PAYEX_BODIES[shape]
    provider = Payex(PayexSettings.model_validate({"token": "t"}))
    expected = ORDER if "payment_order_id" in PAYEX_SHAPES[shape] else PAYMENT
    assert provider.verify(callback.to_incoming()).reference == expected


def test_payex_callback_refuses_what_is_not_a_psp_path() -> None:
    with pytest.raises(ValueError, match="relative"):
        payex_callback("shop-eu", payment_id="https://evil.example/psp/x")
    with pytest.raises(ValueError, match="names"):
        payex_callback("shop-eu", order_reference="1")


async def test_send_delivers_each_callback_to_the_real_ingress(
    client: TestClient[Any, Any], redis_client: redis.Redis
) -> None:
    callbacks = [
        ixopay_callback("shop-eu", IXOPAY_SECRET, uuid="u1", merchant_transaction_id="o1"),
        ifthenpay_callback("shop-eu", IFTHENPAY_KEY, order_id="o2", amount="33.61",
                           request_id="i2szvoUfPYBMWdSxqO3n"),
        netaxept_callback("shop-eu", "abc123", NETAXEPT_USER, NETAXEPT_PASSWORD),
        payex_callback("shop-eu", payment_order_id=ORDER, order_reference="549213",
                       number=1, instrument="CreditCard"),
    ]
    base = str(client.make_url("/"))
    answers = [await asyncio.to_thread(send, base, callback) for callback in callbacks]
    assert answers == [(200, "OK"), (200, "ok"), (200, "OK"), (200, "OK")]
    queued = queued_callbacks(redis_client)
    assert [c.provider for c in queued] == ["ixopay", "ifthenpay", "netaxept", "payex"]
    assert [c.reference for c in queued] == ["u1", "i2szvoUfPYBMWdSxqO3n", "abc123", ORDER]
