"""Taking jobs off the queues: safely for a worker of several queues, and never after a
stop was asked for.

For a worker of several queues RQ uses BLPOP, and a worker killed between that pop and
registering the job would lose it (it is then in no list at all). Here every job moves
from its queue to the queue's intermediate list (one script over all the queues, in
order), from which the worker's start of the job takes it off (workers/lifecycle.py); a
job left there by a worker that died in between is put back by the clean-up
(workers/worker.py `Worker._rescue_stranded`).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from typing import Any

from redis import Redis
from rq import Queue
from rq.exceptions import DequeueTimeout, StopRequested
from rq.intermediate_queue import IntermediateQueue

from shared import scripts

SWEEP_LOCK_SECONDS = 60  # one worker sweeps a queue at a time; RQ holds the lock 15 minutes
BLOCK_SECONDS = 1  # an idle worker waits on its first queue this long, then looks at all


# KEYS: each queue's list, then its intermediate list. Moves the first job found (queues in
# order) to its queue's intermediate list; returns the queue's key and the job id, or nil.
_TAKE_FIRST = """
local n = #KEYS / 2
for i = 1, n do
  local id = redis.call('LMOVE', KEYS[i], KEYS[n + i], 'LEFT', 'RIGHT')
  if id then return {KEYS[i], id} end
end
return nil
"""


class SafeQueue(Queue):
    """RQ's Queue, except that a worker of several queues takes jobs through their
    intermediate lists (RQ's own way for one queue) instead of with a bare BLPOP, and that
    the lock on sweeping the queue lapses after a minute, not RQ's fifteen: a worker killed
    (or cut off from Redis) while it held the lock stopped every sweep, and so the rescue
    of every abandoned job, for that long."""

    def acquire_maintenance_lock(self) -> bool:
        return bool(self.connection.set(self.registry_cleaning_key, 1, nx=True,
                                        ex=SWEEP_LOCK_SECONDS))

    @classmethod
    def lpop(cls, queue_keys: Sequence[str], timeout: int | None,
             connection: Redis | None = None) -> tuple[str, Any] | None:
        assert connection is not None
        lists = [*queue_keys, *(IntermediateQueue.get_intermediate_queue_key(key)
                                for key in queue_keys)]
        deadline = time.monotonic() + (timeout or 0)
        while True:
            STOPPING.check()  # asked to stop: take nothing more
            found = scripts.run(connection, _TAKE_FIRST, keys=lists)
            if found is not None:
                return found[0].decode(), found[1]
            left = deadline - time.monotonic()
            if timeout is None:
                return None
            if left <= 0:
                raise DequeueTimeout(timeout, queue_keys)
            job_id = connection.blmove(queue_keys[0], lists[len(queue_keys)], BLOCK_SECONDS)
            if job_id is not None:
                return queue_keys[0], job_id


class _Stopping:
    """Set by a stop request; the main thread's next look at the queues ends the loop."""

    def __init__(self) -> None:
        self._event = threading.Event()

    def set(self) -> None:
        self._event.set()

    def clear(self) -> None:
        self._event.clear()

    def check(self) -> None:
        if self._event.is_set():
            raise StopRequested()


STOPPING = _Stopping()
