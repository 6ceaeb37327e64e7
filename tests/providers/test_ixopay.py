"""IXOPAY verification: the published and SDK-derived vectors, then forged and tampered input."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from pathlib import Path

import pytest
from multidict import CIMultiDict

from shared.errors import Unauthorized
from shared.providers.base import Incoming
from shared.providers.ixopay import JSON_CONTENT_TYPE, Ixopay, order_id_in, sign
from shared.settings import IxopaySettings

FIXTURES = Path(__file__).parent.parent / "fixtures" / "ixopay"
V2_BODY = (FIXTURES / "v2_body.json").read_bytes()
V3_BODY = (FIXTURES / "v3_body.xml").read_bytes()
DATE = "Thu, 23 Mar 2023 10:34:47 GMT"
URI = "/callback?orderId=123"
SECRET = "my-shared-secret"


def provider(**settings: object) -> Ixopay:
    return Ixopay(IxopaySettings.model_validate({"shared_secret": SECRET, **settings}))


def request(body: bytes, headers: dict[str, str], uri: str = URI) -> Incoming:
    return Incoming("POST", uri, uri.partition("?")[2], CIMultiDict(headers), body, "127.0.0.1")


def json_headers(signature: str, date: str = DATE) -> dict[str, str]:
    return {"Content-Type": JSON_CONTENT_TYPE, "Date": date, "X-Signature": signature}


def test_vector_files_are_the_documented_bytes() -> None:
    assert len(V2_BODY) == 227 and len(V3_BODY) == 316


def test_v1_published_signature_of_the_docs_tool() -> None:
    signature = sign("", b"", "Tue, 28 Apr 2026 15:23:40 GMT",
                     "/api/v3/transaction/YOUR-API-KEY-HERE/debit")
    assert signature == (
        "4ICq+hfHFA81dAJHcXoP2/Pb+nkp9GljLe2S+REN0vMBhbQYNQUHIw/YxUTEIWS5Uu5WgdDEc7keMtqS0mpnAA=="
    )


V2A = "ks+ll1lbjjWGa6TSER/IggptSqn5OoD0L/CEqTspupK6Lf75racHhdWGxWosIY1EbHmDyvwF0HBuGxnH+OR6rg=="
V2B = "49zHhm4Eh/eRO2myzIlKGwfbEAJFwuZQJp5MvaSyOn2aJvJi5Dda8tDwc5LiWlXoADPnIDbOcWphLvWI5CE9vQ=="
V2C = "d7K53w846CIlgMJnk1vdm3ggSvgRKFTxcWU2hARPPEMkUL2yjaJX2rVTozmCT7h95rbuP7Q1NTdSDFPP9MxY5A=="


def test_sign_reproduces_the_sdk_vectors() -> None:
    assert sign(SECRET, V2_BODY, DATE, URI) == V2A
    assert sign(SECRET, V2_BODY, DATE, URI, body_hash="md5") == V2B
    assert sign(SECRET, V2_BODY, DATE, URI, content_type="application/json") == V2C


@pytest.mark.parametrize("signature", [V2A, V2B], ids=["v2a-sha512", "v2b-md5"])
def test_accepts_the_vectors_the_sdk_accepts(signature: str) -> None:
    accepted = provider().verify(request(V2_BODY, json_headers(signature)))
    assert accepted.reference == "d94c0d72f3a36e21f16e"
    assert accepted.uri == URI
    assert accepted.headers["x-signature"] == signature


def test_accepts_when_the_request_carries_the_plain_json_content_type() -> None:
    headers = json_headers(V2A) | {"Content-Type": "application/json"}
    assert provider().verify(request(V2_BODY, headers)).reference == "d94c0d72f3a36e21f16e"


@pytest.mark.parametrize("content_type", [JSON_CONTENT_TYPE, "application/json"])
def test_rejects_v2c_signed_over_the_content_type_without_charset(content_type: str) -> None:
    """The SDK hard-codes the charset form in the signed text, so it rejects V2c; so do we."""
    headers = json_headers(V2C) | {"Content-Type": content_type}
    with pytest.raises(Unauthorized):
        provider().verify(request(V2_BODY, headers))


def test_rejects_v2a_when_the_query_is_not_part_of_the_uri() -> None:
    with pytest.raises(Unauthorized):
        provider().verify(request(V2_BODY, json_headers(V2A), uri="/callback"))


V3_MD5 = "crSdx/G/r5OlG1kwOVR3FwXEDB3x2JcUNGOc4j1jG3bfNxEqvTsqiBWasfGIb41LdDM339YmDfMl837wG7Y5Og=="
V3_SHA = "8i4lGC7W0Rtn6e9RZ+ZJEe2e6kppu6+yZgGaJ1jq1jwqi6R0q2GSv02bQX3CX5FTNfaCNTmccUCTY1WOp2oVuA=="


@pytest.mark.parametrize(
    ("header", "value"),
    [
        ("Authorization", f"Gateway my-api-key:{V3_MD5}"),
        ("Authorization", f"Gateway my-api-key:{V3_SHA}"),
        ("X-Authorization", f"Gateway my-api-key:{V3_MD5}"),
        ("Authorization", f"IxoPay my-api-key:{V3_MD5}"),
        ("Authorization", f"Authorization: Gateway my-api-key:{V3_MD5}"),
    ],
)
def test_accepts_legacy_xml_vectors(header: str, value: str) -> None:
    headers = {"Content-Type": "text/xml; charset=utf-8", "Date": DATE, header: value}
    accepted = provider(api_key="my-api-key").verify(request(V3_BODY, headers))
    assert accepted.reference == "d94c0d72f3a36e21f16e"


@pytest.mark.parametrize(
    "value",
    [
        f"IxoPay my-api-key:{V3_SHA}",  # the SDK takes the old prefix with MD5 only
        f"Gateway other-api-key:{V3_MD5}",
        f"Gateway my-api-key:{V2A}",
    ],
)
def test_rejects_legacy_xml_signatures_the_sdk_rejects(value: str) -> None:
    headers = {"Content-Type": "text/xml; charset=utf-8", "Date": DATE, "Authorization": value}
    with pytest.raises(Unauthorized):
        provider(api_key="my-api-key").verify(request(V3_BODY, headers))


def test_rejects_legacy_xml_when_no_api_key_is_configured() -> None:
    headers = {"Date": DATE, "Authorization": f"Gateway my-api-key:{V3_MD5}"}
    with pytest.raises(Unauthorized):
        provider().verify(request(V3_BODY, headers))


def test_rejects_a_tampered_body() -> None:
    tampered = V2_BODY.replace(b'"9.99"', b'"0.01"')
    with pytest.raises(Unauthorized):
        provider().verify(request(tampered, json_headers(V2A)))


def test_rejects_a_signature_made_with_another_secret() -> None:
    forged = sign("not-the-secret", V2_BODY, DATE, URI)
    with pytest.raises(Unauthorized):
        provider().verify(request(V2_BODY, json_headers(forged)))


def test_rejects_an_unsigned_callback() -> None:
    with pytest.raises(Unauthorized):
        provider().verify(request(V2_BODY, {"Content-Type": JSON_CONTENT_TYPE, "Date": DATE}))


def test_rejects_a_changed_date() -> None:
    with pytest.raises(Unauthorized):
        provider().verify(request(V2_BODY, json_headers(V2A, date="Fri, 24 Mar 2023 10:34:47 GMT")))


def test_accepts_the_date_from_x_date_when_date_differs() -> None:
    headers = json_headers(V2A, date="Mon, 01 Jan 2024 00:00:00 GMT") | {"X-Date": DATE}
    assert provider().verify(request(V2_BODY, headers)).reference == "d94c0d72f3a36e21f16e"


def test_an_old_date_is_accepted_without_max_date_skew() -> None:
    """IXOPAY retries for more than a week, possibly with the first Date."""
    assert provider().verify(request(V2_BODY, json_headers(V2A))).reference


def test_max_date_skew_rejects_an_old_date_and_accepts_a_fresh_one() -> None:
    strict = provider(max_date_skew="5m")
    with pytest.raises(Unauthorized):
        strict.verify(request(V2_BODY, json_headers(V2A)))
    fresh = format_datetime(datetime.now(UTC) - timedelta(seconds=30), usegmt=True)
    signature = sign(SECRET, V2_BODY, fresh, URI)
    assert strict.verify(request(V2_BODY, json_headers(signature, date=fresh))).reference


@pytest.mark.parametrize(
    "body",
    [b"not json", b"[1, 2]", b'{"result": "OK"}', b'{"result": "OK", "transactionType": "DEBIT"}',
     b'{"result": 1, "transactionType": "DEBIT", "uuid": "x"}'],
)
def test_a_correctly_signed_but_unreadable_body_is_stored_as_unreadable(body: bytes) -> None:
    """Signed, so IXOPAY sent it: refusing it would have IXOPAY retry for a week and give
    up; it is stored, and the worker records it as unsupported with the reason."""
    headers = json_headers(sign(SECRET, body, DATE, URI))
    accepted = provider().verify(request(body, headers))
    assert (accepted.reference, bool(accepted.unreadable)) == ("unreadable", True)
    with pytest.raises(Unauthorized):  # the same body with a wrong signature: refused
        provider().verify(request(body, json_headers(sign("not-the-secret", body, DATE, URI))))


def test_a_chargeback_is_accepted_with_its_own_uuid_as_reference() -> None:
    body = (b'{"result":"OK","uuid":"cb0001","merchantTransactionId":"auto-313f381aef908f4558e3",'
            b'"transactionType":"CHARGEBACK","chargebackData":{"originalMerchantTransactionId":'
            b'"order-1","amount":9.99,"currency":"EUR"}}')
    accepted = provider().verify(request(body, json_headers(sign(SECRET, body, DATE, URI))))
    assert accepted.reference == "cb0001"


def test_legacy_xml_with_an_entity_bomb_is_unreadable() -> None:
    body = (b'<?xml version="1.0"?><!DOCTYPE x [<!ENTITY a "aaaa"><!ENTITY b "&a;&a;&a;">]>'
            b'<callback xmlns="http://gateway.ixopay.com/Schema/V2/Callback"><result>&b;</result>'
            b"</callback>")
    signature = sign(SECRET, body, DATE, URI, body_hash="md5",
                     content_type="text/xml; charset=utf-8", legacy_xml=True)
    headers = {"Date": DATE, "Authorization": f"Gateway my-api-key:{signature}"}
    accepted = provider(api_key="my-api-key").verify(request(body, headers))
    assert accepted.unreadable == "body is not well-formed XML"  # defusedxml refused it


def test_order_id_pattern_takes_the_order_out_of_the_merchant_transaction_id() -> None:
    """The white labels' WooCommerce and OpenCart plugins send `<order>-<YmdHis><hex>`;
    an id the pattern does not match is the order as it is."""
    pattern = re.compile(r"(?:capture-|void-|refund-)?(?P<order>[^-]+)-[0-9]{14}[0-9a-f]{10}")
    assert order_id_in("capture-2051-20240407143010c1d2e3f4a5", pattern) == "2051"
    assert order_id_in("1187-20240312094501a3f9c2d7e1", pattern) == "1187"
    assert order_id_in("000000142", pattern) == "000000142"
    assert order_id_in("1187-20240312094501a3f9c2d7e1", None) == "1187-20240312094501a3f9c2d7e1"
    assert order_id_in("", pattern) is None
