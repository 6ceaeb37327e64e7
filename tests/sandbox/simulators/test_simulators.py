"""The provider simulators over real HTTP: each API's answers, fault injection, admin API."""

from __future__ import annotations

import time
from typing import Any
from xml.etree.ElementTree import Element  # the type only: parsing goes through defusedxml

import httpx
import pytest
from defusedxml import ElementTree

from shared.errors import ProviderUnavailable
from shared.http import make_client, send
from shared.sandbox.simulators import Simulators
from shared.sandbox.simulators.client import SimulatorClient
from shared.sandbox.simulators.drip import DRIP_LENGTH

XSI_TYPE = "{http://www.w3.org/2001/XMLSchema-instance}type"
MERCHANT, TOKEN = "12002835", "netaxept+token="
QUERY = "/Netaxept/Query.aspx"


def xml(response: httpx.Response) -> Element:
    assert response.status_code == 200
    assert response.headers["content-type"] == "text/xml; charset=utf-8"
    root: Element = ElementTree.fromstring(response.content)
    return root


def text(root: Element, path: str) -> str | None:
    found = root.find(path)
    return None if found is None else found.text


def query(http: httpx.Client, transaction_id: str, token: str = TOKEN) -> Element:
    params = {"merchantId": MERCHANT, "token": token, "transactionId": transaction_id}
    return xml(http.get(QUERY, params=params))


@pytest.fixture
def netaxept(admin: SimulatorClient) -> SimulatorClient:
    admin.netaxept_credentials(MERCHANT, TOKEN)
    admin.netaxept_transaction("tx-captured", MERCHANT, 1000, currency="NOK",
                               order_number="order-1", authorized=True, captured=700,
                               credited=200)
    admin.netaxept_transaction("tx-declined", MERCHANT, 500, error={
        "operation": "Auth", "code": "99", "source": "Netaxept", "text": "Declined"})
    return admin


@pytest.mark.parametrize("token", ["wrong", "netaxept token="], ids=["wrong", "unencoded +"])
def test_netaxept_answers_wrong_credentials_with_an_authentication_exception(
    http: httpx.Client, netaxept: SimulatorClient, token: str
) -> None:
    root = query(http, "tx-captured", token)
    assert root.tag == "Exception"
    error = root.find("Error")
    assert error is not None and error.get(XSI_TYPE) == "AuthenticationException"
    assert text(root, "Error/Message") == "Authentication failed"


@pytest.mark.parametrize("transaction_id", ["nope", ""])
def test_netaxept_answers_an_unknown_transaction_with_a_query_exception(
    http: httpx.Client, netaxept: SimulatorClient, transaction_id: str
) -> None:
    root = query(http, transaction_id)
    error = root.find("Error")
    assert root.tag == "Exception" and error is not None
    assert error.get(XSI_TYPE) == "QueryException"
    assert text(root, "Error/Message") == "Unable to find transaction"


def test_netaxept_reports_summary_and_cumulative_history(
    http: httpx.Client, netaxept: SimulatorClient
) -> None:
    form = {"merchantId": MERCHANT, "token": TOKEN, "transactionId": "tx-captured"}
    root = xml(http.post("/netaxept/query.aspx", data=form))  # any case, form body
    assert root.tag == "PaymentInfo"
    summary = {child.tag: child.text for child in root.findall("Summary/*")}
    assert summary["AmountCaptured"] == "700" and summary["AmountCredited"] == "200"
    assert summary["Annulled"] == summary["Annuled"] == "false"
    assert summary["Authorized"] == "true" and len(summary["AuthorizationId"] or "") == 6
    operations = [text(line, "Operation") for line in root.iterfind("History/TransactionLogLine")]
    assert operations == ["Register", "Auth", "Capture", "Credit"]
    assert text(root, "OrderInformation/Amount") == "1000"
    assert text(root, "OrderInformation/OrderNumber") == "order-1"
    assert text(root, "CardInformation/PaymentMethod") == "Visa"
    assert root.find("Error") is None and root.find("FutureElement") is not None


def test_netaxept_reports_the_error_of_a_failed_transaction(
    http: httpx.Client, netaxept: SimulatorClient
) -> None:
    root = query(http, "tx-declined")
    assert text(root, "Summary/Authorized") == "false"
    assert root.find("Summary/AuthorizationId") is None
    assert text(root, "Error/ResponseCode") == "99"
    assert text(root, "Error/ResponseSource") == "Netaxept"
    assert text(root, "ErrorLog/PaymentError/ResponseText") == "Declined"


def test_netaxept_element_order_varies(http: httpx.Client, netaxept: SimulatorClient) -> None:
    orders = {tuple(child.tag for child in query(http, "tx-captured")) for _ in range(6)}
    assert len(orders) > 1


PROBLEM = "application/problem+json"


@pytest.fixture
def payex(admin: SimulatorClient) -> dict[str, Any]:
    admin.payex_token("payex-token")
    return admin.payex_payment(1500, transactions=[
        {"type": "Authorization", "state": "Completed"},
        {"type": "Capture", "state": "Completed", "amount": 1500, "payeeReference": "AH1"},
    ])


BEARER = {"Authorization": "Bearer payex-token"}


@pytest.mark.parametrize(("headers", "status", "kind"), [
    ({}, 401, "unauthorized"),
    ({"Authorization": "Basic eDp5"}, 401, "unauthorized"),
    ({"Authorization": "Bearer other"}, 403, "forbidden"),
])
def test_payex_requires_a_registered_bearer_token(
    http: httpx.Client, payex: dict[str, Any], headers: dict[str, str], status: int, kind: str
) -> None:
    response = http.get(payex["path"], headers=headers)
    assert response.status_code == status
    assert response.headers["content-type"].startswith(PROBLEM)
    problem = response.json()
    assert problem["type"] == f"https://api.payex.com/psp/errordetail/{kind}"
    assert problem["status"] == status and problem["title"] and problem["instance"]


def test_payex_payment_with_expanded_transactions(
    http: httpx.Client, payex: dict[str, Any]
) -> None:
    body = http.get(payex["path"], params={"$expand": "transactions"}, headers=BEARER).json()
    payment = body["payment"]
    assert payment["id"] == payex["path"] and payment["number"] == payex["number"]
    assert payment["intent"] == "Authorization" and payment["amount"] == 1500
    assert "remainingCaptureAmount" not in payment  # fully captured
    assert payment["remainingReversalAmount"] == 1500
    listed = payment["transactions"]["transactionList"]
    assert [t["type"] for t in listed] == ["Authorization", "Capture"]
    assert body["operations"] == []
    plain = http.get(payex["path"], headers=BEARER).json()["payment"]
    assert plain["transactions"] == {"id": f"{payex['path']}/transactions"}


def test_payex_transaction_list_and_single_transactions(
    http: httpx.Client, payex: dict[str, Any]
) -> None:
    listing = http.get(f"{payex['path']}/transactions", headers=BEARER).json()
    assert listing["payment"] == payex["path"]
    assert len(listing["transactions"]["transactionList"]) == 2
    capture = payex["transactions"][1]
    single = http.get(capture["path"], headers=BEARER).json()
    assert single["transaction"]["number"] == capture["number"]
    assert single["transaction"]["payeeReference"] == "AH1"
    typed = http.get(capture["typed_path"], headers=BEARER).json()
    assert typed["payment"] == payex["path"]
    assert typed["capture"]["id"] == capture["typed_path"]
    assert typed["capture"]["transaction"]["id"] == capture["path"]
    assert typed["capture"]["transaction"]["state"] == "Completed"
    wrong_kind = capture["typed_path"].replace("/captures/", "/reversals/")
    assert http.get(wrong_kind, headers=BEARER).status_code == 404


def test_payex_payment_order_with_paid_expanded(
    http: httpx.Client, admin: SimulatorClient
) -> None:
    admin.payex_token("payex-token")
    order = admin.payex_payment_order(
        100, status="Paid", order_reference="549213",
        paid={"transactionType": "Authorization", "instrument": "CreditCard"},
        financial_transactions=[{"type": "Capture", "amount": 40}],
    )
    response = http.get(order["path"], params={"$expand": "paid"}, headers=BEARER)
    assert "version=3.1" in response.headers["content-type"]
    body = response.json()["paymentOrder"]
    assert body["status"] == "Paid" and body["orderReference"] == "549213"
    assert body["paid"]["transactionType"] == "Authorization"
    assert body["paid"]["number"] == order["paid"]["number"]
    assert body["remainingCaptureAmount"] == 60 and body["remainingReversalAmount"] == 40
    plain = http.get(order["path"], headers=BEARER).json()["paymentOrder"]
    assert plain["paid"] == {"id": f"{order['path']}/paid"}
    paid = http.get(f"{order['path']}/paid", headers=BEARER).json()
    assert paid["paymentOrder"] == order["path"] and paid["paid"]["instrument"] == "CreditCard"
    financial = http.get(f"{order['path']}/financialtransactions", headers=BEARER).json()
    items = financial["financialTransactions"]["financialTransactionsList"]
    assert [(t["type"], t["amount"]) for t in items] == [("Capture", 40)]


@pytest.mark.parametrize("path", [
    "/psp/creditcard/payments/5adc265f-f87f-4313-577e-08d3dca1a26c",
    "/psp/paymentorders/34761895-d1e4-412a-0a30-08dc43423140",
])
def test_payex_unknown_ids_are_404_problems(
    http: httpx.Client, payex: dict[str, Any], path: str
) -> None:
    response = http.get(path, headers=BEARER)
    assert response.status_code == 404
    assert response.headers["content-type"].startswith(PROBLEM)
    assert response.json()["type"] == "https://api.payex.com/psp/errordetail/notfound"


IXOPAY_AUTH = ("api-user", "api-password")
STATUS = "/api/v3/status/api-key"


@pytest.fixture
def ixopay(admin: SimulatorClient) -> SimulatorClient:
    admin.ixopay_credentials("api-key", *IXOPAY_AUTH)
    admin.ixopay_transaction("d94c0d72f3a36e21f16e", "order-1", transactionType="DEBIT",
                             transactionStatus="SUCCESS", amount="9.99", currency="EUR")
    return admin


@pytest.mark.parametrize("path", ["getByUuid/d94c0d72f3a36e21f16e",
                                  "getByMerchantTransactionId/order-1"])
def test_ixopay_status_of_a_known_transaction(
    http: httpx.Client, ixopay: SimulatorClient, path: str
) -> None:
    response = http.get(f"{STATUS}/{path}", auth=IXOPAY_AUTH)
    assert response.status_code == 200
    assert response.json() == {
        "success": True, "transactionStatus": "SUCCESS", "uuid": "d94c0d72f3a36e21f16e",
        "merchantTransactionId": "order-1", "purchaseId": "sim-d94c0d72f3a36e21f16e",
        "transactionType": "debit", "paymentMethod": "Creditcard", "amount": "9.99",
        "currency": "EUR",
    }


def test_ixopay_unknown_transaction_and_wrong_credentials(
    http: httpx.Client, ixopay: SimulatorClient
) -> None:
    unknown = http.get(f"{STATUS}/getByUuid/nope", auth=IXOPAY_AUTH)
    assert unknown.status_code == 200
    assert unknown.json() == {"success": False, "errorMessage": "Transaction not found",
                              "errorCode": 8001}
    for auth in [("api-user", "wrong"), None]:
        refused = http.get(f"{STATUS}/getByUuid/d94c0d72f3a36e21f16e", auth=auth)
        assert refused.status_code == 401 and refused.json()["success"] is False


def test_ixopay_rate_limits_per_api_user_and_per_transaction(
    http: httpx.Client, ixopay: SimulatorClient
) -> None:
    ixopay.faults("ixopay", rate_limit_per_minute=3)
    codes = [http.get(f"{STATUS}/getByUuid/x{i}", auth=IXOPAY_AUTH).status_code
             for i in range(4)]
    assert codes == [200, 200, 200, 429]
    limited = http.get(f"{STATUS}/getByUuid/x9", auth=IXOPAY_AUTH)
    assert limited.json()["errorCode"] == 1009 and int(limited.headers["Retry-After"]) >= 1
    ixopay.faults("ixopay", rate_limit_per_minute=1000, rate_limit_per_transaction=2)
    path = f"{STATUS}/getByMerchantTransactionId/order-1"
    assert [http.get(path, auth=IXOPAY_AUTH).status_code for _ in range(3)] == [200, 200, 429]
    assert http.get(f"{STATUS}/getByUuid/other", auth=IXOPAY_AUTH).status_code == 200


READ = "/v2/payments/read"


@pytest.fixture
def ifthenpay(admin: SimulatorClient) -> SimulatorClient:
    admin.ifthenpay_backoffice("0000-0000-0000-0000")
    admin.ifthenpay_payment("1887", "33.61", entity="MBWAY", requestId="i2szvoUfPYBMWdSxqO3n",
                            paymentDate="03-01-2024 15:15:16", fee="0.25")
    admin.ifthenpay_payment("order-1234", "1234.56", entity="99999", reference="123456789",
                            paymentDate="28-10-2021 10:55:21")
    admin.ifthenpay_payment("secret", "1.00", boKey="1111-1111-1111-1111")
    return admin


def read(http: httpx.Client, **filters: object) -> dict[str, Any]:
    response = http.post(READ, json={"boKey": "0000-0000-0000-0000", **filters})
    assert response.status_code == 200
    body: dict[str, Any] = response.json()
    return body


def test_ifthenpay_lists_payments_newest_first(
    http: httpx.Client, ifthenpay: SimulatorClient
) -> None:
    body = read(http, entity=None, orderId=None)
    assert body["message"] == "OK" and body["status"] == 200
    assert [p["orderId"] for p in body["payments"]] == ["1887", "order-1234"]
    first = body["payments"][0]
    assert first == {
        "amount": 33.61, "entity": "MBWAY", "fee": 0.25, "netAmount": 33.36,
        "orderId": "1887", "paymentDate": "03-01-2024 15:15:16", "procDate": "20240103",
        "reference": "", "requestId": "i2szvoUfPYBMWdSxqO3n", "subEntity": "", "terminal": "",
    }


@pytest.mark.parametrize(("filters", "expected"), [
    ({"orderId": "1887"}, ["1887"]),
    ({"entity": "99999", "reference": "123456789"}, ["order-1234"]),
    ({"amount": 1234.56}, ["order-1234"]),
    ({"amount": "33.61", "requestId": "i2szvoUfPYBMWdSxqO3n"}, ["1887"]),
    ({"dateStart": "01-01-2024 00:00:00", "dateEnd": "31-12-2024 23:59:59"}, ["1887"]),
    ({"orderId": "secret"}, []),
])
def test_ifthenpay_filters(
    http: httpx.Client, ifthenpay: SimulatorClient, filters: dict[str, object],
    expected: list[str],
) -> None:
    assert [p["orderId"] for p in read(http, **filters)["payments"]] == expected


def test_ifthenpay_wrong_backoffice_key_is_status_403_in_the_body(
    http: httpx.Client, ifthenpay: SimulatorClient
) -> None:
    response = http.post(READ, json={"boKey": "9999-9999-9999-9999"})
    assert response.status_code == 200
    assert response.json()["status"] == 403 and response.json()["payments"] == []


def test_error_rate_one_fails_every_provider(
    http: httpx.Client, admin: SimulatorClient, sims: Simulators
) -> None:
    admin.faults("all", error_rate=1)
    assert http.get(QUERY).status_code == 500
    payex = http.get("/psp/creditcard/payments/x")
    assert payex.status_code == 503 and payex.headers["content-type"].startswith(PROBLEM)
    assert http.get(f"{STATUS}/getByUuid/x").status_code == 503
    assert http.post(READ, json={}).status_code == 503
    stats = admin.stats()
    assert stats["requests"] == {"netaxept": 1, "payex": 1, "ixopay": 1, "ifthenpay": 1}
    assert stats["responses"]["netaxept"] == {"500": 1}
    assert sims.state.served("payex") == 1


def test_latency_delays_answers(http: httpx.Client, admin: SimulatorClient) -> None:
    admin.faults("ifthenpay", latency=0.2)
    started = time.monotonic()
    http.post(READ, json={"boKey": "x"})
    assert time.monotonic() - started >= 0.2
    started = time.monotonic()
    http.get(QUERY)  # other providers are not slowed
    assert time.monotonic() - started < 0.2


def test_timeout_rate_makes_the_client_time_out(
    http: httpx.Client, admin: SimulatorClient
) -> None:
    admin.faults("netaxept", timeout_rate=1, timeout_seconds=5)
    with pytest.raises(httpx.ReadTimeout):
        http.get(QUERY, timeout=0.3)


def test_drip_rate_sends_the_headers_at_once_then_a_byte_at_a_time(
    netaxept: SimulatorClient, sims: Simulators
) -> None:
    """Each byte comes well within the read timeout, so the answer goes on past it; only
    a deadline on the whole request (the workers' `send`) ends it."""
    netaxept.faults("netaxept", drip_rate=1, drip_interval=0.2)
    params = {"merchantId": MERCHANT, "token": TOKEN, "transactionId": "tx-captured"}
    received = b""
    with httpx.Client(base_url=sims.url, timeout=1.0) as http:
        started = time.monotonic()
        with http.stream("GET", QUERY, params=params) as response:
            headers_after = time.monotonic() - started
            for chunk in response.iter_raw():
                received += chunk
                if time.monotonic() - started > 1.5:  # past the read timeout, still dripping
                    break
    assert response.status_code == 200 and headers_after < 0.5
    assert response.headers["content-type"] == "text/xml; charset=utf-8"
    assert int(response.headers["content-length"]) == DRIP_LENGTH
    assert 5 <= len(received) <= 10 and received.startswith(b"<")  # the real answer's start
    with make_client() as client:
        started = time.monotonic()
        with pytest.raises(ProviderUnavailable, match="timed out"):
            send(client, "GET", f"{sims.url}{QUERY}", "dripping Netaxept", within=1.0,
                 params=params)
        assert time.monotonic() - started < 1.8
    assert netaxept.stats()["dripped"] == {"netaxept": 2, "payex": 0, "ixopay": 0,
                                           "ifthenpay": 0}


def test_reset_forgets_data_faults_and_counters(
    http: httpx.Client, netaxept: SimulatorClient
) -> None:
    netaxept.faults("payex", latency=3)
    assert query(http, "tx-captured").tag == "PaymentInfo"
    netaxept.reset()
    assert query(http, "tx-captured").tag == "Exception"
    faults = netaxept.get_faults()
    assert faults["payex"]["latency"] == 0 and faults["ixopay"]["rate_limit_per_minute"] == 60
    assert netaxept.stats()["requests"]["netaxept"] == 1


def test_admin_rejects_bad_bodies(http: httpx.Client) -> None:
    assert http.post("/_sim/netaxept/transactions", json={"id": "x"}).status_code == 400
    assert http.post("/_sim/faults", json={"provider": "stripe"}).status_code == 400
    assert http.post("/_sim/payex/payments", content=b"{").status_code == 400
    bad_type = http.post("/_sim/payex/payments", json={"amount": 1, "transactions": [
        {"type": "Refund"}]})
    assert bad_type.status_code == 400 and "type" in bad_type.json()["error"]
    assert http.post("/_sim/payex/payments/nope/transactions", json={}).status_code == 404


def test_admin_appends_transactions_with_growing_numbers(
    http: httpx.Client, payex: dict[str, Any], admin: SimulatorClient
) -> None:
    added = admin.payex_transaction(payex["id"], "Reversal", amount=500)
    assert added["number"] > payex["transactions"][-1]["number"]
    assert added["typed_path"].endswith(f"/reversals/{added['id']}")
    payment = http.get(payex["path"], headers=BEARER).json()["payment"]
    assert payment["remainingReversalAmount"] == 1000
