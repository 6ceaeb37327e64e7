"""Operating merchant hooks: their health, pausing one by hand, resuming one (with its waiting
deliveries sent now), and sending an event again (`payhooks hooks`, `payhooks resend`).

A hook's health is what the workers keep in its hash (workers/delivery.py: failures in a
row, the pauses it earned, the end of the current pause, the last failure) and the
delivery counters of the metrics. A pause by hand is the same pause, marked `manual`, that
lasts until it is resumed (or for the time given); while it lasts no delivery to the hook
is attempted: those queued step aside, new ones wait in RQ's scheduled registry, each
looking again at least hourly. Resuming forgets the failures and makes every delivery of
the hook waiting there (paused, or retrying after a failure) due now: RQ's scheduler
queues them within a second.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Literal

from redis import Redis

from shared.clock import from_reply, redis_now
from shared.keys import (
    DEAD_LETTERS,
    METRICS,
    PAUSED_HOOKS,
    dead_letter_parts,
    hook_key,
    hook_probe_key,
)
from shared.settings import HookSettings, Settings
from workers.events import bring_forward
from workers.hook_store import listed_hooks

FOREVER = 10 * 365 * 86400.0  # a pause by hand with no end: until resumed


@dataclass(frozen=True, slots=True)
class HookHealth:
    merchant: str
    hook: str
    url: str  # without its query, which may hold a token
    events: tuple[str, ...]
    delivered: int
    failed: int
    dead: int
    failures_in_a_row: int
    paused_for: float | None  # seconds left; None when not paused
    paused_by_hand: bool
    last_error: str | None
    last_failure_at: float | None
    dead_letters: int
    source: Literal["config", "runtime"] = "config"  # the config file, or the hook store
    enabled: bool = True  # a runtime hook can be disabled

    @property
    def success_rate(self) -> float | None:
        tried = self.delivered + self.failed + self.dead
        return self.delivered / tried if tried else None

    @property
    def state(self) -> str:
        if not self.enabled:
            return "disabled"
        if self.paused_for is not None:
            if self.paused_by_hand and self.paused_for > FOREVER / 2:
                return "paused by hand"
            by = " by hand" if self.paused_by_hand else ""
            return f"paused{by} ({self.paused_for:.0f} s left)"
        return "failing" if self.failures_in_a_row else "healthy"

    def as_json(self) -> dict[str, Any]:
        return {"merchant": self.merchant, "hook": self.hook, "url": self.url,
                "events": list(self.events), "state": self.state,
                "delivered": self.delivered, "failed": self.failed, "dead": self.dead,
                "success_rate": self.success_rate, "failures_in_a_row": self.failures_in_a_row,
                "paused_for_s": self.paused_for, "paused_by_hand": self.paused_by_hand,
                "last_error": self.last_error, "last_failure_at": self.last_failure_at,
                "dead_letters": self.dead_letters, "source": self.source,
                "enabled": self.enabled}


def find_hook(redis: Redis, settings: Settings, name: str) -> tuple[str, HookSettings]:
    """`merchant/hook`, of the config file or the hook store (disabled too); ValueError
    saying which exist otherwise."""
    merchant_id, _, hook_id = name.partition("/")
    listed = listed_hooks(redis, settings)
    hook = next((h.hook for h in listed if (h.merchant, h.hook.id) == (merchant_id, hook_id)),
                None)
    if hook is None:
        known = ", ".join(f"{h.merchant}/{h.hook.id}" for h in listed) or "none"
        raise ValueError(f"no hook {name!r} (write MERCHANT/HOOK; the hooks: {known})")
    return merchant_id, hook


def health(redis: Redis, settings: Settings, merchant: str | None = None) -> list[HookHealth]:
    """Every hook, of the config file or the hook store (of one merchant, or of all), as the
    workers last saw it."""
    listed = listed_hooks(redis, settings, merchant)
    hooks = [(h.merchant, h.hook) for h in listed]
    pipe = redis.pipeline(transaction=False)
    pipe.time()
    pipe.zrange(DEAD_LETTERS, 0, -1)
    for m, hook in hooks:
        pipe.hgetall(hook_key(m, hook.id))
        pipe.hmget(METRICS, [f"deliveries|{m}|{hook.id}|{outcome}"
                             for outcome in ("delivered", "failed", "dead")])
    now_reply, letters, *replies = pipe.execute()
    now = from_reply(now_reply)
    waiting: dict[tuple[str, str], int] = {}
    for raw in letters:
        parts = dead_letter_parts(raw.decode())
        if parts is not None:
            waiting[(parts[0], parts[2])] = waiting.get((parts[0], parts[2]), 0) + 1
    found = []
    for listing, stored, counts in zip(listed, replies[::2], replies[1::2], strict=True):
        m, hook = listing.merchant, listing.hook
        fields = {key.decode(): value.decode() for key, value in stored.items()}
        until = float(fields.get("paused_until") or 0)
        delivered, failed, dead = (int(count or 0) for count in counts)
        found.append(HookHealth(
            merchant=m, hook=hook.id, url=_without_query(str(hook.url)), events=hook.events,
            delivered=delivered, failed=failed, dead=dead,
            failures_in_a_row=int(fields.get("failures") or 0),
            paused_for=until - now if until > now else None,
            paused_by_hand=fields.get("manual") == "1",
            last_error=fields.get("last_error"),
            last_failure_at=float(fields["last_failure_at"]) if "last_failure_at" in fields
            else None,
            dead_letters=waiting.get((m, hook.id), 0),
            source=listing.source, enabled=listing.enabled))
    return found


def pause(redis: Redis, merchant: str, hook: str, seconds: float | None = None) -> None:
    """Pause the hook by hand, until resumed or for `seconds`."""
    now = redis_now(redis)  # pauses are timed by Redis's clock, which every worker shares
    pipe = redis.pipeline()
    pipe.hset(hook_key(merchant, hook), mapping={
        "paused_until": now + (seconds if seconds is not None else FOREVER), "manual": 1})
    pipe.persist(hook_key(merchant, hook))  # a pause by hand outlives `history`
    pipe.sadd(PAUSED_HOOKS, f"{merchant}/{hook}")
    pipe.execute()


def resume(redis: Redis, merchant: str, hook: str) -> int:
    """End the hook's pause and forget its failures; make its waiting deliveries (paused,
    or retrying) due now. How many were brought forward."""
    pipe = redis.pipeline()
    pipe.delete(hook_key(merchant, hook), hook_probe_key(merchant, hook))
    pipe.srem(PAUSED_HOOKS, f"{merchant}/{hook}")
    pipe.execute()
    return bring_forward(redis, merchant, hook)


def _without_query(url: str) -> str:
    return url.split("?", 1)[0]


def describe(found: HookHealth) -> str:
    rate = "-" if found.success_rate is None else f"{found.success_rate:.0%}"
    line = (f"{found.merchant}/{found.hook:<20} {found.state:<28} delivered {found.delivered}, "
            f"failed {found.failed}, dead {found.dead} ({rate} ok)")
    if found.failures_in_a_row:
        line += f", {found.failures_in_a_row} failures in a row"
    if found.dead_letters:
        line += f", {found.dead_letters} dead letters to replay"
    if found.last_error and found.last_failure_at:
        ago = max(0.0, time.time() - found.last_failure_at)
        line += f"; last failure {ago:.0f} s ago: {found.last_error}"
    return f"{line}  {found.url}"
