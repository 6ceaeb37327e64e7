"""Hooks made, changed, disabled, rotated and deleted at run time (workers/hook_store.py),
as a console would: the workers use them within seconds, without a restart. Real Redis,
real RQ SimpleWorker (with RQ's scheduler where a delivery is made due), a real merchant
endpoint on 127.0.0.1, signatures checked with the standardwebhooks package, and
`payhooks` itself as a process for replay and the hooks' health."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from rq import Queue, SimpleWorker
from rq.job import Job, JobStatus
from rq.registry import ScheduledJobRegistry
from rq.serializers import JSONSerializer
from standardwebhooks import Webhook
from standardwebhooks.webhooks import WebhookVerificationError

from shared.keys import DEAD_LETTERS, RUNTIME_HOOKS, RUNTIME_HOOKS_VERSION, delivery_key, event_key
from shared.queue import DELIVERIES
from shared.sandbox.simulators.client import SimulatorClient
from shared.sandbox.simulators.merchant import MerchantEndpoint, Received
from shared.settings import settings_from_dict
from tests.helpers import (
    HOOK_SECRET,
    SecretWatch,
    config_for,
    leak_forms,
    netaxept,
    runtime_with,
    secrets_in,
    wait_until,
    work,
)
from workers import hook_store
from workers import runtime as runtimes
from workers.events import LOOK_AGAIN, delivery_job_id
from workers.hook_store import HookConflict, ReadOnlyHook, RuntimeHook, UnknownHook
from workers.hooks import find_hook, health
from workers.listing import delivery_states, get_event
from workers.replay import dead_letters, resend
from workers.runtime import HOOKS_CHECK_EVERY, Runtime
from workers.tasks import process_callback

MERCHANT = "shop-eu"




@pytest.fixture
def setup(worker_runtime: Runtime, endpoint: MerchantEndpoint, sims: Any, tmp_path: Path
          ) -> Iterator[tuple[Runtime, Path]]:
    """The runtime jobs use, with shop-eu's config hooks (orders, refunds) at the endpoint,
    and the same configuration as a file for the CLI."""
    config = config_for(worker_runtime.settings.redis_url, sims.url, endpoint.url,
                        retry_schedule=["100s", "200s"])
    path = tmp_path / "payhooks.toml"
    with runtime_with(worker_runtime, config, path) as runtime:
        yield runtime, path


def ids(runtime: Runtime, include_disabled: bool = False) -> list[str]:
    return [hook.id for hook in runtime.hooks(MERCHANT, include_disabled)]


def seen_by(runtime: Runtime, wanted: list[str], include_disabled: bool = False) -> float:
    """Wait until the runtime's hooks are these; how long that took."""
    started = time.monotonic()
    wait_until(lambda: ids(runtime, include_disabled) == wanted, HOOKS_CHECK_EVERY + 3,
               lambda: f"the runtime's hooks: {ids(runtime, include_disabled)}, not {wanted}")
    return time.monotonic() - started


def headers_of(request: Received) -> dict[str, str]:
    return {key.lower(): value for key, value in request.headers.items()}


def verifies(secret: str, request: Received) -> bool:
    try:
        Webhook(secret).verify(request.body, headers_of(request))
    except WebhookVerificationError:
        return False
    return True


def work_scheduled(runtime: Runtime) -> None:
    """A real worker on deliveries, with RQ's scheduler: what is due is queued, then run."""
    queue = Queue(DELIVERIES, connection=runtime.redis, serializer=JSONSerializer)
    SimpleWorker([queue], connection=runtime.redis, serializer=JSONSerializer).work(
        burst=True, with_scheduler=True)


def cli(config: Path, *args: str) -> str:
    done = subprocess.run([sys.executable, "-m", "shared.cli", *args, "--config",
                           str(config)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    assert secrets_in(done.stdout + done.stderr) == []
    return done.stdout + done.stderr


def assert_never_shown(watch: SecretWatch, secrets: list[str], *texts: str) -> None:
    """None of these generated secrets (which the session's watch does not know) in any
    log line written so far, nor in these texts; the lines are searched for the known
    secrets too, as the watch would after the test."""
    lines = watch.take_lines()
    assert lines, "no log line was captured"
    assert watch.problems_in(lines) == []
    forms = leak_forms(secret.removeprefix("whsec_") for secret in secrets)
    for text in (*lines, *texts):
        shown = [form for form in forms if form in text]
        for form in shown:
            text = text.replace(form, "<SECRET>")
        assert not shown, f"a generated secret in: {text}"


def test_a_hook_created_at_run_time_gets_the_next_event_signed_with_its_secret(
        setup: tuple[Runtime, Path], admin: SimulatorClient, endpoint: MerchantEndpoint,
        redis_client: redis.Redis, secret_watch: SecretWatch) -> None:
    runtime, config = setup
    assert ids(runtime) == ["orders", "refunds"]  # the worker's copy, looked at just now
    looked = time.monotonic()
    hook, secret = hook_store.create(redis_client, runtime.settings, MERCHANT, "crm",
                                     f"{endpoint.url}/crm?token=t0ken", ["payment.*"],
                                     actor="alice@example.com")
    assert secret.startswith("whsec_") and len(secret) == len("whsec_") + 32  # 24 bytes
    assert (hook.enabled, hook.events, hook.created_by) == (True, ("payment.*",),
                                                            "alice@example.com")
    if time.monotonic() - looked < HOOKS_CHECK_EVERY - 0.5:
        assert ids(runtime) == ["orders", "refunds"]  # its copy holds for up to 2 s
    took = seen_by(runtime, ["orders", "refunds", "crm"])
    assert time.monotonic() - looked <= HOOKS_CHECK_EVERY + 1, took

    [event_id] = process_callback(netaxept(admin, "rt-1", authorized=True))["events"]
    work(runtime)
    [request] = endpoint.requests_to("/crm")
    assert request.headers["webhook-id"] == event_id
    assert len(headers_of(request)["webhook-signature"].split(" ")) == 1
    assert verifies(secret, request) and not verifies(HOOK_SECRET, request)
    event = get_event(redis_client, event_id)
    assert event is not None
    assert delivery_states(redis_client, runtime.settings, event) == {
        "orders": "delivered (1 attempt)", "crm": "delivered (1 attempt)"}

    # the other operations see it too: hooks, find, listing, resend
    by_hook = {entry.hook: entry for entry in health(redis_client, runtime.settings, MERCHANT)}
    assert (by_hook["crm"].source, by_hook["crm"].enabled, by_hook["crm"].delivered) == (
        "runtime", True, 1)
    assert by_hook["crm"].url == f"{endpoint.url}/crm"  # without its query
    assert (by_hook["orders"].source, by_hook["orders"].as_json()["source"]) == (
        "config", "config")
    assert find_hook(redis_client, runtime.settings, "shop-eu/crm")[1].id == "crm"
    assert [h.id for h in hook_store.hooks_of(redis_client, runtime.settings, MERCHANT)] == [
        "orders", "refunds", "crm"]
    assert hook_store.is_runtime(redis_client, MERCHANT, "crm")
    assert not hook_store.is_runtime(redis_client, MERCHANT, "orders")
    assert resend(redis_client, runtime.settings, event, "crm") == {"crm": "queued"}
    work(runtime)
    assert [r.headers["webhook-id"] for r in endpoint.requests_to("/crm")] == [event_id] * 2
    listed = {entry["hook"]: entry for entry in map(json.loads, cli(
        config, "hooks", "--merchant", MERCHANT, "--json").splitlines())}
    assert (listed["crm"]["source"], listed["crm"]["enabled"]) == ("runtime", True)

    [stored] = hook_store.runtime_hooks(redis_client)
    shown = json.dumps(stored.as_json())
    assert stored.as_json()["secrets"] == [{"retire_at": None}]
    assert_never_shown(secret_watch, [secret], shown, repr(stored), str(stored))


def test_a_worker_whose_copy_is_older_than_the_hook_delivers_to_it(
        setup: tuple[Runtime, Path], admin: SimulatorClient, endpoint: MerchantEndpoint,
        redis_client: redis.Redis) -> None:
    """The callback's worker saw the new hook, the delivery's worker had looked just before
    it was made: it looks again rather than take the hook for deleted."""
    recorder, _ = setup
    callback = netaxept(admin, "rt-stale", authorized=True)
    other = Runtime(recorder.settings, recorder.redis, recorder.http)
    assert ids(other) == ["orders", "refunds"]
    looked = time.monotonic()
    _, secret = hook_store.create(redis_client, recorder.settings, MERCHANT, "crm",
                                  f"{endpoint.url}/crm")
    assert ids(recorder) == ["orders", "refunds", "crm"]  # it had not looked yet
    process_callback(callback)
    runtimes.install(other)
    assert time.monotonic() - looked < HOOKS_CHECK_EVERY - 0.5, "too slow to see it stale"
    assert ids(other) == ["orders", "refunds"]
    work(other)
    [request] = endpoint.requests_to("/crm")
    assert verifies(secret, request)


def test_a_config_hooks_id_cannot_be_taken_changed_or_deleted(
        setup: tuple[Runtime, Path], redis_client: redis.Redis) -> None:
    runtime, _ = setup
    settings = runtime.settings
    with pytest.raises(HookConflict, match="the config file has a hook of that id"):
        hook_store.create(redis_client, settings, MERCHANT, "orders", "https://shop.example/")
    for change in (lambda: hook_store.update(redis_client, settings, MERCHANT, "orders",
                                             enabled=False),
                   lambda: hook_store.rotate(redis_client, settings, MERCHANT, "orders", 60),
                   lambda: hook_store.delete(redis_client, settings, MERCHANT, "orders")):
        with pytest.raises(ReadOnlyHook, match="shop-eu/orders is in the config file"):
            change()
    assert not redis_client.exists(RUNTIME_HOOKS, RUNTIME_HOOKS_VERSION)  # nothing written

    hook_store.create(redis_client, settings, MERCHANT, "crm", "https://crm.example/in")
    with pytest.raises(HookConflict, match="shop-eu/crm exists already"):
        hook_store.create(redis_client, settings, MERCHANT, "crm", "https://other.example/")
    assert [h.url for h in hook_store.runtime_hooks(redis_client)] == ["https://crm.example/in"]
    with pytest.raises(UnknownHook, match=r"no runtime hook shop-eu/crn .*: crm\)"):
        hook_store.update(redis_client, settings, MERCHANT, "crn", enabled=False)
    with pytest.raises(UnknownHook, match="no runtime hook shop-eu/crn"):
        hook_store.delete(redis_client, settings, MERCHANT, "crn")
    with pytest.raises(UnknownHook, match="no merchant 'shop-us' in the configuration"):
        hook_store.create(redis_client, settings, "shop-us", "crm", "https://crm.example/in")
    assert int(redis_client.get(RUNTIME_HOOKS_VERSION) or 0) == 1  # the one change made


@pytest.mark.parametrize(("hook_id", "url", "events", "message"), [
    ("crm", "ftp://crm.example/in", ["*"],
     "hook shop-eu/crm: url: not a URL: expected http://host/... or https://host/..."),
    ("crm", "crm.example", ["*"], "hook shop-eu/crm: url: not a URL"),
    ("crm", "https://crm.example/in", ["payment.nothing"],
     "hook shop-eu/crm: events: 'payment.nothing' matches no event type; the types are "),
    ("crm", "https://crm.example/in", [], "hook shop-eu/crm: events: expected at least one"),
    ("CRM_1", "https://crm.example/in", ["*"],
     "hook shop-eu/CRM_1: id: an id may hold only a-z, 0-9 and '-', 1 to 64 characters"),
])
def test_a_bad_url_events_or_id_is_refused_in_plain_words_and_nothing_is_stored(
        setup: tuple[Runtime, Path], redis_client: redis.Redis, hook_id: str, url: str,
        events: list[str], message: str) -> None:
    runtime, _ = setup
    with pytest.raises(ValueError) as refused:
        hook_store.create(redis_client, runtime.settings, MERCHANT, hook_id, url, events)
    assert str(refused.value).startswith(message)
    assert "Input should" not in str(refused.value) and "pydantic" not in str(refused.value)
    assert not redis_client.exists(RUNTIME_HOOKS, RUNTIME_HOOKS_VERSION)


def test_a_bad_change_leaves_the_hook_as_it_was(
        setup: tuple[Runtime, Path], redis_client: redis.Redis) -> None:
    runtime, _ = setup
    hook, _ = hook_store.create(redis_client, runtime.settings, MERCHANT, "crm",
                                "https://crm.example/in")
    with pytest.raises(ValueError, match="events: 'refund' matches no event type"):
        hook_store.update(redis_client, runtime.settings, MERCHANT, "crm", url="https://x.example/",
                          events=["refund"])
    with pytest.raises(ValueError, match="retire_after"):
        hook_store.rotate(redis_client, runtime.settings, MERCHANT, "crm", -1)
    assert hook_store.runtime_hooks(redis_client) == [hook]
    changed = hook_store.update(redis_client, runtime.settings, MERCHANT, "crm",
                                events="payment.refunded", actor="bob")
    assert (changed.events, changed.url, changed.updated_by, changed.created_at) == (
        ("payment.refunded",), "https://crm.example/in", "bob", hook.created_at)


def test_a_disabled_hooks_deliveries_wait_paused_and_go_once_it_is_enabled(
        setup: tuple[Runtime, Path], admin: SimulatorClient, endpoint: MerchantEndpoint,
        redis_client: redis.Redis, secret_watch: SecretWatch) -> None:
    runtime, _ = setup
    _, secret = hook_store.create(redis_client, runtime.settings, MERCHANT, "crm",
                                  f"{endpoint.url}/crm")
    seen_by(runtime, ["orders", "refunds", "crm"])
    [queued] = process_callback(netaxept(admin, "dis-1", authorized=True))["events"]

    disabled = hook_store.update(redis_client, runtime.settings, MERCHANT, "crm",
                                 enabled=False, actor="alice")
    assert not disabled.enabled
    seen_by(runtime, ["orders", "refunds"])
    assert ids(runtime, include_disabled=True) == ["orders", "refunds", "crm"]
    started = time.time()
    work(runtime)
    assert endpoint.requests_to("/crm") == [] and len(endpoint.requests_to("/orders")) == 1
    job_id = delivery_job_id(queued, "crm")
    job = Job.fetch(job_id, connection=redis_client, serializer=JSONSerializer)
    assert (job.get_status(), job.retries_left) == (JobStatus.SCHEDULED, 2)  # no attempt
    due = ScheduledJobRegistry(DELIVERIES, connection=redis_client,
                               serializer=JSONSerializer).get_scheduled_time(job_id)
    assert LOOK_AGAIN - 2 <= due.timestamp() - started <= LOOK_AGAIN + 10
    event = get_event(redis_client, queued)
    assert event is not None
    assert delivery_states(redis_client, runtime.settings, event)["crm"] == "paused"
    assert redis_client.hget(delivery_key(queued, "crm"), "attempts") == b"0"
    [crm] = [entry for entry in health(redis_client, runtime.settings) if entry.hook == "crm"]
    assert (crm.state, crm.as_json()["enabled"]) == ("disabled", False)

    # an event recorded while it is disabled is not for it
    [later] = process_callback(netaxept(admin, "dis-2", authorized=True))["events"]
    assert not redis_client.exists(delivery_key(later, "crm"))
    later_event = get_event(redis_client, later)
    assert later_event is not None
    assert "crm" not in delivery_states(redis_client, runtime.settings, later_event)

    hook_store.update(redis_client, runtime.settings, MERCHANT, "crm", enabled=True,
                      actor="alice")  # the worker's copy still says disabled: it looks again
    work_scheduled(runtime)
    [request] = endpoint.requests_to("/crm")
    assert request.headers["webhook-id"] == queued and verifies(secret, request)
    assert delivery_states(redis_client, runtime.settings, event)["crm"] == (
        "delivered (1 attempt)")
    assert_never_shown(secret_watch, [secret])


def test_a_deleted_hooks_delivery_is_dead_lettered_and_replayed_once_the_hook_is_back(
        setup: tuple[Runtime, Path], admin: SimulatorClient, endpoint: MerchantEndpoint,
        redis_client: redis.Redis, secret_watch: SecretWatch) -> None:
    runtime, config = setup
    _, first = hook_store.create(redis_client, runtime.settings, MERCHANT, "crm",
                                 f"{endpoint.url}/crm")
    seen_by(runtime, ["orders", "refunds", "crm"])
    [event_id] = process_callback(netaxept(admin, "del-1", authorized=True))["events"]
    hook_store.delete(redis_client, runtime.settings, MERCHANT, "crm", actor="alice")
    assert hook_store.runtime_hooks(redis_client) == []
    seen_by(runtime, ["orders", "refunds"], include_disabled=True)
    work(runtime)
    assert endpoint.requests_to("/crm") == []
    record = redis_client.hgetall(delivery_key(event_id, "crm"))
    assert (record[b"state"], record[b"reason"]) == (b"dead", b"the hook was deleted")
    assert redis_client.zscore(DEAD_LETTERS, f"shop-eu|{event_id}|crm") is not None
    assert [letter.event for letter in dead_letters(redis_client, hook="crm")] == [event_id]
    assert "1 dead-lettered delivery to replay" in cli(config, "replay", "--hook", "crm",
                                                       "--dry-run")
    assert "crm" not in {entry.hook for entry in health(redis_client, runtime.settings)}

    hook, second = hook_store.create(redis_client, runtime.settings, MERCHANT, "crm",
                                     f"{endpoint.url}/crm", actor="alice")
    assert second != first
    assert "replayed 1 of 1" in cli(config, "replay", "--hook", "crm")
    work(runtime)  # its copy may not have the new hook yet: it looks again
    [request] = endpoint.requests_to("/crm")
    assert request.headers["webhook-id"] == event_id
    assert verifies(second, request) and not verifies(first, request)
    assert redis_client.hget(delivery_key(event_id, "crm"), "state") == b"delivered"
    assert dead_letters(redis_client) == []
    assert_never_shown(secret_watch, [first, second], json.dumps(hook.as_json()))


def test_a_hook_taken_out_of_the_config_dead_letters_its_deliveries_an_expired_event_drops(
        setup: tuple[Runtime, Path], admin: SimulatorClient, endpoint: MerchantEndpoint,
        redis_client: redis.Redis, sims: Any) -> None:
    """Before the hook store, a delivery to a hook no longer configured was dropped."""
    runtime, _ = setup
    [gone, expired] = [process_callback(netaxept(admin, f"cfg-{n}", authorized=True))["events"][0]
                       for n in (1, 2)]
    config = config_for(runtime.settings.redis_url, sims.url, endpoint.url)
    config["merchants"][MERCHANT]["hooks"] = config["merchants"][MERCHANT]["hooks"][1:]
    runtimes.install(Runtime(settings_from_dict(config, environ={}), runtime.redis,
                             runtime.http))  # the file edited, the workers restarted
    redis_client.delete(event_key(expired))  # as after the 10 days
    work(runtime)
    assert endpoint.received == []
    dead = redis_client.hgetall(delivery_key(gone, "orders"))
    assert (dead[b"state"], dead[b"reason"]) == (b"dead", b"the hook was deleted")
    assert redis_client.hget(delivery_key(expired, "orders"), "state") == b"dropped"
    assert [letter.event for letter in dead_letters(redis_client)] == [gone]


def test_a_rotated_secret_signs_beside_the_old_one_until_it_retires(
        setup: tuple[Runtime, Path], admin: SimulatorClient, endpoint: MerchantEndpoint,
        redis_client: redis.Redis, secret_watch: SecretWatch) -> None:
    runtime, _ = setup
    _, old = hook_store.create(redis_client, runtime.settings, MERCHANT, "crm",
                               f"{endpoint.url}/crm")
    seen_by(runtime, ["orders", "refunds", "crm"])
    overlap = HOOKS_CHECK_EVERY + 4
    hook, new = hook_store.rotate(redis_client, runtime.settings, MERCHANT, "crm", overlap,
                                  actor="alice")
    (_, newest_retires), (_, retire_at) = hook.secrets
    assert newest_retires is None
    assert retire_at is not None and abs(retire_at - (time.time() + overlap)) < 1
    assert hook.as_json()["secrets"] == [{"retire_at": None}, {"retire_at": retire_at}]
    wait_until(lambda: len(runtime.hooks(MERCHANT)[-1].secret) == 2, HOOKS_CHECK_EVERY + 3,
               "the worker's copy has the new secret")

    process_callback(netaxept(admin, "rot-1", authorized=True))
    work(runtime)
    assert time.time() < retire_at, "too slow to deliver within the overlap"
    [during] = endpoint.requests_to("/crm")
    signatures = headers_of(during)["webhook-signature"].split(" ")
    assert len(signatures) == 2 and all(s.startswith("v1,") for s in signatures)
    assert verifies(new, during) and verifies(old, during)

    # a second rotation does not give the first old secret longer
    again, newest = hook_store.rotate(redis_client, runtime.settings, MERCHANT, "crm", 3600)
    assert [retire for _, retire in again.secrets] == [None, pytest.approx(
        time.time() + 3600, abs=5), retire_at]
    time.sleep(max(0.0, retire_at - time.time()) + 0.1)
    assert len(runtime.hooks(MERCHANT, fresh=True)[-1].secret) == 2  # the oldest retired
    process_callback(netaxept(admin, "rot-2", authorized=True))
    work(runtime)
    after = endpoint.requests_to("/crm")[-1]
    assert len(headers_of(after)["webhook-signature"].split(" ")) == 2
    assert verifies(newest, after) and verifies(new, after) and not verifies(old, after)
    stored: RuntimeHook = hook_store.runtime_hooks(redis_client)[0]
    assert_never_shown(secret_watch, [old, new, newest], json.dumps(stored.as_json()),
                       repr(stored))


def test_only_the_newest_secret_signs_once_the_overlap_is_over(
        setup: tuple[Runtime, Path], admin: SimulatorClient, endpoint: MerchantEndpoint,
        redis_client: redis.Redis) -> None:
    """The worker's copy holds across the retirement (no change to the store was made):
    the retired secret stops signing all the same."""
    runtime, _ = setup
    _, old = hook_store.create(redis_client, runtime.settings, MERCHANT, "crm",
                               f"{endpoint.url}/crm")
    _, new = hook_store.rotate(redis_client, runtime.settings, MERCHANT, "crm", 1.0)
    wait_until(lambda: len(runtime.hooks(MERCHANT)[-1].secret) == 2, HOOKS_CHECK_EVERY + 3,
               "the worker's copy has both secrets")
    time.sleep(1.1)
    assert len(runtime.hooks(MERCHANT)[-1].secret) == 1
    process_callback(netaxept(admin, "rot-3", authorized=True))
    work(runtime)
    [request] = endpoint.requests_to("/crm")
    assert len(headers_of(request)["webhook-signature"].split(" ")) == 1
    assert verifies(new, request) and not verifies(old, request)


def test_a_config_hook_added_later_hides_the_runtime_hook_of_its_id(
        setup: tuple[Runtime, Path], endpoint: MerchantEndpoint, redis_client: redis.Redis,
        sims: Any) -> None:
    """The config file's hook wins; the hidden runtime hook cannot be changed, only
    deleted (the config hook stays)."""
    runtime, _ = setup
    hook_store.create(redis_client, runtime.settings, MERCHANT, "crm", f"{endpoint.url}/old")
    config = config_for(runtime.settings.redis_url, sims.url, endpoint.url)
    config["merchants"][MERCHANT]["hooks"].append(
        {"id": "crm", "url": f"{endpoint.url}/crm", "secret": HOOK_SECRET})
    settings = settings_from_dict(config, environ={})
    [crm] = [h for h in hook_store.hooks_of(redis_client, settings, MERCHANT) if h.id == "crm"]
    assert str(crm.url) == f"{endpoint.url}/crm"
    assert [(h.hook.id, h.source) for h in hook_store.listed_hooks(redis_client, settings)
            if h.merchant == MERCHANT] == [
        ("orders", "config"), ("refunds", "config"), ("crm", "config")]
    with pytest.raises(ReadOnlyHook):
        hook_store.update(redis_client, settings, MERCHANT, "crm", enabled=False)
    hook_store.delete(redis_client, settings, MERCHANT, "crm")
    assert hook_store.runtime_hooks(redis_client) == []
    with pytest.raises(ReadOnlyHook):
        hook_store.delete(redis_client, settings, MERCHANT, "crm")
