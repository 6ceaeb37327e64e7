"""Hostile HTTP servers on 127.0.0.1, for the tests: they read a request and then misbehave.

- `drip`: a 200 with a long Content-Length, then one byte every `interval` seconds;
- `endless`: a 200 without a length, then bytes as fast as the client takes them;
- `silent`: never answers.
Each stops by itself after `lifetime` seconds (and `endless` after `max_bytes`), so no
test can leave one running.
"""

from __future__ import annotations

import socket
import threading
import time
from types import TracebackType
from typing import Literal

Mode = Literal["drip", "endless", "silent"]


class HostileServer:
    def __init__(self, mode: Mode, interval: float = 0.5, lifetime: float = 60.0,
                 max_bytes: int = 256 * 1024 * 1024) -> None:
        self.mode, self.interval, self.lifetime, self.max_bytes = (
            mode, interval, lifetime, max_bytes)
        self.requests = 0
        self.sent = 0
        self._stop = threading.Event()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.2)
        self._thread = threading.Thread(target=self._serve, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._listener.getsockname()[1]}"

    def __enter__(self) -> HostileServer:
        self._thread.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self._listener.close()

    def _serve(self) -> None:
        ends = time.monotonic() + self.lifetime
        while not self._stop.is_set() and time.monotonic() < ends:
            try:
                connection, _ = self._listener.accept()
            except TimeoutError:
                continue
            threading.Thread(target=self._answer, args=(connection, ends), daemon=True).start()

    def _answer(self, connection: socket.socket, ends: float) -> None:
        with connection:
            connection.settimeout(2.0)
            try:
                self._read_request(connection)
                self.requests += 1
                if self.mode == "drip":
                    connection.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                                       b"Content-Length: 1000000\r\n\r\n")
                    while not self._stop.is_set() and time.monotonic() < ends:
                        connection.sendall(b" ")
                        self.sent += 1
                        time.sleep(self.interval)
                elif self.mode == "endless":
                    connection.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: text/xml\r\n"
                                       b"Connection: close\r\n\r\n<PaymentInfo>")
                    chunk = b"<x>" + b"a" * 65536 + b"</x>"
                    while (not self._stop.is_set() and time.monotonic() < ends
                           and self.sent < self.max_bytes):
                        connection.sendall(chunk)
                        self.sent += len(chunk)
                else:
                    self._stop.wait(max(0.0, ends - time.monotonic()))
            except OSError:
                pass  # the client gave up: what these servers are for

    @staticmethod
    def _read_request(connection: socket.socket) -> None:
        data = b""
        while b"\r\n\r\n" not in data:
            piece = connection.recv(65536)
            if not piece:
                raise ConnectionError("closed before the request ended")
            data += piece
        head, _, body = data.partition(b"\r\n\r\n")
        length = 0
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value.strip())
        while len(body) < length:
            piece = connection.recv(65536)
            if not piece:
                break
            body += piece
