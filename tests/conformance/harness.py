"""Running a conformance case: a provider's real callback and API answers, through payhooks.

A case (one JSON file under `cases/<provider>/`, format in `cases/README.md`) holds a callback
as the provider sends it, the answers the provider's API gave to the follow-up requests, and
the events that the source's own code reads from the same data. The answers are served by
`AnswerServer`, a real HTTP server on 127.0.0.1 that answers each request by method and path
from the case, and records what it was asked.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from shared.providers import ixopay
from tests.helpers import DATE, IFTHENPAY_KEY, IXOPAY_API_KEY, IXOPAY_SECRET, NETAXEPT_AUTH

CASES = Path(__file__).parent / "cases"
MERCHANT = "shop-eu"
PLACEHOLDERS = {"{key}": IFTHENPAY_KEY, "{api_key}": IXOPAY_API_KEY, "{merchant}": MERCHANT}


def _fill(value: Any) -> Any:
    """The case value with its placeholders replaced, in every string it holds."""
    if isinstance(value, str):
        for placeholder, actual in PLACEHOLDERS.items():
            value = value.replace(placeholder, actual)
        return value
    if isinstance(value, list):
        return [_fill(item) for item in value]
    if isinstance(value, dict):
        return {key: _fill(item) for key, item in value.items()}
    return value


def _body(part: dict[str, Any]) -> bytes:
    if "json" in part:
        return json.dumps(part["json"], ensure_ascii=False).encode()
    return str(part.get("text", "")).encode()


@dataclass(frozen=True)
class Case:
    path: Path
    provider: str
    sources: list[dict[str, str]]
    note: str
    settings: dict[str, Any]
    callback: dict[str, Any]
    sign: str | None
    answers: list[dict[str, Any]]
    expect: dict[str, Any]

    @property
    def name(self) -> str:
        return f"{self.provider}/{self.path.stem}"

    @classmethod
    def load(cls, path: Path) -> Case:
        data = _fill(json.loads(path.read_text()))
        return cls(path=path, provider=data["provider"], sources=data["sources"],
                   note=data.get("note", ""), settings=data.get("settings") or {},
                   callback=data["callback"], sign=data.get("sign"),
                   answers=data.get("answers") or [], expect=data["expect"])

    def request(self) -> tuple[str, str, dict[str, str], bytes]:
        """Method, request target, headers and body of the callback, signed where IXOPAY
        signs (with the test secret: the sources' own secrets are not ours)."""
        method = self.callback.get("method", "POST")
        query = self.callback.get("query", "")
        uri = f"/callbacks/{MERCHANT}/{self.provider}" + (f"?{query}" if query else "")
        headers = dict(self.callback.get("headers") or {})
        body = _body(self.callback)
        if self.sign == "json":
            headers.update({"Content-Type": ixopay.JSON_CONTENT_TYPE, "Date": DATE,
                            "X-Signature": ixopay.sign(IXOPAY_SECRET, body, DATE, uri)})
        elif self.sign == "xml":
            signature = ixopay.sign(IXOPAY_SECRET, body, DATE, uri, legacy_xml=True,
                                    content_type=ixopay.XML_CONTENT_TYPE)
            headers.update({"Content-Type": ixopay.XML_CONTENT_TYPE, "Date": DATE,
                            "Authorization": f"Gateway {IXOPAY_API_KEY}:{signature}"})
        if self.provider == "netaxept":
            headers.update(NETAXEPT_AUTH)  # the merchant's callback credentials, as configured
        return method, uri, headers, body


def all_cases() -> list[Case]:
    return [Case.load(path) for path in sorted(CASES.glob("*/*.json"))]


@dataclass
class AnswerServer:
    """Serves a case's recorded answers on 127.0.0.1; 404 for anything the case lacks."""

    answers: list[dict[str, Any]] = field(default_factory=list)
    asked: list[tuple[str, str]] = field(default_factory=list)

    def __post_init__(self) -> None:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def _answer(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                if length:
                    self.rfile.read(length)
                path = urlsplit(self.path).path
                server.asked.append((self.command, path))
                for answer in server.answers:
                    if (answer.get("method", "GET"), answer["path"]) == (self.command, path):
                        body = _body(answer)
                        content_type = answer.get("content_type") or (
                            "application/json" if "json" in answer else "text/plain")
                        self._send(int(answer.get("status", 200)), content_type, body,
                                   answer.get("headers", {}))
                        return
                self._send(404, "application/problem+json",
                           b'{"title": "Not found", "status": 404}')

            def _send(self, status: int, content_type: str, body: bytes,
                      headers: dict[str, str] | None = None) -> None:
                self.send_response(status)
                for name, value in (headers or {}).items():
                    self.send_header(name, value)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_GET = do_POST = _answer

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def serve(self, answers: list[dict[str, Any]]) -> None:
        self.answers = answers
        self.asked = []

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> AnswerServer:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
