"""`payhooks worker [--burst]`: an RQ worker on `callbacks` and `deliveries`, with the scheduler.

It is RQ's SimpleWorker, which runs jobs in its own process instead of forking one per job:
measured here, a forking worker runs about 60 no-op jobs a second and a non-forking one
about 380, and only a process that lives on can keep HTTP connections to providers and
merchants open between jobs. The price is that a job that crashes the interpreter takes
the worker with it; RQ then sees the job abandoned and, since every job carries a Retry,
runs it again (jobs are idempotent). The registry clean-up that finds abandoned jobs runs
every 30 seconds instead of RQ's 10 minutes. Start as many workers as you like, on as many
hosts: they share the queues in Redis, and each also runs RQ's scheduler (one at a time
holds the lock), which moves retries back onto their queue when they are due.
"""

from __future__ import annotations

import sys

from redis import Redis
from rq import Queue, SimpleWorker
from rq.serializers import JSONSerializer

from shared.logging import configure_logging
from shared.queue import CALLBACKS, DELIVERIES
from shared.settings import Settings
from workers import runtime
from workers.runtime import Runtime

MAINTENANCE_SECONDS = 30


def build_worker(settings: Settings, queues: tuple[str, ...] = (CALLBACKS, DELIVERIES),
                 name: str | None = None) -> SimpleWorker:
    """A worker for these settings, with the job runtime installed in this process."""
    runtime.install(Runtime.from_settings(settings))
    connection = Redis.from_url(settings.redis_url)
    worker = SimpleWorker(
        [Queue(queue, connection=connection, serializer=JSONSerializer) for queue in queues],
        connection=connection, serializer=JSONSerializer, name=name,
    )
    worker.maintenance_interval = MAINTENANCE_SECONDS
    return worker


def work(settings: Settings, burst: bool = False) -> int:
    """Run a worker until SIGTERM (or, with burst, until nothing is due now)."""
    configure_logging(settings.logging)
    worker = build_worker(settings)
    worked = worker.work(burst=burst, with_scheduler=True,
                         logging_level=settings.logging.level.upper())
    return 0 if worked or burst else 1


if __name__ == "__main__":
    from shared.cli import main

    sys.exit(main(["worker", *sys.argv[1:]]))
