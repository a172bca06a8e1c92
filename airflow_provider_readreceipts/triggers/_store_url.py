"""
The receipt store's URL, resolved in the triggerer's event loop without blocking it, once a minute
for all the triggers of one loop.
"""

from __future__ import annotations

import asyncio
import time
import weakref

from airflow_provider_readreceipts.waits import FAULT_CONFIGURATION, ReadReceiptWaitError

#: How long a resolved store URL is reused by the waits of one event loop.
STORE_URL_TTL = 60.0
_STORE_URLS: weakref.WeakKeyDictionary[
    asyncio.AbstractEventLoop, dict[tuple[str | None, str | None], tuple[float, asyncio.Task[str]]]
] = weakref.WeakKeyDictionary()


async def resolve_store_url(store_conn_id: str | None, store_path: str | None) -> str:
    """
    The store URL, looked up in the event loop without blocking it.

    :raises ReadReceiptWaitError: the connection is missing or unusable (bad configuration).
    """
    from airflow_provider_readreceipts.store import StoreError, astore_url_from_airflow

    try:
        return await astore_url_from_airflow(conn_id=store_conn_id, path=store_path)
    except StoreError as exc:
        raise ReadReceiptWaitError(FAULT_CONFIGURATION, str(exc)) from None


async def cached_store_url(store_conn_id: str | None, store_path: str | None) -> str:
    """
    :func:`resolve_store_url`, once per store and minute for all the waits of an event loop.

    A connection look-up costs tens of milliseconds; 10,000 triggers starting together after a
    triggerer restart would otherwise make 10,000 of them before the first wait is registered.
    """
    loop = asyncio.get_running_loop()
    cache = _STORE_URLS.get(loop)
    if cache is None:
        cache = _STORE_URLS[loop] = {}
    key = (store_conn_id, store_path)
    entry = cache.get(key)
    stale = entry is None or entry[0] < time.monotonic()
    if entry is not None and entry[1].done() and entry[1].exception() is not None:
        stale = True  # a failed look-up is not kept: the next wait asks again
    if stale:
        task = loop.create_task(resolve_store_url(store_conn_id, store_path))
        entry = cache[key] = (time.monotonic() + STORE_URL_TTL, task)
    assert entry is not None
    # Shielded: a cancelled wait must not cancel the look-up the others are waiting for.
    return await asyncio.shield(entry[1])
