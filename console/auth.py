"""Who is asking: tokens from the config, sign-ins to the pages, and forms that only our
own pages can send.

- **Tokens.** `[console] tokens` are operators' (every merchant), a merchant's
  `console_tokens` open that merchant's view only. Each has a name, which is who did an
  action in the log. An API call carries one as `Authorization: Bearer <token>`.
- **Sign-in.** The pages' sign-in form takes a token and sets a cookie (random, HttpOnly,
  SameSite=Strict); Redis keeps only its SHA-256, with the actor and the session's form
  token, for `[console] session`.
- **Forms.** A POST that rides on the cookie must carry the session's form token (a field
  `csrf`, or the header `X-CSRF-Token`) and, when the browser says where it comes from
  (`Origin`), come from this console. A bearer token is never sent by a browser on its own,
  so API calls with one need neither.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass

import orjson
from aiohttp import web
from redis import Redis

from shared.keys import console_session_key
from shared.settings import Settings

COOKIE = "payhooks_console"


@dataclass(frozen=True, slots=True)
class Actor:
    name: str  # the token's name: "operator:alice", "merchant:shop-eu:web"
    merchant: str | None  # None: an operator, who sees every merchant
    csrf: str | None = None  # the session's form token (a sign-in), None for a bearer

    def sees(self, merchant: str) -> bool:
        return self.merchant is None or self.merchant == merchant


def actor_for_token(settings: Settings, token: str) -> Actor | None:
    """The actor whose token this is; every token is compared, in constant time each."""
    found = None
    given = token.encode()
    for name, secret in settings.console.tokens.items():
        if hmac.compare_digest(given, secret.get_secret_value().encode()):
            found = Actor(f"operator:{name}", None)
    for merchant_id, merchant in settings.merchants.items():
        for name, secret in merchant.console_tokens.items():
            if hmac.compare_digest(given, secret.get_secret_value().encode()):
                found = Actor(f"merchant:{merchant_id}:{name}", merchant_id)
    return found


def _digest(cookie: str) -> str:
    return hashlib.sha256(cookie.encode()).hexdigest()


def sign_in(redis: Redis, settings: Settings, actor: Actor) -> str:
    """A new session for `actor`; the cookie's value."""
    cookie = secrets.token_urlsafe(32)
    record = {"name": actor.name, "merchant": actor.merchant, "csrf": secrets.token_urlsafe(24)}
    redis.set(console_session_key(_digest(cookie)), orjson.dumps(record),
                    ex=int(settings.console.session))
    return cookie


def sign_out(redis: Redis, cookie: str) -> None:
    redis.delete(console_session_key(_digest(cookie)))


def session_actor(redis: Redis, cookie: str) -> Actor | None:
    raw = redis.get(console_session_key(_digest(cookie)))
    if raw is None:
        return None
    record = orjson.loads(raw)
    return Actor(record["name"], record["merchant"], record["csrf"])


def identify(headers: dict[str, str], cookie: str | None, redis: Redis, settings: Settings
             ) -> Actor | None:
    """The actor of a bearer token or of the sign-in cookie; None for neither."""
    header = headers.get("authorization", "")
    if header.lower().startswith("bearer "):
        return actor_for_token(settings, header[7:].strip())
    return session_actor(redis, cookie) if cookie else None


def form_allowed(request: web.Request, actor: Actor, form_token: str | None) -> bool:
    """Whether a state-changing request may go on: always for a bearer token; for a
    sign-in, with the session's form token and from this console's own origin."""
    if actor.csrf is None:
        return True
    origin = request.headers.get("Origin")
    if origin is not None and origin != f"{request.scheme}://{request.host}":
        return False
    given = form_token or request.headers.get("X-CSRF-Token") or ""
    return hmac.compare_digest(given.encode(), actor.csrf.encode())
