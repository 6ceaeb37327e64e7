"""What `payhooks worker` writes, read from a real worker process: one summary line per
unit of work. RQ's own lines (a job taken, "Job OK", "result is kept", clean-ups) stay
below `info`; an expected retry is a `warning` without a traceback; a permanent end is an
`error`, once; a callback whose facts were all recorded before says `duplicate`; a
delivered event carries no `error`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import redis
from rq import Queue
from rq.serializers import JSONSerializer

from shared.queue import CALLBACK_JOB_OPTIONS, CALLBACKS, PROCESS_CALLBACK
from shared.sandbox.redis_server import free_port
from shared.sandbox.simulators.client import SimulatorClient
from shared.sandbox.simulators.merchant import MerchantEndpoint
from tests.helpers import ROOT, netaxept, netaxept_callback, to_toml, worker_config


def run_worker(config: dict[str, Any], tmp_path: Path, *callbacks: dict[str, Any]
               ) -> list[dict[str, Any]]:
    """Enqueue the callbacks, run `payhooks worker --burst` on them; its JSON lines."""
    client = redis.Redis.from_url(config["redis_url"])
    queue = Queue(CALLBACKS, connection=client, serializer=JSONSerializer)
    for callback in callbacks:
        queue.enqueue(PROCESS_CALLBACK, callback, job_timeout=60,
                      retry=CALLBACK_JOB_OPTIONS["retry"])
    path = tmp_path / "payhooks.toml"
    path.write_text(to_toml({**config, "logging": {"format": "json"}}))
    done = subprocess.run([sys.executable, "-m", "shared.cli", "worker", "--burst",
                           "--config", str(path)], capture_output=True, text=True, cwd=ROOT,
                          timeout=120, env={k: v for k, v in os.environ.items()
                                            if not k.startswith("PAYHOOKS_")})
    assert done.returncode == 0, done.stderr[-2000:]
    output = done.stdout + done.stderr
    assert "Traceback" not in output and "Job OK" not in output
    assert "cleaning registries" not in output and "result is kept" not in output
    return [json.loads(line) for line in output.splitlines() if line.startswith("{")]


@pytest.mark.usefixtures("worker_runtime")  # the simulators know shop-eu's credentials
def test_one_line_per_callback_and_delivery_with_what_happened(
        redis_url: str, redis_client: redis.Redis, admin: SimulatorClient, sims: Any,
        tmp_path: Path) -> None:
    with MerchantEndpoint() as endpoint:
        config = worker_config(redis_url, sims.url, f"{endpoint.url}/hook")
        callback = netaxept(admin, "logs-1", authorized=True)
        lines = run_worker(config, tmp_path, callback, callback)  # the second: a duplicate
    processed = [line for line in lines if line["event"] == "callback_processed"]
    # the two run side by side (the worker's threads): either may be the one to record it
    assert sorted((line["outcome"], line["level"]) for line in processed) == [
        ("duplicate", "info"), ("recorded", "info")]
    assert not [line for line in processed if line["outcome"] == "duplicate"
                and "new_events" in line]
    [delivered] = [line for line in lines if line["event"] == "event_delivered"]
    assert delivered["status"] == 200 and "error" not in delivered
    assert not [line for line in lines if line.get("logger", "").startswith("rq")
                and line["level"] in ("info", "debug")]


@pytest.mark.usefixtures("worker_runtime")
def test_an_expected_retry_is_a_warning_and_a_permanent_end_one_error(
        redis_url: str, redis_client: redis.Redis, sims: Any, tmp_path: Path) -> None:
    config = worker_config(redis_url, sims.url)
    closed = f"http://127.0.0.1:{free_port()}"  # nothing listens: the provider is away
    lines = run_worker(config, tmp_path, netaxept_callback("logs-unknown"),
                       netaxept_callback_to(config, "logs-away", closed))
    by_reason = {line["outcome"]: line for line in lines if line["event"] == "callback_processed"}
    assert by_reason["rejected"]["level"] == "error"  # Netaxept knows no such transaction
    assert by_reason["retry"]["level"] == "warning"
    assert len([line for line in lines if line["level"] == "error"]) == 1


def netaxept_callback_to(config: dict[str, Any], transaction: str, base_url: str
                         ) -> dict[str, Any]:
    """A Netaxept callback of strict-eu, whose Query API is at `base_url`."""
    config["merchants"]["strict-eu"]["netaxept"] = {
        **config["merchants"]["shop-eu"]["netaxept"], "base_url": base_url}
    callback = netaxept_callback(transaction)
    callback["merchant"] = "strict-eu"
    return callback
