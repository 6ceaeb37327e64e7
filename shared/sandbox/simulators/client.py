"""`SimulatorClient`: a small synchronous client of the simulators' `/_sim/` admin API.

One method per admin endpoint (see `shared.sandbox.simulators.admin`), each answering the parsed
JSON reply; an HTTP error raises `httpx.HTTPStatusError`. Keyword names are the admin
API's JSON names. Built on httpx, so it works from `payhooks dev`, benchmarks and tests
that talk to simulators in another process.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import httpx

Json = dict[str, Any]


class SimulatorClient:
    def __init__(self, base_url: str, timeout: float = 10.0) -> None:
        self._http = httpx.Client(base_url=base_url, timeout=timeout)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> SimulatorClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _call(self, method: str, path: str, body: Json | None = None) -> Json:
        response = self._http.request(method, path, json=body)
        response.raise_for_status()
        reply: Json = response.json()
        return reply

    def _post(self, path: str, **fields: Any) -> Json:
        return self._call("POST", path, {k: v for k, v in fields.items() if v is not None})

    def reset(self) -> Json:
        """Forget all data, counters and faults."""
        return self._call("POST", "/_sim/reset")

    def faults(
        self,
        provider: str = "all",
        *,
        latency: float | None = None,
        error_rate: float | None = None,
        timeout_rate: float | None = None,
        timeout_seconds: float | None = None,
        drip_rate: float | None = None,
        drip_interval: float | None = None,
        rate_limit_per_minute: int | None = None,
        rate_limit_per_transaction: int | None = None,
    ) -> Json:
        """Change fault settings of one provider (or "all"); answers every provider's."""
        return self._post(
            "/_sim/faults", provider=provider, latency=latency, error_rate=error_rate,
            timeout_rate=timeout_rate, timeout_seconds=timeout_seconds,
            drip_rate=drip_rate, drip_interval=drip_interval,
            rate_limit_per_minute=rate_limit_per_minute,
            rate_limit_per_transaction=rate_limit_per_transaction,
        )

    def get_faults(self) -> Json:
        return self._call("GET", "/_sim/faults")

    def stats(self) -> Json:
        """`{"requests": {provider: n}, "dripped": {provider: n},
        "responses": {provider: {status: n}}}`."""
        return self._call("GET", "/_sim/stats")

    def netaxept_credentials(self, merchant_id: str, token: str) -> Json:
        return self._post("/_sim/netaxept/credentials", merchant_id=merchant_id, token=token)

    def netaxept_transaction(self, id: str, merchant_id: str, amount: int, **fields: Any) -> Json:
        """Create or replace a transaction; other fields as in the state model."""
        return self._post("/_sim/netaxept/transactions", id=id, merchant_id=merchant_id,
                          amount=amount, **fields)

    def payex_token(self, token: str) -> Json:
        return self._post("/_sim/payex/tokens", token=token)

    def payex_payment(
        self,
        amount: int,
        *,
        instrument: str = "creditcard",
        currency: str = "SEK",
        intent: str = "Authorization",
        state: str = "Ready",
        transactions: Sequence[Json] = (),
    ) -> Json:
        """Create a payment; transactions are `{"type", "state", "amount", ...}`."""
        return self._post("/_sim/payex/payments", amount=amount, instrument=instrument,
                          currency=currency, intent=intent, state=state,
                          transactions=list(transactions))

    def payex_transaction(self, payment_id: str, type: str, state: str = "Completed",
                          amount: int | None = None, **fields: Any) -> Json:
        """Append a transaction to the payment with this GUID."""
        return self._post(f"/_sim/payex/payments/{payment_id}/transactions", type=type,
                          state=state, amount=amount, **fields)

    def payex_payment_order(
        self,
        amount: int,
        *,
        status: str = "Initialized",
        currency: str = "SEK",
        paid: Json | None = None,
        financial_transactions: Sequence[Json] = (),
        order_reference: str | None = None,
    ) -> Json:
        """Create a payment order; `paid` is `{"transactionType", "instrument", "amount"}`."""
        return self._post("/_sim/payex/paymentorders", amount=amount, status=status,
                          currency=currency, paid=paid, order_reference=order_reference,
                          financial_transactions=list(financial_transactions))

    def payex_financial_transaction(self, order_id: str, type: str, amount: int | None = None,
                                    status: str | None = None, **fields: Any) -> Json:
        """Append a financial transaction (and maybe set a new status) to an order."""
        return self._post(f"/_sim/payex/paymentorders/{order_id}/financialtransactions",
                          type=type, amount=amount, status=status, **fields)

    def ixopay_credentials(self, api_key: str, username: str, password: str) -> Json:
        return self._post("/_sim/ixopay/credentials", api_key=api_key, username=username,
                          password=password)

    def ixopay_transaction(self, uuid: str, merchant_transaction_id: str, **fields: Any) -> Json:
        """Create or replace a transaction; fields in the API's camelCase."""
        return self._post("/_sim/ixopay/transactions", uuid=uuid,
                          merchantTransactionId=merchant_transaction_id, **fields)

    def ifthenpay_backoffice(self, bo_key: str) -> Json:
        return self._post("/_sim/ifthenpay/backoffice", bo_key=bo_key)

    def ifthenpay_payment(self, order_id: str, amount: str | float, **fields: Any) -> Json:
        """Add a completed payment; fields in the API's camelCase."""
        return self._post("/_sim/ifthenpay/payments", orderId=order_id, amount=amount,
                          **fields)
