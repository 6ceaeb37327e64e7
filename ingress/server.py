"""`payhooks ingress`: serve the callback routes until SIGINT or SIGTERM."""

from __future__ import annotations

import asyncio
import gc
import signal

import structlog
from aiohttp import web

from ingress.app import create_app
from ingress.keys import CONNECTIONS, SETTINGS
from shared.logging import configure_logging, flush_logs
from shared.settings import Settings

log = structlog.get_logger("payhooks.ingress")


def serve(settings: Settings, host: str | None = None, port: int | None = None) -> None:
    """Run the ingress until SIGINT or SIGTERM; in-flight callbacks finish first."""
    configure_logging(settings.logging, buffered=True, contextvars=False)
    file_limit = raise_file_limit()
    try:
        import uvloop
    except ImportError:  # not on this platform: the standard loop works, only slower
        loop_factory = None
    else:
        loop_factory = uvloop.new_event_loop
    app = create_app(settings)
    app.on_startup.append(_tune_gc)
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        runner.run(_serve(app, host or settings.ingress.host, port or settings.ingress.port,
                          file_limit))


async def _serve(app: web.Application, host: str, port: int, file_limit: int) -> None:
    """What aiohttp's run_app does, with the connection cap installed on the server."""
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=10.0, handle_signals=False)
    await runner.setup()
    try:
        assert runner.server is not None
        cap = app[CONNECTIONS]
        cap.install(runner.server, file_limit)
        site = web.TCPSite(runner, host, port)
        await site.start()
        settings = app[SETTINGS]
        log.info("ingress.listening", host=host, port=port, max_connections=cap.cap,
                 merchants={merchant_id: sorted(merchant.providers())
                            for merchant_id, merchant in sorted(settings.merchants.items())})
        stopping = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, stopping.set)
        await stopping.wait()
        log.info("ingress.stopping", after="a signal: callbacks in flight are answered first")
    finally:
        await runner.cleanup()
        log.info("ingress.stopped")
        flush_logs()  # the app's own flusher stopped with it


FILE_LIMIT_CEILING = 1 << 20  # when the hard limit is unlimited


def raise_file_limit() -> int:
    """Raise this process's soft limit on open files to its hard limit: with the usual
    soft limit of 1024, 1,100 idle connections locked genuine callbacks out. The new soft
    limit (for the log and the tests); the hard limit is the operator's (README)."""
    try:
        import resource
    except ImportError:  # not on this platform
        return -1
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = FILE_LIMIT_CEILING if hard == resource.RLIM_INFINITY else hard
    if soft != resource.RLIM_INFINITY and soft < wanted:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
            soft = wanted
        except (ValueError, OSError):
            pass
    log.info("ingress.file_limit", soft=soft, hard=hard)
    return int(soft)


async def _tune_gc(app: web.Application) -> None:
    """Everything built at start-up lives as long as the process: keep the collector off it,
    and collect young objects less often (each request allocates a few hundred)."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(10_000, 20, 50)
