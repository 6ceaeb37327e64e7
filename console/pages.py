"""The console's pages: server-rendered HTML, no script. Each page is drawn from what the
admin API answers (console/api.py) and its buttons are forms that POST to the API, with
the session's form token. Every value is escaped; no page shows a secret (none reaches
them: the settings' secrets never leave `SecretStr`, stored callbacks had theirs left out
by the ingress, hook secrets are shown once, by the API that made them)."""

from __future__ import annotations

from datetime import UTC, datetime
from html import escape
from typing import Any
from urllib.parse import urlencode

import orjson

from console.auth import Actor

STYLE = """
body{font:14px/1.45 system-ui,sans-serif;margin:0;color:#1d2330;background:#f6f7f9}
header{background:#1d2330;color:#fff;padding:10px 24px;display:flex;gap:24px;align-items:center}
header a{color:#cfd6e4;text-decoration:none}header a:hover{color:#fff}
header .who{margin-left:auto;color:#9aa4b8}main{padding:16px 24px;max-width:1280px}
h1{font-size:20px;margin:8px 0 16px}h2{font-size:16px;margin:24px 0 8px}
table{border-collapse:collapse;width:100%;background:#fff;border:1px solid #dde1e8}
th,td{padding:6px 10px;border-bottom:1px solid #eceff3;text-align:left;vertical-align:top}
th{background:#f0f2f5;font-weight:600}code,pre{font:12px/1.4 ui-monospace,monospace}
pre{background:#fff;border:1px solid #dde1e8;padding:10px;overflow:auto;max-height:420px}
.tiles{display:flex;gap:12px;flex-wrap:wrap}.tile{background:#fff;border:1px solid #dde1e8;
padding:10px 14px;min-width:150px}.tile b{display:block;font-size:22px}
.warn{background:#fff4e5;border:1px solid #f0b35a;padding:8px 12px;margin:8px 0}
.done{background:#e9f7ef;border:1px solid #7cc49a;padding:8px 12px;margin:8px 0}
.bad{color:#b42318}.ok{color:#157f3b}form.inline{display:inline}
button{font:inherit;padding:3px 10px;cursor:pointer}input,select{font:inherit;padding:3px 6px}
.search{display:flex;gap:8px;flex-wrap:wrap;margin-bottom:12px}
"""


def layout(title: str, actor: Actor, body: str, notice: str | None = None) -> str:
    nav = "".join(f'<a href="{href}">{name}</a>' for href, name in (
        ("/", "Overview"), ("/events", "Events"), ("/callbacks", "Callbacks"),
        ("/hooks", "Hooks")))
    shown = f'<div class="done">{escape(notice)}</div>' if notice else ""
    return (f'<!doctype html><html lang="en"><head><meta charset="utf-8">'
            f'<title>{escape(title)} · payhooks</title>'
            f'<link rel="stylesheet" href="/static/console.css"></head><body>'
            f'<header><strong>payhooks</strong>{nav}<span class="who">{escape(actor.name)}'
            f'</span>{form("/logout", "Sign out", actor)}</header>'
            f"<main><h1>{escape(title)}</h1>{shown}{body}</main></body></html>")


def form(action: str, label: str, actor: Actor, back: str = "/", **fields: str) -> str:
    """A button that POSTs to the API with the session's form token."""
    hidden = "".join(f'<input type="hidden" name="{escape(k)}" value="{escape(v)}">'
                     for k, v in {"csrf": actor.csrf or "", "next": back, **fields}.items())
    return (f'<form class="inline" method="post" action="{escape(action)}">{hidden}'
            f'<button type="submit">{escape(label)}</button></form>')


def sign_in_page(problem: str | None = None, back: str = "/") -> str:
    shown = f'<div class="warn">{escape(problem)}</div>' if problem else ""
    return (f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>Sign in · '
            f'payhooks</title><link rel="stylesheet" href="/static/console.css"></head><body>'
            f'<main><h1>payhooks console</h1>{shown}<form method="post" action="/login">'
            f'<input type="hidden" name="next" value="{escape(back)}">'
            f'<label>Token <input type="password" name="token" autocomplete="off" '
            f'size="50"></label> <button type="submit">Sign in</button></form>'
            f"<p>An operator token (<code>[console] tokens</code>) or a merchant's "
            f"(<code>console_tokens</code>) from the configuration.</p></main></body></html>")


def overview_page(found: dict[str, Any], actor: Actor) -> str:
    parts = [f'<div class="warn">{escape(w)}</div>' for w in found["warnings"]]
    tiles = [("Dead letters", found["dead_letters"]),
             ("Paused hooks", len(found["paused_hooks"]))]
    if found["workers"] is not None:
        tiles.insert(0, ("Workers alive", found["workers"]))
    for name, queue in found["queues"].items():
        oldest = "-" if queue["oldest_s"] is None else f"{queue['oldest_s']:.0f} s"
        tiles.append((f"{name} waiting (oldest {oldest})", queue["waiting"]))
        tiles.append((f"{name} scheduled / failed", f"{queue['scheduled']} / {queue['failed']}"))
    parts.append('<div class="tiles">' + "".join(
        f'<div class="tile"><b>{escape(str(v))}</b>{escape(k)}</div>' for k, v in tiles)
        + "</div>")
    if found["series"]:
        parts.append("<h2>The last hour, per minute</h2>" + chart(found["series"]))
    if found["paused_hooks"]:
        parts.append("<h2>Paused hooks</h2><ul>" + "".join(
            f'<li><a href="/hooks">{escape(name)}</a></li>' for name in found["paused_hooks"])
            + "</ul>")
    return layout("Overview", actor, "".join(parts))


def chart(series: list[dict[str, Any]]) -> str:
    """Callbacks (blue) and deliveries (green, failures red) per minute, as an SVG."""
    width, height, step = 720, 120, 12
    totals = [(sum(m["callbacks"].values()), m["deliveries"].get("delivered", 0),
               sum(v for k, v in m["deliveries"].items() if k != "delivered"))
              for m in series]
    top = max([max(t) for t in totals] + [1])
    bars = []
    for n, (callbacks, delivered, failed) in enumerate(totals):
        x = n * step
        for offset, value, colour in ((0, callbacks, "#3b6fd8"), (4, delivered, "#2f9e5b"),
                                      (8, failed, "#d64545")):
            tall = round(value / top * (height - 14))
            bars.append(f'<rect x="{x + offset}" y="{height - tall}" width="3" '
                        f'height="{tall}" fill="{colour}"><title>{escape(series[n]["minute"])}'
                        f": {value}</title></rect>")
    labels = (f'<text x="0" y="10" font-size="10">{top} a minute</text>'
              f'<text x="{width - 40}" y="10" font-size="10">{escape(series[-1]["minute"])}'
              "</text>")
    return (f'<svg role="img" aria-label="callbacks and deliveries per minute" '
            f'width="{width}" height="{height}" style="background:#fff;border:1px solid '
            f'#dde1e8">{labels}{"".join(bars)}</svg><p>Blue: callbacks processed; green: '
            f"deliveries made; red: deliveries failed or dead.</p>")


SEARCH_FIELDS = (("order", "order id"), ("payment", "payment id"), ("event", "event id"),
                 ("merchant", "merchant"), ("provider", "provider"), ("type", "type"),
                 ("since", "since (2h, ISO)"), ("until", "until"))


def events_page(rows: list[dict[str, Any]], query: dict[str, str], actor: Actor,
                problem: str | None = None) -> str:
    fields = [(k, label) for k, label in SEARCH_FIELDS
              if not (k == "merchant" and actor.merchant is not None)]
    search = '<form class="search" method="get" action="/events">' + "".join(
        f'<input name="{k}" placeholder="{escape(label)}" value="{escape(query.get(k, ""))}">'
        for k, label in fields) + '<button type="submit">Search</button></form>'
    shown = f'<div class="warn">{escape(problem)}</div>' if problem else ""
    body = "".join(
        f'<tr><td>{escape(r["timestamp"][:19])}</td><td><a href="/events/{escape(r["id"])}">'
        f'{escape(r["id"])}</a></td><td>{escape(r["data"]["merchant"])}</td>'
        f'<td>{escape(r["data"]["provider"])}</td><td>{escape(r["type"])}</td>'
        f'<td>{escape(str(r["data"]["amount"] or "-"))} {escape(r["data"]["currency"] or "")}'
        f'</td><td>{escape(r["data"]["order_id"] or "-")}</td><td>'
        + "<br>".join(f"{escape(h)}: {escape(s)}" for h, s in r["deliveries"].items())
        + "</td></tr>" for r in rows)
    table = ("<table><tr><th>Recorded</th><th>Event</th><th>Merchant</th><th>Provider</th>"
             "<th>Type</th><th>Amount</th><th>Order</th><th>Deliveries</th></tr>"
             f"{body}</table>") if rows else "<p>No event matches.</p>"
    return layout("Events", actor, search + shown + table)


def event_page(story: dict[str, Any], actor: Actor, notice: str | None) -> str:
    event = story["event"]
    here = f"/events/{event['id']}"
    deliveries = []
    for hook, delivery in story["deliveries"].items():
        attempts = "".join(
            f"<tr><td>{datetime.fromtimestamp(a['at'], UTC):%Y-%m-%d %H:%M:%S}</td>"
            f"<td>{escape(str(a.get('status') or '-'))}</td>"
            f"<td>{a.get('duration_ms', 0):.1f} ms</td>"
            f"<td>{escape(a.get('error') or '')}</td><td>{escape(a.get('answer') or '')}"
            "</td></tr>" for a in delivery["attempts"])
        deliveries.append(
            f"<h2>{escape(hook)}: {escape(delivery['state'])} "
            f"{form(here + '/resend', 'Resend', actor, here, hook=hook)}</h2>"
            + ("<table><tr><th>At (UTC)</th><th>Status</th><th>Duration</th>"
               f"<th>Error</th><th>Answer</th></tr>{attempts}</table>" if attempts
               else "<p>No attempt yet.</p>"))
    story_rows = "".join(
        f'<tr><td>#{e["data"]["sequence"]}</td><td><a href="/events/{escape(e["id"])}">'
        f'{escape(e["id"])}</a></td><td>{escape(e["type"])}</td>'
        f'<td>{escape(str(e["data"]["amount"] or "-"))}</td><td>{escape(e["timestamp"][:19])}'
        "</td></tr>" for e in story["story"])
    callbacks = "".join(
        f'<li><a href="/callbacks/{escape(c["callback_id"])}">{escape(c["callback_id"])}</a>: '
        f'{escape(c["outcome"])}</li>' for c in story["callbacks"])
    pretty = orjson.dumps(event, option=orjson.OPT_INDENT_2).decode()
    body = (f"<p>{form(here + '/resend', 'Resend to every hook', actor, here)}</p>"
            + "".join(deliveries)
            + f"<h2>The payment's story</h2><table><tr><th>Sequence</th><th>Event</th>"
            f"<th>Type</th><th>Amount</th><th>Recorded</th></tr>{story_rows}</table>"
            + (f"<h2>Callbacks</h2><ul>{callbacks}</ul>" if callbacks else "")
            + f"<h2>The event</h2><pre>{escape(pretty)}</pre>")
    return layout(f"Event {event['type']} · {event['data']['order_id'] or event['id']}",
                  actor, body, notice)


def callbacks_page(entries: list[dict[str, Any]], actor: Actor, notice: str | None) -> str:
    rows = "".join(
        f'<tr><td><a href="/callbacks/{escape(e["callback_id"])}">{escape(e["callback_id"])}'
        f'</a></td><td>{escape(e["merchant"])}</td><td>{escape(e["provider"])}</td>'
        f'<td>{escape(e["outcome"])}</td><td>{e["tries"]}</td><td>{escape(e["reason"])}</td>'
        f"<td>{retry_button(e, actor, '/callbacks')}</td></tr>" for e in entries)
    table = ("<table><tr><th>Callback</th><th>Merchant</th><th>Provider</th><th>Outcome</th>"
             f"<th>Tries</th><th>Reason</th><th></th></tr>{rows}</table>" if entries
             else "<p>Every callback is done: none retrying, failed, rejected or unsupported.</p>")
    return layout("Callbacks not done", actor, table, notice)


def retry_button(entry: dict[str, Any], actor: Actor, back: str) -> str:
    if entry.get("outcome") in ("retrying", "failed", "rejected"):
        return form(f"/api/callbacks/{entry['callback_id']}/retry", "Retry now", actor, back)
    return ""


def callback_page(found: dict[str, Any], actor: Actor, notice: str | None) -> str:
    here = f"/callbacks/{found['callback_id']}"
    facts = "".join(f"<tr><th>{escape(k)}</th><td>{escape(str(found[k]))}</td></tr>"
                    for k in ("merchant", "provider", "outcome", "reason", "tries", "job_status")
                    if k in found)
    stored = found.get("callback")
    body = (f"<table>{facts}</table><p>{retry_button(found, actor, here)}</p>"
            + (f"<h2>As stored by the ingress</h2><pre>"
               f"{escape(orjson.dumps(stored, option=orjson.OPT_INDENT_2).decode())}</pre>"
               if stored else "<p>Its job is no longer kept.</p>"))
    return layout(f"Callback {found['callback_id']}", actor, body, notice)


def hooks_page(entries: list[dict[str, Any]], actor: Actor, notice: str | None) -> str:
    rows = []
    for h in entries:
        base = f"/api/hooks/{h['merchant']}/{h['hook']}"
        rate = "-" if h["success_rate"] is None else f"{h['success_rate']:.0%}"
        state_class = "ok" if h["state"] == "healthy" else "bad"
        actions = " ".join((
            form(f"{base}/resume", "Resume", actor, "/hooks") if h["state"] != "healthy"
            else form(f"{base}/pause", "Pause", actor, "/hooks"),
            form(f"{base}/test", "Send test event", actor, "/hooks"),
            form(f"{base}/replay", f"Replay {h['dead_letters']} dead letters", actor, "/hooks")
            if h["dead_letters"] else ""))
        rows.append(
            f'<tr><td>{escape(h["merchant"])}/{escape(h["hook"])}</td>'
            f'<td class="{state_class}">{escape(h["state"])}</td><td>{escape(h["url"])}</td>'
            f'<td>{h["delivered"]} / {h["failed"]} / {h["dead"]} ({rate})</td>'
            f'<td>{h["failures_in_a_row"]}</td><td>{escape(h["last_error"] or "-")}</td>'
            f"<td>{actions}</td></tr>")
    table = ("<table><tr><th>Hook</th><th>State</th><th>URL</th>"
             "<th>Delivered / failed / dead</th><th>Failures in a row</th><th>Last failure</th>"
             f"<th></th></tr>{''.join(rows)}</table>") if rows else "<p>No hook.</p>"
    return layout("Hooks", actor, table, notice)


def query_string(values: dict[str, str]) -> str:
    return urlencode({k: v for k, v in values.items() if v})
