"""The queues and the shape of the jobs on them.

Every accepted callback is one RQ job on `callbacks`, running
`workers.tasks.process_callback(callback)` with RQ's JSON serializer: a real RQ job, listed
by rq-dashboard, retried by RQ and requeued from its failed registry like any other.

The ingress does not call `Queue.enqueue` per request: RQ spends about 300 µs of Python
building each job, which caps an aiohttp process near 2,000 callbacks/s. Instead
`JobTemplate` asks RQ once, at start-up, for the hash of a job with our options
(`Job.create(...).to_dict()`), and per callback fills in only what differs: the data, the
timestamps and the description. The Redis commands are the ones `Queue.enqueue` sends
(SADD rq:queues, HSET rq:job:<id>, RPUSH rq:queue:<name>). tests/test_queue.py checks the
result field by field against a job RQ enqueued itself, and runs one on a real worker.
"""

from __future__ import annotations

import json
import zlib
from typing import Any, TypeAlias

from redis import Redis
from redis.typing import EncodableT
from rq.job import Job, JobStatus, Retry
from rq.queue import Queue
from rq.serializers import JSONSerializer
from rq.utils import now, utcformat

JobFields: TypeAlias = dict[EncodableT, EncodableT]

CALLBACKS = "callbacks"
DELIVERIES = "deliveries"
PROCESS_CALLBACK = "workers.tasks.process_callback"

# A callback job may be re-run after a crash (retries_left is what makes RQ re-run an
# abandoned job at all), so every attempt must be idempotent; the worker ensures that.
CALLBACK_JOB_OPTIONS: dict[str, Any] = {
    "timeout": 120,
    "result_ttl": 600,
    "failure_ttl": 30 * 86400,  # keep failed callbacks a month, to inspect and requeue
    "retry": Retry(max=12, interval=[10, 30, 60, 300, 900, 1800, 3600]),
}


class JobTemplate:
    """Builds the Redis commands that enqueue one RQ job, cheaply, from RQ's own layout."""

    def __init__(self, queue: str, func: str, options: dict[str, Any]) -> None:
        prototype = Job.create(
            func,
            args=[None],
            connection=Redis(),  # never connected: to_dict does no I/O
            serializer=JSONSerializer,
            id="template",
            description="template",
            **options,
        )
        prototype.origin = queue
        prototype.enqueued_at = now()
        fields: JobFields = prototype.to_dict()
        fields["status"] = JobStatus.QUEUED.value
        for varying in ("data", "created_at", "enqueued_at", "description"):
            fields.pop(varying)
        self._fields = fields
        self._data_prefix = json.dumps([func, None]).encode()[:-1] + b", ["
        rq_queue = Queue(queue, connection=Redis(), serializer=JSONSerializer)
        self.queue_key: str = rq_queue.key
        self.queues_key: str = rq_queue.redis_queues_keys

    def job_hash(self, job_id: str, argument_json: bytes, description: str) -> JobFields:
        """The fields of rq:job:<job_id> for a job called with one JSON argument."""
        stamp = utcformat(now())
        data = self._data_prefix + argument_json + b"], {}]"
        fields = self._fields.copy()
        fields["data"] = zlib.compress(data, 1)
        fields["created_at"] = stamp
        fields["enqueued_at"] = stamp
        fields["description"] = description
        return fields

    @staticmethod
    def job_key(job_id: str) -> str:
        return Job.redis_job_namespace_prefix + job_id


def callback_template() -> JobTemplate:
    return JobTemplate(CALLBACKS, PROCESS_CALLBACK, CALLBACK_JOB_OPTIONS)
