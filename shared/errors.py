"""Every exception payhooks raises on purpose, and where each one ends up.

    PayhooksError
      ConfigError            - the config file is unusable; start-up stops with the message
      CallbackRejected       - the ingress refuses a callback; never enqueued
        Malformed            - not the expected content (HTTP 400)
        Unauthorized         - signature, key or credentials do not verify (HTTP 401, no detail)
        Forbidden            - source address not allowed (HTTP 403)
        TooLarge             - body over max_body_bytes (HTTP 413)
        TooSlow              - body not received within read_timeout (HTTP 408)
      StoreUnavailable       - Redis did not take the job (HTTP 503, the provider retries)
      UnsupportedEvent       - verified, but nothing we deliver: the worker logs it, no event
      ProviderUnavailable    - a follow-up query timed out, got 5xx or 429: RQ retries the job
        ProviderBusy         - our own limit on follow-ups is reached (the budget a minute, or
                               the requests in flight to that API): RQ runs the job again
                               soon, without counting it as an attempt
      ProviderRejected       - a follow-up query got a permanent answer (unknown transaction,
                               bad credentials): the job ends failed, with the reason logged
      DeliveryFailed         - a delivery attempt did not end in a 2xx: RQ retries the job on
                               the hook's schedule, or it is dead-lettered
      HookPaused             - the hook is paused, or all its places in flight are taken: the
                               delivery waits, no attempt spent

Messages never contain secrets. Where a message names an offending value, that value
comes from the request, never from the configuration.
"""

from __future__ import annotations


class PayhooksError(Exception):
    """Base of everything payhooks raises deliberately."""


class ConfigError(PayhooksError):
    """The configuration cannot be used. The message names the key and the problem."""


class CallbackRejected(PayhooksError):
    """The ingress refuses a callback. `status` is the HTTP answer."""

    status = 400
    public_message = "rejected"

    def __init__(self, reason: str = "") -> None:
        super().__init__(reason or self.public_message)
        self.reason = reason or self.public_message


class Malformed(CallbackRejected):
    """The request is not what the provider sends: wrong shape, field or format."""

    status = 400
    public_message = "malformed callback"


class Unauthorized(CallbackRejected):
    """The callback does not verify. The reason is logged, never returned."""

    status = 401
    public_message = "unauthorized"


class Forbidden(CallbackRejected):
    """The source address is not in the merchant's allowed_ips."""

    status = 403
    public_message = "forbidden"


class TooLarge(CallbackRejected):
    """The body is larger than max_body_bytes."""

    status = 413
    public_message = "body too large"


class TooSlow(CallbackRejected):
    """The body did not arrive within [ingress] read_timeout of the headers."""

    status = 408
    public_message = "request timeout"


class StoreUnavailable(PayhooksError):
    """Redis did not confirm the job, so the callback was not acknowledged."""


class UnsupportedEvent(PayhooksError):
    """A genuine callback that maps to no canonical event (e.g. IXOPAY REGISTER)."""


class ProviderUnavailable(PayhooksError):
    """The provider's API could not answer now; try again later."""

    def __init__(self, reason: str, retry_after: float | None = None) -> None:
        super().__init__(reason)
        self.retry_after = retry_after


class ProviderBusy(ProviderUnavailable):
    """No request was made: payhooks's own limit on follow-ups to this API is reached."""


class ProviderRejected(PayhooksError):
    """The provider's API gave a permanent answer; retrying will not change it."""


class DeliveryFailed(PayhooksError):
    """An attempt did not end in a 2xx; RQ retries the job or it is dead-lettered."""


class HookPaused(PayhooksError):
    """The hook is paused; the delivery waits for the pause to end (no attempt spent)."""
