"""`payhooks bench ingress`: how many callbacks/s one ingress process takes, next to a bare handler.

For each provider the benchmark builds 1,000 distinct valid callbacks (a fresh id in each,
IXOPAY ones signed), and `wrk` cycles through them with a Lua script, first against a bare
aiohttp server on uvloop that reads the body and answers `OK`, then against the real
ingress (`payhooks ingress`, canonical log line on, in JSON, to /dev/null). The ratio of
the two throughputs is the share of a core's plain HTTP capacity the ingress keeps while it
verifies, builds the RQ job and waits for Redis. Each measured run follows a 1 s warm-up,
and the bare run comes right before the ingress run of the same provider, so the two are
close in time. Latencies are wrk's (`--latency`), per request, under that load.

Cores on a 2-core machine: both servers are pinned to the first CPU (only one is loaded at
a time), and wrk and our own Redis (no persistence) share the second, so the server's core
runs nothing but the Python process being measured. Redis's work counts as I/O wait for
the ingress, as it would with Redis on another host.

A run fails (exit code 1) when any answer is not 2xx, a socket error occurs, or Redis holds
fewer jobs on `rq:queue:callbacks` than the ingress answered 2xx: every request is valid.
The speed target (IXOPAY ratio >= 0.50, p99 <= 10 ms) is reported, not enforced.
"""

from __future__ import annotations

import contextlib
import functools
import http.client
import json
import os
import platform
import re
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from email.utils import formatdate
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import redis
from aiohttp import web

from shared.providers import ixopay
from shared.redis_server import RedisServer, free_port
from shared.settings import load_settings, settings_from_dict

MERCHANT = "bench"
IXOPAY_SECRET = "bench-ixopay-shared-secret"
IFTHENPAY_KEY = "bench-anti-phishing-key"
REQUESTS_PER_PROVIDER = 1000
WARMUP_SECONDS = 1.0
TARGET_RATIO = 0.50
TARGET_P99_MS = 10.0
_PROJECT = Path(__file__).resolve().parent.parent
_UNIT_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0, "h": 3_600_000.0}
_LUA_SCRIPT = """\
local requests, count, index = {}, 0, 0
function init(args)
   for i, r in ipairs(dofile(args[1])) do requests[i] = wrk.format(r[1], r[2], r[3], r[4]) end
   count = #requests
end
function request()
   index = index % count + 1
   return requests[index]
end
"""


class BenchError(RuntimeError):
    """The benchmark could not run: a server did not start, or wrk failed."""


@dataclass(frozen=True, slots=True)
class Request:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes | None


@dataclass(frozen=True, slots=True)
class WrkResult:
    requests: int
    rps: float
    p50_ms: float
    p99_ms: float
    non_2xx: int
    socket_errors: int

    @property
    def answered_2xx(self) -> int:
        return self.requests - self.non_2xx

    @property
    def ok(self) -> bool:
        return self.requests > 0 and self.non_2xx == 0 and self.socket_errors == 0


@dataclass(frozen=True, slots=True)
class Row:
    provider: str
    bare: WrkResult
    ingress: WrkResult
    stored: int

    @property
    def ok(self) -> bool:
        return self.bare.ok and self.ingress.ok and self.stored >= self.ingress.answered_2xx


@dataclass(frozen=True, slots=True)
class Setup:
    wrk: str
    duration: float
    connections: int
    load_cpu: int
    directory: Path
    bare_url: str
    ingress_url: str
    redis: redis.Redis


def _ixopay(n: int) -> Request:
    body = json.dumps({
        "result": "OK", "uuid": secrets.token_hex(10), "merchantTransactionId": f"order-{n}",
        "purchaseId": f"20240103-{secrets.token_hex(10)}", "transactionType": "DEBIT",
        "paymentMethod": "Creditcard", "amount": "9.99", "currency": "EUR",
    }, separators=(",", ":")).encode()
    path, date = f"/callbacks/{MERCHANT}/ixopay", formatdate(usegmt=True)
    headers = {"Content-Type": ixopay.JSON_CONTENT_TYPE, "Date": date,
               "X-Signature": ixopay.sign(IXOPAY_SECRET, body, date, path)}
    return Request("POST", path, headers, body)


def _ifthenpay(n: int) -> Request:
    query = (f"key={IFTHENPAY_KEY}&orderId={n}&amount=12.34&requestId={secrets.token_hex(10)}"
             "&payment_datetime=03-01-2024%2015:15:16")
    return Request("GET", f"/callbacks/{MERCHANT}/ifthenpay?{query}", {}, None)


def _json_post(provider: str, data: dict[str, Any]) -> Request:
    body = json.dumps(data, separators=(",", ":")).encode()
    return Request("POST", f"/callbacks/{MERCHANT}/{provider}",
                   {"Content-Type": "application/json"}, body)


def _netaxept(n: int) -> Request:
    return _json_post("netaxept", {"TransactionId": uuid.uuid4().hex})


def _payex(n: int) -> Request:
    payment = f"/psp/creditcard/payments/{uuid.uuid4()}"
    return _json_post("payex", {"payment": {"id": payment, "number": n + 1},
                                "transaction": {"id": f"{payment}/captures/{uuid.uuid4()}",
                                                "number": n + 2}})


BUILDERS: dict[str, Callable[[int], Request]] = {
    "ixopay": _ixopay, "ifthenpay": _ifthenpay, "netaxept": _netaxept, "payex": _payex,
}
