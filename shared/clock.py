"""The time shared between hosts is Redis's.

Workers and ingresses may run on many hosts, and a host's clock may be off by seconds, or,
misconfigured, by days. Anything compared across hosts (a hook's pause, a budget's minute,
a lease, the age at which listings are trimmed) is timed by Redis's `TIME`, so a host whose
clock is wrong cannot resume a paused hook early, take another worker's running job for
abandoned, or trim every dead letter. Times only shown to people (an attempt's moment, an
event's timestamp) stay the host's: keep the hosts on NTP all the same.
"""

from __future__ import annotations

from redis import Redis


def redis_now(redis: Redis) -> float:
    """Redis's clock, in seconds since the epoch (one round trip)."""
    return from_reply(redis.time())


def from_reply(reply: tuple[int, int]) -> float:
    """`TIME`'s reply, from a pipeline, in seconds since the epoch."""
    seconds, micros = reply
    return seconds + micros / 1_000_000
