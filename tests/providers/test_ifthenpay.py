"""ifthenpay verification: the docs' examples and the official plugins' URL templates."""

from __future__ import annotations

from typing import get_args
from urllib.parse import quote

import pytest
from multidict import CIMultiDict

from shared.errors import Malformed, Unauthorized
from shared.providers.base import Incoming
from shared.providers.ifthenpay import PLUGINS, Ifthenpay, parse_fields, redact_key
from shared.settings import IfthenpayPlugin, IfthenpaySettings

KEY = "my_anti_phishing_key"


def provider(keys: object = KEY) -> Ifthenpay:
    return Ifthenpay(IfthenpaySettings.model_validate({"anti_phishing_key": keys}))


def request(query: str, path: str = "/callbacks/shop-eu/ifthenpay") -> Incoming:
    uri = f"{path}?{query}"
    return Incoming("GET", uri, query, CIMultiDict(), b"", "127.0.0.1")


DT = quote("28-10-2021 10:55:21")
ACCEPTED = {
    "docs MB WAY": (f"key={KEY}&orderId=1887&amount=33.61&requestId=i2szvoUfPYBMWdSxqO3n"
                    f"&payment_datetime={quote('03-01-2024 15:15:16')}", "i2szvoUfPYBMWdSxqO3n"),
    "docs Multibanco": (f"key={KEY}&orderId=order-1234&amount=1234.56"
                        f"&requestId=5Qd8gtWLAEUJ6n0lkS5g&entity=99999&reference=123456789"
                        f"&payment_datetime={DT}", "5Qd8gtWLAEUJ6n0lkS5g"),
    "docs card": (f"key={KEY}&id=1234&amount=21.50&payment_datetime={DT}&payment_method=CCARD",
                  "1234"),
    "docs Payshop": (f"anti_phishing_key={KEY}&order_id=12345&reference=1021600051424"
                     f"&amount=5.00&payment_datetime={DT}", "1021600051424"),
    "space as plus": (f"key={KEY}&orderId=1&amount=1.00&payment_datetime=28-10-2021+10:55:21",
                      "1"),
    "magento multibanco": (f"ec=magento&mv=2.4&pm=multibanco&apk={KEY}&oid=000000123"
                           "&ent=11249&ref=123456789&val=10.00", "123456789"),
    "magento mbway": (f"ec=magento&mv=2.4&pm=mbway&apk={KEY}&oid=000000123"
                      "&tid=i2szvoUfPYBMWdSxqO3n&val=10.00", "i2szvoUfPYBMWdSxqO3n"),
    "prestashop": (f"type=offline&ec=ps&mv=1.7&p=multibanco&apk={KEY}&oid=77&ent=11249"
                   "&ref=123456789&val=10.00&pm=MB", "123456789"),
    "whmcs": (f"ec=whmcs&mv=8&apk={KEY}&oid=42&ent=11249&ref=123456789&val=10.00&fee=0.86"
              "&pm=MB", "123456789"),
    "opencart": (f"route=x&phish_key={KEY}&order_id=42&amount=10.00&reference=123456789"
                 "&transaction_id=abc123&pmt=CCARD", "abc123"),
    "webdados multibanco": (f"wc-api=WC_Multibanco_IfThen_Webdados&chave={KEY}&entidade=11249"
                            "&referencia=123456789&valor=10.00&datahorapag=28-10-202110:55:21"
                            "&terminal=T1&ifthenpayfee=0.86", "123456789"),
    "webdados mbway refund": (f"wc-api=WC_MBWAY_IfThen_Webdados&chave={KEY}&referencia=42"
                              "&idpedido=abc+def&valor=10.00&estado=DEVOLVIDO", "abc+def"),
    "webdados card": (f"wc-api=WC_CreditCard_IfThen_Webdados&key={KEY}&id=42&amount=10.00"
                      f"&payment_datetime={DT}&status=PAGO&request_id=R1", "R1"),
}


@pytest.mark.parametrize(("query", "reference"), ACCEPTED.values(), ids=ACCEPTED.keys())
def test_accepts_documented_and_plugin_callbacks(query: str, reference: str) -> None:
    accepted = provider().verify(request(query))
    assert accepted.reference == reference
    assert KEY not in accepted.uri
    assert accepted.headers == {}


def test_the_key_is_redacted_but_everything_else_is_kept_byte_for_byte() -> None:
    query = f"wc-api=X&chave={KEY}&valor=10.00&referencia=123456789&x=%41+b"
    accepted = provider().verify(request(query))
    assert accepted.uri == ("/callbacks/shop-eu/ifthenpay?wc-api=X&chave=redacted&valor=10.00"
                            "&referencia=123456789&x=%41+b")


def test_redaction_catches_an_encoded_parameter_name() -> None:
    assert redact_key(f"/p?k%65y={KEY}&amount=1") == "/p?k%65y=redacted&amount=1"


def test_any_of_several_keys_is_accepted() -> None:
    several = provider(["first-key-of-the-shop", KEY])
    assert several.verify(request(f"key={KEY}&orderId=1&amount=1.00")).reference == "1"


@pytest.mark.parametrize(
    "query",
    ["orderId=1&amount=1.00", "key=wrong-key-entirely&orderId=1&amount=1.00",
     f"key={KEY}x&orderId=1&amount=1.00", "key=&orderId=1&amount=1.00",
     f"key={KEY[:-1]}&orderId=1&amount=1.00"],
    ids=["unsigned", "forged", "longer", "empty", "prefix"],
)
def test_rejects_a_missing_or_wrong_key(query: str) -> None:
    with pytest.raises(Unauthorized):
        provider().verify(request(query))


@pytest.mark.parametrize(
    "query",
    [
        "orderId=1&amount=33,61", "orderId=1&amount=1.234", "orderId=1&amount=-1",
        "orderId=1&amount=", "orderId=1", "amount=1.00",
        "orderId=1&amount=1.00&payment_datetime=2024-01-03 15:15:16",
        "orderId=1&amount=1.00&payment_datetime=32-01-2024 15:15:16",
        "orderId=1&amount=1.00&status=PENDING", "orderId=1&amount=1.00&entity=1234",
        "orderId=1&orderId=2&amount=1.00", "orderId=1&id=2&amount=1.00",
        "orderId=<script>&amount=1.00", "orderId=1&amount=1.00&requestId=%FF%FE",
    ],
)
def test_stores_malformed_fields_once_the_key_is_right(query: str) -> None:
    """The key proves ifthenpay sent it: a 4xx would have ifthenpay retry for days, so it
    is accepted as unreadable (the worker records it as unsupported, with the reason)."""
    accepted = provider().verify(request(f"key={KEY}&{query}"))
    assert accepted.unreadable
    assert KEY not in accepted.uri
    with pytest.raises(Malformed):  # the worker's reading: unsupported, with this reason
        provider()._fields(query)


def test_two_different_keys_are_refused_the_same_key_twice_is_not() -> None:
    with pytest.raises(Unauthorized):
        provider().verify(request(f"key={KEY}&chave=other-key-value&orderId=1&amount=1.00"))
    with pytest.raises(Unauthorized):
        provider().verify(request(f"key=other-key-value&chave={KEY}&orderId=1&amount=1.00"))
    accepted = provider().verify(request(f"key={KEY}&chave={KEY}&orderId=1&amount=1.00"))
    assert (accepted.reference, accepted.unreadable) == ("1", None)


def test_a_plus_in_a_request_id_survives() -> None:
    assert parse_fields("requestId=ab+cd%2Bef")["request_id"] == "ab+cd+ef"


def plugin_provider(plugin: str | None = None, **settings: object) -> Ifthenpay:
    return Ifthenpay(IfthenpaySettings.model_validate(
        {"anti_phishing_key": KEY, "plugin": plugin, **settings}))


def test_every_plugin_the_settings_name_has_templates() -> None:
    assert set(PLUGINS) == set(get_args(IfthenpayPlugin))
    for templates in PLUGINS.values():
        assert templates[-1][0] is None  # the last one takes every other callback
        assert all(marker for marker, _ in templates[:-1])
        assert all("key" in names.values() and "amount" in names.values()
                   for _, names in templates)


def test_one_plugin_one_name_two_meanings_told_apart_by_the_template() -> None:
    """webdados: `referencia` is the Multibanco reference, and the order in MB WAY."""
    webdados = plugin_provider("webdados")
    multibanco = webdados._fields(f"chave={KEY}&entidade=11604&referencia=999999999"
                                  "&valor=21.50")
    mbway = webdados._fields(f"chave={KEY}&referencia=4521&idpedido=abc&valor=34.90")
    assert (multibanco.get("order_id"), multibanco["reference"]) == (None, "999999999")
    assert (mbway["order_id"], mbway["request_id"], mbway.get("reference")) == (
        "4521", "abc", None)


def test_the_plugin_decides_what_ref_means() -> None:
    query = f"ref=INV/2025/00012&apk={KEY}&val=12.30&mtd=MBWAY&req=R1"
    assert plugin_provider("memberpress")._fields(query)["order_id"] == "INV/2025/00012"
    with pytest.raises(Malformed):  # the default: ref is a Multibanco reference, no slashes
        provider()._fields(query)


def test_parameters_name_a_template_of_ones_own_and_its_key_is_redacted() -> None:
    own = plugin_provider(parameters={"segredo": "key", "encomenda": "order_id",
                                      "total": "amount"})
    accepted = own.verify(request(f"segredo={KEY}&encomenda=A-1&total=5.00&key=x"))
    assert (accepted.reference, accepted.unreadable) == ("A-1", None)
    assert KEY not in accepted.uri and "segredo=redacted" in accepted.uri
    with pytest.raises(Unauthorized):  # `key` is not a key name here
        own.verify(request(f"key={KEY}&encomenda=A-1&total=5.00"))


def test_each_plugins_key_name_is_redacted_and_the_default_ones_too() -> None:
    for plugin, templates in PLUGINS.items():
        names = {name for _, template in templates for name, field in template.items()
                 if field == "key"}
        for name in names:
            accepted = plugin_provider(plugin).verify(
                request(f"{name}={KEY}&oid=1&order_id=1&id=1&referencia=1&reference=1"
                        f"&val=1.00&amount=1.00&valor=1.00&amt=1.00&key={KEY}&chave={KEY}"))
            assert KEY not in accepted.uri, (plugin, name)  # nor under the default names
