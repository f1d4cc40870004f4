"""The ``ringbus`` command."""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict
from typing import Sequence

import ringbus


def _bench(args: argparse.Namespace) -> int:
    from ringbus.bench import core, ipc
    from ringbus.bench._harness import format_table, run_case

    suites = {"core": core.cases, "ipc": ipc.cases}

    names = list(suites) if args.suite == "all" else [args.suite]
    rows = []
    for name in names:
        for case in suites[name](scale=args.scale, seed=args.seed):
            if not args.json:
                print(f"running {case.name} ...", file=sys.stderr, flush=True)
            rows.extend(run_case(case, args.rounds))
    notes = ipc.missing_peers() if args.suite in ("ipc", "all") else []
    if args.json:
        print(json.dumps({"implementation": ringbus.IMPLEMENTATION, "rows": [asdict(r) for r in rows], "notes": notes}, indent=2))
    else:
        print(f"ringbus {ringbus.__version__} ({ringbus.IMPLEMENTATION} core); medians of {args.rounds} rounds; "
              "speed-up = peer time / ringbus time, measured side by side in this run")
        print(format_table(rows))
        for note in notes:
            print(f"note: {note}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ringbus", description=ringbus.__doc__)
    parser.add_argument("--version", action="version", version=f"ringbus {ringbus.__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    bench = commands.add_parser("bench", help="measure ringbus beside its peers and print ratios")
    bench.add_argument("suite", nargs="?", default="core", choices=["core", "ipc", "all"], help="which comparisons (default: core)")
    bench.add_argument("--rounds", type=int, default=5, help="rounds per case; medians are reported (default: 5)")
    bench.add_argument("--scale", type=float, default=1.0, help="work per round relative to the default (0.1 = a quick look)")
    bench.add_argument("--seed", type=int, default=12345, help="seed for the random priorities")
    bench.add_argument("--json", action="store_true", help="print JSON instead of a table")
    bench.set_defaults(handler=_bench)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if getattr(args, "rounds", 1) < 1 or getattr(args, "scale", 1.0) <= 0:
        print("ringbus: --rounds must be >= 1 and --scale > 0", file=sys.stderr)
        return 2
    try:
        return int(args.handler(args))
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # `ringbus bench | head`: the reader left, nothing is wrong
        sys.stderr.close()
        return 0


if __name__ == "__main__":
    sys.exit(main())
