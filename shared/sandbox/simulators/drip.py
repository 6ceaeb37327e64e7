"""Answers that drip: the status and headers at once, then the body one byte at a time.

Each byte comes well within any read timeout, so only a deadline on the whole exchange
ends it. The length announced is `DRIP_LENGTH` (the answer's own body, then spaces, which
JSON and XML allow after a document): at a byte a second that is eleven days, longer than
any sane timeout. The drip stops when the client goes away.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Mapping

from aiohttp import web

DRIP_LENGTH = 1_000_000
_UNSENT = ("content-length", "transfer-encoding", "content-encoding")


async def drip(request: web.Request, status: int, headers: Mapping[str, str], body: bytes,
               interval: float) -> web.StreamResponse:
    """Send `status` and `headers`, then `body` padded to DRIP_LENGTH, a byte every
    `interval` seconds."""
    response = web.StreamResponse(status=status, headers={
        name: value for name, value in headers.items() if name.lower() not in _UNSENT})
    response.content_length = max(len(body), DRIP_LENGTH)
    await response.prepare(request)
    with contextlib.suppress(ConnectionError):  # the client gave up: what a drip is for
        for index in range(response.content_length):
            await response.write(body[index:index + 1] or b" ")
            await asyncio.sleep(interval)
        await response.write_eof()
    return response
