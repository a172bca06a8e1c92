"""
The receiver's writer process: group commit in a child process, acknowledged only after commit,
and no hang or loss when either side dies. Runs on a SQLite file and the real PostgreSQL.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from collections.abc import Callable

import pytest
import sqlalchemy as sa

from airflow_provider_readreceipts.hooks.store import ReceiptStore, events_table
from airflow_provider_readreceipts.receipts import InvalidInputError, Status
from airflow_provider_readreceipts.webhooks.writer_process import WriterProcess, WriterProcessError
from tests.support import SENDBLUE_CONN_ID, sendblue_payload

# ``store`` (the store fixtures' migrated store) is requested for its migration: the writer process
# opens only a store whose schema is in place, as the receiver leaves it.


def _count_rows(store_url: str, message_prefix: str) -> int:
    """Events stored under a message id prefix, counted through a connection of the test's own."""
    with ReceiptStore(store_url) as reader, reader.engine.connect() as conn:
        query = sa.select(sa.func.count()).where(events_table.c.message_id.like(f"{message_prefix}%"))
        return int(conn.execute(query).scalar() or 0)


#: How long a test waits for a process to notice another's death: instant here, generous for a loaded machine.
NOTICE_TIMEOUT = 60.0


async def eventually(condition: Callable[[], bool], what: str, *, timeout: float = NOTICE_TIMEOUT) -> None:
    """Wait for ``condition`` while the event loop runs; fail naming ``what`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:.0f}s waiting for {what}")
        await asyncio.sleep(0.02)


async def _started(store_url: str) -> WriterProcess:
    process = WriterProcess(store_url)
    await process.start()
    return process


async def test_each_hand_off_resolves_after_its_commit_with_new_and_duplicate_flags(
    store, store_url, make_event
):
    writer = await _started(store_url)
    try:
        first = [make_event(message_id=f"wp-ack-{index}") for index in range(20)]
        flags = await writer.submit(first, source="webhook")
        # Visible from another connection the moment the hand-off resolves: it was committed.
        visible = _count_rows(store_url, "wp-ack-")
        again = await writer.submit([first[0], make_event(message_id="wp-ack-new")], source="webhook")
    finally:
        await writer.stop()

    assert flags == [True] * 20
    assert visible == 20
    assert again == [False, True]
    assert store.message_status(first[0].conn_id, "wp-ack-3").status is Status.SENT


async def test_hand_offs_that_arrive_together_share_commits_and_each_gets_its_own_flags(
    store, store_url, make_event
):
    writer = await _started(store_url)
    try:
        batches = [[make_event(message_id=f"wp-many-{i}-{j}") for j in range(3)] for i in range(200)]
        results = await asyncio.gather(*(writer.submit(batch, source="webhook") for batch in batches))
        replayed = await asyncio.gather(*(writer.submit(batch, source="webhook") for batch in batches[:5]))
    finally:
        await writer.stop()

    assert results == [[True, True, True]] * 200
    assert replayed == [[False, False, False]] * 5
    assert _count_rows(store_url, "wp-many-") == 600


async def test_an_event_no_database_can_hold_is_refused_in_the_parent_and_nothing_else_suffers(
    store, store_url, make_event
):
    writer = await _started(store_url)
    try:
        with pytest.raises(InvalidInputError, match="NUL"):
            await writer.submit([make_event(message_id="wp-bad-\x00")], source="webhook")
        after = await writer.submit([make_event(message_id="wp-bad-then-good")], source="webhook")
    finally:
        await writer.stop()

    assert after == [True]
    assert writer.pid is not None


async def test_a_killed_writer_fails_its_waiters_instead_of_hanging(store, store_url, make_event):
    writer = await _started(store_url)
    assert writer.pid is not None
    os.kill(writer.pid, signal.SIGKILL)
    # The parent learns of the death from the socket closing, at once, not from a timeout.
    await eventually(lambda: not writer.running, "the parent to see its writer die")

    with pytest.raises(WriterProcessError, match="exited"):
        await writer.submit([make_event(message_id="wp-after-kill")], source="webhook")
    await writer.stop()
    assert not writer.running
    assert _count_rows(store_url, "wp-after-kill") == 0


async def test_stop_commits_what_was_handed_over_before_it(store, store_url, make_event):
    writer = await _started(store_url)
    waiting = [
        asyncio.ensure_future(writer.submit([make_event(message_id=f"wp-stop-{index}")], source="webhook"))
        for index in range(50)
    ]
    await asyncio.sleep(0)  # every hand-off is written to the socket before the stop frame
    await writer.stop()

    assert [task.result() for task in waiting] == [[True]] * 50
    assert _count_rows(store_url, "wp-stop-") == 50


async def test_the_child_exits_when_its_parent_goes_away(store, store_url, make_event):
    writer = await _started(store_url)
    pid = writer.pid
    assert pid is not None
    await writer.submit([make_event(message_id="wp-orphan")], source="webhook")
    # What the kernel does when the parent is killed: its end of the socket closes.
    assert writer._writer is not None
    writer._writer.transport.abort()

    await eventually(
        lambda: writer._process is not None and writer._process.returncode is not None,
        "the orphaned writer to exit",
    )
    assert writer._process is not None and writer._process.returncode == 0
    await writer.stop()


async def test_a_store_that_was_never_migrated_is_refused_at_start_with_the_reason(tmp_path):
    writer = WriterProcess(f"sqlite:///{tmp_path / 'never-migrated.db'}")
    with pytest.raises(WriterProcessError, match="could not open the store: StoreSchemaError"):
        await writer.start()
    assert not writer.running


def test_the_receiver_answers_503_while_its_writer_is_dead_then_starts_a_new_one(
    start_receiver, store, sendblue_connection
):
    server = start_receiver(store=store, heartbeat_seconds=3600, writer_process=True)
    assert server.post_sendblue(sendblue_payload("wp-recv-1")).status_code == 200
    receiver = server.app.state.receiver
    first_pid = receiver.writer.pid
    os.kill(first_pid, signal.SIGKILL)
    deadline = time.monotonic() + NOTICE_TIMEOUT
    while receiver.writer.running and time.monotonic() < deadline:
        time.sleep(0.02)

    answer = server.post_sendblue(sendblue_payload("wp-recv-2"))

    # Either the dead writer was noticed before the request (a new one took it: 200) or the request
    # raced the death (503: not acknowledged, the vendor retries). Never a 500, never a lost ack.
    assert answer.status_code in (200, 503), answer.text
    retried = server.post_sendblue(sendblue_payload("wp-recv-2"))
    assert retried.status_code == 200
    assert receiver.writer.pid != first_pid
    assert len(store.events(SENDBLUE_CONN_ID, "wp-recv-2")) == 1


async def test_a_payload_too_deep_to_pickle_is_stored_as_its_json_text(store, store_url, make_event):
    """pickle gives up at a few hundred levels; JSON (what the vendor sent) goes near a thousand."""
    deep: dict[str, object] = {"leaf": 1}
    for _ in range(700):
        deep = {"a": deep}
    writer = await _started(store_url)
    try:
        flags = await writer.submit([make_event(message_id="wp-deep", payload=deep)], source="webhook")
    finally:
        await writer.stop()

    assert flags == [True]
    (stored,) = store.events("sendblue_default", "wp-deep")
    assert json.dumps(stored.payload).count('{"a":') == 700


async def test_a_sigterm_to_the_process_group_does_not_cut_the_writer_short(store, store_url, make_event):
    """A service manager signals every process of the service; the parent decides when the child stops."""
    writer = await _started(store_url)
    assert writer.pid is not None
    try:
        os.kill(writer.pid, signal.SIGTERM)
        await asyncio.sleep(0.2)
        flags = await writer.submit([make_event(message_id="wp-after-sigterm")], source="webhook")
        assert writer.running
    finally:
        await writer.stop()

    assert flags == [True]
    assert writer._process is not None and writer._process.returncode == 0
