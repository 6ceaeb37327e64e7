"""Places in flight: at most N requests to one endpoint at once, across every worker.

A sorted set per endpoint holds who is in flight there, each member scored by the end of
its lease. Taking a place drops the lapsed leases first (a worker killed mid-request
never gives its place back), then takes one if fewer than N are held. Leases are timed by
Redis's clock (`TIME` in the script), never by the workers' hosts, whose clocks may
disagree. Used for merchant hooks (`[delivery] max_in_flight_per_hook`,
workers/delivery.py) and for provider APIs by base URL (`max_follow_ups_in_flight`,
workers/runtime.py): however slowly an endpoint answers, it occupies at most N workers.
"""

from __future__ import annotations

from redis import Redis

from shared import scripts

# KEYS: the endpoint's set; ARGV: member, lease seconds, the cap. 1 if a place was taken (or
# the member held one already, whose lease is renewed), else 0.
_TAKE = """
local time = redis.call('TIME')
local now = tonumber(time[1]) + tonumber(time[2]) / 1000000
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if redis.call('ZSCORE', KEYS[1], ARGV[1]) or redis.call('ZCARD', KEYS[1]) < tonumber(ARGV[3])
then
  redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[1])
  redis.call('EXPIRE', KEYS[1], math.ceil(tonumber(ARGV[2])) + 60)
  return 1
end
return 0
"""


def take(redis: Redis, key: str, member: str, lease: float, cap: int) -> bool:
    """Take one of `cap` places at `key` for `lease` seconds at most; False when all are
    taken."""
    return bool(scripts.run(redis, _TAKE, keys=[key], args=[member, lease, cap]))


def give_back(redis: Redis, key: str, member: str) -> None:
    redis.zrem(key, member)
