"""Property-based bad input on every route: 4xx and nothing enqueued, unless the provider
proved it sent it; then 200 and stored, whatever it holds.

The ingress runs on a real port in a thread; requests go out over raw HTTP/1.1
(http.client) so that methods, headers, query strings, bodies and their framing can be
anything a broken or hostile client could send: headers given twice, over aiohttp's 8 KiB
line limit, non-ASCII, garbage Basic credentials; queries with percent-encoding errors and
parameters given twice; bodies empty, over max_body_bytes, cut short, in UTF-16 or behind
a BOM, "gzip" that is not, JSON of the wrong types, XML that is not IXOPAY's. Routes: the
four callback routes, /healthz, /readyz, /metrics, and unknown paths, merchants and
providers.

No generated request is a whole valid callback. One that carries no valid signature, key
or credential, or a credential header twice, must get a 4xx and leave nothing on the
queue. One that carries a valid one (made here with the test secrets) over a body or query
that is bad by construction must get 200 and be stored, exactly once: refusing what a
provider proved it sent has it retry for days and then give up (design.md §2); the worker
records it as unsupported. Those tests empty the queue after each example. A second
ingress trusts 127.0.0.1 as its proxy, for X-Forwarded-For.

Profiles: `ci` (default, 150 examples a test) and `long` (HYPOTHESIS_PROFILE=long, 2,500
a test). The module ends with one line of figures across all its tests: requests sent,
answered 4xx, 5xx and 2xx, and jobs left on the queue (none: a refused request leaves
none, and the tests of stored ones take theirs).
"""

from __future__ import annotations

import asyncio
import codecs
import contextlib
import gzip
import http.client
import json
import logging
import os
import threading
from collections import Counter
from collections.abc import Collection, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any
from urllib.parse import parse_qsl, quote, unquote

import pytest
import redis
from aiohttp import web
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from ingress.app import create_app
from shared.providers import ixopay
from shared.providers.netaxept import TRANSACTION_ID
from shared.sandbox.redis_server import free_port
from shared.settings import Settings
from tests.helpers import (
    DATE,
    IFTHENPAY_KEY,
    IXOPAY_API_KEY,
    IXOPAY_SECRET,
    MERCHANT_CONFIG,
    NETAXEPT_AUTH,
    ORDER,
    PAYEX_BODIES,
    PAYMENT,
    basic,
    make_settings,
    queued_callbacks,
)

settings.register_profile("ci", max_examples=150, deadline=None,
                          suppress_health_check=[HealthCheck.function_scoped_fixture])
settings.register_profile("long", max_examples=2500, deadline=None,
                          suppress_health_check=[HealthCheck.function_scoped_fixture])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

Header = tuple[str | bytes, str | bytes]
REFUSED = range(400, 500)


# The ingresses, the queue and the figures -------------------------------------------------

@dataclass
class Ingress:
    """An ingress on a real port; every answer it gives is counted in `tally`."""

    port: int
    tally: Counter[str]

    def send(self, method: str, target: str, headers: Sequence[Header], body: bytes,
             *, chunked: bool = False) -> int:
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        try:
            connection.putrequest(method, target, skip_accept_encoding=True)
            for name, value in headers:
                connection.putheader(name, value)
            if chunked:  # 8 KiB chunks: the size is known only once all of it has come
                connection.putheader("Transfer-Encoding", "chunked")
                body = b"".join(b"%x\r\n%s\r\n" % (len(chunk), chunk) for chunk in (
                    body[i:i + 8192] for i in range(0, len(body), 8192))) + b"0\r\n\r\n"
            else:
                connection.putheader("Content-Length", str(len(body)))
            # answered and closed before the body was all sent: read the answer anyway
            with contextlib.suppress(ConnectionError):
                connection.endheaders(body)
            status = connection.getresponse().status
        finally:
            connection.close()
        self.tally["sent"] += 1
        self.tally[f"{status // 100}xx"] += 1
        return status


@pytest.fixture(scope="module")
def queue(redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url)
    client.flushdb()
    yield client
    client.flushdb()
    client.close()


@pytest.fixture(scope="module")
def tally(request: pytest.FixtureRequest, queue: redis.Redis) -> Iterator[Counter[str]]:
    """The answers of all the module's tests; their figures on one line at the end."""
    counts: Counter[str] = Counter()
    yield counts
    jobs = queue.llen("rq:queue:callbacks") + sum(1 for _ in queue.scan_iter("rq:job:*"))
    line = (f"{request.node.name}: {counts['sent']:,} requests sent: {counts['4xx']:,} "
            f"answered 4xx, {counts['5xx']:,} answered 5xx, {counts['2xx']:,} answered 2xx; "
            f"{jobs} jobs left on the queue")
    plugins = request.config.pluginmanager
    reporter, capture = plugins.get_plugin("terminalreporter"), plugins.get_plugin(
        "capturemanager")
    if reporter is not None and capture is not None:
        with capture.global_and_fixture_disabled():  # past the capture of the teardown
            reporter.write_line("\n" + line)  # after the progress dots of -q, if any


@pytest.fixture(scope="module")
def serving() -> Iterator[asyncio.AbstractEventLoop]:
    """An event loop in a thread, for the module's ingresses."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    yield loop
    loop.call_soon_threadsafe(loop.stop)
    thread.join(timeout=10)


def _serve(loop: asyncio.AbstractEventLoop, settings: Settings) -> tuple[int, web.AppRunner]:
    async def start() -> tuple[int, web.AppRunner]:
        port = free_port()
        runner = web.AppRunner(create_app(settings), access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        return port, runner

    return asyncio.run_coroutine_threadsafe(start(), loop).result(timeout=10)


# The test merchants, and one that refuses a Date more than 15 minutes off.
SKEWED = {"ixopay": {"shared_secret": IXOPAY_SECRET, "max_date_skew": "15m"}}


@pytest.fixture(scope="module")
def ingress(redis_url: str, serving: asyncio.AbstractEventLoop, tally: Counter[str]
            ) -> Iterator[Ingress]:
    settings = make_settings(redis_url, merchants={**MERCHANT_CONFIG, "skewed-shop": SKEWED})
    port, runner = _serve(serving, settings)
    yield Ingress(port, tally)
    asyncio.run_coroutine_threadsafe(runner.cleanup(), serving).result(timeout=10)


@pytest.fixture(scope="module")
def proxied(redis_url: str, serving: asyncio.AbstractEventLoop, tally: Counter[str]
            ) -> Iterator[Ingress]:
    """An ingress behind a proxy on 127.0.0.1: it reads X-Forwarded-For from there."""
    settings = make_settings(redis_url, ingress={"trusted_proxies": ["127.0.0.1/32"]})
    port, runner = _serve(serving, settings)
    yield Ingress(port, tally)
    asyncio.run_coroutine_threadsafe(runner.cleanup(), serving).result(timeout=10)


def assert_stored_unreadable(ingress: Ingress, queue: redis.Redis, method: str, target: str,
                             headers: Sequence[Header], body: bytes, *, chunked: bool = False,
                             unreadable: bool = True) -> None:
    """A callback that its signature, key or credentials prove the provider sent: 200 and
    stored, whatever its content (unreadable content is recorded as unsupported)."""
    try:
        status = ingress.send(method, target, headers, body, chunked=chunked)
        assert status == 200, (status, method, target)
        [callback] = queued_callbacks(queue)
        if unreadable:
            assert callback.reference == "unreadable", callback
    finally:
        queue.flushdb()


def assert_refused(ingress: Ingress, queue: redis.Redis, method: str, target: str,
                   headers: Sequence[Header], body: bytes, *, chunked: bool = False,
                   expected: Collection[int] = REFUSED) -> None:
    status = ingress.send(method, target, headers, body, chunked=chunked)
    assert status in expected, (status, method, target)
    assert queue.llen("rq:queue:callbacks") == 0


# Anything, without a valid credential -----------------------------------------------------

printable = st.characters(min_codepoint=32, max_codepoint=255)  # as http.client sends text
header_text = st.text(printable, max_size=80).map(str.strip)
header_name = st.sampled_from(["X-Signature", "Date", "X-Date", "Authorization", "Content-Type",
                               "X-Authorization", "X-Original-URI", "X-Forwarded-For",
                               "Content-Encoding", "Expect", "Transfer-Encoding-X", "X-Junk",
                               "Bad Name", b"X-\xc3\xa9"])
odd_values = st.sampled_from([
    "Basic", "Basic !!!", "Basic bm8tY29sb24=", "Basic /w==", "Basic Og==",
    basic("netaxept-callback", "guess"), "Gateway " + IXOPAY_API_KEY + ":", "IxoPay :",
    "gzip", "deflate", "br", "gzip, gzip", "application/json; charset=utf-16",
    "text/xml; charset=bogus", "application/json; charset=\"", "multipart/form-data",
    "100-continue", "a\x00b", "\x7f", "\t",
])
header_values = st.one_of(
    header_text,
    odd_values,
    st.text(st.characters(exclude_characters="\r\n"), max_size=30).map(  # raw UTF-8
        lambda s: s.encode("utf-8", "surrogatepass")),
    st.integers(8_000, 12_000).map(lambda n: "v" * n),  # about aiohttp's 8 KiB line limit
)
headers = st.lists(st.tuples(header_name, header_values), max_size=6)  # names may repeat
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=40),
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.text(max_size=12), children, max_size=4),
    max_leaves=12,
)
bodies = st.one_of(
    st.binary(max_size=512),
    json_values.map(lambda v: json.dumps(v).encode()),
    st.tuples(json_values, st.sampled_from(["utf-16", "utf-32", "utf-8-sig"])).map(
        lambda t: json.dumps(t[0], ensure_ascii=False).encode(t[1])),
    st.binary(max_size=64).map(lambda b: gzip.compress(b)[:-4]),  # gzip, cut short
    st.just(b"\xef\xbb\xbf{}"),
    st.just(b"{" * 5000),
    st.just(b'<?xml version="1.0" encoding="x-bogus"?><callback/>'),
    st.integers(0, 200_000).map(lambda n: b"x" * n),
)
routes = st.sampled_from(["ixopay", "ifthenpay", "netaxept", "payex",
                          "IXOPAY", "paypal", "ixopay.json", "", "payex/x"])
merchants = st.sampled_from(["shop-eu", "open-shop", "walled-shop", "skewed-shop", "nobody",
                             "SHOP-EU", "a%2Fb", "shop-eu%00", "x/../shop-eu", ""])
methods = st.sampled_from(["GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "HEAD"])
query_junk = st.sampled_from(["%", "%zz", "%ff", "%C3%28", "%ED%A0%80", "%u00e9", "%%", "+",
                              "&&", "==", ";", "%00", "key", "key=", "a=%2"])
query = st.lists(
    st.tuples(st.sampled_from(["key", "apk", "orderId", "amount", "requestId", "status", "id",
                               "chave", "valor", "payment_datetime", "x"]),
              st.text(max_size=30)).map(lambda kv: f"{quote(kv[0])}={quote(kv[1])}")
    | query_junk,
    max_size=6,
).map("&".join)
target_forms = st.sampled_from(["{}", "http://evil.example{}", "{}#frag"])


@given(route=routes, merchant=merchants, method=methods, query=query, headers=headers,
       body=bodies, form=target_forms, chunked=st.booleans())
@example(route="netaxept", merchant="shop-eu", method="POST", query="", form="{}",
         headers=[("Content-Encoding", "gzip"), *NETAXEPT_AUTH.items()], body=b"not gzip",
         chunked=False).via("regression: was 503")
def test_anything_without_valid_credentials_is_refused_with_4xx(
    ingress: Ingress, queue: redis.Redis, route: str, merchant: str, method: str, query: str,
    headers: list[Header], body: bytes, form: str, chunked: bool,
) -> None:
    if route == "netaxept" and merchant in ("open-shop", "walled-shop"):
        merchant = "nobody"  # needs no credentials from here; see the tests of its bodies below
    target = form.format(f"/callbacks/{merchant}/{route}" + (f"?{query}" if query else ""))
    assert_refused(ingress, queue, method, target, headers, body, chunked=chunked)


SERVICES = {"/healthz", "/readyz", "/metrics"}
near_misses = st.sampled_from([
    "/healthz/", "/healthz/x", "/HEALTHZ", "/healthz.json", "/healthz%2F", "/readyz;x",
    "/metrics/../x", "/%2e%2e/metrics", "/", "/favicon.ico", "/callbacks", "/callbacks/",
    "/callbacks/shop-eu", "/callbacks/shop-eu/", "/callbacks/shop-eu/ixopay/",
    "/callbacks/shop-eu/ixopay/x", "/callbacks//ixopay", "/callbacks/shop-eu/IXOPAY",
])
unknown_paths = near_misses | st.text(max_size=30).map(lambda s: "/" + quote(s, safe="")).filter(
    lambda path: unquote(path) not in SERVICES)


@given(path=st.sampled_from(sorted(SERVICES)), method=methods.filter(lambda m: m != "GET"),
       headers=headers, body=st.binary(max_size=256))
@example(path="/healthz", method="POST", headers=[("Expect", b"\x80")], body=b"").via(
    "regression: was 500 (aiohttp's own Expect handler)")
def test_the_service_routes_refuse_every_method_but_get(
    ingress: Ingress, queue: redis.Redis, path: str, method: str, headers: list[Header],
    body: bytes,
) -> None:
    assert_refused(ingress, queue, method, path, headers, body)


@given(path=unknown_paths, method=methods, query=query, headers=headers,
       body=st.binary(max_size=256))
@example(path="/nothing", method="GET", query="", headers=[("Expect", b"\x80")], body=b"").via(
    "regression: was 500 (aiohttp's own Expect handler)")
@example(path="/%0A", method="GET", query="", headers=[("Expect", "\x80")], body=b"").via(
    "regression: was 500 (a path decoding to a newline matched no route)")
def test_unknown_paths_are_refused(
    ingress: Ingress, queue: redis.Redis, path: str, method: str, query: str,
    headers: list[Header], body: bytes,
) -> None:
    assert_refused(ingress, queue, method, path + (f"?{query}" if query else ""), headers, body)


@pytest.mark.parametrize(
    ("target", "headers"),
    [(f"/callbacks/shop-eu/ifthenpay?key={IFTHENPAY_KEY}&x={'a' * 9000}", []),  # too long
     ("/callbacks/shop-eu/netaxept", [("Authorization", NETAXEPT_AUTH["Authorization"] + "\0")])],
    ids=["ifthenpay key", "Basic credentials"],
)
def test_a_request_aiohttp_cannot_parse_is_logged_without_its_bytes(
    ingress: Ingress, queue: redis.Redis, caplog: pytest.LogCaptureFixture, target: str,
    headers: list[Header],
) -> None:
    """aiohttp logs the offending line of a request it cannot parse: not with us, since
    that line may hold the anti-phishing key or Basic credentials (regression)."""
    with caplog.at_level(logging.ERROR, logger="aiohttp.server"):
        assert_refused(ingress, queue, "GET", target, headers, b"", expected={400})
    logged = "\n".join(caplog.messages + [record.exc_text or "" for record in caplog.records])
    assert "aiohttp.server" in {record.name for record in caplog.records}
    assert IFTHENPAY_KEY not in logged
    assert NETAXEPT_AUTH["Authorization"].split()[1] not in logged


# A valid credential over a bad body or query ----------------------------------------------

def broken(document: bytes) -> st.SearchStrategy[bytes]:
    """`document`, a JSON object, made into bytes that are no JSON object at all (400), or
    padded past max_body_bytes (413)."""
    text = document.decode()
    return st.one_of(
        st.integers(0, len(document) - 1).map(lambda n: document[:n]),  # cut short, or empty
        st.sampled_from(["utf-16", "utf-16-be", "utf-32"]).map(text.encode),
        st.just(codecs.BOM_UTF8 + document),
        st.tuples(st.integers(0, len(document)),  # a byte that is no JSON anywhere
                  st.sampled_from([b"\xff", b"\xc3", b"\xed\xa0\x80", b"\x00", b"\x01"])).map(
            lambda t: document[:t[0]] + t[1] + document[t[0]:]),
        st.sampled_from([b"x", b"{}", b",", b"\x00"]).map(lambda tail: document + tail),
        st.just(b"[" + document + b"]"),
        st.just(document.replace(b"{", b'{"deep":' + b"[" * 1100 + b"]" * 1100 + b",", 1)),
        st.integers(65537, 150_000).map(document.ljust),  # valid, but over max_body_bytes: 413
    )


not_a_string = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False, allow_infinity=False),
    st.lists(json_values, max_size=2), st.dictionaries(st.text(max_size=5), json_values,
                                                       max_size=2))
unusable_ids = not_a_string | st.sampled_from(["", "a\nb", "\x00", "\u2028", "x" * 129])

IXOPAY = "/callbacks/shop-eu/ixopay"
IXOPAY_CALLBACK = {"result": "OK", "uuid": "d8a0a3c9e1f5a1b2c3d4", "merchantTransactionId":
                   "order-1887", "transactionType": "DEBIT", "amount": "9.99", "currency": "EUR"}
ixopay_bad_json = st.one_of(
    st.tuples(st.sampled_from(["result", "transactionType"]), not_a_string | st.just("")).map(
        lambda kv: {**IXOPAY_CALLBACK, kv[0]: kv[1]}),
    st.sampled_from(["result", "transactionType"]).map(
        lambda name: {k: v for k, v in IXOPAY_CALLBACK.items() if k != name}),
    st.tuples(unusable_ids, unusable_ids).map(
        lambda ids: {**IXOPAY_CALLBACK, "uuid": ids[0], "merchantTransactionId": ids[1]}),
    st.just({"callback": IXOPAY_CALLBACK}),
).map(lambda data: json.dumps(data).encode()) | broken(json.dumps(IXOPAY_CALLBACK).encode())


def signed(body: bytes, uri: str, body_hash: ixopay.BodyHash) -> list[Header]:
    return [("Content-Type", ixopay.JSON_CONTENT_TYPE), ("Date", DATE),
            ("X-Signature", ixopay.sign(IXOPAY_SECRET, body, DATE, uri, body_hash=body_hash))]


@given(body=ixopay_bad_json, body_hash=st.sampled_from(["sha512", "md5"]), query=query,
       content_type=header_text | odd_values)
def test_ixopay_signed_but_not_a_callback_is_400_or_413(
    ingress: Ingress, queue: redis.Redis, body: bytes, body_hash: ixopay.BodyHash, query: str,
    content_type: str,
) -> None:
    uri = IXOPAY + (f"?{query}" if query else "")
    headers = [*signed(body, uri, body_hash), ("Content-Type", content_type)]
    assert_refused(ingress, queue, "POST", uri, headers, body, expected={400, 413})


XML_NAMESPACE = "http://gateway.ixopay.com/Schema/V2/Callback"
XML_FIELDS = {"result": "OK", "referenceId": "abc123", "transactionId": "order-1",
              "transactionType": "DEBIT"}


def ixopay_xml(fields: dict[str, str], root: str = "callback", namespace: str = XML_NAMESPACE,
               encoding: str = "utf-8") -> bytes:
    """A legacy XML callback; the values go in unescaped, so they may be markup."""
    children = "".join(f"<{name}>{value}</{name}>" for name, value in fields.items())
    return (f'<?xml version="1.0" encoding="{encoding}"?>'
            f'<{root} xmlns="{namespace}">{children}</{root}>').encode()


XML_CALLBACK = ixopay_xml(XML_FIELDS)
unusable_xml_ids = st.sampled_from(["", "  ", "a&#9;b", "x" * 129, "<id>1</id>"])
ixopay_bad_xml = st.one_of(
    st.integers(0, len(XML_CALLBACK) - 1).map(lambda n: XML_CALLBACK[:n]),
    st.tuples(st.sampled_from(["result", "transactionType"]),
              st.sampled_from(["", "  ", "<x>OK</x>", None])).map(
        lambda kv: ixopay_xml({k: v for k, v in {**XML_FIELDS, kv[0]: kv[1]}.items()
                               if v is not None})),
    st.tuples(unusable_xml_ids, unusable_xml_ids).map(
        lambda ids: ixopay_xml({**XML_FIELDS, "referenceId": ids[0], "transactionId": ids[1]})),
    st.sampled_from(["Callback", "callbacks", "result"]).map(
        lambda root: ixopay_xml(XML_FIELDS, root=root)),
    st.sampled_from(["x-bogus", "utf-99", ""]).map(  # an encoding Python does not know
        lambda encoding: ixopay_xml(XML_FIELDS, encoding=encoding)),
    st.sampled_from(['<!DOCTYPE callback [<!ENTITY x "OK">]>',
                     '<!DOCTYPE callback [<!ENTITY x SYSTEM "file:///etc/passwd">]>']).map(
        lambda dtd: XML_CALLBACK.replace(b"?><", f"?>{dtd}<".encode()).replace(
            b">OK<", b">&x;<")),
    st.tuples(st.integers(0, len(XML_CALLBACK)), st.sampled_from([b"\xff", b"\x01", b"<", b"&"]))
    .map(lambda t: XML_CALLBACK[:t[0]] + t[1] + XML_CALLBACK[t[0]:]),
    st.just(json.dumps(IXOPAY_CALLBACK).encode()),
)


def gateway(body: bytes, uri: str, body_hash: ixopay.BodyHash, prefix: str) -> str:
    signature = ixopay.sign(IXOPAY_SECRET, body, DATE, uri, body_hash=body_hash,
                            content_type=ixopay.XML_CONTENT_TYPE, legacy_xml=True)
    return f"{prefix} {IXOPAY_API_KEY}:{signature}"


@given(body=ixopay_bad_xml | ixopay_bad_xml.filter(lambda b: b.isascii()).map(
           lambda b: b.decode().encode("utf-16")),
       body_hash=st.sampled_from(["sha512", "md5"]),
       header=st.sampled_from(["Authorization", "X-Authorization"]))
@example(body=ixopay_xml(XML_FIELDS, encoding="x-bogus"), body_hash="sha512",
         header="Authorization").via("regression: was 503")
def test_ixopay_legacy_xml_signed_but_not_a_callback_is_stored_as_unreadable(
    ingress: Ingress, queue: redis.Redis, body: bytes, body_hash: ixopay.BodyHash, header: str,
) -> None:
    authorization = gateway(body, IXOPAY, body_hash, "Gateway")
    headers = [("Content-Type", ixopay.XML_CONTENT_TYPE), ("Date", DATE), (header, authorization)]
    assert_stored_unreadable(ingress, queue, "POST", IXOPAY, headers, body)


@pytest.mark.parametrize("namespace", ["", "urn:x", XML_NAMESPACE + "/",
                                       "http://gateway.example-brand.com/Schema/V2/Callback"])
def test_ixopay_legacy_xml_in_any_namespace_is_read_by_element_name(
    ingress: Ingress, queue: redis.Redis, namespace: str
) -> None:
    """White-label platforms put the callback in their own namespace; the SDK reads the
    elements by name, and so do we (the signature is what proves the sender)."""
    body = ixopay_xml(XML_FIELDS, namespace=namespace)
    headers = [("Content-Type", ixopay.XML_CONTENT_TYPE), ("Date", DATE),
               ("Authorization", gateway(body, IXOPAY, "sha512", "Gateway"))]
    assert ingress.send("POST", IXOPAY, headers, body) == 200
    [callback] = queued_callbacks(queue)
    assert callback.reference == XML_FIELDS["referenceId"]
    queue.flushdb()


def _recent(date: str) -> bool:
    try:
        sent = parsedate_to_datetime(date)
    except (TypeError, ValueError, OverflowError):
        return False
    sent = sent if sent.tzinfo else sent.replace(tzinfo=UTC)
    return abs((datetime.now(UTC) - sent).total_seconds()) < 3600


stale_dates = (st.sampled_from([DATE, "", "yesterday", "Thu, 23 Mar 2023 10:34:47 +9999",
                                "Thu, 23 Mar 99999999999999999999 10:34:47 GMT"])
               | st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=40).map(
                   str.strip)).filter(lambda d: not _recent(d))


@given(date=stale_dates, other=st.none() | stale_dates, signed_with=st.sampled_from(
    ["Date", "X-Date"]))
@example(date=DATE, other="Thu, 23 Mar 99999999999999999999 10:34:47 GMT",
         signed_with="Date").via("regression: was 503")
def test_ixopay_signed_with_a_stale_or_unreadable_date_is_401_under_max_date_skew(
    ingress: Ingress, queue: redis.Redis, date: str, other: str | None, signed_with: str,
) -> None:
    uri, body = "/callbacks/skewed-shop/ixopay", json.dumps(IXOPAY_CALLBACK).encode()
    headers: list[Header] = [(signed_with, date), ("X-Signature", ixopay.sign(
        IXOPAY_SECRET, body, date, uri))]
    if other is not None:
        headers.append(("X-Date" if signed_with == "Date" else "Date", other))
    assert_refused(ingress, queue, "POST", uri, headers, body, expected={401})


IFTHENPAY = "/callbacks/shop-eu/ifthenpay"
IFTHENPAY_PARAMS = [("key", IFTHENPAY_KEY), ("orderId", "1887"), ("amount", "33.61"),
                    ("requestId", "i2szvoUfPYBMWdSxqO3n"),
                    ("payment_datetime", "03-01-2024 15:15:16"), ("status", "PAGO")]
# The other names of each parameter (README: the official plugins' templates)
IFTHENPAY_ALIASES = {"key": ["key", "apk", "chave", "phish_key"],
                     "orderId": ["orderId", "oid", "id", "order_id"],
                     "amount": ["amount", "val", "valor"],
                     "requestId": ["requestId", "tid", "idpedido", "id_transacao"],
                     "payment_datetime": ["payment_datetime", "datahorapag"],
                     "status": ["status", "estado"]}
# A value with a character no parameter allows (a date may hold a space, and in a request
# id a space stands for "+"), and values that one parameter or another refuses
refused_anywhere = st.tuples(st.text(max_size=8), st.sampled_from(list('<>";,!*()\u00e9\x00')),
                             st.text(max_size=8)).map("".join)
BAD_IFTHENPAY_VALUES = {
    "orderId": ["", "x" * 65, "a b", "\u00e9"],
    "amount": ["", "33,61", "1.234", "-1.00", "1e3", "\uff11.00", "12345678901"],
    "requestId": ["", "x" * 65, "a.b", "a:b"],
    "payment_datetime": ["", "2024-01-03 15:15:16", "03-01-2024 25:00:00",
                         "31-02-2024 10:00:00", "03/01/2024 15:15:16"],
    "status": ["", "PAID", "PAGO ", "DEVOLV\u0130DO", "devolv\u0131do"],
}


@st.composite
def keyed_ifthenpay_queries(draw: st.DrawFn) -> str:
    """A query with the right anti-phishing key, spoiled in one of five ways."""
    params = list(IFTHENPAY_PARAMS)
    how = draw(st.sampled_from(["bad value", "twice", "missing", "undecodable", "too many"]))
    junk: list[str] = []
    if how == "bad value":  # in any parameter but the key
        index = draw(st.integers(1, len(params) - 1))
        name = params[index][0]
        params[index] = (name, draw(st.sampled_from(BAD_IFTHENPAY_VALUES[name]) | refused_anywhere))
    elif how == "twice":  # one parameter again, under any of its names, right or wrong
        name, value = draw(st.sampled_from(params))
        again = draw(st.sampled_from([value, "wrong-anti-phishing-key"]) | st.text(max_size=9))
        params.insert(draw(st.integers(0, len(params))),
                      (draw(st.sampled_from(IFTHENPAY_ALIASES[name])), again))
    elif how == "missing":
        gone = draw(st.sampled_from([{"amount"}, {"orderId", "requestId"}]))
        params = [(name, value) for name, value in params if name not in gone]
    elif how == "undecodable":  # percent-escapes that are not UTF-8
        junk = [draw(st.sampled_from(["x=%C3%28", "%ff=1", "orderId=%ED%A0%80", "x=%C0%AF"]))]
    else:
        junk = ["x=1"] * 64
    pairs = [f"{quote(name)}={quote(value)}" for name, value in params] + junk
    return "&".join(draw(st.permutations(pairs)))


@given(query=keyed_ifthenpay_queries())
@example(query=f"key={IFTHENPAY_KEY}&orderId=1&amount=1.00&status=DEVOLV%C4%B0DO").via(
    "regression: was 200, a refund a worker would have read as a payment")
@example(query=f"key={IFTHENPAY_KEY}&key=wrong-key-value&orderId=1&amount=1.00")
@example(query=f"key=&key={IFTHENPAY_KEY}&orderId=1&amount=1.00").via(
    "regression: was 401, an empty key beside the right one")
def test_ifthenpay_with_the_right_key_but_a_bad_query_is_stored(
    ingress: Ingress, queue: redis.Redis, query: str
) -> None:
    """The key proves ifthenpay sent it: stored, however the rest reads (a parameter given
    twice with the same value reads as once). A second, different key proves nothing: 401."""
    keys = {value for name, value in parse_qsl(query, errors="replace")  # empty ones skipped
            if name in IFTHENPAY_ALIASES["key"]}
    if len(keys) > 1:
        assert_refused(ingress, queue, "GET", f"{IFTHENPAY}?{query}", [], b"", expected={401})
        return
    assert_stored_unreadable(ingress, queue, "GET", f"{IFTHENPAY}?{query}", [], b"",
                             unreadable=False)


transaction_ids = st.one_of(
    st.text(max_size=80).filter(lambda s: not TRANSACTION_ID.fullmatch(s)),
    st.integers(), st.none(), st.lists(st.text(max_size=3), max_size=2),
    st.text(min_size=65, max_size=100, alphabet="abc"),
)


@given(transaction_id=transaction_ids, extra=st.dictionaries(st.text(max_size=8), json_values,
                                                              max_size=3))
def test_netaxept_with_credentials_but_no_well_formed_id_is_400(
    ingress: Ingress, queue: redis.Redis, transaction_id: Any, extra: dict[str, Any]
) -> None:
    body = json.dumps({**extra, "TransactionId": transaction_id}).encode()
    assert_refused(ingress, queue, "POST", "/callbacks/open-shop/netaxept",
                   list(NETAXEPT_AUTH.items()), body)


@given(body=broken(b'{"TransactionId":"24ec55519f34457ea42f4c5251d7ec45"}'),
       chunked=st.booleans())
def test_netaxept_with_credentials_but_a_broken_body_is_stored_or_413(
    ingress: Ingress, queue: redis.Redis, body: bytes, chunked: bool
) -> None:
    """The credentials prove Netaxept sent it: stored however it reads, unless too large;
    without credentials configured (open-shop) the same body is refused with 400 or 413."""
    assert_refused(ingress, queue, "POST", "/callbacks/open-shop/netaxept", [], body,
                   chunked=chunked, expected={400, 413})
    if len(body) > 65536:
        assert_refused(ingress, queue, "POST", "/callbacks/shop-eu/netaxept",
                       list(NETAXEPT_AUTH.items()), body, chunked=chunked, expected={413})
        return
    assert_stored_unreadable(ingress, queue, "POST", "/callbacks/shop-eu/netaxept",
                             list(NETAXEPT_AUTH.items()), body, chunked=chunked,
                             unreadable=False)


_tricks = ["https://evil.example", "//evil.example", "/..", "/%2e%2e", "%2F", "\\", "?x=1", "#",
           "/psp/../", " ", "\n", "\u2215", "@evil.example", "http:"]
bad_paths = st.one_of(
    st.text(max_size=120),
    st.tuples(st.sampled_from([PAYMENT, ORDER]), st.sampled_from(_tricks),
              st.booleans()).map(lambda t: t[0] + t[1] if t[2] else t[1] + t[0]),
)


@given(path=bad_paths, shape=st.sampled_from(["payment", "paymentOrder", "transaction"]))
def test_payex_paths_of_any_other_form_are_400(
    ingress: Ingress, queue: redis.Redis, path: str, shape: str
) -> None:
    body = json.dumps({shape: {"id": path, "number": 1}}).encode()
    assert_refused(ingress, queue, "POST", "/callbacks/shop-eu/payex",
                   [("Content-Type", "application/json")], body)


# What each field of a PayEx callback must not be: None is fine where a field is optional
not_an_object = not_a_string.filter(lambda v: v is not None and not isinstance(v, dict))
PAYEX_BAD = {
    "object": not_an_object,
    "id": not_a_string | bad_paths,
    "number": st.one_of(
        st.booleans(), st.integers(max_value=-1), st.floats(allow_nan=False), st.lists(
            st.integers(), max_size=2),
        st.text(max_size=25).filter(lambda s: not (s.isascii() and s.isdigit() and len(s) <= 20))),
    "instrument": not_an_object | st.sampled_from(["", "1abc", "a b", "x" * 33]),
    "orderReference": not_a_string | st.sampled_from(["", "a b", "x" * 51, "\u00e9"]),
}
_OTHER_CAPTURE = PAYMENT.replace("5adc265f", "00000000") + (
    "/captures/12345678-1234-1234-1234-123456789012")


@st.composite
def spoiled_payex_bodies(draw: st.DrawFn) -> dict[str, Any]:
    """One of the documented shapes with one field of the wrong type or form, or a part
    missing or belonging to another payment."""
    data: dict[str, Any] = json.loads(json.dumps(draw(st.sampled_from(list(
        PAYEX_BODIES.values())))))
    fields = [(node, name) for node, value in data.items() if isinstance(value, dict)
              for name in value] + [(node, None) for node in data]
    how = draw(st.sampled_from(["field", "another payment's", "without payment"]))
    if how == "another payment's" and "transaction" in data:
        data["transaction"]["id"] = _OTHER_CAPTURE
    elif how == "without payment" and "transaction" in data:
        del data["payment"]
    elif how == "without payment":
        del data["paymentOrder"]
    else:
        node, name = draw(st.sampled_from(fields))
        kind = name or ("object" if isinstance(data[node], dict) else node)
        value = draw(PAYEX_BAD[kind])
        if name is None:
            data[node] = value
        else:
            data[node][name] = value
    return data


@given(data=spoiled_payex_bodies())
def test_payex_callbacks_with_a_field_of_the_wrong_type_or_form_are_400(
    ingress: Ingress, queue: redis.Redis, data: dict[str, Any]
) -> None:
    assert_refused(ingress, queue, "POST", "/callbacks/shop-eu/payex",
                   [("Content-Type", "application/json")], json.dumps(data).encode(),
                   expected={400})


@given(data=broken(json.dumps(PAYEX_BODIES["payment order v3.1"]).encode()))
def test_payex_broken_bodies_are_400_or_413(
    ingress: Ingress, queue: redis.Redis, data: bytes
) -> None:
    assert_refused(ingress, queue, "POST", "/callbacks/shop-eu/payex",
                   [("Content-Type", "application/json")], data, expected={400, 413})


# A credential given twice, and X-Forwarded-For --------------------------------------------

NETAXEPT_BODY = b'{"TransactionId":"24ec55519f34457ea42f4c5251d7ec45"}'
IXOPAY_BODY = json.dumps(IXOPAY_CALLBACK).encode()


def whole_callbacks() -> dict[str, tuple[str, bytes, list[Header]]]:
    """Valid callbacks (each one alone would be stored), by the header that is doubled."""
    ixopay_json = signed(IXOPAY_BODY, IXOPAY, "sha512")
    xml: list[Header] = [("Date", DATE),
                         ("Authorization", gateway(XML_CALLBACK, IXOPAY, "sha512", "Gateway"))]
    return {
        "Authorization (Netaxept)": ("/callbacks/shop-eu/netaxept", NETAXEPT_BODY,
                                     list(NETAXEPT_AUTH.items())),
        "X-Signature": (IXOPAY, IXOPAY_BODY, ixopay_json),
        "Date": (IXOPAY, IXOPAY_BODY, ixopay_json),
        "Authorization (IXOPAY XML)": (IXOPAY, XML_CALLBACK, xml),
    }


@given(which=st.sampled_from(sorted(whole_callbacks())),
       other=st.text(st.characters(min_codepoint=33, max_codepoint=126), max_size=80),
       right_first=st.booleans())
@example(which="Authorization (Netaxept)", other=basic("netaxept-callback", "guess"),
         right_first=True).via("regression: was 200")
def test_a_credential_header_given_twice_is_401_whichever_copy_is_right(
    ingress: Ingress, queue: redis.Redis, which: str, other: str, right_first: bool
) -> None:
    uri, body, valid = whole_callbacks()[which]
    name = which.split()[0]
    right = next(value for header, value in valid if header == name)
    copies = [(name, right), (name, other)] if right_first else [(name, other), (name, right)]
    headers = [header for header in valid if header[0] != name] + copies
    assert_refused(ingress, queue, "POST", uri, headers, body, expected={401})


ALLOWED = [f"20.91.170.{n}" for n in range(120, 128)]  # walled-shop's PayEx allowed_ips
hops = st.lists(st.sampled_from([*ALLOWED, "127.0.0.1", "10.0.0.1", "junk", ""]), min_size=1,
                max_size=3).map(", ".join)


@given(made_up=st.lists(hops, max_size=3), same_line=st.booleans(), behind=st.booleans())
@example(made_up=["20.91.170.121"], same_line=False, behind=False).via("regression: was 200")
def test_behind_a_proxy_only_the_address_it_saw_counts_for_allowed_ips(
    proxied: Ingress, queue: redis.Redis, made_up: list[str], same_line: bool, behind: bool
) -> None:
    """Whatever X-Forwarded-For lines the client makes up, the client address is the one
    the proxy appended (on their last line, or on a line of its own), so a PayEx callback
    from 198.51.100.7, outside walled-shop's allowed_ips, is 403."""
    seen = "198.51.100.7" + (", 127.0.0.1" if behind else "")
    lines = [*made_up, seen]
    if same_line and made_up:  # appended to the client's last line, as nginx does
        lines[-2:] = [", ".join(lines[-2:])]
    headers: list[Header] = [("X-Forwarded-For", line) for line in lines]
    assert_refused(proxied, queue, "POST", "/callbacks/walled-shop/payex", headers,
                   json.dumps(PAYEX_BODIES["instrument"]).encode(), expected={403})
