"""Clients of payhooks's Redis, from `redis_url`: one Redis, or the primary that Sentinels
name, followed through a failover.

- `redis://[:password@]host:port/db`, `rediss://...` (TLS), `unix:///path.sock?db=0`: one
  server, as redis-py reads them.
- `redis+sentinel://[:password@]host1:26379,host2:26379,host3:26379/<service>/<db>`
  (`rediss+sentinel://` for TLS to the Sentinels and the servers): the primary of
  `<service>` as the Sentinels see it. The client asks a Sentinel for the primary when it
  connects, and again when a connection fails or the server it reached has become a
  replica (READONLY), so a process follows a failover by itself. While no Sentinel names a
  primary, every command fails fast (MasterNotFoundError, a ConnectionError): the ingress
  answers 503, never 200 for a write that did not happen. The password is the servers'
  (Sentinels are asked without one unless `sentinel_password=...` is in the query).

Every process (ingress, workers with their scheduler, console, CLI) connects through
`connect` or `connect_async`; RQ runs on the client it is given.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from redis import Redis
from redis.asyncio import Redis as AsyncRedis
from redis.asyncio.sentinel import Sentinel as AsyncSentinel
from redis.sentinel import Sentinel

SENTINEL_SCHEMES = ("redis+sentinel", "rediss+sentinel")


@dataclass(frozen=True, slots=True)
class SentinelURL:
    sentinels: tuple[tuple[str, int], ...]
    service: str
    db: int
    password: str | None
    sentinel_password: str | None
    tls: bool


def is_sentinel(url: str) -> bool:
    return url.split("://", 1)[0] in SENTINEL_SCHEMES


def parse_sentinel_url(url: str) -> SentinelURL:
    """The parts of a `redis+sentinel://` URL; ValueError saying what is wrong."""
    parts = urlsplit(url)
    if parts.scheme not in SENTINEL_SCHEMES:
        raise ValueError("a Sentinel URL starts with redis+sentinel:// or rediss+sentinel://")
    netloc = parts.netloc.rpartition("@")
    credentials, hosts = (netloc[0], netloc[2]) if netloc[1] else ("", netloc[2])
    password = unquote(credentials.partition(":")[2]) or None if credentials else None
    sentinels = []
    for host in hosts.split(","):
        name, _, port = host.strip().rpartition(":") if ":" in host else (host, "", "26379")
        if not name or not port.isdigit():
            raise ValueError(f"a Sentinel is host:port, not {host!r}")
        sentinels.append((name.strip("[]"), int(port)))
    path = [part for part in parts.path.split("/") if part]
    if not path or len(path) > 2 or (len(path) == 2 and not path[1].isdigit()):
        raise ValueError("a Sentinel URL ends with /<service name>/<db>, e.g. /mymaster/0")
    given = parse_qs(parts.query).get("sentinel_password")
    return SentinelURL(sentinels=tuple(sentinels), service=path[0],
                       db=int(path[1]) if len(path) == 2 else 0, password=password,
                       sentinel_password=given[0] if given else None,
                       tls=parts.scheme == "rediss+sentinel")


def _sentinel_options(found: SentinelURL, options: dict[str, Any]
                      ) -> tuple[dict[str, Any], dict[str, Any]]:
    """The options of the primary's connections, and those of the Sentinels'."""
    server = {**options, "db": found.db, "password": found.password, "ssl": found.tls}
    sentinel = {key: value for key, value in options.items()
                if key in ("socket_timeout", "socket_connect_timeout")}
    sentinel.update(password=found.sentinel_password, ssl=found.tls)
    return server, sentinel


def connect(url: str, **options: Any) -> Redis:
    """A client of `url` (options as redis-py's: socket_timeout, retry, ...)."""
    if not is_sentinel(url):
        return Redis.from_url(url, **options)
    found = parse_sentinel_url(url)
    server, sentinel = _sentinel_options(found, options)
    sentinels = Sentinel(list(found.sentinels), sentinel_kwargs=sentinel)  # type: ignore[no-untyped-call]
    client: Redis = sentinels.master_for(found.service, **server)  # type: ignore[no-untyped-call]
    return client


def connect_async(url: str, **options: Any) -> AsyncRedis:
    """An asyncio client of `url` (the ingress's)."""
    if not is_sentinel(url):
        return AsyncRedis.from_url(url, **options)
    found = parse_sentinel_url(url)
    server, sentinel = _sentinel_options(found, options)
    sentinels = AsyncSentinel(list(found.sentinels), sentinel_kwargs=sentinel)  # type: ignore[no-untyped-call]
    client: AsyncRedis = sentinels.master_for(found.service, **server)
    return client


def without_password(url: str) -> str:
    """The URL as it may be logged or shown: its credentials, if any, as `***`."""
    parts = urlsplit(url)
    if "@" not in parts.netloc:
        return url
    hosts = parts.netloc.rpartition("@")[2]  # with several Sentinels, not one host:port
    return parts._replace(netloc=f"***@{hosts}").geturl()
