"""The `payhooks` command. Each subcommand is a composition root: it reads the settings
once, configures logging and hands both down."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from shared.errors import ConfigError
from shared.settings import Settings, load_settings


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
    parser = argparse.ArgumentParser(prog="payhooks", description=__doc__, parents=[config])
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    ingress = commands.add_parser("ingress", parents=[config], help="serve the callback routes")
    ingress.add_argument("--host", help="override [ingress] host")
    ingress.add_argument("--port", type=int, help="override [ingress] port")
    ingress.set_defaults(run=_ingress)

    worker = commands.add_parser(
        "worker", parents=[config],
        help="an RQ worker on the callbacks and deliveries queues, with the scheduler")
    worker.add_argument("--burst", action="store_true", help="exit when nothing is due now")
    worker.set_defaults(run=_worker)

    events = commands.add_parser("events", parents=[config],
                                 help="recent canonical events with their delivery state")
    events.add_argument("--merchant", metavar="M", help="only this merchant's events")
    events.add_argument("--json", action="store_true", help="one JSON object a line")
    events.add_argument("--limit", type=int, default=50, help="how many (default 50)")
    events.set_defaults(run=_events)

    dev = commands.add_parser("dev", help="Redis and the ingress on this machine, to try it out")
    dev.add_argument("--port", type=int, default=8080, help="ingress port (default 8080)")
    dev.set_defaults(run=_dev)

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
    bench_ingress.set_defaults(run=_bench_ingress)
    return parser


def _settings(args: argparse.Namespace) -> Settings:
    return load_settings(args.config)


def _ingress(args: argparse.Namespace) -> int:
    from ingress.__main__ import serve

    settings = _settings(args)
    serve(settings, host=args.host, port=args.port)
    return 0


def _worker(args: argparse.Namespace) -> int:
    from workers.__main__ import work

    return work(_settings(args), burst=args.burst)


def _events(args: argparse.Namespace) -> int:
    from redis import Redis

    from workers.listing import event_lines

    settings = _settings(args)
    with Redis.from_url(settings.redis_url) as redis:
        for line in event_lines(redis, settings, args.merchant, args.limit, args.json):
            print(line)
    return 0


def _dev(args: argparse.Namespace) -> int:
    from shared.dev import run

    return run(port=args.port)


def _check_config(args: argparse.Namespace) -> int:
    settings = _settings(args)
    print(f"OK: {len(settings.merchants)} merchant(s)")
    for merchant_id, merchant in sorted(settings.merchants.items()):
        providers = ", ".join(merchant.providers()) or "no providers"
        hooks = len(merchant.hooks)
        print(f"  {merchant_id}: {providers}; {hooks} hook{'s' if hooks != 1 else ''}")
    return 0


def _bench_ingress(args: argparse.Namespace) -> int:
    from ingress.bench import run

    return run(
        duration=2.0 if args.quick else args.duration,
        connections=args.connections,
        providers=[p for p in args.providers.split(",") if p],
        rounds=1 if args.quick else args.rounds,
    )


if __name__ == "__main__":
    sys.exit(main())
