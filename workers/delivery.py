"""Delivering canonical events to merchant hooks: sign, POST, record, retry, dead-letter.

One RQ job per (event, hook), with a deterministic id (workers/events.py), runs
`deliver_event`. Each attempt:
- POSTs the event's JSON, signed the Standard Webhooks way: `webhook-id` (the event id,
  the merchant's idempotency key), `webhook-timestamp`, and `webhook-signature`, one
  `v1,<base64 HMAC-SHA256 of "id.timestamp.body">` per active secret of the hook;
- counts as delivered on a 2xx within `[delivery] timeout`, a deadline for the whole
  attempt from connecting to the last byte read (not per read: a hook that drips its answer
  a byte at a time is cut off at the deadline, and the attempt is a timeout); redirects are
  not followed, at most 16 KB of the answer is read, and (unless `allow_private_networks`)
  a hook whose host resolves to a private, loopback or link-local address is refused
  before connecting;
- is recorded (time, status or error, duration) for `history` days.
A failed attempt is retried on `retry_schedule`, each step ±20% (jitter), or after the
hook's `Retry-After` (between 1 s and 24 h): the job sets its next interval on itself
before failing, and RQ's scheduler brings it back. When the schedule is used up the
delivery is dead-lettered: kept, with the event, for `payhooks replay`.

Isolation: at most `max_in_flight_per_hook` attempts to one hook are in flight at once,
across all workers (a healthy but slow hook cannot take every worker; a delivery that finds
every place taken steps aside for a few seconds, its attempt given back). While a hook is
failing, only one attempt to it is in flight at a time (its other deliveries step aside
for a moment, their attempt given back), so it occupies at most one worker. A hook that
fails `pause_after` times in a row is paused, at first for a minute, doubling up to an
hour. Its deliveries are not attempted while it is paused; they wait in
RQ's scheduled registry, with their attempt given back, and come back when the pause ends.
Then one of them probes the hook: a success resumes it, a failure pauses it again. So a
dead endpoint costs the workers a few timeouts per pause, not one per delivery, and
deliveries to every other hook go on at full speed.

A hook may come from the config file or from the hook store (workers/hook_store.py), whose
changes each worker sees within seconds. A delivery to a hook disabled there waits as for a
pause (state `paused`, its attempt given back, looking again hourly; enabling the hook makes
it due now). A delivery to a hook that no longer exists (deleted, or taken out of the config
file) is dead-lettered with the reason "the hook was deleted", to replay once a hook of that
id exists again; only one whose event has expired is dropped.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import random
import threading
import time
from dataclasses import dataclass
from typing import Any

import httpx
import orjson
import structlog
from redis import Redis
from redis.typing import EncodableT
from rq import get_current_job
from rq.job import Job

from shared import metrics, slots
from shared.clock import from_reply, redis_now
from shared.errors import DeliveryFailed, HookPaused, PayhooksError
from shared.http import REFUSED, deadline, make_delivery_client
from shared.http import retry_after as parse_retry_after
from shared.keys import (
    DEAD_LETTERS,
    PAUSED_HOOKS,
    attempts_key,
    dead_letter_member,
    delivery_key,
    event_key,
    hook_in_flight_key,
    hook_key,
    hook_probe_key,
)
from shared.models import FINAL_STATES, DeliveryState
from shared.settings import DeliverySettings, HookSettings
from workers import runtime as runtimes
from workers.events import LOOK_AGAIN

log = structlog.get_logger("payhooks.delivery")
RESPONSE_LIMIT = 16 * 1024
ANSWER_KEPT = 200  # bytes of a hook's answer kept with the attempt
PAUSE_FIRST, PAUSE_MAX = 60.0, 3600.0
RETRY_AFTER_BOUNDS = (1.0, 86400.0)


@dataclass(frozen=True, slots=True)
class Attempt:
    at: float
    status: int | None
    error: str | None
    duration_ms: float
    retry_after: float | None = None
    answer: str | None = None  # the first bytes of the hook's answer, for the console

    @property
    def ok(self) -> bool:
        return self.status is not None and 200 <= self.status < 300


def sign(secret: str, event_id: str, timestamp: int, body: bytes) -> str:
    """`v1,<signature>` for one `whsec_` secret, as the Standard Webhooks spec defines it."""
    key = base64.b64decode(secret.removeprefix("whsec_"))
    message = f"{event_id}.{timestamp}.".encode() + body
    return "v1," + base64.b64encode(hmac.new(key, message, hashlib.sha256).digest()).decode()


def signed_headers(hook: HookSettings, event_id: str, body: bytes, now: float) -> dict[str, str]:
    timestamp = int(now)
    return {
        "content-type": "application/json",
        "webhook-id": event_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": " ".join(sign(secret.get_secret_value(), event_id, timestamp, body)
                                      for secret in hook.secret),
    }


def deliver_event(event_id: str, merchant: str, hook_id: str) -> dict[str, Any]:
    """Deliver one event to one hook, once; raise to have RQ retry it."""
    runtime = runtimes.current()
    settings = runtime.settings
    structlog.contextvars.clear_contextvars()
    structlog.contextvars.bind_contextvars(event_id=event_id, merchant=merchant, hook=hook_id)
    origin, state = runtime.redis.hmget(delivery_key(event_id, hook_id), ["callback_id", "state"])
    if isinstance(origin, bytes):  # follow a callback through to its deliveries in the logs
        structlog.contextvars.bind_contextvars(callback_id=origin.decode())
    if state == DeliveryState.DELIVERED.value.encode():
        # by the callback job's own first attempt (workers/first_attempt.py), which ended
        # after this job was due; a delivery sent again is set `queued` first
        log.info("delivery_skipped", reason="delivered already")
        return {"state": DeliveryState.DELIVERED.value, "reason": "delivered already"}
    body = _event_body(runtime.redis, event_id, hook_id)
    if body is None:
        reason = "the event expired"
        set_state(runtime.redis, event_id, hook_id, settings.delivery,
                   state=DeliveryState.DROPPED)
        log.warning("delivery_dropped", reason=reason)
        return {"state": DeliveryState.DROPPED.value, "reason": reason}
    hook, enabled = _find_hook(runtime, merchant, hook_id)
    if hook is None:
        return _hook_gone(runtime.redis, merchant, hook_id, event_id, body, settings.delivery)
    if not enabled:  # kept waiting, as for a pause; enabling the hook makes it due now
        set_state(runtime.redis, event_id, hook_id, settings.delivery,
                   state=DeliveryState.PAUSED)
        _defer(LOOK_AGAIN + random.uniform(0, 5))  # noqa: S311
    probing = wait_if_paused(runtime.redis, merchant, hook, settings.delivery)
    try:
        slot = _take_slot(runtime.redis, merchant, hook.id, event_id, settings.delivery)
    except HookPaused:
        if probing:
            runtime.redis.delete(hook_probe_key(merchant, hook.id))
        raise
    try:
        attempt = post_event(client_for(settings.delivery), hook, event_id, body,
                             settings.delivery.timeout)
    except BaseException:  # the job's own timeout, say: give the place back all the same
        slots.give_back(runtime.redis, slot, event_id)
        raise
    finally:
        if probing:
            runtime.redis.delete(hook_probe_key(merchant, hook.id))
    # the place is given back with the attempt's record, in the same round trip
    return _settle(runtime.redis, merchant, hook, event_id, body, attempt, settings.delivery,
                   failing=probing)


def _find_hook(runtime: runtimes.Runtime, merchant: str, hook_id: str
               ) -> tuple[HookSettings | None, bool]:
    """The hook, config or runtime, and whether it is enabled. A hook this worker's copy
    lacks or has disabled is looked for again in the store now: it may have been created
    or enabled within the last seconds, by a change another worker has seen already."""
    hook = None
    for fresh in (False, True):
        hooks = runtime.hooks(merchant, include_disabled=True, fresh=fresh)
        hook = next((h for h in hooks if h.id == hook_id), None)
        if hook is not None and any(h.id == hook_id for h in runtime.hooks(merchant)):
            return hook, True
    return hook, False


def _hook_gone(redis: Redis, merchant: str, hook_id: str, event_id: str, body: bytes,
               settings: DeliverySettings) -> dict[str, Any]:
    """A delivery to a hook deleted (or taken out of the config file) since: dead-lettered,
    to replay once a hook of that id exists again."""
    reason = "the hook was deleted"
    attempts = int(redis.hget(delivery_key(event_id, hook_id), "attempts") or 0)
    dead_letter(redis, merchant, hook_id, event_id, body, attempts, settings, reason=reason)
    batch = metrics.Batch()
    batch.count("deliveries", merchant, hook_id, "dead")
    batch.send(redis)
    log.warning("delivery_dead_lettered", attempt=attempts, reason=reason)
    return {"state": DeliveryState.DEAD.value, "reason": reason}


def delivery_failed(job: Job, connection: Redis, kind: type[BaseException] | None = None,
                    error: BaseException | None = None, traceback: object = None) -> None:
    """RQ's failure callback of every delivery job (events.delivery_job_options), run on
    each failure RQ sees: our DeliveryFailed and HookPaused, and what our code never saw
    end: RQ's job timeout, an unexpected error, a worker lost mid-job (RQ's clean-up of the
    started registry calls it with AbandonedJobError). Once no try is left, a delivery that
    is not delivered, dropped or dead-lettered yet is dead-lettered now, with the reason:
    none ends in RQ's failed registry as "queued" or "retrying", unseen by `payhooks events`
    and `payhooks replay`. It never raises: RQ's clean-up would stop at the first error."""
    if job.retries_left:
        return  # RQ runs it again
    try:
        event_id, merchant, hook_id = (str(arg) for arg in job.args)
        state = connection.hget(delivery_key(event_id, hook_id), "state")
        if isinstance(state, bytes) and state.decode() in FINAL_STATES:
            return
        settings = _delivery_settings()
        reason = (f"the job ended: {kind.__name__}" if kind is not None
                  else "the job ended unfinished")
        body = _event_body(connection, event_id, hook_id)
        if body is None:
            set_state(connection, event_id, hook_id, settings, state=DeliveryState.DROPPED,
                       reason=reason)
            return
        attempts = int(connection.hget(delivery_key(event_id, hook_id), "attempts") or 0)
        dead_letter(connection, merchant, hook_id, event_id, body, attempts, settings,
                     reason=reason)
        batch = metrics.Batch()
        batch.count("deliveries", merchant, hook_id, "dead")
        batch.send(connection)
        log.error("delivery_dead_lettered", event_id=event_id, merchant=merchant,
                  hook=hook_id, attempt=attempts, reason=reason)
    except Exception as exc:  # see the docstring; the job stays in RQ's failed registry
        log.error("delivery_failure_not_recorded", job_id=job.id, error=exc.__class__.__name__)


def _delivery_settings() -> DeliverySettings:
    """The worker's delivery settings; the defaults where no configuration can be loaded
    (RQ's clean-up run by a process of another kind)."""
    try:
        return runtimes.current().settings.delivery
    except PayhooksError:
        return DeliverySettings()


_clients: dict[tuple[float, bool], httpx.Client] = {}
_clients_made = threading.Lock()


def client_for(settings: DeliverySettings) -> httpx.Client:
    """One client per worker process and setting, shared by its threads, so connections
    to hooks are reused."""
    key = (settings.timeout, settings.allow_private_networks)
    with _clients_made:
        if key not in _clients:
            _clients[key] = make_delivery_client(settings.timeout,
                                                 settings.allow_private_networks)
        return _clients[key]


def send_once(settings: DeliverySettings, hook: HookSettings, event_id: str, body: bytes
              ) -> Attempt:
    """One signed POST of `body` to the hook, as an attempt is made, recorded nowhere: the
    console's "send a test event"."""
    return post_event(client_for(settings), hook, event_id, body, settings.timeout)


def _event_body(redis: Redis, event_id: str, hook_id: str) -> bytes | None:
    """The event's JSON as recorded; after the dedup window, the dead letter's copy."""
    body = redis.get(event_key(event_id)) or redis.hget(delivery_key(event_id, hook_id), "event")
    return bytes(body) if isinstance(body, bytes) else None


def post_event(client: httpx.Client, hook: HookSettings, event_id: str, body: bytes,
               timeout: float) -> Attempt:
    """One POST, connect to the last byte read within `timeout` (a hook that drips its
    answer is cut off then, and the attempt is a timeout like any other)."""
    started = time.time()
    status, error, retry_after = None, None, None
    first = b""
    try:
        headers = signed_headers(hook, event_id, body, started)
        with deadline(timeout), client.stream("POST", str(hook.url), content=body,
                                              headers=headers) as response:
            received = 0
            for chunk in response.iter_raw():
                received += len(chunk)
                first = first or chunk[:ANSWER_KEPT]
                if received >= RESPONSE_LIMIT:
                    break
            status = response.status_code
            retry_after = parse_retry_after(response.headers.get("retry-after"))
    except httpx.ConnectError as exc:  # httpx wraps our PrivateAddressRefused in its own
        error = str(exc) if str(exc).startswith(REFUSED) else "could not connect"
    except httpx.TimeoutException:
        error = "timeout"
    except httpx.HTTPError as exc:
        error = exc.__class__.__name__
    return Attempt(started, status, error, round((time.time() - started) * 1000, 1),
                   retry_after, first.decode("utf-8", "replace") if first else None)


def _settle(redis: Redis, merchant: str, hook: HookSettings, event_id: str, body: bytes,
            attempt: Attempt, settings: DeliverySettings, failing: bool) -> dict[str, Any]:
    batch = metrics.Batch()
    batch.observe("delivery_seconds", attempt.duration_ms / 1000, merchant)
    try:
        return _outcome(redis, merchant, hook, event_id, body, attempt, settings, batch,
                        failing)
    finally:
        batch.send(redis)


def _outcome(redis: Redis, merchant: str, hook: HookSettings, event_id: str, body: bytes,
             attempt: Attempt, settings: DeliverySettings, batch: metrics.Batch,
             failing: bool) -> dict[str, Any]:
    """`failing`: the hook was failing or paused when this attempt began."""
    number = record_attempt(redis, merchant, event_id, hook.id, attempt, settings)
    outcome = attempt_fields(attempt, number, hook)
    if attempt.ok:
        batch.count("deliveries", merchant, hook.id, "delivered")
        if failing:  # a healthy hook has no failures to forget and is not in PAUSED
            pipe = redis.pipeline()
            pipe.delete(hook_key(merchant, hook.id))
            pipe.srem(PAUSED_HOOKS, f"{merchant}/{hook.id}")
            pipe.execute()
        set_state(redis, event_id, hook.id, settings, state=DeliveryState.DELIVERED,
                   attempts=number)
        log.info("event_delivered", **outcome)
        return {"state": DeliveryState.DELIVERED.value, **outcome}
    note_failure(redis, merchant, hook, settings,
                 error=attempt.error or f"HTTP {attempt.status}")
    job = get_current_job()
    if job is not None and job.retries_left:
        delay = next_delay(settings.retry_schedule, number, attempt.retry_after)
        job.retry_intervals = [max(1, round(delay))]
        set_state(redis, event_id, hook.id, settings, state=DeliveryState.RETRYING,
                   attempts=number,
                   next_at=time.time() + delay)
        batch.count("deliveries", merchant, hook.id, "failed")
        log.warning("delivery_failed", next_in_s=round(delay, 1), **outcome)
    else:
        batch.count("deliveries", merchant, hook.id, "dead")
        dead_letter(redis, merchant, hook.id, event_id, body, number, settings)
        log.error("delivery_dead_lettered", **outcome)
    raise DeliveryFailed(f"attempt {number}: {attempt.status or attempt.error}")


def attempt_fields(attempt: Attempt, number: int, hook: HookSettings) -> dict[str, Any]:
    """What an attempt's log line says of it (no `error=None` on a success)."""
    fields = {"status": attempt.status, "error": attempt.error, "attempt": number,
              "duration_ms": attempt.duration_ms, "url_host": hook.url.host}
    return {name: value for name, value in fields.items() if value is not None}


def next_delay(schedule: tuple[float, ...], attempt: int, retry_after: float | None) -> float:
    if retry_after is not None:
        return min(max(retry_after, RETRY_AFTER_BOUNDS[0]), RETRY_AFTER_BOUNDS[1])
    step = schedule[min(attempt, len(schedule)) - 1] if schedule else 60.0
    return step * random.uniform(0.8, 1.2)  # noqa: S311 - jitter, not a secret


def attempt_entry(attempt: Attempt) -> bytes:
    """An attempt as `payhooks events` and the console read it from the attempts list."""
    return orjson.dumps({"at": attempt.at, "status": attempt.status, "error": attempt.error,
                         "duration_ms": attempt.duration_ms, "answer": attempt.answer})


def record_attempt(redis: Redis, merchant: str, event_id: str, hook_id: str,
                   attempt: Attempt, settings: DeliverySettings) -> int:
    """Record the attempt and give back its place among the hook's attempts in flight."""
    key = attempts_key(event_id, hook_id)
    pipe = redis.pipeline()
    pipe.rpush(key, attempt_entry(attempt))
    pipe.expire(key, int(settings.history))
    pipe.hincrby(delivery_key(event_id, hook_id), "attempts", 1)
    pipe.zrem(hook_in_flight_key(merchant, hook_id), event_id)
    _, _, number, _ = pipe.execute()
    return int(number)


def set_state(redis: Redis, event_id: str, hook_id: str, settings: DeliverySettings,
              **fields: EncodableT) -> None:
    """Update the delivery's record, kept `history` from now."""
    key = delivery_key(event_id, hook_id)
    mapping: dict[EncodableT, EncodableT] = {"updated_at": time.time()}
    mapping.update(fields)
    pipe = redis.pipeline()
    pipe.hset(key, mapping=mapping)
    pipe.expire(key, int(settings.history))
    pipe.execute()


def dead_letter(redis: Redis, merchant: str, hook_id: str, event_id: str, body: bytes,
                 attempts: int, settings: DeliverySettings, **fields: EncodableT) -> None:
    set_state(redis, event_id, hook_id, settings, state=DeliveryState.DEAD, attempts=attempts,
               event=body, merchant=merchant, **fields)
    now = redis_now(redis)  # trimmed by age: by a host's wrong clock, every one would go
    redis.zadd(DEAD_LETTERS, {dead_letter_member(merchant, event_id, hook_id): now})
    redis.zremrangebyscore(DEAD_LETTERS, 0, now - settings.history)  # their events are gone too


def note_failure(redis: Redis, merchant: str, hook: HookSettings,
                 settings: DeliverySettings, error: str = "") -> None:
    """Count a failure in a row, with what it was; pause the hook when there are
    `pause_after` of them."""
    key = hook_key(merchant, hook.id)
    pipe = redis.pipeline(transaction=False)
    pipe.hset(key, mapping={"last_error": error[:200], "last_failure_at": time.time()})
    pipe.hincrby(key, "failures", 1)
    pipe.expire(key, int(settings.history))
    pipe.hexists(key, "paused_until")  # a failed probe pauses it again at once
    pipe.time()
    _, failures, _, was_paused, now = pipe.execute()
    if int(failures) >= settings.pause_after or was_paused:
        trips = int(redis.hincrby(key, "trips", 1))
        pause = min(PAUSE_FIRST * 2 ** (trips - 1), PAUSE_MAX)
        redis.hset(key, mapping={"paused_until": from_reply(now) + pause, "failures": 0,
                                 "manual": 0})
        redis.sadd(PAUSED_HOOKS, f"{merchant}/{hook.id}")
        log.warning("hook_paused", pause_s=pause, trips=trips)


def wait_if_paused(redis: Redis, merchant: str, hook: HookSettings,
                    settings: DeliverySettings) -> bool:
    """HookPaused (with this attempt given back) while the hook is paused, or while another
    worker has an attempt in flight to a hook that is failing. True when this delivery holds
    that hook's probe lock, to give back after its attempt: a failing hook never occupies
    more than one worker, however many of its deliveries are due."""
    key = hook_key(merchant, hook.id)
    pipe = redis.pipeline(transaction=False)
    pipe.hmget(key, ["paused_until", "failures"])
    pipe.time()  # a pause is timed by Redis's clock, which every worker shares
    fields, reply = pipe.execute()
    paused_until, failures = (float(value or 0) for value in fields)
    now = from_reply(reply)
    if now < paused_until:  # a pause by hand may be long: look again at least hourly
        _defer(min(paused_until - now, LOOK_AGAIN) + random.uniform(0, 5))  # noqa: S311
    if not (paused_until or failures):
        return False
    if not redis.set(hook_probe_key(merchant, hook.id), 1, nx=True,
                     ex=int(settings.timeout) + 5):
        _defer(min(settings.timeout, 10.0) + random.uniform(0, 2))  # noqa: S311
    return True


def _take_slot(redis: Redis, merchant: str, hook_id: str, event_id: str,
               settings: DeliverySettings) -> str:
    """One of the hook's `max_in_flight_per_hook` places, or HookPaused (a short wait, the
    attempt given back) when every place is taken: however slow a hook is, it occupies at
    most that many workers, and the others go on with other merchants' deliveries."""
    key = hook_in_flight_key(merchant, hook_id)
    if not slots.take(redis, key, event_id, settings.timeout + 5,
                      settings.max_in_flight_per_hook):
        _defer(min(settings.timeout, 5.0) + random.uniform(0, 2))  # noqa: S311
    return key


def _defer(seconds: float) -> None:
    job: Job | None = get_current_job()
    if job is not None and job.retries_left is not None:
        job.retries_left += 1  # waiting for a paused hook is not an attempt
        job.retry_intervals = [max(1, round(seconds))]
    raise HookPaused(f"hook paused, next try in {seconds:.0f} s")
