"""The ingress's jobs are RQ's jobs: same fields as Queue.enqueue, and a real worker runs them."""

from __future__ import annotations

import json
import re
from typing import Any

import redis
from rq import Queue, SimpleWorker
from rq.job import Job, JobStatus
from rq.serializers import JSONSerializer

from shared.queue import (
    CALLBACK_JOB_OPTIONS,
    CALLBACKS,
    ENQUEUE_SCRIPT,
    ENQUEUE_SCRIPT_SHA,
    PROCESS_CALLBACK,
    JobTemplate,
    resp_command,
)

SEEN: list[dict[str, Any]] = []


def record(callback: dict[str, Any]) -> str:
    SEEN.append(callback)
    return str(callback["id"])


def write(client: redis.Redis, template: JobTemplate, job_id: str, argument: object) -> None:
    """What the ingress's JobStore does for a batch, here for a batch of one."""
    job = (job_id, template.data(json.dumps(argument).encode()), f"job {job_id}")
    assert client.register_script(ENQUEUE_SCRIPT)(args=template.script_args([job])) == 1


def test_a_template_job_has_the_fields_of_an_rq_enqueued_job(redis_client: redis.Redis) -> None:
    argument = {"id": "cb_1", "body": "AAEC"}
    queue = Queue(CALLBACKS, connection=redis_client, serializer=JSONSerializer)
    options = dict(CALLBACK_JOB_OPTIONS)
    theirs = queue.enqueue(PROCESS_CALLBACK, argument, job_id="theirs", description="job ours",
                           job_timeout=options.pop("timeout"), **options)
    write(redis_client, JobTemplate(CALLBACKS, PROCESS_CALLBACK, CALLBACK_JOB_OPTIONS), "ours",
          argument)

    ours_hash = redis_client.hgetall("rq:job:ours")
    theirs_hash = redis_client.hgetall("rq:job:theirs")
    assert ours_hash.keys() == theirs_hash.keys()
    for field in ours_hash.keys() - {b"created_at", b"enqueued_at", b"data"}:
        assert ours_hash[field] == theirs_hash[field], field
    assert redis_client.lrange("rq:queue:callbacks", 0, -1) == [theirs.id.encode(), b"ours"]

    ours = Job.fetch("ours", connection=redis_client, serializer=JSONSerializer)
    theirs = Job.fetch(theirs.id, connection=redis_client, serializer=JSONSerializer)
    assert (ours.func_name, ours.args, ours.kwargs) == (theirs.func_name, theirs.args, {})
    assert ours.get_status() == JobStatus.QUEUED
    assert (ours.retries_left, ours.retry_intervals) == (theirs.retries_left,
                                                         theirs.retry_intervals)
    assert ours.enqueued_at is not None and ours.created_at is not None


def test_a_batch_is_written_in_order_with_one_script_call(redis_client: redis.Redis) -> None:
    template = JobTemplate(CALLBACKS, PROCESS_CALLBACK, CALLBACK_JOB_OPTIONS)
    jobs = [(f"cb_{n}", template.data(b'{"n": %d}' % n), f"job {n}") for n in range(300)]
    script = redis_client.register_script(ENQUEUE_SCRIPT)
    assert script(args=template.script_args(jobs)) == 300
    assert redis_client.lrange("rq:queue:callbacks", 0, -1) == [f"cb_{n}".encode()
                                                                 for n in range(300)]
    job = Job.fetch("cb_299", connection=redis_client, serializer=JSONSerializer)
    assert job.args == [{"n": 299}]
    assert job.description == "job 299"


def test_a_real_worker_runs_a_template_job(redis_client: redis.Redis) -> None:
    SEEN.clear()
    template = JobTemplate(CALLBACKS, "tests.shared.test_queue.record", CALLBACK_JOB_OPTIONS)
    write(redis_client, template, "cb_run_me", {"id": "cb_run_me", "body": "AAEC"})
    queue = Queue(CALLBACKS, connection=redis_client, serializer=JSONSerializer)
    worker = SimpleWorker([queue], connection=redis_client, serializer=JSONSerializer)
    assert worker.work(burst=True)
    assert SEEN == [{"id": "cb_run_me", "body": "AAEC"}]
    job = Job.fetch("cb_run_me", connection=redis_client, serializer=JSONSerializer)
    assert job.get_status() == JobStatus.FINISHED
    assert job.return_value() == "cb_run_me"


def test_the_ingress_encoding_is_the_same_call_as_script_args() -> None:
    """The ingress sends evalsha_command's bytes; the tests drive script_args: one call."""
    template = JobTemplate(CALLBACKS, PROCESS_CALLBACK, CALLBACK_JOB_OPTIONS)
    jobs = [(f"cb_{n}", template.data(b'{"n": %d}' % n), f"job {n}") for n in range(3)]
    stamp = re.compile(rb"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z")
    expected = resp_command("EVALSHA", ENQUEUE_SCRIPT_SHA, 0, *template.script_args(jobs))
    assert stamp.sub(b"T", template.evalsha_command(jobs)) == stamp.sub(b"T", expected)


def test_a_callback_is_retried_on_the_documented_schedule() -> None:
    """The intervals RQ's own `get_retry_interval` gives at each retry of a callback job:
    10 s, 30 s, 1 min, 5 min, 15 min, 30 min, then hourly, 12 tries in about 7 hours (the
    README). A list shorter than `max` was used from its first step: 10 s six times."""
    job = Job.create(PROCESS_CALLBACK, args=[{}], connection=redis.Redis(),
                     retry=CALLBACK_JOB_OPTIONS["retry"])
    waits = []
    while job.retries_left:
        waits.append(job.get_retry_interval())
        job.retries_left -= 1
    assert waits == [10, 30, 60, 300, 900, 1800, 3600, 3600, 3600, 3600, 3600, 3600]
    assert 6.5 * 3600 < sum(waits) < 7 * 3600
