"""Netaxept (Nets / Nexi, classic API): the Query call, `GET|POST /Netaxept/Query.aspx`.

Imitates the REST Query documented in netaxept_payex.md §1.2-§1.4 and §1.8
(developer.nexigroup.com/netaxept/en-EU/api, /api/exceptions/; fixtures of active_merchant,
FDM-netaxept, skioo). `merchantId`, `token` and `transactionId` come from the query string
or a form body, names matched case-insensitively as IIS does, and the path is matched
case-insensitively too. The answer is always HTTP 200 XML: an `<Exception>` (wrong
credentials: `AuthenticationException`; unknown transaction: `QueryException`, "Unable to
find transaction") or a `<PaymentInfo>` whose top-level elements come in a different order
each time, because real responses do not keep one (§1.3), and which carries elements a
client does not know (`Wallet`, `FutureElement`), because Nets says to parse leniently.
`Summary` has both `Annulled` and the misspelled `Annuled`; `AuthorizationId` appears only
once authorized; `History` is cumulative; amounts are minor units.
"""

from __future__ import annotations

import hmac
import random
import zlib
from datetime import datetime
from html import escape

from aiohttp import web

from shared.sandbox.simulators.fields import Fields
from shared.sandbox.simulators.state import STATE, NetaxeptError, NetaxeptTransaction, State, now

Node = tuple[str, "str | list[Node]"]

_NAMESPACES = (
    'xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" '
    'xmlns:xsd="http://www.w3.org/2001/XMLSchema"'
)
_PROLOG = '<?xml version="1.0" encoding="utf-8"?>\n'
_MASKED_PANS = {"Visa": "492500******0004", "MasterCard": "544400******0003"}
PATH = r"/{path:(?i:netaxept/query\.aspx)}"


def add_routes(app: web.Application) -> None:
    app.router.add_route("GET", PATH, query)
    app.router.add_route("POST", PATH, query)


async def query(request: web.Request) -> web.Response:
    """The Query call: PaymentInfo or Exception XML, always HTTP 200."""
    params = {name.lower(): value for name, value in request.query.items()}
    if request.method == "POST":
        form = await request.post()
        params.update({name.lower(): str(value) for name, value in form.items()})
    state = request.app[STATE]
    with state.lock:
        xml = answer(state, params)
    return web.Response(text=xml, content_type="text/xml", charset="utf-8")


def answer(state: State, params: dict[str, str]) -> str:
    """The XML document Netaxept answers a Query with these (lower-cased) parameters."""
    merchant_id = params.get("merchantid", "")
    expected = state.netaxept_credentials.get(merchant_id)
    token = params.get("token", "").encode()
    if expected is None or not hmac.compare_digest(token, expected.encode()):
        return exception("AuthenticationException", "Authentication failed")
    transaction = state.netaxept_transactions.get(params.get("transactionid", ""))
    if transaction is None or transaction.merchant_id != merchant_id:
        return exception("QueryException", "Unable to find transaction")
    return payment_info(transaction, state.random)


def exception(kind: str, message: str) -> str:
    """An `<Exception>` document, as the REST API wraps every failure."""
    return (
        f"{_PROLOG}<Exception {_NAMESPACES}>\n"
        f'  <Error xsi:type="{kind}">\n'
        f"    <Message>{escape(message, quote=False)}</Message>\n"
        "  </Error>\n"
        "</Exception>\n"
    )


def payment_info(tx: NetaxeptTransaction, rng: random.Random) -> str:
    """A `<PaymentInfo>` document; the order of the top-level elements is shuffled."""
    children: list[Node] = [
        ("MerchantId", tx.merchant_id),
        ("TransactionId", tx.id),
        ("QueryFinished", now().astimezone().isoformat()),
        ("OrderInformation", _order_information(tx)),
        ("Summary", _summary(tx)),
        ("CardInformation", _card_information(tx)),
        ("History", _history(tx)),
        ("ErrorLog", [("PaymentError", _payment_error(tx.error, tx))] if tx.error else []),
        ("Wallet", []),
        ("FutureElement", "added by a newer Netaxept"),
    ]
    if tx.error is not None:
        children.append(("Error", _payment_error(tx.error, tx)))
    rng.shuffle(children)
    body = "\n".join(render(child, 1) for child in children)
    return f"{_PROLOG}<PaymentInfo {_NAMESPACES}>\n{body}\n</PaymentInfo>\n"


def render(node: Node, depth: int) -> str:
    tag, content = node
    pad = "  " * depth
    if not content:
        return f"{pad}<{tag} />"
    if isinstance(content, str):
        return f"{pad}<{tag}>{escape(content, quote=False)}</{tag}>"
    inner = "\n".join(render(child, depth + 1) for child in content)
    return f"{pad}<{tag}>\n{inner}\n{pad}</{tag}>"


def _local(moment: datetime) -> str:
    return moment.astimezone().strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3]


def _bool(value: bool) -> str:
    return "true" if value else "false"


def _order_information(tx: NetaxeptTransaction) -> list[Node]:
    return [
        ("Amount", str(tx.amount)),
        ("Currency", tx.currency),
        ("OrderNumber", tx.order_number),
        ("OrderDescription", " "),
        ("Fee", "0"),
        ("Total", str(tx.amount)),
        ("Timestamp", _local(tx.created)),
    ]


def _summary(tx: NetaxeptTransaction) -> list[Node]:
    nodes: list[Node] = [
        ("AmountCaptured", str(tx.captured)),
        ("AmountCredited", str(tx.credited)),
        ("Annulled", _bool(tx.annulled)),
        ("Annuled", _bool(tx.annulled)),
        ("Authorized", _bool(tx.authorized)),
    ]
    if tx.authorized:
        nodes.append(("AuthorizationId", authorization_id(tx.id)))
    return nodes


def authorization_id(transaction_id: str) -> str:
    """A stable six-digit authorization code for a transaction."""
    return f"{zlib.crc32(transaction_id.encode()) % 1_000_000:06d}"


def _card_information(tx: NetaxeptTransaction) -> list[Node]:
    masked = _MASKED_PANS.get(tx.payment_method, "") if tx.authorized else ""
    return [
        ("Issuer", tx.payment_method if tx.authorized else ""),
        ("MaskedPAN", masked),
        ("PaymentMethod", tx.payment_method),
    ]


def _log_line(tx: NetaxeptTransaction, operation: str, amount: int | None = None) -> Node:
    moment = tx.created if operation == "Register" else tx.updated
    line: list[Node] = [("DateTime", _local(moment)), ("Description", ""),
                        ("Operation", operation)]
    if amount is not None:
        line.append(("Amount", str(amount)))
    return ("TransactionLogLine", line)


def _history(tx: NetaxeptTransaction) -> list[Node]:
    lines = [_log_line(tx, "Register")]
    if tx.authorized:
        lines.append(_log_line(tx, "Auth"))
    if tx.captured:
        lines.append(_log_line(tx, "Capture", tx.captured))
    if tx.credited:
        lines.append(_log_line(tx, "Credit", tx.credited))
    if tx.annulled:
        lines.append(_log_line(tx, "Annul"))
    return lines


def _payment_error(error: NetaxeptError, tx: NetaxeptTransaction) -> list[Node]:
    return [
        ("DateTime", _local(tx.updated)),
        ("Operation", error.operation),
        ("ResponseCode", error.code),
        ("ResponseSource", error.source),
        ("ResponseText", error.text),
    ]


def transaction_from_json(fields: Fields) -> NetaxeptTransaction:
    """A transaction from the admin API's JSON (the state model's field names)."""
    error = fields.nested("error")
    moment = now()
    return NetaxeptTransaction(
        id=fields.text("id", "transaction_id", "transactionId"),
        merchant_id=fields.text("merchant_id", "merchantId"),
        amount=fields.integer("amount"),
        currency=fields.text("currency", default="NOK"),
        order_number=fields.text("order_number", "orderNumber", default=""),
        payment_method=fields.text("payment_method", "paymentMethod", default="Visa"),
        authorized=fields.flag("authorized"),
        captured=fields.integer("captured", default=0),
        credited=fields.integer("credited", default=0),
        annulled=fields.flag("annulled"),
        error=None if error is None else NetaxeptError(
            operation=error.text("operation", default="Auth"),
            code=error.text("code", "response_code", default="99"),
            source=error.text("source", "response_source", default="Netaxept"),
            text=error.text("text", "response_text", default="Auth Reg Comp Failure"),
        ),
        created=fields.timestamp("created", default=moment),
        updated=fields.timestamp("updated", default=moment),
    )


def transaction_to_json(tx: NetaxeptTransaction) -> dict[str, object]:
    """The admin API's view of a transaction."""
    error = tx.error
    return {
        "id": tx.id, "merchant_id": tx.merchant_id, "amount": tx.amount,
        "currency": tx.currency, "order_number": tx.order_number,
        "payment_method": tx.payment_method, "authorized": tx.authorized,
        "captured": tx.captured, "credited": tx.credited, "annulled": tx.annulled,
        "error": None if error is None else {
            "operation": error.operation, "code": error.code, "source": error.source,
            "text": error.text,
        },
        "created": tx.created.isoformat(), "updated": tx.updated.isoformat(),
    }
