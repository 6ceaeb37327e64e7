"""An aiohttp application served on 127.0.0.1 from a background thread with its own loop,
for tests and benchmarks that drive it from the same process."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from typing import Self

from aiohttp import web


class BackgroundServer:
    """Serves `make_app()`; `start()` returns once serving, `stop()` once stopped."""

    name = "server"

    def __init__(self, port: int = 0) -> None:
        self.host = "127.0.0.1"
        self.port = port  # 0: any free port, known after start()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    def make_app(self) -> web.Application:
        raise NotImplementedError

    @property
    def url(self) -> str:
        if self._thread is None:
            raise RuntimeError(f"the {self.name} is not running")
        return f"http://{self.host}:{self.port}"

    def start(self, timeout: float = 10.0) -> Self:
        if self._thread is not None:
            raise RuntimeError(f"the {self.name} is already running")
        started = threading.Event()
        failures: list[BaseException] = []
        self._thread = threading.Thread(
            target=self._serve, args=(started, failures), name=self.name, daemon=True
        )
        self._thread.start()
        if not started.wait(timeout) or failures:
            self.stop()
            cause = failures[0] if failures else None
            raise RuntimeError(f"the {self.name} did not start") from cause
        return self

    def stop(self) -> None:
        """Stop serving; requests still waiting (latency, timeouts) are cancelled."""
        thread, loop = self._thread, self._loop
        if thread is None:
            return
        if loop is not None and thread.is_alive():
            loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=10)
        self._thread = self._loop = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def _serve(self, started: threading.Event, failures: list[BaseException]) -> None:
        loop = asyncio.new_event_loop()
        runner = web.AppRunner(self.make_app(), shutdown_timeout=0.5,
                               handler_cancellation=True, access_log=None)
        try:
            loop.run_until_complete(self._open(runner))
            self._loop = loop
        except BaseException as exc:  # reported by start()
            failures.append(exc)
        started.set()
        try:
            if not failures:
                loop.run_forever()
        finally:
            with contextlib.suppress(Exception):
                loop.run_until_complete(runner.cleanup())
            loop.close()

    async def _open(self, runner: web.AppRunner) -> None:
        await runner.setup()
        await web.TCPSite(runner, self.host, self.port).start()
        self.port = runner.addresses[0][1]
