"""
Group commit: many submissions share one transaction, each answered only after its commit.

Two writers serve the receiver, behind one protocol (:class:`Writer`): :class:`BatchWriter`, a
thread of the receiver's own process (inside the Airflow API server), and the standalone
receiver's writer process
(:class:`~airflow_provider_readreceipts.webhooks.writer_process.WriterProcess`). Both apply the
same rule, :func:`commit_groups`: a submission is made of *groups* (the events of one webhook),
the groups pending at once are committed in one transaction, and if that transaction fails, each
group is committed alone, so that one unstorable webhook fails alone.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol, TypeAlias

from airflow_provider_readreceipts.receipts import InvalidInputError, ReceiptEvent
from airflow_provider_readreceipts.store.sync import ReceiptStore
from airflow_provider_readreceipts.store.validation import check_source, validate_events
from airflow_provider_readreceipts.store.writes import SOURCE_WEBHOOK

log = logging.getLogger(__name__)

#: One group's answer: a flag per event (``True``: newly stored), or why the group was not stored.
GroupResult: TypeAlias = "list[bool] | BaseException"
#: Events with their source, as :meth:`ReceiptStore.record_entries` takes them.
Entries: TypeAlias = "Sequence[tuple[ReceiptEvent, str]]"


class Writer(Protocol):
    """What the receiver commits through; see the module docstring."""

    @property
    def running(self) -> bool:
        """Whether the writer takes submissions."""
        ...

    async def submit_groups(
        self, groups: Sequence[Sequence[ReceiptEvent]], *, source: str
    ) -> list[GroupResult]:
        """Store groups of events; one result per group, each only after its commit."""
        ...

    async def close(self) -> None:
        """Commit what is pending, then stop."""
        ...


@dataclass(frozen=True)
class CommitOutcome:
    """
    What :func:`commit_groups` did.

    :param results: one per group, in order.
    :param commits: transactions committed.
    :param split: whether the group commit failed and the groups were committed one by one.
    """

    results: list[GroupResult]
    commits: int
    split: bool


def commit_groups(record: Callable[[Entries], list[bool]], groups: Sequence[Entries]) -> CommitOutcome:
    """
    Commit ``groups`` in one transaction; if it fails, commit each group in a transaction of its
    own, so that one bad group fails alone and the others are stored.

    :param record: stores entries in one transaction and returns their flags
        (:meth:`ReceiptStore.record_entries`).
    :param groups: the groups, each a sequence of ``(event, source)``; empty groups are fine.
    """
    try:
        flags = record([entry for group in groups for entry in group])
    except Exception as error:
        if len(groups) == 1:
            return CommitOutcome([error], 0, split=False)
        log.warning("Group commit of %d groups failed (%s); committing them one by one", len(groups), error)
        results: list[GroupResult] = []
        commits = 0
        for group in groups:
            try:
                results.append(record(group))
                commits += 1
            except Exception as group_error:
                results.append(group_error)
        return CommitOutcome(results, commits, split=True)
    results = []
    offset = 0
    for group in groups:
        results.append(flags[offset : offset + len(group)])
        offset += len(group)
    return CommitOutcome(results, 1, split=False)


def checked_groups(
    groups: Sequence[Sequence[ReceiptEvent]],
) -> tuple[list[list[ReceiptEvent]], list[InvalidInputError | None]]:
    """
    The groups as lists, and for each the reason no database could store it (``None`` if it can):
    an unstorable group is answered at once and never joins a transaction shared with others.
    """
    checked: list[list[ReceiptEvent]] = []
    problems: list[InvalidInputError | None] = []
    for group in groups:
        events = list(group)
        try:
            validate_events(events)
        except InvalidInputError as error:
            checked.append([])
            problems.append(error)
            continue
        checked.append(events)
        problems.append(None)
    return checked, problems


def first_result(results: list[GroupResult]) -> list[bool]:
    """The one group's flags, or its error raised: :meth:`submit` in terms of :meth:`submit_groups`."""
    (result,) = results
    if isinstance(result, BaseException):
        raise result
    return result


@dataclass
class _Submission:
    #: The groups; an unstorable one is empty here, its reason in ``problems``.
    groups: list[list[ReceiptEvent]]
    problems: list[InvalidInputError | None]
    source: str
    future: concurrent.futures.Future[list[GroupResult]]

    @property
    def size(self) -> int:
        return sum(len(group) for group in self.groups)


@dataclass
class BatchWriterStats:
    """What a :class:`BatchWriter` has done so far (for benchmarks and tests)."""

    #: Transactions committed (group commits and one-by-one retries).
    commits: int = 0
    #: Groups resolved with a result.
    submissions: int = 0
    #: Events committed (new and duplicate).
    events: int = 0
    #: Group commits that failed and were retried one group at a time.
    failed_batches: int = 0
    #: Groups resolved with an error.
    failed_submissions: int = 0


class BatchWriter:
    """
    Group commit in a background thread: everything pending is written in one transaction.

    Each submission resolves only after the COMMIT that contains its events, so a receiver that
    acknowledges a webhook when ``submit`` returns acknowledges only durable events, while many
    requests share one commit (one fsync). Failures follow :func:`commit_groups`: errors reach only
    their own waiters, and the thread carries on.

    Submissions made before :meth:`start` wait for it (the first commit then holds them all).

    :param store: the store to write to.
    :param max_batch: the most events in one commit (a larger single submission is committed alone).
    :param max_wait: seconds to wait for more submissions once one is pending, before committing.
    """

    def __init__(self, store: ReceiptStore, *, max_batch: int = 256, max_wait: float = 0.002) -> None:
        if max_batch < 1:
            raise InvalidInputError("max_batch", "must be at least 1")
        if max_wait < 0:
            raise InvalidInputError("max_wait", "must not be negative")
        self.store = store
        self.max_batch = max_batch
        self.max_wait = max_wait
        self.stats = BatchWriterStats()
        self._queue: queue.SimpleQueue[_Submission | None] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._closed = False

    def __enter__(self) -> BatchWriter:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @property
    def running(self) -> bool:
        """Whether the writer thread is alive."""
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> None:
        """Start the writer thread (once; calling it again does nothing)."""
        with self._lock:
            if self._closed:
                raise RuntimeError("this BatchWriter was stopped; create a new one")
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="readreceipts-batch-writer", daemon=True
                )
                self._thread.start()

    def stop(self, *, timeout: float | None = None) -> None:
        """
        Commit what is pending, then stop the thread; later submissions raise ``RuntimeError``.

        :param timeout: seconds to wait for the thread; ``None`` waits as long as it takes.
        """
        with self._lock:
            if self._closed:
                thread = self._thread
            else:
                self._closed = True
                # After every accepted submission (they are queued under the same lock).
                self._queue.put(None)
                thread = self._thread
                if thread is None:
                    # Never started: write what was submitted before resolving nothing would hang.
                    thread = self._thread = threading.Thread(target=self._run, daemon=True)
                    thread.start()
        if thread is not None:
            thread.join(timeout)

    async def close(self) -> None:
        """:meth:`stop`, without blocking the event loop (the :class:`Writer` protocol)."""
        await asyncio.to_thread(self.stop)

    async def submit(self, events: Sequence[ReceiptEvent], *, source: str = SOURCE_WEBHOOK) -> list[bool]:
        """
        Store events; returns once they are committed: ``True`` per new event, ``False`` per duplicate.

        Never blocks the event loop. If the awaiting task is cancelled the events are still written.

        :param events: the events of one webhook.
        :param source: ``"webhook"`` or ``"reconcile"``.
        :raises InvalidInputError: an event no database could store (raised at once, nothing queued).
        :raises Exception: whatever made the commit fail; the events were not stored.
        """
        return first_result(await self.submit_groups([events], source=source))

    async def submit_groups(
        self, groups: Sequence[Sequence[ReceiptEvent]], *, source: str = SOURCE_WEBHOOK
    ) -> list[GroupResult]:
        """
        Store groups of events (one per webhook); one result per group, each after its commit.

        A group no database could store gets its :class:`InvalidInputError` at once; the others
        are committed.

        :param groups: the groups.
        :param source: ``"webhook"`` or ``"reconcile"``.
        """
        return await asyncio.wrap_future(self._enqueue(groups, source))

    def submit_sync(
        self, events: Sequence[ReceiptEvent], *, source: str = SOURCE_WEBHOOK, timeout: float | None = None
    ) -> list[bool]:
        """
        :meth:`submit` for threads: blocks until the commit.

        :param timeout: seconds to wait; ``TimeoutError`` after that (the events may still commit).
        """
        return first_result(self._enqueue([events], source).result(timeout))

    def _enqueue(
        self, groups: Sequence[Sequence[ReceiptEvent]], source: str
    ) -> concurrent.futures.Future[list[GroupResult]]:
        check_source(source)
        checked, problems = checked_groups(groups)
        future: concurrent.futures.Future[list[GroupResult]] = concurrent.futures.Future()
        if not any(checked):
            future.set_result([problem if problem is not None else [] for problem in problems])
            return future
        with self._lock:
            if self._closed:
                raise RuntimeError("this BatchWriter is stopped")
            self._queue.put(_Submission(checked, problems, source, future))
        return future

    def _run(self) -> None:
        while True:
            first = self._queue.get()
            if first is None:
                return
            batch, stop_after = self._gather(first)
            self._commit(batch)
            if stop_after:
                return

    def _gather(self, first: _Submission) -> tuple[list[_Submission], bool]:
        """``first`` and whatever else arrives within ``max_wait``, up to ``max_batch`` events."""
        batch = [first]
        count = first.size
        deadline = time.monotonic() + self.max_wait
        while count < self.max_batch:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                try:
                    item = self._queue.get(timeout=remaining)
                except queue.Empty:
                    break
            if item is None:
                return batch, True
            batch.append(item)
            count += item.size
        return batch, False

    def _commit(self, batch: list[_Submission]) -> None:
        # A cancelled waiter's events are written all the same: the vendor may not have seen the
        # failure, and a repeat delivery will then be a harmless duplicate.
        waiting = [submission.future.set_running_or_notify_cancel() for submission in batch]
        groups = [
            [(event, submission.source) for event in group]
            for submission in batch
            for group, problem in zip(submission.groups, submission.problems, strict=True)
            if problem is None
        ]
        outcome = commit_groups(self.store.record_entries, groups)
        self.stats.commits += outcome.commits
        self.stats.failed_batches += int(outcome.split)
        committed = iter(outcome.results)
        for submission, is_waiting in zip(batch, waiting, strict=True):
            answers = [problem or next(committed) for problem in submission.problems]
            for answer in answers:
                if isinstance(answer, BaseException):
                    self.stats.failed_submissions += 1
                else:
                    self.stats.submissions += 1
                    self.stats.events += len(answer)
            if is_waiting:
                submission.future.set_result(answers)
