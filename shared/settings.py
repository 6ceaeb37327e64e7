"""The configuration file: one TOML file, read once at start-up and passed down.

Where it comes from: `--config PATH`, else `PAYHOOKS_CONFIG`, else `./payhooks.toml`.
`PAYHOOKS_REDIS_URL` overrides `redis_url`. A string value written as `"${NAME}"` is read
from the environment variable NAME. Every problem becomes one `ConfigError` whose message
names the key (`merchants.shop-eu.ixopay.shared_secret: ...`) and never a secret's value:
pydantic's own messages are rebuilt without the offending input.
"""

from __future__ import annotations

import fnmatch
import ipaddress
import os
import re
import time
import tomllib
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, Literal, get_args, get_origin

from pydantic import (
    AnyHttpUrl,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    SecretStr,
    StringConstraints,
    ValidationError,
    field_validator,
    model_validator,
)

from shared.errors import ConfigError
from shared.models import EventType
from shared.redis_client import is_sentinel, parse_sentinel_url

DEFAULT_PATH = "payhooks.toml"
_ID_PATTERN = r"^[a-z0-9-]{1,64}$"
_ENV_REF = re.compile(r"^\$\{([A-Za-z_][A-Za-z0-9_]*)\}$")
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, None: 1.0}

Id = Annotated[str, StringConstraints(pattern=_ID_PATTERN)]
# a console token: long enough not to be guessed (`openssl rand -hex 24` gives 48)
ConsoleToken = Annotated[SecretStr, Field(min_length=24)]


MAX_DURATION = 10 * 365 * 86400.0


def parse_duration(value: object) -> float:
    """`"5s"`, `"30m"`, `"2h"`, `"1d"`, `"250ms"` or a number of seconds, as seconds."""
    if isinstance(value, bool):
        raise ValueError("expected a duration such as '30s', '5m' or '2h'")
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str) and (match := _DURATION.match(value)):
        seconds = float(match.group(1)) * _UNIT_SECONDS[match.group(2)]
    else:
        raise ValueError("expected a duration such as '30s', '5m' or '2h'")
    if seconds < 0:
        raise ValueError("a duration cannot be negative")
    if not seconds <= MAX_DURATION:  # also NaN, and "9999...9" that floats make infinite
        raise ValueError("a duration of at most ten years")
    return seconds


def parse_moment(value: str) -> float:
    """A moment given as ISO 8601 (UTC unless it says) or as an age ("2h": two hours ago),
    as a Unix time; ValueError for anything else."""
    try:
        return time.time() - parse_duration(value)
    except ValueError:
        pass
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise ValueError(f"{value!r} is neither a time (ISO 8601: 2026-12-01T10:00) nor an "
                         "age (30m, 2h, 3d)") from None
    return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).timestamp()


Duration = Annotated[float, BeforeValidator(parse_duration)]
Network = Annotated[
    ipaddress.IPv4Network | ipaddress.IPv6Network,
    BeforeValidator(lambda v: ipaddress.ip_network(v, strict=False) if isinstance(v, str) else v),
]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ProviderSection(_Section):
    allowed_ips: tuple[Network, ...] = ()
    # Follow-up queries a minute for this merchant and provider, across all workers: a flood
    # of forged callbacks (Netaxept's and PayEx's carry no proof) cannot spend the merchant's
    # API quota; beyond it, callbacks wait and are retried.
    max_follow_ups_per_minute: int = Field(default=600, ge=1)
    # Follow-up queries in flight at once to this provider's base URL (scheme, host and
    # port), across all workers: an API that answers slowly, or drips its answer, holds at
    # most this many workers; the other callbacks wait a few seconds, no attempt spent.
    max_follow_ups_in_flight: int = Field(default=16, ge=1)


class IxopaySettings(ProviderSection):
    shared_secret: SecretStr
    api_key: str | None = None  # needed only for legacy XML callbacks and the status API
    username: str | None = None
    password: SecretStr | None = None
    base_url: AnyHttpUrl = AnyHttpUrl("https://gateway.ixopay.com")
    verify_with_status_api: bool = False
    max_date_skew: Duration | None = None
    # How the shop's plugin builds merchantTransactionId from its order number: a regular
    # expression whose group `order` is the order (e.g. the WooCommerce and OpenCart
    # plugins' `<order>-<YmdHis><hex>`, with `capture-`, `void-`, `refund-` before it for
    # follow-up transactions). Unset, or not matching: the whole id is the order id.
    order_id_pattern: re.Pattern[str] | None = None

    @field_validator("order_id_pattern")
    @classmethod
    def _has_order_group(cls, value: re.Pattern[str] | None) -> re.Pattern[str] | None:
        if value is not None and "order" not in value.groupindex:
            raise ValueError("needs a group named order: (?P<order>...)")
        return value

    @field_validator("shared_secret")
    @classmethod
    def _not_empty(cls, value: SecretStr) -> SecretStr:
        if not value.get_secret_value():
            raise ValueError("must not be empty")
        return value


def _key_list(value: object) -> object:
    return [value] if isinstance(value, str) else value


# What an ifthenpay callback parameter can mean (shared/providers/ifthenpay.py).
IfthenpayField = Literal["key", "order_id", "amount", "request_id", "entity", "reference",
                         "payment_datetime", "payment_method", "status", "fee"]
# The plugins whose callback URL templates payhooks knows (the README has the table).
IfthenpayPlugin = Literal["webdados", "magento2", "whmcs", "prestashop", "prestashop16",
                          "opencart3", "opencart4", "virtuemart", "odoo", "moodle", "surecart",
                          "memberpress"]


class IfthenpaySettings(ProviderSection):
    # One key per ifthenpay account (entity, MB WAY key, ...); a list when a shop has several.
    anti_phishing_key: Annotated[
        tuple[SecretStr, ...], BeforeValidator(_key_list), Field(min_length=1)
    ]
    backoffice_key: SecretStr | None = None
    base_url: AnyHttpUrl = AnyHttpUrl("https://api.ifthenpay.com")
    # Whose callback URL template the merchant registered: the parameter names mean what
    # that plugin means by them. `parameters` names them one by one instead (query
    # parameter -> meaning). Neither: the names of the docs and of every plugin, where
    # they do not conflict.
    plugin: IfthenpayPlugin | None = None
    parameters: dict[str, IfthenpayField] | None = None

    @model_validator(mode="after")
    def _parameters_complete(self) -> IfthenpaySettings:
        if self.parameters is None:
            return self
        if self.plugin is not None:
            raise ValueError("give plugin or parameters, not both")
        meanings = set(self.parameters.values())
        missing = {"key", "amount"} - meanings
        if missing:
            raise ValueError(f"parameters: no parameter means {' or '.join(sorted(missing))}")
        if not meanings & {"order_id", "request_id", "reference"}:
            raise ValueError("parameters: no parameter means order_id, request_id or reference")
        return self

    @field_validator("anti_phishing_key")
    @classmethod
    def _keys_long_enough(cls, keys: tuple[SecretStr, ...]) -> tuple[SecretStr, ...]:
        if any(len(key.get_secret_value()) < 8 for key in keys):
            raise ValueError("an anti-phishing key must have at least 8 characters")
        return keys


class NetaxeptSettings(ProviderSection):
    merchant_id: Annotated[str, StringConstraints(pattern=r"^[0-9]{1,10}$")]
    token: SecretStr
    base_url: AnyHttpUrl = AnyHttpUrl("https://epayment.nets.eu")
    callback_username: str | None = None
    callback_password: SecretStr | None = None

    @model_validator(mode="after")
    def _credentials_in_pairs(self) -> NetaxeptSettings:
        if (self.callback_username is None) != (self.callback_password is None):
            raise ValueError("callback_username and callback_password go together")
        return self


class PayexSettings(ProviderSection):
    token: SecretStr
    base_url: AnyHttpUrl = AnyHttpUrl("https://api.payex.com")


class HookSettings(_Section):
    id: Id
    url: AnyHttpUrl
    secret: Annotated[tuple[SecretStr, ...], BeforeValidator(_key_list), Field(min_length=1)]
    events: tuple[str, ...] = ("*",)

    @field_validator("events")
    @classmethod
    def _matches_an_event_type(cls, patterns: tuple[str, ...]) -> tuple[str, ...]:
        """A filter that can match no event type would take nothing, silently."""
        types = [event_type.value for event_type in EventType]
        for pattern in patterns:
            if not any(fnmatch.fnmatchcase(name, pattern) for name in types):
                raise ValueError(f"{pattern!r} matches no event type; the types are "
                                 f"{', '.join(types)} (or patterns such as 'payment.*')")
        return patterns

    @field_validator("secret")
    @classmethod
    def _standard_webhooks_secret(cls, secrets: tuple[SecretStr, ...]) -> tuple[SecretStr, ...]:
        for secret in secrets:
            if not re.fullmatch(r"whsec_[A-Za-z0-9+/]{16,}={0,2}", secret.get_secret_value()):
                raise ValueError("expected 'whsec_' followed by a base64 key of 12 bytes or more")
        return secrets


# the fields of MerchantSettings that are provider sections; shared.providers.PROVIDERS
# has the same names (tests/shared/test_settings.py holds them together)
PROVIDER_SECTIONS = ("ixopay", "ifthenpay", "netaxept", "payex")


class MerchantSettings(_Section):
    ixopay: IxopaySettings | None = None
    ifthenpay: IfthenpaySettings | None = None
    netaxept: NetaxeptSettings | None = None
    payex: PayexSettings | None = None
    hooks: tuple[HookSettings, ...] = ()
    # tokens that open this merchant's own view of the console (`payhooks console`), by name
    console_tokens: dict[Id, ConsoleToken] = {}

    @field_validator("hooks")
    @classmethod
    def _unique_hook_ids(cls, hooks: tuple[HookSettings, ...]) -> tuple[HookSettings, ...]:
        ids = [hook.id for hook in hooks]
        if len(ids) != len(set(ids)):
            raise ValueError("hook ids must be unique within a merchant")
        return hooks

    def providers(self) -> dict[str, ProviderSection]:
        """The configured provider sections by provider name."""
        return {name: section for name in PROVIDER_SECTIONS
                if isinstance(section := getattr(self, name), ProviderSection)}


class IngressSettings(_Section):
    host: str = "0.0.0.0"  # noqa: S104 - a callback receiver listens on all interfaces
    port: int = Field(default=8080, ge=1, le=65535)
    max_body_bytes: int = Field(default=65536, ge=1024, le=16 * 1024 * 1024)
    # Peers allowed to tell the client address (X-Forwarded-For) and the original request
    # target (X-Original-URI, which the IXOPAY signature covers). Empty: trust no header.
    trusted_proxies: tuple[Network, ...] = ()
    # How long a client may take to send a request: its headers, counted from when the
    # connection opens or the previous answer went out (an idle keep-alive connection is
    # closed after it too), then its body, counted from the end of the headers (else 408).
    read_timeout: Annotated[Duration, Field(gt=0)] = 10.0
    # open connections at most; by default (and at most) the soft limit on open files less
    # 256 (ingress/connections.py)
    max_connections: int | None = Field(default=None, ge=1)
    # Acknowledge a callback only once this many replicas hold it (Redis WAIT after each
    # batch, within replica_timeout; else 503): a primary that dies cannot take an
    # acknowledged callback with it. 0: acknowledged once the primary has it.
    min_replicas: int = Field(default=0, ge=0, le=16)
    replica_timeout: Duration = 0.05


class DeliverySettings(_Section):
    retry_schedule: tuple[Duration, ...] = (5, 300, 1800, 7200, 18000, 36000, 36000)
    timeout: Duration = 15.0
    allow_private_networks: bool = False
    history: Duration = 30 * 86400.0  # how long attempts and dead letters are kept
    pause_after: int = Field(default=5, ge=1)  # failures in a row that pause a hook
    # deliveries to one hook in flight at once, across all workers: a slow hook that still
    # answers 2xx cannot take every worker from the other merchants
    max_in_flight_per_hook: int = Field(default=8, ge=1)


class WorkerSettings(_Section):
    # jobs in flight at once in one worker process, each in a thread of its own: callback
    # and delivery jobs mostly wait for a provider or a hook to answer
    concurrency: int = Field(default=16, ge=1, le=256)
    # a callback job makes the first delivery attempt of each new event itself, to hooks
    # neither paused nor failing (workers/first_attempt.py); off: every delivery is a job
    inline_first_attempt: bool = True


class ConsoleSettings(_Section):
    host: str = "127.0.0.1"  # the console is for operators: never the ingress's public port
    port: int = Field(default=9180, ge=1, le=65535)
    # operator tokens (every merchant), by name: the name is who did each action in the log
    tokens: dict[Id, ConsoleToken] = {}
    session: Duration = 8 * 3600.0  # how long a sign-in to the pages lasts


class LoggingSettings(_Section):
    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["auto", "json", "console"] = "auto"


class Settings(_Section):
    redis_url: Annotated[str, StringConstraints(
        pattern=r"^(redis|rediss|unix|redis\+sentinel|rediss\+sentinel)://")] = (
        "redis://localhost:6379/0"
    )
    ingress: IngressSettings = IngressSettings()
    delivery: DeliverySettings = DeliverySettings()
    worker: WorkerSettings = WorkerSettings()
    logging: LoggingSettings = LoggingSettings()
    console: ConsoleSettings = ConsoleSettings()
    merchants: dict[Id, MerchantSettings] = {}

    @field_validator("redis_url")
    @classmethod
    def _readable_sentinel_url(cls, url: str) -> str:
        if is_sentinel(url):
            parse_sentinel_url(url)  # its ValueError names what is wrong
        return url


def load_settings(
    path: str | os.PathLike[str] | None = None, environ: Mapping[str, str] | None = None
) -> Settings:
    """Read, expand and validate the config file; raise ConfigError naming the key."""
    environ = os.environ if environ is None else environ
    file = Path(path or environ.get("PAYHOOKS_CONFIG") or DEFAULT_PATH)
    try:
        raw = tomllib.loads(file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{file}: no such config file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{file}: cannot read: {exc.__class__.__name__}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{file}: not valid TOML: {exc}") from None
    return settings_from_dict(raw, environ, source=str(file))


def settings_from_dict(
    raw: dict[str, Any], environ: Mapping[str, str] | None = None, source: str = "config"
) -> Settings:
    """Validate an already-parsed config, as load_settings does after reading the file."""
    environ = os.environ if environ is None else environ
    unset: dict[tuple[str | int, ...], str] = {}  # every missing variable, reported at once
    expanded = _expand(raw, environ, (), unset)
    if environ.get("PAYHOOKS_REDIS_URL"):
        expanded["redis_url"] = environ["PAYHOOKS_REDIS_URL"]
    problems = [f"{source}: {_dotted(key)}: environment variable {name} is not set"
                for key, name in unset.items()]
    try:
        settings = Settings.model_validate(expanded)
    except ValidationError as exc:
        # a key whose variable is unset holds the "${NAME}" text: its own errors say nothing
        problems += [line for location, line in _describe(exc, source)
                     if location not in unset]
    if problems:
        raise ConfigError("\n".join(problems))
    return settings


def _expand(value: Any, environ: Mapping[str, str], key: tuple[str | int, ...],
            unset: dict[tuple[str | int, ...], str]) -> Any:
    if isinstance(value, dict):
        return {k: _expand(v, environ, (*key, k), unset) for k, v in value.items()}
    if isinstance(value, list):
        return [_expand(v, environ, (*key, i), unset) for i, v in enumerate(value)]
    if isinstance(value, str) and (match := _ENV_REF.match(value)):
        name = match.group(1)
        if name not in environ:
            unset[key] = name
            return value  # validated all the same, so that every other problem shows too
        return environ[name]
    return value


def plain_problems(exc: ValidationError, source: str) -> list[str]:
    """A model's validation errors as load_settings words them (`source: key: what`), in
    plain words and without the offending input: for a hook made at run time, say."""
    return [line for _, line in _describe(exc, source)]


def _describe(exc: ValidationError, source: str) -> list[tuple[tuple[str | int, ...], str]]:
    """Each error's location and its line, in plain words: never pydantic's phrases, never
    the offending input (it may be a secret)."""
    lines = []
    for error in exc.errors(include_input=False, include_url=False):
        location = tuple(part for part in error["loc"] if not _is_union_tag(part))
        lines.append((location, f"{source}: {_dotted(location)}: {_plain(error, location)}"))
    return lines


def _is_union_tag(part: str | int) -> bool:
    """pydantic names the member of a union it tried (`function-after[...]`, `str`)."""
    return isinstance(part, str) and part != "[key]" and (
        "[" in part or part in ("str", "int", "float"))


_PLAIN_TYPES = {
    "url_parsing": "not a URL: expected http://host/... or https://host/...",
    "url_scheme": "not a URL: expected http://host/... or https://host/...",
    "url_type": "not a URL: expected a string such as https://host/...",
    "string_type": "expected a string",
    "int_parsing": "expected a whole number",
    "int_type": "expected a whole number",
    "bool_type": "expected true or false",
    "bool_parsing": "expected true or false",
    "tuple_type": "expected a list",
    "list_type": "expected a list",
    "dict_type": "expected a table",
    "model_type": "expected a table",
    "too_short": "expected at least one",
}


def _plain(error: Any, location: tuple[str | int, ...]) -> str:
    kind, context = error["type"], error.get("ctx") or {}
    if kind == "missing":
        return "required key is missing"
    if kind == "extra_forbidden":
        valid = _keys_at(location[:-1])
        return "unknown key" + (f"; the keys here are: {', '.join(valid)}" if valid else "")
    if kind == "string_pattern_mismatch":
        if context.get("pattern") == _ID_PATTERN:
            return "an id may hold only a-z, 0-9 and '-', 1 to 64 characters"
        if location == ("redis_url",):
            return ("expected a URL that starts with redis://, rediss://, unix:// or "
                    "redis+sentinel:// (rediss+sentinel://)")
        return "not of the expected form"
    if kind == "literal_error":
        return f"expected one of {context.get('expected', '')}"
    if kind in ("greater_than_equal", "greater_than", "less_than_equal", "less_than"):
        return str(error["msg"]).lower().replace("input should be", "expected a value")
    tokens = location[:2] == ("console", "tokens") or location[2:3] == ("console_tokens",)
    if kind == "too_short" and tokens:
        return (f"a console token needs at least {context.get('min_length', 24)} "
                "characters (openssl rand -hex 24)")
    if kind in _PLAIN_TYPES:
        return _PLAIN_TYPES[kind]
    return str(error["msg"]).removeprefix("Value error, ")


def _keys_at(location: tuple[str | int, ...]) -> list[str]:
    """The keys the section at `location` takes, for a misspelt one."""
    model: type[BaseModel] = Settings
    in_table = False  # the part before was a table of sections by name (merchants)
    for part in location:
        if isinstance(part, int):
            continue  # an element of a list: the list's model
        if in_table:
            in_table = False
            continue  # a merchant's id
        field = model.model_fields.get(part)
        found = _model_in(field.annotation) if field is not None else None
        if field is None or found is None:
            return []
        in_table, model = get_origin(field.annotation) is dict, found
    return [] if in_table else sorted(model.model_fields)


def _model_in(annotation: Any) -> type[BaseModel] | None:
    """The section model a field holds (directly, optionally, in a tuple or a dict)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for argument in get_args(annotation):
        found = _model_in(argument)
        if found is not None:
            return found
    return None


def _dotted(location: tuple[str | int, ...]) -> str:
    parts: list[str] = []
    for part in location:
        if isinstance(part, int):
            parts.append(f"[{part}]")
        elif part == "[key]":
            parts.append(" (the name)")
        else:
            parts.append(("." if parts else "") + str(part))
    return "".join(parts) or "(top level)"
