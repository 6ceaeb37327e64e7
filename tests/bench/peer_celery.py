"""The Celery peer of `payhooks bench worker`'s comparison (tests/bench/compare.py): an app on
the Redis broker and one task doing a callback's work (tests/bench/peer_task.py).

The worker runs as `python -m celery -A tests.bench.peer_celery worker --pool threads
--concurrency N` (tests/bench/peers.py), its broker URL from the environment. The task
ignores its result (no result backend: nothing is written back to Redis) and is
acknowledged late, after it ran: at-least-once, as payhooks' jobs are run. Everything else
is Celery's default (prefetch 4 per thread, mingle, gossip, heartbeats, JSON).
"""

from __future__ import annotations

import os

from celery import Celery

from tests.bench import peer_task


def make_app(broker: str) -> Celery:
    """The app, for the worker and for sending its tasks (tests/bench/peers.py)."""
    app = Celery("payhooks-bench-peer", broker=broker, set_as_current=False)
    app.conf.update(task_ignore_result=True, task_acks_late=True,
                    task_default_queue=peer_task.QUEUE,
                    broker_connection_retry_on_startup=True, worker_hijack_root_logger=False)
    return app


app = make_app(os.environ.get(peer_task.ENV["redis"], "memory://"))


@app.task(name=peer_task.TASK, ignore_result=True, acks_late=True)  # type: ignore[untyped-decorator]
def peer_callback(payment_path: str) -> None:
    peer_task.handle(payment_path)
