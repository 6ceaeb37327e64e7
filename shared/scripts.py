"""Lua scripts, run by EVALSHA on whichever connection asks.

Each script's SHA-1 is computed once per process (redis-py's `register_script` computes it
on every call, and the places in flight and the follow-up budget called it twice a
callback), and the script is loaded again by itself where a server lacks it: after a
restart, on a failover's new primary.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any

from redis import Redis
from redis.commands.core import Script
from redis.typing import EncodableT, KeyT

_known: dict[str, Script] = {}
_lock = threading.Lock()


def run(client: Redis, source: str, keys: Sequence[KeyT] = (),
        args: Sequence[EncodableT] = ()) -> Any:
    """The script's answer, run on `client`."""
    script = _known.get(source)
    if script is None:
        with _lock:
            script = _known.setdefault(source, Script(client, source))
    return script(keys=keys, args=args, client=client)
