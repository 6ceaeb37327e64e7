"""A job's start, lease and successful end, each in one round trip, in RQ's own format.

RQ's SimpleWorker spends about 50 Redis commands in some 20 round trips on a job that
succeeds (rq 2.12, traced with MONITOR): an execution hash and its own sorted set, the
worker's hash written five times (state, current job, working time, heartbeats), the
job's heartbeat written three times, a WATCH on dependents we never have, the result
written to a stream nobody reads, counters per job. What a job needs, and what this
module writes instead:

- start: the lease, in the queue's started registry (the member `<job id>:<execution
  id>`, as RQ writes it, scored by Redis's clock: workers/worker.py), the job's status,
  `started_at`, `worker_name` and `last_heartbeat` in its hash, and the job taken off the
  queue's intermediate list (where SafeQueue put it). One script.
- end, when the job succeeded: its status and `ended_at`, the finished registry (so that
  rq-dashboard lists it and RQ's clean-up expires it), the job kept `result_ttl` seconds,
  the lease removed. One script. The return value is not stored: nothing reads it (the
  callback's events are in its log line and in `payhooks events`).
- lease renewal: every job in flight in the process, and the worker's own heartbeat, in
  one script every few seconds, instead of one pipeline per job.

Left out, and why that is safe: the execution hash (`rq:execution:*`) and its sorted set
are read by nothing but `Job.get_executions`; RQ's clean-up of abandoned jobs works from
the started registry and the job's hash alone. Dependents are never enqueued: payhooks
enqueues no job that depends on another (`depends_on`), so there are none to release.
Failures, retries and the failed registry keep RQ's own code, unchanged.
"""

from __future__ import annotations

from collections.abc import Sequence

from redis import Redis
from rq import Queue
from rq.job import Job
from rq.utils import current_timestamp, utcformat

from shared import scripts

# KEYS: started registry, job hash, intermediate list. ARGV: member, lease seconds, worker
# name, the start time (RQ's format), job id, 1 to persist the job's hash (it had a TTL)
_START = """
local time = redis.call('TIME')
redis.call('ZADD', KEYS[1], tonumber(time[1]) + tonumber(ARGV[2]), ARGV[1])
redis.call('HSET', KEYS[2], 'status', 'started', 'started_at', ARGV[4],
           'last_heartbeat', ARGV[4], 'worker_name', ARGV[3])
redis.call('LREM', KEYS[3], 1, ARGV[5])
if ARGV[6] == '1' then redis.call('PERSIST', KEYS[2]) end
"""

# KEYS: job hash, finished registry, started registry. ARGV: the end time (RQ's format),
# result_ttl, the finished registry's score (RQ's: the host's clock + result_ttl), member
_FINISH = """
redis.call('HSET', KEYS[1], 'status', 'finished', 'ended_at', ARGV[1])
local ttl = tonumber(ARGV[2])
if ttl > 0 then
  redis.call('ZADD', KEYS[2], ARGV[3], KEYS[1]:sub(8))
  redis.call('EXPIRE', KEYS[1], ttl)
elseif ttl == 0 then
  redis.call('DEL', KEYS[1])
else
  redis.call('ZADD', KEYS[2], '+inf', KEYS[1]:sub(8))
end
redis.call('ZREM', KEYS[3], ARGV[4])
"""

# KEYS: the worker's hash, then each job's started registry. ARGV: the lease seconds, the
# worker's TTL, the heartbeat time (RQ's format), jobs succeeded and their working time
# since the last renewal (RQ's counters, kept per worker), then each job's member.
_RENEW = """
local time = redis.call('TIME')
local ends = tonumber(time[1]) + tonumber(ARGV[1])
for i = 2, #KEYS do redis.call('ZADD', KEYS[i], 'XX', ends, ARGV[i + 4]) end
redis.call('HSET', KEYS[1], 'last_heartbeat', ARGV[3])
if ARGV[4] ~= '0' then
  redis.call('HINCRBY', KEYS[1], 'successful_job_count', ARGV[4])
  redis.call('HINCRBYFLOAT', KEYS[1], 'total_working_time', ARGV[5])
end
redis.call('EXPIRE', KEYS[1], ARGV[2])
"""

# KEYS: job hash, started registry, queue. ARGV: member, job id. A job taken but not
# finished, given back to the front of its queue.
_GIVE_BACK = """
redis.call('ZREM', KEYS[2], ARGV[1])
if redis.call('EXISTS', KEYS[1]) == 1 then
  redis.call('HSET', KEYS[1], 'status', 'queued')
  redis.call('LPUSH', KEYS[3], ARGV[2])
end
"""

# KEYS: the intermediate list, the queue. ARGV: the job id. A job taken off the queue by a
# worker that died before starting it, put back at the front of its queue.
_PUT_BACK = """
if redis.call('LREM', KEYS[1], 1, ARGV[1]) == 1 then redis.call('LPUSH', KEYS[2], ARGV[1]) end
"""

def start(connection: Redis, job: Job, queue: Queue, member: str, worker: str,
          lease: int) -> None:
    """Register the job as started by `worker`, with a lease of `lease` seconds."""
    stamp = utcformat(job.started_at) if job.started_at else ""
    scripts.run(connection, _START,
                keys=[queue.started_job_registry.key, job.key, queue.intermediate_queue_key],
                args=[member, lease, worker, stamp, job.id, 1 if job.ttl else 0])


def finish(connection: Redis, job: Job, queue: Queue, member: str, result_ttl: int) -> None:
    """Record the job's success and end its lease."""
    ended = utcformat(job.ended_at) if job.ended_at else ""
    scripts.run(connection, _FINISH,
                keys=[job.key, queue.finished_job_registry.key, queue.started_job_registry.key],
                args=[ended, result_ttl, current_timestamp() + result_ttl, member])


def renew(connection: Redis, worker_key: str, worker_ttl: int, heartbeat: str,
          leases: Sequence[tuple[str, str]], lease: int, succeeded: tuple[int, float]
          ) -> None:
    """Renew each (started registry, member) lease for `lease` seconds and the worker's
    heartbeat; add `succeeded` (jobs, seconds of work) to the worker's counters."""
    scripts.run(connection, _RENEW, keys=[worker_key, *(registry for registry, _ in leases)],
                args=[lease, worker_ttl, heartbeat, succeeded[0], round(succeeded[1], 6),
                      *(member for _, member in leases)])


def give_back(connection: Redis, job: Job, queue: Queue, member: str) -> None:
    """Put a job this worker took but will not finish back at the front of its queue."""
    scripts.run(connection, _GIVE_BACK,
                keys=[job.key, queue.started_job_registry.key, queue.key], args=[member, job.id])


def put_back(connection: Redis, queue: Queue, job_id: str) -> None:
    """Put a job stranded on the queue's intermediate list back at the front of the queue
    (it never started: no try is spent)."""
    scripts.run(connection, _PUT_BACK, keys=[queue.intermediate_queue_key, queue.key],
                args=[job_id])
