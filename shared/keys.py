"""The Redis schema: every key payhooks writes, and how long each lives.

This is what an operator sees in `redis-cli --scan --pattern 'payhooks:*'` and beside RQ's
own keys (`rq:queue:callbacks`, `rq:job:<id>`, `rq:scheduled:deliveries`, ...). The
README's "The Redis schema" describes each family; keep the two in step.
"""

from __future__ import annotations


def text(value: bytes | str) -> str:
    """A key, member or value as Redis answered it (bytes), or as given (str), as text."""
    return value.decode() if isinstance(value, bytes) else value


DEDUP_SECONDS = 10 * 86400  # events' bodies and listings; IXOPAY retries for ~7 days 18 hours
PAYMENT_SECONDS = 400 * 86400  # a payment's sequence, totals and fact marks
UNSUPPORTED_SECONDS = 30 * 86400  # callbacks that gave no event, kept to replay

# Events: the body by id (DEDUP_SECONDS), and two listings (sorted sets by time)
ALL_EVENTS = "payhooks:events"


def event_key(event: str) -> str:
    return f"payhooks:event:{event}"


def merchant_events_key(merchant: str) -> str:
    return f"payhooks:events:{merchant}"


def payment_key(merchant: str, provider: str, payment_id: str) -> str:
    """The hash of one payment: `sequence`, `total:<status>` and a FACT_MARK per fact."""
    return f"payhooks:payment:{merchant}:{provider}:{payment_id}"


# A field `fact:<event id>` in the payment's hash marks each fact recorded for it: the
# event's own record goes after DEDUP_SECONDS, the payment's hash lives PAYMENT_SECONDS
FACT_MARK = "fact:"


# Deliveries: one hash per (event, hook) with its state (models.DeliveryState), and the
# list of its attempts, both kept `[delivery] history`
def delivery_key(event: str, hook: str) -> str:
    return f"payhooks:delivery:{event}:{hook}"


def attempts_key(event: str, hook: str) -> str:
    return f"payhooks:attempts:{event}:{hook}"


# Dead letters: a sorted set of `merchant|event|hook` by the time each died
DEAD_LETTERS = "payhooks:dead"


def dead_letter_member(merchant: str, event: str, hook: str) -> str:
    return f"{merchant}|{event}|{hook}"


def dead_letter_parts(member: str) -> tuple[str, str, str] | None:
    """`(merchant, event, hook)` of a member of DEAD_LETTERS; None for anything else."""
    parts = member.split("|")
    return (parts[0], parts[1], parts[2]) if len(parts) == 3 else None


# Hooks: a hash of each hook's health (`failures` in a row, `trips`, `paused_until` by
# Redis's clock, `manual` for a pause by hand, `last_error`, `last_failure_at`), the lock
# of the one attempt made to a failing hook, its places in flight
def hook_key(merchant: str, hook: str) -> str:
    return f"payhooks:hook:{merchant}:{hook}"


def hook_probe_key(merchant: str, hook: str) -> str:
    return f"{hook_key(merchant, hook)}:probe"


def hook_in_flight_key(merchant: str, hook: str) -> str:
    """The deliveries to a hook in flight now, by the end of their lease (shared.slots)."""
    return f"{hook_key(merchant, hook)}:inflight"


PAUSED_HOOKS = "payhooks:paused"  # a set of `merchant/hook`, for the metrics

# Hooks managed at run time (workers/hook_store.py), beside those of the config file: a hash
# of `merchant/hook` -> the hook's JSON (its secrets in clear: the workers sign with them),
# kept until deleted; and a counter raised on every change, by which each worker sees within
# seconds that its copy is stale. Neither expires.
RUNTIME_HOOKS = "payhooks:runtime-hooks"
RUNTIME_HOOKS_VERSION = "payhooks:runtime-hooks:version"


def runtime_hook_field(merchant: str, hook: str) -> str:
    """A hook's field in RUNTIME_HOOKS."""
    return f"{merchant}/{hook}"

# Follow-ups: a counter per budget and minute, and the requests in flight per base URL
def rate_limit_key(budget: str) -> str:
    """The prefix of a budget's counters, one per minute of Redis's clock."""
    return f"payhooks:ratelimit:{budget}"


def provider_in_flight_key(base_url: str) -> str:
    return f"payhooks:inflight:{base_url}"


# Callbacks not done (retrying, out of tries, rejected): a sorted set of callback ids by
# their last try, a hash each with the reason (workers/callbacks.py)
TROUBLED_CALLBACKS = "payhooks:callbacks"
TROUBLE_SECONDS = 30 * 86400  # as long as RQ keeps a failed callback job


def callback_key(callback_id: str) -> str:
    return f"payhooks:callback:{callback_id}"


# Callbacks that gave no event: a sorted set of callback ids by time, a hash each
UNSUPPORTED = "payhooks:unsupported"


def unsupported_key(callback_id: str) -> str:
    return f"{UNSUPPORTED}:{callback_id}"


METRICS = "payhooks:metrics"  # the workers' counters and histograms (shared.metrics)
MINUTE_SECONDS = 2 * 3600  # the per-minute counts the console charts, kept two hours


def minute_key(minute: int) -> str:
    """Callbacks and deliveries by outcome in one minute (Unix time // 60), for the console."""
    return f"payhooks:minute:{minute}"


def console_session_key(digest: str) -> str:
    """A console sign-in, by the SHA-256 of its cookie (the cookie itself is not stored)."""
    return f"payhooks:console:session:{digest}"

READY_PROBE = "payhooks:probe:ready"  # the ingress's /readyz writes it
WRITE_PROBE = "payhooks:probe:write"  # a worker waiting for Redis to take writes writes it
