"""
``readreceipts``: the receipt store's command line.

    readreceipts db migrate [--store-url URL | --store-conn-id ID | --store-path FILE]
    readreceipts db purge --older-than 30d
    readreceipts db status

Without a store option, the store is the one Airflow's configuration names (the
``readreceipts_store_default`` connection, else the SQLite file from ``READRECEIPTS_STORE_PATH`` or
``$AIRFLOW_HOME/readreceipts.db``). ``READRECEIPTS_STORE_URL`` may hold the URL instead of
``--store-url``, which keeps a password out of the process list. Outside tasks and the API server,
Airflow finds connections only in environment variables (``AIRFLOW_CONN_<ID>``) and secrets backends.

Exit status: 0 on success; 1 when the store cannot be used (``db status``: also when its schema is
missing or outdated); 2 for a usage error.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from collections.abc import Sequence
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from airflow_provider_readreceipts.store import ReceiptStore

STORE_URL_ENV = "READRECEIPTS_STORE_URL"

_DURATION = re.compile(
    r"^(?:(?P<w>\d+)w)?(?:(?P<d>\d+)d)?(?:(?P<h>\d+)h)?(?:(?P<m>\d+)m)?(?:(?P<s>\d+)s)?$", re.IGNORECASE
)
_UNITS = {"w": "weeks", "d": "days", "h": "hours", "m": "minutes", "s": "seconds"}


def parse_duration(text: str) -> timedelta:
    """
    A positive duration written like ``30d``, ``12h``, ``90m``, ``3600s``, ``2w`` or ``1d12h``.

    :param text: the duration.
    :raises argparse.ArgumentTypeError: anything else (argparse turns it into a usage error).
    """
    match = _DURATION.match(text.strip())
    if not text.strip() or match is None:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a duration; write a number and a unit: 30d, 12h, 90m, 3600s, 2w, 1d12h"
        )
    duration = timedelta(**{_UNITS[unit]: int(value) for unit, value in match.groupdict().items() if value})
    if duration <= timedelta(0):
        raise argparse.ArgumentTypeError(f"{text!r}: the duration must be longer than zero")
    return duration


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="readreceipts", description="Read-receipts provider tools.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    db = commands.add_parser("db", help="manage the receipt store", description="Manage the receipt store.")
    db_commands = db.add_subparsers(dest="db_command", required=True, metavar="DB_COMMAND")

    store_options = argparse.ArgumentParser(add_help=False)
    where = store_options.add_mutually_exclusive_group()
    where.add_argument(
        "--store-url",
        help=f"SQLAlchemy URL of the store (default: ${STORE_URL_ENV}, else Airflow's configuration)",
    )
    where.add_argument("--store-conn-id", help="Airflow connection of the store (postgres or sqlite type)")
    where.add_argument("--store-path", help="SQLite file, used when no store connection exists")

    db_commands.add_parser(
        "migrate",
        parents=[store_options],
        help="create or upgrade the schema (safe to run from several processes at once)",
    )
    purge = db_commands.add_parser("purge", parents=[store_options], help="delete old events")
    purge.add_argument(
        "--older-than",
        required=True,
        type=parse_duration,
        metavar="AGE",
        help="delete events received longer ago than this, e.g. 30d, 12h, 2w",
    )
    db_commands.add_parser(
        "status", parents=[store_options], help="show the store, its schema version and last heartbeat"
    )
    return parser


def _open_store(arguments: argparse.Namespace) -> ReceiptStore:
    from airflow_provider_readreceipts.store import ReceiptStore

    if arguments.store_url:
        return ReceiptStore(arguments.store_url)
    if arguments.store_conn_id is None and arguments.store_path is None and os.environ.get(STORE_URL_ENV):
        return ReceiptStore(os.environ[STORE_URL_ENV])
    return ReceiptStore.from_airflow(conn_id=arguments.store_conn_id, path=arguments.store_path)


def _describe_heartbeat(last: datetime | None) -> str:
    if last is None:
        return "never (no receiver has written to this store)"
    age = datetime.now(timezone.utc) - last
    return f"{last.isoformat(timespec='seconds')} ({int(age.total_seconds())} s ago)"


def _status(store: ReceiptStore) -> int:
    from airflow_provider_readreceipts.store import SCHEMA_VERSION

    version = store.schema_version()
    print(f"store: {store.url_for_display}")
    if version is None:
        print(f"schema version: none (run `readreceipts db migrate`; this package uses {SCHEMA_VERSION})")
        return 1
    print(f"schema version: {version} (this package uses {SCHEMA_VERSION})")
    print(f"last heartbeat: {_describe_heartbeat(store.last_heartbeat())}")
    return 0 if version == SCHEMA_VERSION else 1


def main(argv: Sequence[str] | None = None) -> int:
    """
    Run the ``readreceipts`` command.

    :param argv: the arguments after the program name; ``sys.argv[1:]`` when ``None``.
    :return: the exit status.
    """
    arguments = _parser().parse_args(argv)
    from sqlalchemy.exc import SQLAlchemyError

    from airflow_provider_readreceipts.receipts import ReadReceiptsError

    try:
        store = _open_store(arguments)
        try:
            if arguments.db_command == "migrate":
                version = store.migrate()
                print(f"{store.url_for_display}: schema version {version}")
                return 0
            if arguments.db_command == "purge":
                deleted = store.purge(older_than=arguments.older_than)
                print(f"{store.url_for_display}: deleted {deleted} events older than {arguments.older_than}")
                return 0
            return _status(store)
        finally:
            store.close()
    except (ReadReceiptsError, SQLAlchemyError, OSError) as error:
        print(f"readreceipts: error: {error}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
