"""At most `max_connections` open connections, so the ingress never runs out of files.

Each connection holds a file descriptor; so do the Redis connections, the log and every
reconnect after a Redis restart. At the soft limit, `accept` fails (EMFILE) and the
event loop stops accepting for a while, genuine callbacks included, with nothing said. So
the ingress keeps its connections below the limit (by default the soft limit less
`RESERVED_FILES`), and when a new connection would pass the cap:
- it closes the connection that has been open longest without a request in progress
  (idle keep-alive connections, or ones still sending their request head, cut off after
  `read_timeout` anyway), so that a crowd of idle connections cannot lock callbacks out;
- if every connection is busy with a request, it answers the new one 503 (the provider
  sends it again) and closes it.
Either is counted (`payhooks_ingress_connections_total{outcome}`) and logged as a warning,
at most one line every LOG_EVERY seconds with the counts since the last one.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import structlog
from aiohttp import web
from aiohttp.web_protocol import RequestHandler

RESERVED_FILES = 256  # kept for Redis, logs and reconnects
MIN_CONNECTIONS = 64
LOG_EVERY = 10.0
REFUSAL = (b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain\r\n"
           b"Content-Length: 12\r\nRetry-After: 1\r\nConnection: close\r\n\r\ntoo crowded\n")

log = structlog.get_logger("payhooks.ingress")


class ConnectionCap:
    def __init__(self, configured: int | None = None) -> None:
        self.configured = configured
        self.cap = configured or 10_000
        self.shed = 0  # idle connections closed to make room
        self.refused = 0  # new connections answered 503: every other one was busy
        self._logged = {"shed": 0, "refused": 0}
        self._last_log = 0.0

    def install(self, server: web.Server, file_limit: int) -> None:
        """Check every new connection of `server` (an AppRunner's) against the cap: the
        configured one, at most the soft file limit less the reserve."""
        if file_limit > 0:
            room = max(MIN_CONNECTIONS, file_limit - RESERVED_FILES)
            self.cap = min(self.configured, room) if self.configured else room
        connections: dict[RequestHandler, asyncio.Transport] = server._connections
        admit = server.connection_made

        def connection_made(handler: RequestHandler, transport: asyncio.Transport) -> None:
            if len(connections) >= self.cap and not self._close_an_idle_one(connections):
                self.refused += 1
                self._say()
                transport.write(REFUSAL)
                transport.close()
                return
            admit(handler, transport)

        server.connection_made = connection_made  # type: ignore[method-assign]

    def _close_an_idle_one(self, connections: dict[RequestHandler, Any]) -> bool:
        for handler, transport in connections.items():  # oldest first
            if getattr(handler, "_current_request", True) is None and not transport.is_closing():
                handler.force_close()
                transport.close()
                del connections[handler]  # its place is free now, not when its task ends
                self.shed += 1
                self._say()
                return True
        return False

    def _say(self) -> None:
        now = time.monotonic()
        if now - self._last_log < LOG_EVERY:
            return
        self._last_log = now
        log.warning("ingress.connections_at_cap", cap=self.cap,
                    idle_closed=self.shed - self._logged["shed"],
                    refused=self.refused - self._logged["refused"])
        self._logged = {"shed": self.shed, "refused": self.refused}
