"""
Where the receipt store is: a URL from Airflow's configuration (a connection, or a SQLite file).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy.engine import URL, make_url

from airflow_provider_readreceipts.store.records import StoreError

if TYPE_CHECKING:
    from airflow.sdk import Connection as AirflowConnection

#: The Airflow connection that, when it exists, points the store at PostgreSQL.
DEFAULT_STORE_CONN_ID = "readreceipts_store_default"
#: Environment variable naming the SQLite file when no store connection exists.
STORE_PATH_ENV = "READRECEIPTS_STORE_PATH"
#: The SQLite file's name under ``AIRFLOW_HOME`` when nothing else says where the store is.
DEFAULT_SQLITE_FILENAME = "readreceipts.db"


_LIBPQ_EXTRAS = frozenset(
    {
        "sslmode",
        "sslcert",
        "sslkey",
        "sslrootcert",
        "sslcrl",
        "sslpassword",
        "application_name",
        "connect_timeout",
        "options",
        "target_session_attrs",
        "keepalives",
        "keepalives_idle",
        "keepalives_interval",
        "keepalives_count",
    }
)


def normalise_url(url: str | URL, *, asynchronous: bool) -> URL:
    """The URL with the driver this package uses for its dialect; ``StoreError`` for other databases."""
    parsed = make_url(url)
    backend = parsed.get_backend_name()
    if backend == "sqlite":
        return parsed.set(drivername="sqlite+aiosqlite" if asynchronous else "sqlite")
    if backend == "postgresql":
        return parsed.set(drivername="postgresql+asyncpg" if asynchronous else "postgresql+psycopg")
    raise StoreError(
        f"unsupported receipt store URL {parsed.render_as_string(hide_password=True)!r}: use"
        " sqlite:///<path> or postgresql+psycopg://<user>@<host>/<database>"
    )


def display_url(url: URL) -> str:
    return url.render_as_string(hide_password=True)


def default_sqlite_path(*, path: str | os.PathLike[str] | None = None) -> Path:
    """
    The SQLite file used when no store connection exists.

    :param path: an explicit file; else ``READRECEIPTS_STORE_PATH``; else ``$AIRFLOW_HOME/readreceipts.db``
        (``~/airflow`` when ``AIRFLOW_HOME`` is unset, as in Airflow itself).
    """
    if path is not None:
        return Path(path).expanduser()
    from_env = os.environ.get(STORE_PATH_ENV)
    if from_env:
        return Path(from_env).expanduser()
    airflow_home = os.environ.get("AIRFLOW_HOME") or "~/airflow"
    return Path(airflow_home).expanduser() / DEFAULT_SQLITE_FILENAME


def url_from_connection(connection: AirflowConnection) -> str:
    """
    The store URL an Airflow connection describes: ``postgres`` (the database in its schema field,
    libpq options such as ``sslmode`` in its extras) or ``sqlite`` (the file in its host field).

    :param connection: the Airflow connection.
    """
    conn_type = (connection.conn_type or "").lower()
    if conn_type in ("postgres", "postgresql"):
        extras = connection.extra_dejson or {}
        query = {key: str(value) for key, value in extras.items() if key in _LIBPQ_EXTRAS}
        url = URL.create(
            "postgresql+psycopg",
            username=connection.login or None,
            password=connection.password or None,
            host=connection.host or None,
            port=connection.port or None,
            database=connection.schema or None,
            query=query,
        )
        return url.render_as_string(hide_password=False)
    if conn_type == "sqlite":
        if not connection.host:
            raise StoreError(
                f"connection {connection.conn_id!r}: put the SQLite file's path in the host field"
            )
        return URL.create("sqlite", database=connection.host).render_as_string(hide_password=False)
    raise StoreError(
        f"connection {connection.conn_id!r} has type {connection.conn_type!r}; the receipt store"
        " needs a 'postgres' (or 'sqlite') connection"
    )


def _sqlite_url(path: Path) -> str:
    return URL.create("sqlite", database=str(path)).render_as_string(hide_password=False)


def store_url_from_airflow(*, conn_id: str | None = None, path: str | os.PathLike[str] | None = None) -> str:
    """
    The store URL Airflow's configuration gives, with the password in it (do not log it).

    PostgreSQL (or whatever it describes) when the connection exists: ``conn_id``, or
    ``readreceipts_store_default`` when ``conn_id`` is ``None``. An explicit ``conn_id`` that does not
    exist is an error, never a silent fall-back to a local file that no receiver writes to. Without
    a connection, a SQLite file: see :func:`default_sqlite_path`.

    Outside tasks and the API server, Airflow resolves connections only from environment variables
    (``AIRFLOW_CONN_<ID>``) and secrets backends.

    :param conn_id: the store connection's id.
    :param path: the SQLite file to use when there is no store connection.
    """
    from airflow.sdk import BaseHook
    from airflow.sdk.exceptions import AirflowNotFoundException

    try:
        connection = BaseHook.get_connection(conn_id or DEFAULT_STORE_CONN_ID)
    except AirflowNotFoundException:
        if conn_id is not None:
            raise StoreError(
                f"the receipt store connection {conn_id!r} is not defined (outside tasks and the API"
                f" server, define it as the environment variable AIRFLOW_CONN_{conn_id.upper()} or in"
                " a secrets backend)"
            ) from None
        return _sqlite_url(default_sqlite_path(path=path))
    return url_from_connection(connection)


async def astore_url_from_airflow(
    *, conn_id: str | None = None, path: str | os.PathLike[str] | None = None
) -> str:
    """:func:`store_url_from_airflow` for the event loop (connection look-up without blocking)."""
    from airflow.sdk import BaseHook
    from airflow.sdk.exceptions import AirflowNotFoundException

    try:
        connection = await BaseHook.aget_connection(conn_id or DEFAULT_STORE_CONN_ID)
    except AirflowNotFoundException:
        if conn_id is not None:
            raise StoreError(f"the receipt store connection {conn_id!r} is not defined") from None
        return _sqlite_url(default_sqlite_path(path=path))
    return url_from_connection(connection)
