"""The ``ringbus`` command."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING

import ringbus
from ringbus import _config

if TYPE_CHECKING:
    from ringbus.transport import CurveServer


def _bench(args: argparse.Namespace) -> int:
    from ringbus.bench.report import run_cli

    return run_cli(args)


def _read_keys(path: str, what: str) -> list[str]:
    """Z85 keys from a file, one per line; blank lines and ``#`` comments are skipped."""
    try:
        with open(path, encoding="ascii") as file:
            text = file.read()
    except (OSError, UnicodeDecodeError) as exc:
        raise _config.UsageError(f"{what} {path}: {exc}") from None
    return [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]


def _broker_curve(args: argparse.Namespace) -> CurveServer | None:
    """The CurveServer the CURVE flags ask for, or None when both are absent."""
    if args.curve_secret_key_file is None and args.authorized_keys_file is None:
        return None
    if args.curve_secret_key_file is None or args.authorized_keys_file is None:
        raise _config.UsageError("--curve-secret-key-file and --authorized-keys-file go together: CURVE needs the "
                                 "server's key and the clients it admits")
    import zmq

    from ringbus.transport import CurveServer

    secret = _read_keys(args.curve_secret_key_file, "--curve-secret-key-file")
    if len(secret) != 1:
        raise _config.UsageError(f"--curve-secret-key-file {args.curve_secret_key_file}: expected one Z85 secret "
                                 f"key (40 characters), found {len(secret)} line(s)")
    try:
        public = zmq.curve_public(secret[0].encode())
        return CurveServer(secret[0], public, _read_keys(args.authorized_keys_file, "--authorized-keys-file"))
    except (ValueError, zmq.ZMQError) as exc:
        raise _config.UsageError(f"CURVE: {exc}") from None


def _curve_keypair(args: argparse.Namespace) -> int:
    from ringbus.transport import curve_keypair

    public, secret = curve_keypair()
    print(f"public {public.decode()}")
    print(f"secret {secret.decode()}")
    # Z85 keys may hold '#': the explanation goes to stderr, never on the key lines
    print("the public key goes to the other side (a broker's --authorized-keys-file, a client's server key); "
          "keep the secret one private (a broker's --curve-secret-key-file, a client's CurveClient)", file=sys.stderr)
    return 0


def _broker(args: argparse.Namespace) -> int:
    import logging
    import signal

    from ringbus.broker.process import READY_PREFIX
    from ringbus.broker.server import Broker

    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(name)s %(levelname)s %(message)s")
    broker = Broker(args.data, args.bind, fsync=args.fsync, heartbeat=args.heartbeat,
                    retention_seconds=args.retention_hours * 3600.0,
                    retention_bytes=int(args.retention_mb * 1024 * 1024), peer_hwm=args.peer_hwm,
                    metrics=args.metrics, metrics_port=args.metrics_port, curve=_broker_curve(args))

    def stop(signum: int, frame: object) -> None:
        broker.stop(timeout=0)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    broker.start()
    recovered = broker.recovered
    print(f"{READY_PREFIX}{broker.endpoint} (data {broker.data}, fsync {broker.fsync}; recovered "
          f"{recovered.get('messages', 0)} message(s) in {recovered.get('queues', 0)} queue(s)"
          f"{'; metrics ' + broker.metrics_url if broker.metrics_url else ''})", flush=True)
    while broker.running:
        broker.wait(0.5)
    return 0


def _stats(args: argparse.Namespace) -> int:
    from ringbus.backends.broker import BrokerBus

    with BrokerBus(args.url, timeout=args.timeout) as bus:
        stats = bus.broker_stats()
    if args.json:
        print(json.dumps(stats, indent=2, default=str))
        return 0
    print(f"broker {args.url}: data {stats['data']}, fsync {stats['fsync']}, {stats['sessions']} session(s), "
          f"log {stats['log'].get('bytes', 0):,} bytes in {stats['log'].get('segments', 0)} segment(s)")
    from ringbus.broker.stats_view import print_queues

    print_queues(stats["queues"])  # counts, then latency percentiles; rich on a terminal when installed
    topics = stats["topics"]
    print(f"topics: {topics['published']:,} published, {topics['delivered']:,} delivered, {topics['dropped']:,} "
          f"dropped (slow ephemeral subscribers), {topics['groups']} durable group(s)")
    counters = stats["counters"]
    services = ", ".join(stats["services"].get("services", {})) or "-"
    print(f"input: {counters['commands']:,} commands, {counters['malformed']:,} malformed, "
          f"{counters['unknown_command']:,} unknown; services: {services}")
    return 0


def _dashboard(args: argparse.Namespace) -> int:
    import logging

    from ringbus.dashboard import serve

    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(name)s %(levelname)s %(message)s")
    return serve(args.url, host=args.host, port=args.port, interval=args.interval, timeout=args.timeout,
                 log_level=args.log_level)


def _serve_http(args: argparse.Namespace) -> int:
    from ringbus.http import main

    return main(args.args)


def _pipe(args: argparse.Namespace) -> int:
    from ringbus.patterns.pipeline import main

    return main(args.args)


def _demo(args: argparse.Namespace) -> int:
    from ringbus.demo import main

    return main(args.args)


def build_parser() -> argparse.ArgumentParser:
    parser = _config.OneLineParser(prog="ringbus", description=ringbus.__doc__,
                                   epilog="Settings: flags > environment > config file > defaults; exit codes "
                                          "0 ok, 1 failure, 2 usage, 3 unavailable, 130 interrupted (docs/cli.md).")
    parser.add_argument("--version", action="version", version=_config.version_text())
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    bench = commands.add_parser("bench", help="measure ringbus beside its peers and print ratios")
    from ringbus.bench.report import available_suites, suites_help

    bench.formatter_class = argparse.RawDescriptionHelpFormatter
    bench.epilog = f"suites:\n{suites_help()}\n  all       every suite above"
    bench.add_argument("suite", nargs="?", default="core", choices=[*available_suites(), "all"],
                       help="which comparisons (default: core)")
    bench.add_argument("--rounds", type=_config.positive_int, default=5,
                       help="rounds per case; medians are reported (default: 5)")
    bench.add_argument("--scale", type=_config.positive_float, default=1.0,
                       help="work per round relative to the default (0.1 = a quick look)")
    bench.add_argument("--quick", action="store_true",
                       help="a smoke run: one round at 1/100 of the work (overrides --rounds and --scale)")
    bench.add_argument("--seed", type=int, default=12345, help="seed for the random priorities")
    bench.add_argument("--json", action="store_true",
                       help="print one JSON document on stdout instead of a table (progress stays on stderr)")
    bench.add_argument("--plot", metavar="PNG",
                       help="also save a chart (matplotlib) of throughput and latency percentiles per contender")
    bench.add_argument("--progress", default="auto", choices=["auto", "rich", "plain", "none"],
                       help="progress on stderr: a rich bar on a terminal when rich is installed, "
                            "else plain lines (default: auto)")
    bench.set_defaults(handler=_bench)

    from ringbus.broker.server import DEFAULT_ENDPOINT, default_data_dir

    broker = commands.add_parser("broker", help="run the embedded broker in the foreground")
    broker.add_argument("--data", default=str(default_data_dir()), help="directory of the durable log "
                        "(default: ./ringbus-data)")
    broker.add_argument("--bind", default=DEFAULT_ENDPOINT, help=f"ZeroMQ endpoint (default: {DEFAULT_ENDPOINT})")
    broker.add_argument("--fsync", default="batch", choices=["always", "batch", "never"],
                        help="when a send is confirmed: after its own fsync, after the fsync of its batch "
                             "(group commit, default), or once in the OS page cache")
    broker.add_argument("--heartbeat", type=float, default=1.0, help="seconds between client heartbeats")
    broker.add_argument("--retention-hours", type=float, default=24.0,
                        help="how long topics keep publications for replay (start='earliest'; default 24)")
    broker.add_argument("--retention-mb", type=float, default=64.0,
                        help="most megabytes of publications topics keep for replay (default 64)")
    broker.add_argument("--peer-hwm", type=int, default=100_000,
                        help="messages queued towards one client; a slower ephemeral subscriber drops (default 100000)")
    broker.add_argument("--no-metrics", dest="metrics", action="store_false",
                        help="keep no latency histograms (STATS then has no latency_ms; counters stay)")
    broker.add_argument("--metrics-port", type=int, default=None, metavar="PORT",
                        help="serve Prometheus /metrics on 127.0.0.1:PORT (0 = a free port; default: none)")
    broker.add_argument("--curve-secret-key-file", default=None, metavar="PATH",
                        help="encrypt and authenticate with CURVE: a file holding the broker's Z85 secret key "
                             "(`ringbus curve-keypair` makes one); needs --authorized-keys-file")
    broker.add_argument("--authorized-keys-file", default=None, metavar="PATH",
                        help="the Z85 public keys of the clients CURVE admits, one per line (# comments); "
                             "an empty list refuses to start")
    broker.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    broker.set_defaults(handler=_broker)

    keypair = commands.add_parser("curve-keypair", help="print a new CURVE key pair (Z85) for a broker or a client")
    keypair.set_defaults(handler=_curve_keypair)

    stats = commands.add_parser("stats", help="print a broker's queues, depths, in-flight, dead letters, rates")
    stats.add_argument("--url", default=DEFAULT_ENDPOINT, help=f"the broker (default: {DEFAULT_ENDPOINT})")
    stats.add_argument("--timeout", type=float, default=5.0, help="seconds to wait for the broker")
    stats.add_argument("--json", action="store_true", help="print JSON instead of a table")
    stats.set_defaults(handler=_stats)

    from ringbus.dashboard import DEFAULT_HOST, DEFAULT_PORT

    dashboard = commands.add_parser("dashboard", help="serve a live web page of a broker's queues: depth, "
                                    "in-flight, dead letters, consumers, rates, latency")
    dashboard.add_argument("--url", default=DEFAULT_ENDPOINT, help=f"the broker (default: {DEFAULT_ENDPOINT})")
    dashboard.add_argument("--host", default=DEFAULT_HOST, help=f"address to listen on (default: {DEFAULT_HOST}; "
                           "the page has no authentication: keep it on loopback)")
    dashboard.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"port (default: {DEFAULT_PORT}; 0 = any "
                           "free port)")
    dashboard.add_argument("--interval", type=float, default=1.0, help="seconds between snapshots (default: 1)")
    dashboard.add_argument("--timeout", type=float, default=5.0, help="seconds to wait for the broker (default: 5)")
    dashboard.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    dashboard.set_defaults(handler=_dashboard)

    # Every flag, --help included, goes through to ringbus.http.main (it has its own parser).
    serve = commands.add_parser("serve-http", help="serve asynchronous request-reply over HTTP (POST /jobs -> 202, "
                                "GET /jobs/{id}, events, webhooks)", add_help=False, prefix_chars="\0")
    serve.add_argument("args", nargs=argparse.REMAINDER)
    serve.set_defaults(handler=_serve_http)

    pipe = commands.add_parser("pipe", help="a pipes-and-filters pipeline as a Unix filter: stdin -> stages -> stdout",
                               add_help=False, prefix_chars="\0")
    pipe.add_argument("args", nargs=argparse.REMAINDER)
    pipe.set_defaults(handler=_pipe)

    demo = commands.add_parser("demo", help="run the e-commerce scenario across processes on an embedded broker "
                               "(most patterns at once) and print a summary", add_help=False, prefix_chars="\0")
    demo.add_argument("args", nargs=argparse.REMAINDER)
    demo.set_defaults(handler=_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _config.parse_args(build_parser(), argv)  # flags > environment > config file > defaults
    return _config.run(args.handler, args)  # an error is one line on stderr and a documented exit code


if __name__ == "__main__":
    sys.exit(main())
