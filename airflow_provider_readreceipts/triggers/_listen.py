"""
``LISTEN`` on a PostgreSQL receipt store: every commit that stores something new sends a ``NOTIFY``
naming its highest event id, so a waiter can look at once instead of at its next interval.

Used by the read waits' poller and by the campaign wait. The connection goes through the store's
own connect path (:func:`~airflow_provider_readreceipts.store.engines.connect_asyncpg`), so its
TLS settings are those of every other connection to the store.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Callable
from typing import Any

from sqlalchemy.engine import URL

log = logging.getLogger(__name__)

#: Wait before trying to listen again after a failure or a lost connection.
LISTEN_RETRY = 30.0
#: Seconds the LISTEN connection may take to open before the waiter polls without it.
LISTEN_CONNECT_TIMEOUT = 10.0


class StoreListener:
    """
    One ``LISTEN`` connection, opened on demand and replaced when lost.

    :param url: the store URL (PostgreSQL).
    :param on_notify: called (in the event loop) after each ``NOTIFY``.
    :param on_lost: called when the connection was lost: notifications may have been missed.
    """

    def __init__(self, url: URL, *, on_notify: Callable[[], None], on_lost: Callable[[], None]) -> None:
        self.url = url
        self._on_notify_callback = on_notify
        self._on_lost_callback = on_lost
        self._connection: Any = None
        self._next_try = 0.0
        #: NOTIFYs received.
        self.notifications = 0
        #: The highest event id a NOTIFY named.
        self.notified_id = 0

    @property
    def connected(self) -> bool:
        return self._connection is not None

    async def ensure(self) -> None:
        """Open the connection if it is not open and the last failure is long enough ago."""
        if self._connection is not None or time.monotonic() < self._next_try:
            return
        self._next_try = time.monotonic() + LISTEN_RETRY
        try:
            from airflow_provider_readreceipts.store import NOTIFY_CHANNEL
            from airflow_provider_readreceipts.store.engines import connect_asyncpg

            connection = await connect_asyncpg(self.url, timeout=LISTEN_CONNECT_TIMEOUT)
            await connection.add_listener(NOTIFY_CHANNEL, self._notified)
            connection.add_termination_listener(self._lost)
            self._connection = connection
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.warning("cannot LISTEN on the receipt store (polling only): %s", exc)

    def _notified(self, connection: Any, pid: int, channel: str, payload: str) -> None:
        self.notifications += 1
        try:
            last_id = int(json.loads(payload)["last_id"])
        except (ValueError, KeyError, TypeError):
            last_id = self.notified_id + 1  # unknown payload: assume something new
        self.notified_id = max(self.notified_id, last_id)
        self._on_notify_callback()

    def _lost(self, connection: Any) -> None:
        log.warning("the receipt store's LISTEN connection was lost; polling until it is back")
        self._connection = None
        self._next_try = time.monotonic() + 1.0
        self._on_lost_callback()

    async def close(self) -> None:
        connection, self._connection = self._connection, None
        if connection is not None:
            with contextlib.suppress(Exception):
                connection.remove_termination_listener(self._lost)
                await connection.close(timeout=5)
