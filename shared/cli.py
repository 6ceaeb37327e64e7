"""The `payhooks` command. Each subcommand is a composition root: it reads the settings
once, configures logging and hands both down."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Any

from shared.errors import ConfigError
from shared.settings import (
    PROVIDER_SECTIONS,
    Settings,
    load_settings,
    parse_duration,
    parse_moment,
)

STATUSES = ["captured", "authorized", "pending", "refunded", "voided", "failed", "chargeback",
            "chargeback_reversed"]


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        return int(args.run(args))
    except ConfigError as exc:
        print(f"payhooks: configuration error:\n{exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


def _parser() -> argparse.ArgumentParser:
    config = argparse.ArgumentParser(add_help=False)
    config.add_argument(
        "--config", metavar="PATH",
        help="config file (default: $PAYHOOKS_CONFIG, else ./payhooks.toml)",
    )
    parser = argparse.ArgumentParser(
        prog="payhooks", parents=[config],
        description="payhooks takes payment providers' callbacks, checks them with the "
                    "provider and delivers one signed event stream to each merchant's hooks.",
        epilog="Run it: payhooks ingress, and payhooks worker (as many as you need). Try it "
               "on this machine: payhooks dev. Help on a command: payhooks COMMAND --help")
    parser.add_argument("--version", action="version", version=f"payhooks {_version()}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    ingress = commands.add_parser("ingress", parents=[config], help="serve the callback routes")
    ingress.add_argument("--host", help="override [ingress] host")
    ingress.add_argument("--port", type=int, help="override [ingress] port")
    ingress.set_defaults(run=_ingress)

    console = commands.add_parser(
        "console", parents=[config],
        help="the web console and admin API for operators and merchants (127.0.0.1:9180)")
    console.add_argument("--host", help="override [console] host")
    console.add_argument("--port", type=int, help="override [console] port")
    console.set_defaults(run=_console)

    worker = commands.add_parser(
        "worker", parents=[config],
        help="an RQ worker on the callbacks and deliveries queues, with the scheduler")
    worker.add_argument("--burst", action="store_true", help="exit when nothing is due now")
    worker.add_argument("--concurrency", type=_positive, metavar="N",
                        help="jobs in flight at once in this process (override [worker] "
                             "concurrency, default 16)")
    worker.add_argument("--queues", type=_queues, metavar="Q[,Q]",
                        default=("callbacks", "deliveries"),
                        help="the queues to take jobs from, first ones first (default "
                             "callbacks,deliveries: a worker of deliveries only keeps "
                             "them moving while callbacks arrive in a burst)")
    worker.set_defaults(run=_worker)

    events = commands.add_parser(
        "events", parents=[config],
        help="recent canonical events with their delivery state, newest first",
        description="Recent canonical events, newest first, with each hook's delivery state. "
                    "Filters combine: payhooks events --order order-77 --since 2d")
    events.add_argument("--merchant", metavar="M", help="only this merchant's events")
    events.add_argument("--provider", metavar="P", choices=PROVIDER_SECTIONS,
                        help="only this provider's")
    events.add_argument("--type", metavar="TYPE",
                        help="only this event type, or pattern (payment.refunded, payment.*)")
    events.add_argument("--order", metavar="ID", help="only this order id's")
    events.add_argument("--payment", metavar="ID", help="only this payment id's")
    events.add_argument("--transaction", metavar="ID", help="only this transaction id's")
    events.add_argument("--since", metavar="TIME", type=_moment,
                        help="recorded at or after TIME (ISO 8601, or an age: 2h, 3d)")
    events.add_argument("--until", metavar="TIME", type=_moment,
                        help="recorded at or before TIME")
    events.add_argument("--event", metavar="ID",
                        help="instead: this one event in full, with every delivery attempt")
    events.add_argument("--json", action="store_true", help="one JSON object a line")
    events.add_argument("--limit", type=int, default=50, help="how many (default 50)")
    events.add_argument("--unsupported", action="store_true",
                        help="instead: callbacks acknowledged that gave no event, with why")
    events.set_defaults(run=_events)

    troubled = commands.add_parser(
        "callbacks", parents=[config],
        help="callbacks acknowledged but not done: retrying, failed, rejected, unsupported",
        description="Callbacks the ingress acknowledged that gave no event yet, newest first, "
                    "with the reason: retrying (the provider could not answer; with the next "
                    "try), failed (out of tries), rejected (a permanent answer: unknown "
                    "transaction, bad credentials), unsupported (nothing payhooks delivers).")
    troubled.add_argument("--outcome", choices=("retrying", "failed", "rejected", "unsupported"),
                          help="only callbacks with this outcome")
    troubled.add_argument("--merchant", metavar="M", help="only this merchant's")
    troubled.add_argument("--provider", metavar="P", choices=PROVIDER_SECTIONS,
                          help="only this provider's")
    troubled.add_argument("--id", metavar="ID", action="append",
                          help="only this callback (repeatable)")
    troubled.add_argument("--limit", type=int, default=50, help="how many (default 50)")
    troubled.add_argument("--json", action="store_true", help="one JSON object a line")
    troubled.add_argument("--retry-now", action="store_true",
                          help="run the listed callbacks again now, with a fresh retry schedule "
                               "(after fixing credentials, say); unsupported ones: payhooks "
                               "replay --unsupported")
    troubled.set_defaults(run=_callbacks)

    hooks = commands.add_parser(
        "hooks", parents=[config], help="merchant hooks with their health; pause, resume",
        description="Each configured hook's health: healthy, failing, paused (by the workers "
                    "after failures in a row, or by hand), deliveries by outcome, the last "
                    "failure and the dead letters waiting. `resume` ends a pause and sends the "
                    "hook's waiting deliveries now.")
    hooks.add_argument("--merchant", metavar="M", help="only this merchant's hooks")
    hooks.add_argument("--json", action="store_true", help="one JSON object a line")
    hook_actions = hooks.add_subparsers(dest="action", metavar="ACTION")
    hook_pause = hook_actions.add_parser(
        "pause", parents=[config], help="attempt no delivery to this hook until resumed")
    hook_pause.add_argument("hook", metavar="MERCHANT/HOOK")
    hook_pause.add_argument("--for", dest="duration", metavar="DURATION", type=_duration,
                            help="resume by itself after this long (30m, 2h); default: never")
    hook_resume = hook_actions.add_parser(
        "resume", parents=[config],
        help="end its pause, forget its failures, send its waiting deliveries now")
    hook_resume.add_argument("hook", metavar="MERCHANT/HOOK")
    hooks.set_defaults(run=_hooks)

    resend = commands.add_parser(
        "resend", parents=[config],
        help="deliver an event again to its hooks (same event id), whatever happened before")
    resend.add_argument("event", metavar="EVENT", help="the event id (evt_...)")
    resend.add_argument("--hook", metavar="ID", help="only to this hook of the merchant")
    resend.set_defaults(run=_resend)

    replay = commands.add_parser("replay", parents=[config],
                                 help="send dead-lettered deliveries again (same event ids)")
    replay.add_argument("--event", metavar="ID", help="only this event")
    replay.add_argument("--hook", metavar="ID", help="only deliveries to this hook")
    replay.add_argument("--merchant", metavar="M", help="only this merchant's")
    replay.add_argument("--since", metavar="TIME", type=_moment,
                        help="dead-lettered at or after TIME (ISO 8601, or an age: 2h, 3d)")
    replay.add_argument("--until", metavar="TIME", type=_moment,
                        help="dead-lettered at or before TIME")
    replay.add_argument("--dry-run", action="store_true", help="list, do not send")
    replay.add_argument("--unsupported", action="store_true",
                        help="instead: process again the callbacks that gave no event "
                             "(--merchant, --provider, --since, --until apply)")
    replay.add_argument("--provider", metavar="P", help="with --unsupported: only this one's")
    replay.set_defaults(run=_replay)

    dev = commands.add_parser(
        "dev", help="everything on this machine, to try it out: Redis, the ingress, workers, "
                    "rq-dashboard, the provider simulators and a sample merchant endpoint")
    dev.add_argument("--port", type=int, default=8080, help="ingress port (default 8080)")
    dev.add_argument("--simulators-port", type=int, default=8090)
    dev.add_argument("--merchant-port", type=int, default=8091)
    dev.add_argument("--dashboard-port", type=int, default=9181)
    dev.add_argument("--console-port", type=int, default=9180)
    dev.add_argument("--redis-port", type=int, default=6390,
                     help="port of the Redis it starts (default 6390)")
    dev.add_argument("--redis-url", metavar="URL",
                     help="use this Redis instead of starting one (also: $PAYHOOKS_REDIS_URL)")
    dev.add_argument("--forward-to", metavar="URL",
                     help="also deliver every event, signed, to this URL (your app); the "
                          "secret to verify with is printed, and kept between runs")
    dev.add_argument("--workers", type=int, default=2)
    dev.set_defaults(run=_dev)

    simulate = commands.add_parser(
        "simulate", help="send a correct (signed) test callback through the dev ingress")
    simulate.add_argument("provider", choices=PROVIDER_SECTIONS)
    simulate.add_argument("--merchant", default="demo")
    simulate.add_argument("--status", default="captured", choices=STATUSES,
                          help="what the payment did (default captured); chargebacks: "
                               "IXOPAY only, ifthenpay: captured and refunded")
    simulate.add_argument("--ingress", default="http://127.0.0.1:8080")
    simulate.add_argument("--simulators", default="http://127.0.0.1:8090")
    simulate.add_argument("--config", metavar="PATH",
                          help="take the merchant's secrets from this config (default: demo's)")
    simulate.set_defaults(run=_simulate)

    check = commands.add_parser("check-config", parents=[config], help="validate a config file")
    check.set_defaults(run=_check_config)

    bench = commands.add_parser("bench", help="benchmarks that print numbers")
    bench_parts = bench.add_subparsers(dest="part", required=True, metavar="PART")
    bench_ingress = bench_parts.add_parser(
        "ingress", help="load the ingress with each provider's callbacks, next to a bare handler"
    )
    bench_ingress.add_argument("--duration", type=float, default=10.0, help="seconds per run")
    bench_ingress.add_argument("--connections", type=int, default=64)
    bench_ingress.add_argument("--providers", default="ixopay,ifthenpay,netaxept,payex")
    bench_ingress.add_argument("--rounds", type=int, default=3,
                               help="bare/ingress pairs per provider; medians are reported")
    bench_ingress.add_argument("--quick", action="store_true", help="one round of 2 s, for CI")
    bench_ingress.add_argument("--appendfsync", choices=["everysec", "always"],
                               help="Redis with AOF and this fsync policy (default: none)")
    bench_ingress.add_argument("--min-replicas", type=int, default=0, metavar="N",
                               help="N replicas, and [ingress] min_replicas = N (default 0)")
    bench_ingress.set_defaults(run=_bench_ingress)
    bench_delivery = bench_parts.add_parser(
        "delivery", help="deliveries/s to an endpoint that answers at once, and with a hook "
                         "timing out beside it")
    bench_delivery.add_argument("--deliveries", type=int, default=3000, help="a phase")
    bench_delivery.add_argument("--rounds", type=int, default=3)
    bench_delivery.add_argument("--timeout", type=float, default=2.0,
                                help="[delivery] timeout, seconds (default 2)")
    bench_delivery.add_argument("--quick", action="store_true", help="300 deliveries, 1 round")
    bench_delivery.set_defaults(run=_bench_delivery)
    bench_worker = bench_parts.add_parser(
        "worker", help="one worker's process_callback rate next to RQ's no-op rate, the "
        "latency from the ingress's 200 to the delivery jobs, and the worker next to Celery "
        "and dramatiq doing the same work")
    bench_worker.add_argument("--callbacks", type=int, default=3000, help="callbacks a round")
    bench_worker.add_argument("--rounds", type=int, default=3,
                              help="no-op/process_callback pairs, and comparison rounds; "
                                   "medians are reported")
    bench_worker.add_argument("--concurrency", type=int, default=None, metavar="N",
                              help="jobs at once a worker process in the comparison "
                                   "(default 16; 4 with --quick)")
    bench_worker.add_argument("--without-peers", action="store_true",
                              help="leave out the comparison with Celery and dramatiq")
    bench_worker.add_argument("--quick", action="store_true",
                              help="200 callbacks, one round, 3 s end to end, a short "
                                   "comparison, for CI")
    bench_worker.set_defaults(run=_bench_worker)
    bench_all = bench_parts.add_parser(
        "all", help="the whole system on this machine: ingress, pipeline, scaling, memory "
        "and durability in one table, with a plot")
    bench_all.add_argument("--quick", action="store_true",
                           help="runs of 1 s, 1 and 2 workers: under a minute, for CI")
    bench_all.add_argument("--duration", type=float, default=10.0,
                           help="seconds a measured run (default 10)")
    bench_all.add_argument("--rounds", type=int, default=3, help="ingress rounds (default 3)")
    bench_all.add_argument("--workers", default="1,2,4,8", metavar="N,N,...",
                           help="worker counts of the scaling part (default 1,2,4,8)")
    bench_all.add_argument("--pipeline-workers", type=int, default=4, metavar="N",
                           help="workers of the pipeline part (default 4)")
    bench_all.add_argument("--loads", default="0.5,0.9", metavar="SHARE,...",
                           help="shares of the pipeline's capacity to run at (default 0.5,0.9)")
    bench_all.add_argument("--mix", default="ixopay=25,ifthenpay=25,netaxept=25,payex=25",
                           metavar="P=W,...", help="providers' weights in the load")
    bench_all.add_argument("--results", default=".bench-results", metavar="DIR",
                           help="where results.md and bench.png go (default .bench-results/)")
    bench_all.set_defaults(run=_bench_all)
    chaos = commands.add_parser(
        "chaos", help="thousands of callbacks through the real system while workers are "
        "killed, Redis restarts, providers fail and the merchant endpoint goes down; then an "
        "account of every callback (exit code 1 if one is lost, doubled or forged)")
    chaos.add_argument("--quick", action="store_true",
                       help="400 callbacks, 6 workers, endpoint down 20 s: about 2 minutes, for CI")
    chaos.add_argument("--callbacks", type=int, help="genuine callbacks (default 5000)")
    chaos.add_argument("--rate", type=float, help="callbacks a second (default 10)")
    chaos.add_argument("--workers", type=int, help="worker processes (default 8)")
    chaos.add_argument("--seed", type=int, help="seed of the random choices, to repeat a run")
    chaos.add_argument("--appendfsync", choices=("always", "everysec", "no"), default="always",
                       help="Redis's AOF fsync policy during the run (default always)")
    chaos.add_argument("--failover", action="store_true",
                       help="a primary, two replicas and three Sentinels instead of one Redis, "
                            "[ingress] min_replicas = 1, the primary SIGKILLed twice")
    chaos.add_argument("--keep-logs", action="store_true",
                       help="keep the processes' logs (kept anyway when a count is off)")
    chaos.set_defaults(run=_chaos)
    return parser


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("payhooks")
    except PackageNotFoundError:  # run from a checkout that was never installed
        return "(not installed)"


def _settings(args: argparse.Namespace) -> Settings:
    return load_settings(args.config)


def _ingress(args: argparse.Namespace) -> int:
    from ingress.server import serve

    settings = _settings(args)
    serve(settings, host=args.host, port=args.port)
    return 0


def _console(args: argparse.Namespace) -> int:
    from console.server import serve

    serve(_settings(args), host=args.host, port=args.port)
    return 0


def _worker(args: argparse.Namespace) -> int:
    from workers.worker import work

    return work(_settings(args), burst=args.burst, concurrency=args.concurrency,
                queues=args.queues)


def _events(args: argparse.Namespace) -> int:
    from shared.redis_client import connect
    from workers import listing

    settings = _settings(args)
    with connect(settings.redis_url) as redis:
        if args.event:
            event = listing.get_event(redis, args.event)
            if event is None:
                print(f"payhooks events: no event {args.event} (unknown, or older than the "
                      "10 days events are kept)", file=sys.stderr)
                return 1
            lines = listing.event_detail_lines(redis, settings, event)
        elif args.unsupported:
            lines = listing.unsupported_lines(redis, args.merchant, args.limit, args.json)
        else:
            where = listing.EventFilter(
                merchant=args.merchant, provider=args.provider, type=args.type,
                order=args.order, payment=args.payment, transaction=args.transaction,
                since=args.since, until=args.until)
            found = listing.find_events(redis, where, args.limit)
            lines = listing.event_lines(redis, settings, found, args.json)
            if not found and not args.json:
                lines = ["no event matches" if where != listing.EventFilter() else
                         "no event recorded yet (or none in the last 10 days)"]
        for line in lines:
            print(line)
    return 0


def _callbacks(args: argparse.Namespace) -> int:
    from shared.redis_client import connect
    from workers import callbacks

    settings = _settings(args)
    with connect(settings.redis_url) as redis:
        found = callbacks.troubled_callbacks(redis, outcome=args.outcome,
                                             merchant=args.merchant, provider=args.provider)
        if args.id:
            found = [entry for entry in found if entry.callback_id in args.id]
        if args.retry_now:
            count = callbacks.retry_now(redis, found)
            print(f"queued {count} of {len(found)} callbacks to run again now")
            return 0
        if not (args.json or args.outcome or args.id):
            print(callbacks.summary(redis, found))
        for line in callbacks.callback_lines(redis, found[:args.limit], args.json):
            print(line)
    return 0


def _hooks(args: argparse.Namespace) -> int:
    from shared.redis_client import connect
    from workers import hooks

    settings = _settings(args)
    with connect(settings.redis_url) as redis:
        if args.action is None:
            found = hooks.health(redis, settings, args.merchant)
            for entry in found:
                print(_json_line(entry.as_json()) if args.json else hooks.describe(entry))
            if not found and not args.json:
                print("no hook configured" + (f" for {args.merchant}" if args.merchant else ""))
            return 0
        try:
            merchant, hook = hooks.find_hook(redis, settings, args.hook)
        except ValueError as exc:
            print(f"payhooks hooks: {exc}", file=sys.stderr)
            return 2
        if args.action == "pause":
            hooks.pause(redis, merchant, hook.id, args.duration)
            until = f"for {args.duration:.0f} s" if args.duration else "until resumed"
            print(f"paused {merchant}/{hook.id} {until}: its deliveries wait, none is lost")
        else:
            count = hooks.resume(redis, merchant, hook.id)
            print(f"resumed {merchant}/{hook.id}: {count} waiting "
                  f"{'delivery' if count == 1 else 'deliveries'} due now")
    return 0


def _json_line(record: dict[str, Any]) -> str:
    import orjson

    return orjson.dumps(record).decode()


def _resend(args: argparse.Namespace) -> int:
    from shared.redis_client import connect
    from workers.listing import get_event
    from workers.replay import resend

    settings = _settings(args)
    with connect(settings.redis_url) as redis:
        event = get_event(redis, args.event)
        if event is None:
            print(f"payhooks resend: no event {args.event} (unknown, or older than the 10 days "
                  "events are kept; a dead letter's copy: payhooks replay --event)",
                  file=sys.stderr)
            return 1
        try:
            done = resend(redis, settings, event, args.hook)
        except ValueError as exc:
            print(f"payhooks resend: {exc}", file=sys.stderr)
            return 2
    if not done:
        print(f"no hook of {event.data.merchant} takes {event.type.value} events")
    for hook, what in done.items():
        print(f"{event.id} -> {event.data.merchant}/{hook}: {what}")
    return 0


def _replay(args: argparse.Namespace) -> int:
    from shared.redis_client import connect
    from workers.replay import dead_letters, replay, text_progress

    settings = _settings(args)
    if args.unsupported:
        return _replay_unsupported(args, settings)
    with connect(settings.redis_url) as redis:
        letters = dead_letters(redis, event=args.event, hook=args.hook, merchant=args.merchant,
                               since=args.since, until=args.until)
        listed = [f"{letter.merchant} {letter.event} -> {letter.hook}" for letter in letters]
        if _listed_only(listed, "dead-lettered delivery", "dead-lettered deliveries",
                        args.dry_run):
            return 0
        progress = text_progress if len(letters) > 20 or sys.stderr.isatty() else None
        count = replay(redis, settings, letters, progress)
    print(f"replayed {count} of {len(letters)} dead-lettered deliveries")
    return 0


def _replay_unsupported(args: argparse.Namespace, settings: Settings) -> int:
    from shared.redis_client import connect
    from workers.unsupported import replay_unsupported, unsupported_callbacks

    with connect(settings.redis_url) as redis:
        found = unsupported_callbacks(redis, merchant=args.merchant, provider=args.provider,
                                      since=args.since, until=args.until)
        listed = [f"{entry.merchant} {entry.provider} {entry.callback_id}: {entry.reason}"
                  for entry in found]
        if _listed_only(listed, "unsupported callback", "unsupported callbacks", args.dry_run):
            return 0
        count = replay_unsupported(redis, found)
    print(f"queued {count} of {len(found)} unsupported callbacks to be processed again")
    return 0


def _listed_only(listed: list[str], one: str, many: str, dry_run: bool) -> bool:
    """For a replay: with --dry-run, print what would be replayed and how many; with
    nothing to replay, say so. True when there is nothing more to do."""
    if listed and not dry_run:
        return False
    for line in listed if dry_run else ():
        print(line)
    print(f"{len(listed)} {one if len(listed) == 1 else many}"
          f"{' to replay' if dry_run else ' match'}")
    return True


def _duration(value: str) -> float:
    """A duration ("30m", "2h") in seconds (an argparse type)."""
    try:
        return parse_duration(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a duration (30s, 30m, 2h, 3d)"
                                         ) from None


def _moment(value: str) -> float:
    """A time given as ISO 8601 or as an age ("2h": two hours ago), as a Unix time (an
    argparse type: a bad one is a usage error, told with the option's name)."""
    try:
        return parse_moment(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _positive(value: str) -> int:
    """A whole number of at least 1, at most 256 (an argparse type)."""
    if not value.isdigit() or not 1 <= int(value) <= 256:
        raise argparse.ArgumentTypeError(f"{value!r} is not a number from 1 to 256")
    return int(value)


def _queues(value: str) -> tuple[str, ...]:
    """Queue names from `callbacks,deliveries`, each once (an argparse type)."""
    names = tuple(name.strip() for name in value.split(","))
    known = ("callbacks", "deliveries")
    if not names or any(name not in known for name in names) or len(set(names)) < len(names):
        raise argparse.ArgumentTypeError(
            f"{value!r}: name callbacks, deliveries or both, each once")
    return names


def _optional(module: str, missing: str) -> Any:
    """`module`, from a part that an install may leave out; else exit saying `missing`."""
    import importlib

    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as exc:
        if not module.startswith(exc.name or "-"):
            raise  # something the part itself needs is missing: that is another story
        sys.exit(missing)


def _sandbox(module: str) -> Any:
    """A part of the sandbox, which a production install (the image) leaves out."""
    return _optional(f"shared.sandbox.{module}",
                     "the sandbox (payhooks dev, payhooks simulate) is not in this install: "
                     "run it from a checkout, pip install -e '.[dev]'")


def _dev(args: argparse.Namespace) -> int:
    dev = _sandbox("dev")

    ports = dev.Ports(ingress=args.port, simulators=args.simulators_port,
                      merchant=args.merchant_port, dashboard=args.dashboard_port,
                      console=args.console_port, redis=args.redis_port)
    return int(dev.run(ports, workers=args.workers, redis_url=args.redis_url,
                       forward_to=args.forward_to))


def _simulate(args: argparse.Namespace) -> int:
    simulate = _sandbox("simulate").simulate
    settings = load_settings(args.config) if args.config else None
    return int(simulate(args.provider, merchant=args.merchant, status=args.status,
                        ingress=args.ingress, simulators=args.simulators, settings=settings))


def _check_config(args: argparse.Namespace) -> int:
    settings = _settings(args)
    print(f"OK: {len(settings.merchants)} merchant(s)")
    for merchant_id, merchant in sorted(settings.merchants.items()):
        providers = ", ".join(merchant.providers()) or "no providers"
        hooks = len(merchant.hooks)
        print(f"  {merchant_id}: {providers}; {hooks} hook{'s' if hooks != 1 else ''}")
    return 0


def _tool(module: str) -> Any:
    """A benchmark or the chaos test: they live beside the tests (tests/bench, tests/chaos),
    outside the product's packages, and run from a checkout of payhooks."""
    from pathlib import Path

    checkout = Path(__file__).resolve().parents[1]
    if (checkout / "tests" / "bench").is_dir() and str(checkout) not in sys.path:
        sys.path.insert(0, str(checkout))  # an editable install runs from the checkout
    return _optional(module, "payhooks bench and payhooks chaos run from a checkout of "
                             "payhooks (pip install -e '.[test,dev,bench]'), not from an "
                             "installed package")


def _bench_ingress(args: argparse.Namespace) -> int:
    return int(_tool("tests.bench.ingress").run(
        duration=2.0 if args.quick else args.duration,
        connections=args.connections,
        providers=[p for p in args.providers.split(",") if p],
        rounds=1 if args.quick else args.rounds,
        appendfsync=args.appendfsync,
        replicas=args.min_replicas,
    ))


def _bench_delivery(args: argparse.Namespace) -> int:
    run = _tool("tests.bench.delivery").run
    if args.quick:
        return int(run(deliveries=300, rounds=1, timeout=1.0))
    return int(run(deliveries=args.deliveries, rounds=args.rounds, timeout=args.timeout))


def _bench_worker(args: argparse.Namespace) -> int:
    import dataclasses

    run, compare = _tool("tests.bench.worker").run, _tool("tests.bench.compare")
    try:
        peers = compare.Options(rounds=args.rounds)
        peers = peers.quickened() if args.quick else peers
        if args.concurrency is not None:
            peers = dataclasses.replace(peers, concurrency=args.concurrency)
    except ValueError as exc:
        print(f"payhooks bench worker: {exc}", file=sys.stderr)
        return 2
    peers = None if args.without_peers else peers
    if args.quick:
        return int(run(callbacks=200, rounds=1, e2e_seconds=3.0, peers=peers))
    return int(run(callbacks=args.callbacks, rounds=args.rounds, peers=peers))


def _bench_all(args: argparse.Namespace) -> int:
    from pathlib import Path

    suite = _tool("tests.bench.suite")
    try:
        options = suite.Options(duration=args.duration, rounds=args.rounds,
                                workers=suite.parse_counts(args.workers),
                                pipeline_workers=args.pipeline_workers,
                                loads=suite.parse_shares(args.loads),
                                mix=suite.parse_mix(args.mix), results=Path(args.results))
    except ValueError as exc:
        print(f"payhooks bench all: {exc}", file=sys.stderr)
        return 2
    return int(suite.run(options.quickened() if args.quick else options))


def _chaos(args: argparse.Namespace) -> int:
    import dataclasses

    chaos = _tool("tests.chaos.run")
    plan = chaos.Plan.quick(args.seed) if args.quick else chaos.Plan(seed=args.seed)
    given = {name: getattr(args, name) for name in ("callbacks", "rate", "workers")}
    plan = dataclasses.replace(plan, keep_logs=args.keep_logs, appendfsync=args.appendfsync,
                               failover=args.failover,
                               **{k: v for k, v in given.items() if v is not None})
    return int(chaos.run(plan))


if __name__ == "__main__":
    sys.exit(main())

