"""One place that configures logging: structlog for our lines, stdlib loggers routed through it.

JSON lines when stdout is not a terminal (or `format = "json"`), readable lines on one.
Handlers and tasks bind their context (callback_id, merchant, provider) with contextvars,
and each unit of work ends in one summary line. Bodies, headers, query strings and secrets
are never logged.

Our own lines go straight from structlog to stdout, rendered by orjson: the stdlib route
(a LogRecord, caller lookup, a formatter) cost the ingress a fifth of its CPU under load. With
`buffered=True` lines are not flushed one by one; the ingress flushes stdout twice a second
and at exit, so a line is at most half a second late.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

import orjson
import structlog

from shared.settings import LoggingSettings


class _StdoutLogger:
    """Writes each rendered line to the current sys.stdout."""

    def __init__(self, flush: bool) -> None:
        self._flush = flush

    def msg(self, message: str) -> None:
        stream = sys.stdout
        stream.write(message + "\n")
        if self._flush:
            stream.flush()

    debug = info = warning = warn = error = critical = exception = fatal = msg


def _orjson_text(value: Any, **kwargs: Any) -> str:
    return orjson.dumps(value, default=kwargs.get("default")).decode()


def configure_logging(
    settings: LoggingSettings, *, buffered: bool = False, cache: bool = True
) -> None:
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
        renderer = structlog.processors.JSONRenderer(serializer=_orjson_text)
    else:
        renderer = structlog.dev.ConsoleRenderer()
    logger = _StdoutLogger(flush=not buffered)
    structlog.configure(
        processors=[*shared, renderer],
        logger_factory=lambda *_: logger,
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
