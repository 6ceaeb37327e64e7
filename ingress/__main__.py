"""`python -m ingress` / `payhooks ingress`: serve the callback routes."""

from __future__ import annotations

import sys

from aiohttp import web

from ingress.app import create_app
from shared.logging import configure_logging
from shared.settings import Settings


def serve(settings: Settings, host: str | None = None, port: int | None = None) -> None:
    """Run the ingress until SIGINT or SIGTERM; in-flight callbacks finish first."""
    configure_logging(settings.logging)
    try:
        import uvloop
    except ImportError:  # not on this platform: the standard loop works, only slower
        loop_factory = None
    else:
        loop_factory = uvloop.new_event_loop
    web.run_app(
        create_app(settings),
        host=host or settings.ingress.host,
        port=port or settings.ingress.port,
        access_log=None,
        print=None,
        shutdown_timeout=10.0,
        loop=loop_factory() if loop_factory else None,
    )


if __name__ == "__main__":
    from shared.cli import main

    sys.exit(main(["ingress", *sys.argv[1:]]))
