"""
``readreceipts-webhooks``: the webhook receiver on its own uvicorn server, for deployments where the
Airflow API server must not face the internet.

    readreceipts-webhooks --host 0.0.0.0 --port 8085 --workers 2
    python -m airflow_provider_readreceipts.webhooks.standalone --help

Outside the Airflow API server, Airflow resolves connections only from environment variables
(``AIRFLOW_CONN_<CONN_ID>``) and the configured secrets backend, never from the metadata database:
a connection created in the Airflow UI is invisible here.
"""

from __future__ import annotations

import argparse
import copy
import gc
import logging
import os
import sys
from collections.abc import Sequence
from typing import Any

from airflow_provider_readreceipts.webhooks import (
    ACCESS_LOGGERS,
    RedactSecretsFilter,
    install_access_log_redaction,
)

# The worker processes of a multi-worker server build their app from these (uvicorn's app factory
# takes no arguments); the parent process sets them from the command line.
STORE_URL_ENV = "READRECEIPTS_WEBHOOKS_STORE_URL"
MAX_BODY_BYTES_ENV = "READRECEIPTS_WEBHOOKS_MAX_BODY_BYTES"
WRITER_ENV = "READRECEIPTS_WEBHOOKS_WRITER"
ACCESS_LOG_LEVEL_ENV = "READRECEIPTS_WEBHOOKS_ACCESS_LOG_LEVEL"
APP_FACTORY = "airflow_provider_readreceipts.webhooks.standalone:create_standalone_app"
_ACCESS_FORMAT = '%(levelprefix)s %(client_addr)s - "%(request_line)s" %(status_code)s'

_DESCRIPTION = """\
Run the read-receipts webhook receiver: POST /webhooks/<conn_id> and GET /healthz.

Connections: this server is not the Airflow API server, so Airflow looks connections up only in
environment variables (AIRFLOW_CONN_<CONN_ID>, e.g. AIRFLOW_CONN_SENDBLUE_DEFAULT='{"conn_type":
"sendblue", ...}') and in the secrets backend configured under [secrets] backend. Connections
stored in the Airflow metadata database (created in the UI or with `airflow connections add`)
are NOT visible here; a webhook for one gets 404 naming the connection.

Store: --store-url, else the Airflow connection readreceipts_store_default (PostgreSQL), else the
SQLite file under AIRFLOW_HOME. The schema is migrated at startup.
"""


def build_parser() -> argparse.ArgumentParser:
    """The command line of ``readreceipts-webhooks``."""
    parser = argparse.ArgumentParser(
        prog="readreceipts-webhooks",
        description=_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default: %(default)s)")
    parser.add_argument("--port", type=int, default=8085, help="port to listen on (default: %(default)s)")
    parser.add_argument(
        "--workers", type=int, default=1, help="worker processes, each with its own writer (default: 1)"
    )
    parser.add_argument(
        "--store-url",
        default=None,
        help="SQLAlchemy URL of the receipt store, e.g. sqlite:////var/lib/readreceipts.db or "
        "postgresql+psycopg://user@host/db (default: the readreceipts_store_default connection, "
        "else the SQLite file under AIRFLOW_HOME); a password here shows in the process list, so "
        "keep passwords in that connection instead",
    )
    parser.add_argument(
        "--max-body-bytes",
        type=int,
        default=1_048_576,
        help="larger webhook bodies get 413 (default: %(default)s)",
    )
    parser.add_argument(
        "--writer",
        choices=("process", "thread"),
        default="process",
        help="commit webhooks in a child process of each worker (default), or in a thread of the "
        "worker, which then shares the event loop's GIL (about half the throughput, one process less)",
    )
    parser.add_argument("--log-level", default="info", help="uvicorn log level (default: %(default)s)")
    parser.add_argument("--no-access-log", action="store_true", help="do not print one line per request")
    return parser


def create_standalone_app() -> Any:
    """
    The app of one worker process, configured from the environment the parent process set.

    Used as uvicorn's app factory; also usable by any ASGI server (``--factory``).
    """
    # Importing the app imports Airflow, whose logging setup silences uvicorn's access log (the API
    # server logs requests through its own middleware instead): put ours back, redacted.
    from airflow_provider_readreceipts.webhooks.app import create_app

    configure_access_log(os.environ.get(ACCESS_LOG_LEVEL_ENV, "INFO"))
    store_url = os.environ.get(STORE_URL_ENV) or None
    max_body_bytes = int(os.environ.get(MAX_BODY_BYTES_ENV) or 1_048_576)

    def open_store() -> Any:
        from airflow_provider_readreceipts.store import ReceiptStore

        return ReceiptStore(store_url) if store_url else ReceiptStore.from_airflow()

    app = create_app(
        store_factory=open_store,
        max_body_bytes=max_body_bytes,
        standalone=True,
        writer_process=os.environ.get(WRITER_ENV, "process") == "process",
    )
    tune_garbage_collector()
    return app


def tune_garbage_collector() -> None:
    """
    Make Python's cyclic garbage collector cheap for a long-running server process.

    With Airflow imported the heap holds some 200,000 long-lived objects, and every full
    collection walks them all (about a quarter of a second here), while a webhook's own objects die
    by reference counting. So: import what requests will need, freeze everything alive now (the
    collector never scans it again), and collect young objects less often. Measured on one worker,
    this cut the CPU per webhook by about a third. Only here: inside the Airflow API server (the
    plugin) the process is not the receiver's to tune.
    """
    from airflow_provider_readreceipts.store import ReceiptStore  # noqa: F401
    from airflow_provider_readreceipts.vendors import SPECS, hook_class_for

    for conn_type in SPECS:
        hook_class_for(conn_type)
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 20, 100)


def log_config() -> dict[str, Any]:
    """
    uvicorn's logging configuration with secret query parameters redacted on every handler.

    A dictionary (not a filter added at runtime) because each worker process applies it afresh.
    """
    from uvicorn.config import LOGGING_CONFIG

    config: dict[str, Any] = copy.deepcopy(LOGGING_CONFIG)
    redaction = f"{RedactSecretsFilter.__module__}.{RedactSecretsFilter.__qualname__}"
    config["filters"] = {"redact_secrets": {"()": redaction}}
    for handler in config["handlers"].values():
        handler.setdefault("filters", []).append("redact_secrets")
    return config


def configure_access_log(level: str | None) -> None:
    """
    One redacted line per request on stdout, in uvicorn's format; ``None`` turns the access log off.

    :param level: the access logger's level name (``"INFO"`` prints every request).
    """
    from uvicorn.logging import AccessFormatter

    logger = logging.getLogger("uvicorn.access")
    logger.handlers = []
    logger.propagate = False
    if level is None or level.upper() == "OFF":
        logger.disabled = True
        return
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(AccessFormatter(_ACCESS_FORMAT, use_colors=False))
    handler.addFilter(RedactSecretsFilter())
    logger.addHandler(handler)
    logger.setLevel(level.upper())
    logger.disabled = False


def main(argv: Sequence[str] | None = None) -> int:
    """
    Parse the command line and serve until interrupted.

    :param argv: the arguments, without the program name; default ``sys.argv[1:]``.
    """
    args = build_parser().parse_args(argv)
    if args.workers < 1:
        build_parser().error("--workers must be at least 1")
    import uvicorn

    if args.store_url:
        os.environ[STORE_URL_ENV] = args.store_url
    os.environ[MAX_BODY_BYTES_ENV] = str(args.max_body_bytes)
    os.environ[WRITER_ENV] = args.writer
    os.environ[ACCESS_LOG_LEVEL_ENV] = "OFF" if args.no_access_log else args.log_level.upper()
    install_access_log_redaction(ACCESS_LOGGERS)
    uvicorn.run(
        APP_FACTORY,
        factory=True,
        host=args.host,
        port=args.port,
        workers=args.workers,
        log_config=log_config(),
        log_level=args.log_level,
        access_log=not args.no_access_log,
        # Give the batch writer time to commit what it holds before the process exits.
        timeout_graceful_shutdown=15,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
