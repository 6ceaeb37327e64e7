"""One place that configures logging: structlog for our lines, stdlib loggers routed through it.

JSON lines when stdout is not a terminal (or `format = "json"`), readable lines on one.
Handlers and tasks bind their context (callback_id, merchant, provider) with contextvars,
and each unit of work ends in one summary line. Bodies, headers, query strings and secrets
are never logged.

Our own lines go straight from structlog to stdout, rendered by orjson: the stdlib route
(a LogRecord, caller lookup, a formatter) cost the ingress a fifth of its CPU under load. With
`buffered=True` lines are kept in memory and written together by `flush_logs`, which the
ingress calls twice a second and at exit: a line is at most half a second late.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from typing import Any

import orjson
import structlog
from structlog.typing import EventDict

from shared.settings import LoggingSettings


class _StdoutLogger:
    """Writes each rendered line to sys.stdout at once, or (buffered) keeps it for `flush`."""

    def __init__(self, buffered: bool) -> None:
        self._buffered = buffered
        self._lines: list[str] = []

    def msg(self, message: str) -> None:
        if self._buffered:
            self._lines.append(message)
            if len(self._lines) >= 2000:
                self.flush()
            return
        stream = sys.stdout
        stream.write(message + "\n")
        stream.flush()

    debug = info = warning = warn = error = critical = exception = fatal = msg

    def flush(self) -> None:
        lines, self._lines = self._lines, []
        if lines:
            sys.stdout.write("\n".join(lines) + "\n")
        sys.stdout.flush()


_logger = _StdoutLogger(buffered=False)


def flush_logs() -> None:
    """Write out buffered log lines (see configure_logging's `buffered`)."""
    _logger.flush()


class _Timestamp:
    """Adds `timestamp` in ISO 8601 UTC with microseconds, formatting the date and time only
    once a second (structlog's TimeStamper builds a datetime for every line)."""

    def __init__(self) -> None:
        self._second = -1
        self._prefix = ""

    def __call__(self, logger: Any, name: str, event_dict: EventDict) -> EventDict:
        now = time.time()
        second = int(now)
        if second != self._second:
            self._second = second
            self._prefix = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        event_dict["timestamp"] = f"{self._prefix}.{int((now - second) * 1e6):06d}Z"
        return event_dict


def _orjson_text(value: Any, **kwargs: Any) -> str:
    return orjson.dumps(value, default=kwargs.get("default")).decode()


def configure_logging(
    settings: LoggingSettings, *, buffered: bool = False, contextvars: bool = True,
    cache: bool = True,
) -> None:
    """Set up structlog and the stdlib root logger; call once, from a command's entry point.

    `contextvars=False` (the ingress, which binds none) skips merging them into each line.
    """
    level = getattr(logging, settings.level.upper())
    as_json = settings.format == "json" or (settings.format == "auto" and not sys.stdout.isatty())
    shared: list[structlog.types.Processor] = [
        *([structlog.contextvars.merge_contextvars] if contextvars else []),
        structlog.processors.add_log_level,
        _Timestamp(),
    ]
    renderer: structlog.types.Processor
    if as_json:
        # never the frames' local variables: they may hold secrets (settings, keys, bodies)
        shared.append(structlog.processors.ExceptionRenderer(
            structlog.tracebacks.ExceptionDictTransformer(show_locals=False)))
        renderer = structlog.processors.JSONRenderer(serializer=_orjson_text)
    else:
        # colours only for a terminal: a file or a pipe gets plain text (and NO_COLOR wins)
        colors = sys.stdout.isatty() and not os.environ.get("NO_COLOR")
        renderer = structlog.dev.ConsoleRenderer(
            colors=colors, exception_formatter=structlog.dev.plain_traceback)
    global _logger
    _logger.flush()
    _logger = logger = _StdoutLogger(buffered)
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
    # httpx logs every request's URL at info, and Netaxept's Query URL carries the token.
    logging.getLogger("httpx").setLevel(max(level, logging.WARNING))
