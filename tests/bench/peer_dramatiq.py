"""The dramatiq peer of `payhooks bench worker`'s comparison (tests/bench/compare.py): the Redis
broker and one actor doing a callback's work (tests/bench/peer_task.py).

The worker runs as `python -m dramatiq tests.bench.peer_dramatiq --processes 1 --threads T`
(tests/bench/peers.py), its broker URL from the environment; without one (imported for a
look) the broker is dramatiq's in-memory stub. dramatiq acknowledges a message after its
actor ran (at-least-once); its default middleware (age and time limits, retries) stays on.
"""

from __future__ import annotations

import os

import dramatiq
from dramatiq.brokers.redis import RedisBroker
from dramatiq.brokers.stub import StubBroker

from tests.bench import peer_task

_url = os.environ.get(peer_task.ENV["redis"])
broker: dramatiq.Broker = RedisBroker(url=_url) if _url else StubBroker()
dramatiq.set_broker(broker)


@dramatiq.actor(actor_name=peer_task.TASK, queue_name=peer_task.QUEUE)
def peer_callback(payment_path: str) -> None:
    peer_task.handle(payment_path)
