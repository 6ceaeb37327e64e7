"""Hooks managed at run time, kept in Redis beside those of the config file.

A merchant's hooks are those of its `[[merchants.<id>.hooks]]` tables and those made here
(by the console or an admin API): created, changed, disabled, enabled, given a new secret
and deleted while payhooks runs. Each is one field `merchant/hook` of the hash
`payhooks:runtime-hooks` holding its JSON, kept until deleted; every change raises the
counter `payhooks:runtime-hooks:version` in the same transaction. A worker keeps its copy
of the hooks and looks at the counter at most every 2 s (workers/runtime.py), so a change
reaches every worker within about 2 s, without a restart.

- A config hook is read-only here: its id cannot be taken (HookConflict), and it cannot be
  changed, disabled or deleted (ReadOnlyHook). Should the config file later gain a hook of
  a runtime hook's id, the config's wins; the runtime one is then ignored, and can only be
  deleted.
- Url, events and id are checked as the config file's are (HookSettings), with the same
  plain messages: a ValueError, and nothing stored.
- A disabled hook gets no new deliveries; those already queued wait, paused, and go when it
  is enabled again. A deleted hook's waiting deliveries are dead-lettered, to replay once a
  hook of that id exists again (workers/delivery.py).
- Secrets are `whsec_` keys of 24 random bytes, made here and returned once. Every active
  secret signs; `rotate` adds a new one and retires the older ones after an overlap. They
  are kept in Redis in clear (the workers sign with them), and shown nowhere else: not in
  a log line, an error, a repr or `as_json`.
- Every change is logged (`hook_created`, `hook_updated`, `hook_secret_rotated`,
  `hook_deleted`) with the merchant, the hook and the actor.
"""

from __future__ import annotations

import base64
import math
import secrets as random_secrets
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal

import orjson
import structlog
from pydantic import ValidationError
from redis import Redis, WatchError

from shared.keys import (
    PAUSED_HOOKS,
    RUNTIME_HOOKS,
    RUNTIME_HOOKS_VERSION,
    hook_key,
    hook_probe_key,
    runtime_hook_field,
)
from shared.settings import HookSettings, Settings, plain_problems
from workers.events import bring_forward

log = structlog.get_logger("payhooks.hooks")
SECRET_BYTES = 24

Secret = tuple[str, float | None]  # a `whsec_` secret, and when it retires (None: never)


class HookConflict(ValueError):
    """The id is taken, by a hook of the config file or by a runtime hook."""


class UnknownHook(LookupError):
    """No such runtime hook, or no such merchant."""


class ReadOnlyHook(ValueError):
    """A hook of the config file: it changes with the file, not through the store."""


@dataclass(frozen=True, slots=True)
class RuntimeHook:
    merchant: str
    id: str
    url: str
    events: tuple[str, ...]
    enabled: bool
    # newest first; never in the repr, so that no traceback or log line shows one
    secrets: tuple[Secret, ...] = field(repr=False)
    created_at: float
    created_by: str
    updated_at: float
    updated_by: str

    def active_secrets(self, now: float) -> tuple[str, ...]:
        """The secrets that sign at `now`, newest first."""
        active = tuple(secret for secret, retire_at in self.secrets
                       if retire_at is None or retire_at > now)
        return active or tuple(secret for secret, _ in self.secrets[:1])

    def settings(self, now: float) -> HookSettings:
        """The hook as the workers deliver to it at `now`: its active secrets only."""
        return HookSettings.model_validate({
            "id": self.id, "url": self.url, "events": self.events,
            "secret": self.active_secrets(now)})

    def as_json(self) -> dict[str, Any]:
        """The hook for a console or an API: never a secret, only when each retires."""
        return {"merchant": self.merchant, "id": self.id, "url": self.url,
                "events": list(self.events), "enabled": self.enabled, "source": "runtime",
                "secrets": [{"retire_at": retire_at} for _, retire_at in self.secrets],
                "created_at": self.created_at, "created_by": self.created_by,
                "updated_at": self.updated_at, "updated_by": self.updated_by}

    def stored(self) -> bytes:
        """Its JSON in RUNTIME_HOOKS, secrets included."""
        return orjson.dumps({**self.as_json(), "secrets": [list(s) for s in self.secrets]})

    @classmethod
    def load(cls, raw: bytes | str) -> RuntimeHook:
        data = orjson.loads(raw)
        return cls(
            merchant=str(data["merchant"]), id=str(data["id"]), url=str(data["url"]),
            events=tuple(str(e) for e in data["events"]), enabled=bool(data["enabled"]),
            secrets=tuple((str(secret), None if retire_at is None else float(retire_at))
                          for secret, retire_at in data["secrets"]),
            created_at=float(data["created_at"]), created_by=str(data["created_by"]),
            updated_at=float(data["updated_at"]), updated_by=str(data["updated_by"]))


@dataclass(frozen=True, slots=True)
class ListedHook:
    """A merchant's hook, config or runtime, as `payhooks hooks` and a console list them."""
    merchant: str
    hook: HookSettings
    source: Literal["config", "runtime"]
    enabled: bool


def new_secret() -> str:
    return "whsec_" + base64.b64encode(random_secrets.token_bytes(SECRET_BYTES)).decode()


# Changes ---------------------------------------------------------------------------------

def create(redis: Redis, settings: Settings, merchant: str, hook_id: str, url: str,
           events: Sequence[str] = ("*",), actor: str = "") -> tuple[RuntimeHook, str]:
    """A new enabled hook of the merchant, and its secret (the only time it is shown)."""
    config = _config_hooks(settings, merchant)
    secret = new_secret()
    checked = _checked(merchant, hook_id, url, events, (secret,))
    if any(hook.id == checked.id for hook in config):
        raise HookConflict(f"hook {merchant}/{hook_id}: the config file has a hook of that id")
    now = time.time()
    hook = RuntimeHook(merchant=merchant, id=checked.id, url=str(checked.url),
                       events=checked.events, enabled=True, secrets=((secret, None),),
                       created_at=now, created_by=actor, updated_at=now, updated_by=actor)

    def change(current: RuntimeHook | None) -> RuntimeHook:
        if current is not None:
            raise HookConflict(f"hook {merchant}/{hook_id} exists already")
        return hook

    _change(redis, merchant, hook.id, change)
    log.info("hook_created", merchant=merchant, hook=hook.id, url=_without_query(hook.url),
             events=list(hook.events), actor=actor)
    return hook, secret


def update(redis: Redis, settings: Settings, merchant: str, hook_id: str, *,
           url: str | None = None, events: Sequence[str] | None = None,
           enabled: bool | None = None, actor: str = "") -> RuntimeHook:
    """Change a runtime hook's url, events or whether it is enabled; the hook as now. A hook
    enabled again has its waiting deliveries made due now."""
    _refuse_config_hook(settings, merchant, hook_id)
    before: list[RuntimeHook] = []

    def change(current: RuntimeHook | None) -> RuntimeHook:
        if current is None:
            raise _unknown(redis, merchant, hook_id)
        before[:] = [current]
        checked = _checked(merchant, hook_id, current.url if url is None else url,
                           current.events if events is None else events,
                           current.active_secrets(time.time()))
        return replace(current, url=str(checked.url), events=checked.events,
                       enabled=current.enabled if enabled is None else enabled,
                       updated_at=time.time(), updated_by=actor)

    hook = _change(redis, merchant, hook_id, change)
    assert hook is not None
    [old] = before
    changed = [name for name in ("url", "events", "enabled")
               if getattr(old, name) != getattr(hook, name)]
    log.info("hook_updated", merchant=merchant, hook=hook_id, changed=changed,
             url=_without_query(hook.url), events=list(hook.events), enabled=hook.enabled,
             actor=actor)
    if hook.enabled and not old.enabled:
        bring_forward(redis, merchant, hook_id)  # its deliveries waiting, paused: now
    return hook


def rotate(redis: Redis, settings: Settings, merchant: str, hook_id: str,
           retire_after: float, actor: str = "") -> tuple[RuntimeHook, str]:
    """Give the hook a new secret; every older one retires `retire_after` seconds from now
    (one retiring sooner already keeps its time). Meanwhile both sign, so the merchant can
    move to the new one; then only the new one. The hook, and its new secret."""
    if not math.isfinite(retire_after) or retire_after < 0:
        raise ValueError("retire_after: expected a number of seconds, 0 or more")
    _refuse_config_hook(settings, merchant, hook_id)
    secret = new_secret()

    def change(current: RuntimeHook | None) -> RuntimeHook:
        if current is None:
            raise _unknown(redis, merchant, hook_id)
        now = time.time()
        retire = now + retire_after
        older = tuple((old, retire if retire_at is None else min(retire_at, retire))
                      for old, retire_at in current.secrets
                      if retire_at is None or retire_at > now)  # the retired: forgotten
        return replace(current, secrets=((secret, None), *older), updated_at=now,
                       updated_by=actor)

    hook = _change(redis, merchant, hook_id, change)
    assert hook is not None
    log.info("hook_secret_rotated", merchant=merchant, hook=hook_id,
             older_retire_at=[retire_at for _, retire_at in hook.secrets[1:]], actor=actor)
    return hook, secret


def delete(redis: Redis, settings: Settings, merchant: str, hook_id: str,
           actor: str = "") -> None:
    """Delete a runtime hook, with its health; its waiting deliveries are made due now, to
    be dead-lettered (replayable once a hook of that id exists again). A runtime hook that
    a config hook of the same id hides can be deleted; the config hook stays (and so does
    its health)."""
    shadowed = any(hook.id == hook_id
                   for hook in _config_hooks(settings, merchant, known=False))
    if shadowed and not is_runtime(redis, merchant, hook_id):
        raise ReadOnlyHook(f"hook {merchant}/{hook_id} is in the config file: remove it there")

    def change(current: RuntimeHook | None) -> None:
        if current is None:
            raise _unknown(redis, merchant, hook_id)

    _change(redis, merchant, hook_id, change, forget_health=not shadowed)
    log.info("hook_deleted", merchant=merchant, hook=hook_id, actor=actor,
             **({"shadowed_by_config": True} if shadowed else {}))
    if not shadowed:
        bring_forward(redis, merchant, hook_id)


# Reading ---------------------------------------------------------------------------------

def runtime_hooks(redis: Redis, merchant: str | None = None) -> list[RuntimeHook]:
    """The runtime hooks (of one merchant, or of all), by merchant and id; disabled too."""
    stored: dict[bytes, bytes] = redis.hgetall(RUNTIME_HOOKS)  # type: ignore[assignment]
    found = [hook for hook in _parse(stored) if merchant in (None, hook.merchant)]
    return sorted(found, key=lambda hook: (hook.merchant, hook.id))


def snapshot(redis: Redis) -> tuple[bytes | None, list[RuntimeHook]]:
    """Every runtime hook, and the version they are (one transaction): a worker's copy."""
    pipe = redis.pipeline()
    pipe.get(RUNTIME_HOOKS_VERSION)
    pipe.hgetall(RUNTIME_HOOKS)
    version, stored = pipe.execute()
    return version, _parse(stored)


def is_runtime(redis: Redis, merchant: str, hook_id: str) -> bool:
    """Whether the store holds a hook of that id for the merchant."""
    return bool(redis.hexists(RUNTIME_HOOKS, runtime_hook_field(merchant, hook_id)))


def hooks_of(redis: Redis, settings: Settings, merchant: str,
             include_disabled: bool = False) -> tuple[HookSettings, ...]:
    """The merchant's config hooks, then its runtime hooks (enabled, or all), read now."""
    return combined(_config_hooks(settings, merchant, known=False),
                    runtime_hooks(redis, merchant), time.time(), include_disabled)


def listed_hooks(redis: Redis, settings: Settings, merchant: str | None = None
                 ) -> list[ListedHook]:
    """Every hook (of one merchant, or of all), by merchant: config hooks, then runtime
    hooks (disabled too, but not those a config hook hides)."""
    now = time.time()
    runtime: dict[str, list[RuntimeHook]] = {}
    for hook in runtime_hooks(redis, merchant):
        runtime.setdefault(hook.merchant, []).append(hook)
    found = []
    for merchant_id in sorted({*settings.merchants, *runtime}):
        if merchant not in (None, merchant_id):
            continue
        config = _config_hooks(settings, merchant_id, known=False)
        found += [ListedHook(merchant_id, hook, "config", True) for hook in config]
        ids = {hook.id for hook in config}
        found += [ListedHook(merchant_id, hook.settings(now), "runtime", hook.enabled)
                  for hook in runtime.get(merchant_id, ()) if hook.id not in ids]
    return found


def combined(config: Sequence[HookSettings], runtime: Iterable[RuntimeHook], now: float,
             include_disabled: bool = False) -> tuple[HookSettings, ...]:
    """Config hooks, then the runtime hooks (of the same merchant) that no config hook
    hides, with the secrets active at `now`."""
    ids = {hook.id for hook in config}
    return (*config, *(hook.settings(now) for hook in runtime
                       if hook.id not in ids and (hook.enabled or include_disabled)))


def next_retirement(runtime: Iterable[RuntimeHook], now: float) -> float:
    """When the next of these secrets retires (after `now`); infinity if none will."""
    return min((retire_at for hook in runtime for _, retire_at in hook.secrets
                if retire_at is not None and retire_at > now), default=math.inf)


# Within ----------------------------------------------------------------------------------

def _change(redis: Redis, merchant: str, hook_id: str,
            change: Callable[[RuntimeHook | None], RuntimeHook | None],
            forget_health: bool = False) -> RuntimeHook | None:
    """Read the hook, change it (None: delete it) and write it back with a new version, in
    one transaction; again if another change came between."""
    name = runtime_hook_field(merchant, hook_id)
    with redis.pipeline() as pipe:
        while True:
            try:
                pipe.watch(RUNTIME_HOOKS)  # type: ignore[no-untyped-call]
                raw = pipe.hget(RUNTIME_HOOKS, name)
                current = RuntimeHook.load(raw) if isinstance(raw, bytes) else None
                changed = change(current)
                pipe.multi()
                if changed is None:
                    pipe.hdel(RUNTIME_HOOKS, name)
                else:
                    pipe.hset(RUNTIME_HOOKS, name, changed.stored())
                if forget_health:  # a hook of that id made later starts afresh
                    pipe.delete(hook_key(merchant, hook_id), hook_probe_key(merchant, hook_id))
                    pipe.srem(PAUSED_HOOKS, f"{merchant}/{hook_id}")
                pipe.incr(RUNTIME_HOOKS_VERSION)
                pipe.execute()
                return changed
            except WatchError:
                continue


def _parse(stored: dict[bytes, bytes]) -> list[RuntimeHook]:
    found = []
    for name, raw in stored.items():
        try:
            found.append(RuntimeHook.load(raw))
        except (ValueError, KeyError, TypeError):  # written by hand, say: skipped, not fatal
            log.warning("runtime_hook_unreadable", field=name.decode(errors="replace"))
    return found


def _checked(merchant: str, hook_id: str, url: str, events: Sequence[str],
             secrets: Sequence[str]) -> HookSettings:
    """The hook as the config file's are checked; a ValueError in plain words."""
    patterns = (events,) if isinstance(events, str) else tuple(events)
    source = f"hook {merchant}/{hook_id}"
    if not patterns:
        raise ValueError(f"{source}: events: expected at least one type or pattern")
    try:
        return HookSettings.model_validate(
            {"id": hook_id, "url": url, "events": patterns, "secret": tuple(secrets)})
    except ValidationError as exc:
        raise ValueError("\n".join(plain_problems(exc, source))) from None


def _config_hooks(settings: Settings, merchant: str, known: bool = True
                  ) -> tuple[HookSettings, ...]:
    """The merchant's config hooks; with `known`, UnknownHook if the merchant is not
    configured."""
    section = settings.merchants.get(merchant)
    if section is None and known:
        configured = ", ".join(sorted(settings.merchants)) or "none"
        raise UnknownHook(f"no merchant {merchant!r} in the configuration "
                          f"(configured: {configured})")
    return section.hooks if section is not None else ()


def _refuse_config_hook(settings: Settings, merchant: str, hook_id: str) -> None:
    """ReadOnlyHook for a config hook. A merchant taken out of the config file since keeps
    its runtime hooks: they can still be changed and deleted."""
    if any(hook.id == hook_id for hook in _config_hooks(settings, merchant, known=False)):
        raise ReadOnlyHook(f"hook {merchant}/{hook_id} is in the config file: change it there")


def _unknown(redis: Redis, merchant: str, hook_id: str) -> UnknownHook:
    known = ", ".join(hook.id for hook in runtime_hooks(redis, merchant)) or "none"
    return UnknownHook(f"no runtime hook {merchant}/{hook_id} (runtime hooks of {merchant}: "
                       f"{known})")


def _without_query(url: str) -> str:
    return url.split("?", 1)[0]
