"""
``python -m airflow_provider_readreceipts.testing.sandbox``: run the vendor sandbox until interrupted.

    python -m airflow_provider_readreceipts.testing.sandbox --port 8090 \\
        --receiver-url http://127.0.0.1:8085/webhooks

Prints one line ``sandbox listening on http://127.0.0.1:<port>`` once it serves (useful with
``--port 0``), then a line per webhook delivered. Stops on Ctrl-C, SIGTERM or ``--max-runtime``.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from collections.abc import Sequence

from airflow_provider_readreceipts.testing.sandbox.fates import Timing

_DESCRIPTION = """\
Run the local vendor sandbox: Sendblue, Chert, RyzeAPI and Direct7 (and a fake voice-call API) on
one loopback port, delivering each vendor's webhooks to the read-receipts receiver.

Fates, by the recipient number's last digit: 0-4 read, 5-7 delivered but never read, 8-9 failed.
"""


#: The command that starts the sandbox (started by its old path, it names that one).
PROG = "python -m airflow_provider_readreceipts.testing.sandbox"


def build_parser(prog: str = PROG) -> argparse.ArgumentParser:
    """The sandbox's command line, named ``prog`` in its help."""
    parser = argparse.ArgumentParser(
        prog=prog,
        description=_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--port", type=int, default=8090, help="loopback port (0: any free one)")
    parser.add_argument(
        "--receiver-url",
        default="http://127.0.0.1:8085/webhooks",
        help="the receiver's webhook base URL; webhooks go to <it>/<conn_id> (default: %(default)s)",
    )
    timing = Timing()
    parser.add_argument(
        "--deliver-delay", type=float, default=timing.deliver_delay, help="seconds to DELIVERED"
    )
    parser.add_argument("--read-delay", type=float, default=timing.read_delay, help="base seconds to READ")
    parser.add_argument("--fail-delay", type=float, default=timing.fail_delay, help="seconds to FAILED")
    parser.add_argument("--max-attempts", type=int, default=8, help="attempts per webhook before giving up")
    parser.add_argument(
        "--duplicate-every", type=int, default=3, help="deliver every n-th webhook twice (0: never)"
    )
    parser.add_argument(
        "--max-runtime", type=float, default=3600.0, help="stop after this many seconds (default: one hour)"
    )
    parser.add_argument("--quiet", action="store_true", help="do not print a line per webhook")
    return parser


def main(argv: Sequence[str] | None = None, *, prog: str = PROG) -> int:
    """
    Serve until interrupted.

    :param argv: the arguments, without the program name; default ``sys.argv[1:]``.
    :param prog: the program's name in help and usage messages.
    """
    args = build_parser(prog).parse_args(argv)
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO, format="sandbox: %(message)s")
    from airflow_provider_readreceipts.testing.sandbox.server import Sandbox

    timing = Timing(deliver_delay=args.deliver_delay, read_delay=args.read_delay, fail_delay=args.fail_delay)
    try:
        box = Sandbox(
            receiver_url=args.receiver_url,
            port=args.port,
            timing=timing,
            max_attempts=args.max_attempts,
            duplicate_every=args.duplicate_every,
        )
    except (ValueError, OSError) as exc:
        print(f"sandbox: error: {exc}", file=sys.stderr)
        return 2
    stop = threading.Event()
    # SIGTERM (a service manager, the demo's cleanup) stops as cleanly as Ctrl-C.
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    with box:
        print(f"sandbox listening on {box.url}", flush=True)
        try:
            stop.wait(args.max_runtime)
        except KeyboardInterrupt:
            pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
