"""One place that configures logging: structlog for our lines, stdlib loggers routed through it.

JSON lines when stdout is not a terminal (or `format = "json"`), readable lines on one.
Handlers and tasks bind their context (callback_id, merchant, provider) with contextvars,
and each unit of work ends in one summary line. Bodies, headers, query strings and secrets
are never logged.
"""

from __future__ import annotations

import logging
import sys

import structlog

from shared.settings import LoggingSettings


def configure_logging(settings: LoggingSettings, *, cache: bool = True) -> None:
    """Set up structlog and the stdlib root logger; call once, from a command's entry point."""
    level = getattr(logging, settings.level.upper())
    as_json = settings.format == "json" or (settings.format == "auto" and not sys.stdout.isatty())
    shared: list[structlog.types.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    renderer: structlog.types.Processor
    if as_json:
        shared.append(structlog.processors.dict_tracebacks)
        renderer = structlog.processors.JSONRenderer()
    else:
        renderer = structlog.dev.ConsoleRenderer()
    structlog.configure(
        processors=[*shared, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.make_filtering_bound_logger(level),
        cache_logger_on_first_use=cache,
    )
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(foreign_pre_chain=shared, processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer,
        ])
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # aiohttp's access log prints request targets, and ifthenpay's carry the key.
    logging.getLogger("aiohttp.access").disabled = True
