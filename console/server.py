"""`payhooks console`: serve the console until SIGINT or SIGTERM."""

from __future__ import annotations

import structlog
from aiohttp import web

from console.app import create_app
from shared.logging import configure_logging
from shared.settings import Settings

log = structlog.get_logger("payhooks.console")


def serve(settings: Settings, host: str | None = None, port: int | None = None) -> None:
    configure_logging(settings.logging)
    host, port = host or settings.console.host, port or settings.console.port
    tokens = len(settings.console.tokens) + sum(
        len(merchant.console_tokens) for merchant in settings.merchants.values())
    if not tokens:
        log.warning("console.no_tokens", fix="add [console] tokens to the configuration: "
                    "without one, nobody can sign in")
    log.info("console.listening", host=host, port=port, tokens=tokens)
    web.run_app(create_app(settings), host=host, port=port, print=None, access_log=None)
    log.info("console.stopped")
