"""Child processes of the scheduling-agent-supervisor tests (killed with SIGKILL by the test).

    python workflow_peers.py engine URL STORE [--name N]   # scheduler + supervisor of the order workflow
    python workflow_peers.py agent URL LOG [--hang] [--pause S]

Each prints "ready" once attached to its queues, then runs until killed (or SIGTERM).
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from workflow_orders import CallLog, order_actions, order_workflow  # noqa: E402

from ringbus.patterns.scheduler_agent_supervisor import Agent, WorkflowEngine  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("role", choices=["engine", "agent"])
    parser.add_argument("url")
    parser.add_argument("path", help="engine: the state store; agent: the call log")
    parser.add_argument("--hang", action="store_true")
    parser.add_argument("--pause", type=float, default=0.0)
    parser.add_argument("--check-interval", type=float, default=0.2)
    parser.add_argument("--name", default="orders")
    parser.add_argument("--schedulers", type=int, default=2)
    args = parser.parse_args()
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    if args.role == "engine":
        runner: WorkflowEngine | Agent = WorkflowEngine(args.url, order_workflow(), name=args.name, store=args.path,
                                                         check_interval=args.check_interval, schedulers=args.schedulers)
    else:
        runner = Agent(args.url, order_actions(CallLog(args.path), hang=args.hang, pause=(0.0, args.pause)),
                       name=args.name)
    runner.start()
    print("ready", flush=True)
    done.wait()
    runner.stop()


if __name__ == "__main__":
    main()
