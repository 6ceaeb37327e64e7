"""The queues and the shape of the jobs on them.

Every accepted callback is one RQ job on `callbacks`, running
`workers.tasks.process_callback(callback)` with RQ's JSON serializer: a real RQ job, listed
by rq-dashboard, retried by RQ and requeued from its failed registry like any other.

The ingress does not call `Queue.enqueue` per request: RQ spends about 300 µs of Python
building each job, which caps an aiohttp process near 2,000 callbacks/s. Instead
`JobTemplate` asks RQ once, at start-up, for the hash of a job with our options
(`Job.create(...).to_dict()`), and per callback only the id, the data and the description
differ. A batch of jobs is written by one Lua script (`ENQUEUE_SCRIPT`) that does what
`Queue.enqueue` does for each: SADD rq:queues, HSET rq:job:<id> with the template's fields,
RPUSH rq:queue:<name>. One command and one reply per batch instead of ~40 arguments and two
replies per job, and the batch is stored all or nothing. tests/shared/test_queue.py checks the
jobs field by field against one RQ enqueued itself, and runs one on a real RQ worker.
(The script touches keys it is not passed as KEYS, which Redis Cluster forbids; RQ does
not run on Cluster either.)
"""

from __future__ import annotations

import hashlib
import json
import zlib
from collections.abc import Sequence
from typing import Any, TypeAlias

from redis import Redis
from redis.typing import EncodableT
from rq.job import Job, JobStatus, Retry
from rq.queue import Queue
from rq.serializers import JSONSerializer
from rq.utils import now, utcformat

CALLBACKS = "callbacks"
DELIVERIES = "deliveries"
PROCESS_CALLBACK = "workers.tasks.process_callback"

# A callback job may be re-run after a crash (retries_left is what makes RQ re-run an
# abandoned job at all), so every attempt must be idempotent; the worker ensures that.
CALLBACK_JOB_OPTIONS: dict[str, Any] = {
    "timeout": 120,
    "result_ttl": 600,
    "failure_ttl": 30 * 86400,  # keep failed callbacks a month, to inspect and requeue
    # one interval per retry: RQ takes the interval at index len(intervals) - retries_left,
    # so a shorter list would use its first step for the first retries, not its last for
    # the last ones (10 s six times, then up: under two hours in all instead of eight)
    "retry": Retry(max=12, interval=[10, 30, 60, 300, 900, 1800, *[3600] * 6]),
}

# ARGV: queues key, queue key, job key prefix, number of constant field pairs N, the N
# field/value pairs, a timestamp, then id, data, description for each job. Everything before
# the timestamp is the same in every call. Returns the number of jobs written.
ENQUEUE_SCRIPT = """
local fixed = tonumber(ARGV[4])
local stamp = ARGV[5 + 2 * fixed]
local first = 6 + 2 * fixed
local fields = {}
for i = 5, 4 + 2 * fixed do fields[#fields + 1] = ARGV[i] end
local n = #fields
fields[n + 1] = 'created_at'; fields[n + 2] = stamp
fields[n + 3] = 'enqueued_at'; fields[n + 4] = stamp
fields[n + 5] = 'data'; fields[n + 7] = 'description'
redis.call('SADD', ARGV[1], ARGV[2])
for j = first, #ARGV, 3 do
  fields[n + 6] = ARGV[j + 1]
  fields[n + 8] = ARGV[j + 2]
  redis.call('HSET', ARGV[3] .. ARGV[j], unpack(fields))
  redis.call('RPUSH', ARGV[2], ARGV[j])
end
return (#ARGV - first + 1) / 3
"""

ENQUEUE_SCRIPT_SHA = hashlib.sha1(ENQUEUE_SCRIPT.encode(), usedforsecurity=False).hexdigest()

PendingJob: TypeAlias = tuple[str, bytes, str]  # id, data, description


def resp(args: Sequence[EncodableT]) -> bytes:
    """The Redis protocol encoding of these arguments, without the array header."""
    parts = []
    for arg in args:
        raw = arg if isinstance(arg, bytes) else str(arg).encode()
        parts.append(b"$%d\r\n%b\r\n" % (len(raw), raw))
    return b"".join(parts)


def resp_command(*args: EncodableT) -> bytes:
    return b"*%d\r\n%b" % (len(args), resp(args))


class JobTemplate:
    """Everything needed to enqueue RQ jobs of one kind in batches, built once from RQ."""

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
        fields: dict[str, Any] = prototype.to_dict()
        fields["status"] = JobStatus.QUEUED.value
        for varying in ("data", "created_at", "enqueued_at", "description"):
            fields.pop(varying)
        self._data_prefix = json.dumps([func, None]).encode()[:-1] + b", ["
        rq_queue = Queue(queue, connection=Redis(), serializer=JSONSerializer)
        self.queue_key: str = rq_queue.key
        self.queues_key: str = rq_queue.redis_queues_keys
        self._fixed: list[EncodableT] = [
            self.queues_key, self.queue_key, Job.redis_job_namespace_prefix, len(fields),
            *(item for pair in fields.items() for item in pair),
        ]
        self._packed_start = resp(["EVALSHA", ENQUEUE_SCRIPT_SHA, 0, *self._fixed])
        self._fields = fields

    def data(self, argument_json: bytes) -> bytes:
        """RQ's `data` field for a call with one JSON argument, zlib-framed as RQ stores it.

        Stored uncompressed (level 0, a small window): zlib's default set-up costs ~50 µs
        a call, more than the rest of the request; RQ reads it with plain zlib.decompress.
        """
        compressor = zlib.compressobj(0, zlib.DEFLATED, 9, 1)
        payload = self._data_prefix + argument_json + b"], {}]"
        return compressor.compress(payload) + compressor.flush()

    def job_hash(self, arguments_json: bytes, description: str) -> dict[EncodableT, EncodableT]:
        """The whole rq:job:<id> hash of a job called with these JSON arguments (without
        the brackets), for writing inside a transaction of our own."""
        stamp = utcformat(now())
        fields: dict[EncodableT, EncodableT] = {k: v for k, v in self._fields.items()}
        fields.update(data=self.data(arguments_json), created_at=stamp, enqueued_at=stamp,
                      description=description)
        return fields

    @staticmethod
    def job_key(job_id: str) -> str:
        return Job.redis_job_namespace_prefix + job_id

    def script_args(self, jobs: Sequence[PendingJob]) -> list[EncodableT]:
        """The ARGV of ENQUEUE_SCRIPT for these jobs."""
        args: list[EncodableT] = [*self._fixed, utcformat(now())]
        for job in jobs:
            args.extend(job)
        return args

    def evalsha_command(self, jobs: Sequence[PendingJob]) -> bytes:
        """`EVALSHA <sha> 0 <script_args(jobs)>` encoded for the wire; the part that is the
        same in every call was encoded once, in __init__."""
        count = 3 + len(self._fixed) + 1 + 3 * len(jobs)
        stamp_and_jobs = resp([utcformat(now()), *(item for job in jobs for item in job)])
        return b"*%d\r\n%b%b" % (count, self._packed_start, stamp_and_jobs)


def callback_template() -> JobTemplate:
    return JobTemplate(CALLBACKS, PROCESS_CALLBACK, CALLBACK_JOB_OPTIONS)
