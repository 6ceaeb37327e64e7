"""`payhooks callbacks`: callbacks acknowledged but not done, with the reason, found and
run again, as an operator asked "the provider says it called us, where is the payment?"
uses it. Real RQ workers, the provider simulators over HTTP, the CLI as a process."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import redis
from rq import Queue, SimpleWorker
from rq.job import Job, JobStatus
from rq.serializers import JSONSerializer

from shared.keys import TROUBLED_CALLBACKS, callback_key
from shared.queue import CALLBACK_JOB_OPTIONS, CALLBACKS, PROCESS_CALLBACK
from shared.sandbox.simulators.client import SimulatorClient
from tests.helpers import netaxept, netaxept_callback, secrets_in, to_toml, worker_config
from workers.callbacks import troubled_callbacks
from workers.listing import recent_events
from workers.runtime import Runtime


def enqueue(runtime: Runtime, callback: dict[str, Any]) -> Job:
    queue = Queue(CALLBACKS, connection=runtime.redis, serializer=JSONSerializer)
    options = dict(CALLBACK_JOB_OPTIONS)
    return queue.enqueue(PROCESS_CALLBACK, callback, job_id=callback["id"],
                         job_timeout=options.pop("timeout"), **options)


def work(runtime: Runtime) -> None:
    queue = Queue(CALLBACKS, connection=runtime.redis, serializer=JSONSerializer)
    SimpleWorker([queue], connection=runtime.redis, serializer=JSONSerializer).work(
        burst=True, with_scheduler=False)


def cli(config: Path, *args: str) -> str:
    done = subprocess.run([sys.executable, "-m", "shared.cli", "callbacks", "--config",
                           str(config), *args], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert secrets_in(done.stdout + done.stderr) == []
    return done.stdout


def test_retrying_and_rejected_callbacks_are_listed_with_why_and_run_again_now(
        worker_runtime: Runtime, admin: SimulatorClient, sims: Any,
        redis_client: redis.Redis, tmp_path: Path) -> None:
    config = tmp_path / "payhooks.toml"
    config.write_text(to_toml(worker_config(worker_runtime.settings.redis_url, sims.url)))
    lagging = netaxept(admin, "tx-lag", authorized=True)
    admin.faults("netaxept", error_rate=1.0)
    enqueue(worker_runtime, lagging)
    work(worker_runtime)
    assert Job.fetch(lagging["id"], connection=redis_client,  # RQ saved it as it rescheduled
                     serializer=JSONSerializer).meta == {"troubled": 1}
    admin.faults("netaxept", error_rate=0.0)
    unknown = netaxept_callback("tx-unknown")  # the API knows no such transaction
    enqueue(worker_runtime, unknown)
    work(worker_runtime)

    listed = cli(config).splitlines()
    assert listed[0] == ("callbacks: 0 waiting, 0 running, 1 retrying, 0 failed, "
                         "1 rejected, 0 unsupported")
    retrying = next(line for line in listed if lagging["id"] in line)
    assert "retrying (1 try, next in " in retrying and "HTTP 5" in retrying
    rejected = next(line for line in listed if unknown["id"] in line)
    assert "rejected (1 try): " in rejected and "unknown" in rejected
    as_json = [json.loads(line) for line in cli(config, "--json", "--outcome", "retrying")
               .splitlines()]
    assert [(e["callback_id"], e["outcome"]) for e in as_json] == [(lagging["id"], "retrying")]
    assert 0 < as_json[0]["next_in_s"] <= 12  # the first step of the schedule, 10 s

    # the API answers again: run it now instead of in 10 s; it is done and forgotten
    assert cli(config, "--retry-now", "--outcome", "retrying").strip() == (
        "queued 1 of 1 callbacks to run again now")
    work(worker_runtime)
    assert Job.fetch(lagging["id"], connection=redis_client,
                     serializer=JSONSerializer).get_status() == JobStatus.FINISHED
    assert [e.data.transaction_id for e in recent_events(redis_client)] == ["tx-lag"]
    assert [e.outcome for e in troubled_callbacks(redis_client)] == ["rejected"]
    assert not redis_client.exists(callback_key(lagging["id"]))

    # the transaction appears (a configuration fix, say): the rejected one runs again
    netaxept(admin, "tx-unknown", authorized=True)
    assert "queued 1 of 1" in cli(config, "--retry-now", "--id", unknown["id"])
    work(worker_runtime)
    assert sorted(e.data.transaction_id for e in recent_events(redis_client)) == [
        "tx-lag", "tx-unknown"]
    assert cli(config).splitlines() == [
        "callbacks: 0 waiting, 0 running, 0 retrying, 0 failed, 0 rejected, 0 unsupported"]
    assert redis_client.zcard(TROUBLED_CALLBACKS) == 0
    assert "queued 0 of 0" in cli(config, "--retry-now")  # nothing left: nothing doubled


def test_a_callback_done_at_its_first_try_writes_no_record(
        worker_runtime: Runtime, admin: SimulatorClient, redis_client: redis.Redis) -> None:
    enqueue(worker_runtime, netaxept(admin, "tx-ok", authorized=True))
    before = redis_client.dbsize()
    work(worker_runtime)
    assert len(recent_events(redis_client)) == 1
    assert not redis_client.keys("payhooks:callback*")
    assert redis_client.dbsize() > before  # it did record its event


def test_a_callback_out_of_tries_is_failed(worker_runtime: Runtime, admin: SimulatorClient,
                                           redis_client: redis.Redis) -> None:
    callback = netaxept(admin, "tx-down", authorized=True)
    admin.faults("netaxept", error_rate=1.0)
    job = enqueue(worker_runtime, callback)
    job.retries_left = 0  # its last try
    job.save()
    work(worker_runtime)
    [entry] = troubled_callbacks(redis_client)
    assert (entry.callback_id, entry.outcome) == (callback["id"], "failed")
