"""`payhooks simulate PROVIDER`: send a correct test callback, as `stripe trigger` does.

For the providers whose callback only names a payment (Netaxept, PayEx) it first gives the
simulators that payment in the requested state, so the worker's follow-up finds it; for
IXOPAY it signs the callback; for ifthenpay it adds the anti-phishing key. The secrets are
the `demo` merchant's of `payhooks dev`, or the merchant's from `--config`.
"""

from __future__ import annotations

import secrets
import sys
import uuid
from typing import Any

import httpx

from shared.sandbox.dev import DEMO_SECRETS
from shared.sandbox.simulators import callbacks as build
from shared.sandbox.simulators.callbacks import OutgoingCallback
from shared.sandbox.simulators.client import SimulatorClient
from shared.settings import Settings

_IXOPAY = {"captured": ("DEBIT", "OK"), "authorized": ("PREAUTHORIZE", "OK"),
           "pending": ("DEBIT", "PENDING"), "failed": ("DEBIT", "ERROR"),
           "refunded": ("REFUND", "OK"), "voided": ("VOID", "OK"),
           "chargeback": ("CHARGEBACK", "OK"),
           "chargeback_reversed": ("CHARGEBACK-REVERSAL", "OK")}
_NETAXEPT: dict[str, dict[str, Any]] = {"captured": {"authorized": True, "captured": 12950},
             "authorized": {"authorized": True}, "pending": {},
             "refunded": {"authorized": True, "captured": 12950, "credited": 12950},
             "voided": {"authorized": True, "annulled": True},
             "failed": {"error": {"operation": "Auth", "code": "99", "source": "Netaxept",
                                  "text": "Auth Reg Comp Failure"}}}
_PAYEX = {"captured": [("Authorization", "Completed"), ("Capture", "Completed")],
          "authorized": [("Authorization", "Completed")],
          "pending": [("Authorization", "Initialized")],
          "refunded": [("Authorization", "Completed"), ("Capture", "Completed"),
                       ("Reversal", "Completed")],
          "voided": [("Authorization", "Completed"), ("Cancellation", "Completed")],
          "failed": [("Authorization", "Failed")]}


# what each provider's simulated callback can report (ifthenpay's callbacks report
# payments and refunds only; only IXOPAY reports chargebacks)
STATUSES = {"ixopay": tuple(_IXOPAY), "ifthenpay": ("captured", "refunded"),
            "netaxept": tuple(_NETAXEPT), "payex": tuple(_PAYEX)}


def simulate(provider: str, *, merchant: str = "demo", status: str = "captured",
             ingress: str = "http://127.0.0.1:8080", simulators: str = "http://127.0.0.1:8090",
             settings: Settings | None = None) -> int:
    """Send one callback; 0 when the ingress acknowledged it."""
    if status not in STATUSES[provider]:
        print(f"simulate: {provider} has no {status!r} callback; it has: "
              f"{', '.join(STATUSES[provider])}", file=sys.stderr)
        return 2
    if settings is not None and getattr(settings.merchants.get(merchant), provider,
                                        None) is None:
        print(f"simulate: the configuration has no merchant {merchant!r} with {provider}",
              file=sys.stderr)
        return 2
    try:
        callback = _build(provider, merchant, status, simulators, settings)
    except httpx.TransportError:  # Netaxept's and PayEx's payments live in the simulators
        print(f"simulate: no provider simulators answer at {simulators}: start them with "
              f"`payhooks dev`, or name where they run with --simulators URL", file=sys.stderr)
        return 2
    try:
        answer, body = build.send(ingress, callback)
    except httpx.TransportError:
        print(f"simulate: no ingress answers at {ingress}: start one with `payhooks dev` (or "
              f"`payhooks ingress`), or name where it runs with --ingress URL", file=sys.stderr)
        return 2
    print(f"simulate: {provider} {status} callback for {merchant}: "
          f"{callback.method} {callback.path.partition('?')[0]} -> {answer} {body.strip()!r}")
    return 0 if 200 <= answer < 300 else 1


def _build(provider: str, merchant: str, status: str, simulators: str,
           settings: Settings | None) -> OutgoingCallback:
    section = getattr(settings.merchants[merchant], provider) if settings else None
    order = f"order-{secrets.randbelow(10**6):06d}"
    if provider == "ixopay":
        kind, result = _IXOPAY[status]
        secret = section.shared_secret.get_secret_value() if section else (
            DEMO_SECRETS["DEMO_IXOPAY_SECRET"])
        extra = {"chargebackData": {"originalMerchantTransactionId": order,
                                    "amount": "129.50", "currency": "EUR"}} if (
            kind == "CHARGEBACK") else None
        return build.ixopay_callback(merchant, secret, uuid=uuid.uuid4().hex[:20],
                                     merchant_transaction_id=order, transaction_type=kind,
                                     result=result, amount="129.50", extra=extra)
    if provider == "ifthenpay":
        key = section.anti_phishing_key[0].get_secret_value() if section else (
            DEMO_SECRETS["DEMO_IFTHENPAY_KEY"])
        return build.ifthenpay_callback(
            merchant, key, order_id=order.removeprefix("order-"), amount="129.50",
            request_id=secrets.token_urlsafe(15)[:20].replace("-", "x").replace("_", "y"),
            status={"captured": "PAGO", "refunded": "DEVOLVIDO"}[status])
    with SimulatorClient(simulators) as admin:
        if provider == "netaxept":
            return _netaxept(admin, merchant, status, order, settings)
        return _payex(admin, merchant, status, settings)


def _netaxept(admin: SimulatorClient, merchant: str, status: str, order: str,
              settings: Settings | None) -> OutgoingCallback:
    section = settings.merchants[merchant].netaxept if settings else None
    merchant_id = section.merchant_id if section else "12002835"
    if section is not None:
        admin.netaxept_credentials(merchant_id, section.token.get_secret_value())
    transaction = uuid.uuid4().hex
    admin.netaxept_transaction(transaction, merchant_id, 12950, currency="NOK",
                               order_number=order, **_NETAXEPT[status])
    password = section.callback_password if section else None
    return build.netaxept_callback(merchant, transaction,
                                   section.callback_username if section else None,
                                   password.get_secret_value() if password else None)


def _payex(admin: SimulatorClient, merchant: str, status: str,
           settings: Settings | None) -> OutgoingCallback:
    section = settings.merchants[merchant].payex if settings else None
    if section is not None:
        admin.payex_token(section.token.get_secret_value())
    steps = _PAYEX[status]
    payment = admin.payex_payment(12950, currency="SEK", transactions=[
        {"type": kind, "state": state, "amount": 12950} for kind, state in steps])
    last = payment["transactions"][-1]
    return build.payex_callback(merchant, payment_id=payment["path"],
                                transaction_id=last["typed_path"], number=last["number"])
