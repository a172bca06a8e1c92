"""
Group commit in a process of its own, for the standalone receiver.

The batch writer thread (:class:`~airflow_provider_readreceipts.store.BatchWriter`) shares
the event loop's GIL: every Python step of a commit (building rows, SQLAlchemy, reading back ids)
waits for the event loop to let go of the GIL, and the event loop waits for it in turn. Measured on
one worker, that contention, not the database, capped the receiver at about half the requests per
second of a bare endpoint. :class:`WriterProcess` runs the same store code in a child process: the
event loop only pickles each turn's events into a socket and reads back, per hand-off, which events
were new. The guarantees do not change:

- **Acknowledged means committed.** The child answers a hand-off only after the transaction that
  holds it has committed; the parent resolves the waiting requests from that answer.
- **One bad request fails alone.** Events no database can hold are refused in the parent, before
  they are sent. If a group commit fails anyway, the child commits each hand-off on its own.
- **Nothing hangs.** If the child dies (killed, out of memory), every waiting request fails (the
  receiver answers 503 and the vendor retries) and the next request starts a new child. If the
  parent dies, the child sees the socket close, commits what it has read and exits. The child
  ignores SIGINT and SIGTERM, which a terminal or a service manager sends the whole process group:
  its parent stops it once the requests in flight are answered.

Frames are a 4-byte big-endian length and a pickle. Both ends are this package, on a socket pair
that no one else can reach; the store URL (which may hold a password) travels in the first frame,
never on a command line.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import pickle
import signal
import socket
import struct
import sys
from collections.abc import Sequence
from typing import Any

from airflow_provider_readreceipts.receipts import InvalidInputError, ReceiptEvent, Status
from airflow_provider_readreceipts.store import EncodedPayload, ReceiptStore, check_source, payload_text
from airflow_provider_readreceipts.store.writers import (
    GroupResult,
    checked_groups,
    commit_groups,
    first_result,
)

log = logging.getLogger(__name__)

_LENGTH = struct.Struct(">I")
#: The most events the child commits in one transaction (larger reads are committed in slices).
MAX_EVENTS_PER_COMMIT = 512
#: Seconds the child may take to start, open the store and answer.
START_TIMEOUT_SECONDS = 120.0
#: Seconds the child may take to commit what it holds and exit on stop.
STOP_TIMEOUT_SECONDS = 30.0


class WriterProcessError(RuntimeError):
    """The writer process is gone, or refused to start; nothing waiting on it was acknowledged."""


def _frame(message: Any) -> bytes:
    body = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    return _LENGTH.pack(len(body)) + body


class WriterProcess:
    """
    The parent's end: starts the child, hands it events, resolves each hand-off after its commit.

    :param store_url: the receipt store the child writes to (already migrated by the caller).
    :param start_timeout: seconds the child may take to start and open the store.
    """

    def __init__(self, store_url: str, *, start_timeout: float = START_TIMEOUT_SECONDS) -> None:
        self._store_url = store_url
        self.start_timeout = start_timeout
        self._process: asyncio.subprocess.Process | None = None
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._read_task: asyncio.Task[None] | None = None
        self._pending: dict[int, asyncio.Future[list[GroupResult]]] = {}
        self._ids = itertools.count(1)
        self._failure: str | None = None

    @property
    def running(self) -> bool:
        """Whether the child is up and taking hand-offs."""
        return self._failure is None and self._process is not None and self._process.returncode is None

    @property
    def pid(self) -> int | None:
        """The child's process id (for tests and diagnostics)."""
        return self._process.pid if self._process is not None else None

    async def start(self) -> None:
        """
        Start the child and wait until its store is open.

        :raises WriterProcessError: the child did not start or could not open the store.
        """
        parent_end, child_end = socket.socketpair()
        try:
            # Our own interpreter running our own module: no untrusted input in the command.
            self._process = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                __name__,
                str(child_end.fileno()),
                pass_fds=(child_end.fileno(),),
                stdin=asyncio.subprocess.DEVNULL,
            )
        finally:
            child_end.close()
        self._reader, self._writer = await asyncio.open_unix_connection(sock=parent_end)
        self._writer.write(_frame(("open", self._store_url)))
        try:
            reply = await asyncio.wait_for(self._read_frame(), self.start_timeout)
        except Exception as exc:
            await self._kill()
            raise WriterProcessError(f"the writer process did not start ({type(exc).__name__})") from None
        if reply is None or reply[0] != "ready":
            await self._kill()
            reason = reply[1] if reply is not None else "it exited"
            raise WriterProcessError(f"the writer process could not open the store: {reason}")
        self._read_task = asyncio.create_task(self._read_replies(), name="readreceipts-writer-replies")

    async def submit(self, events: Sequence[ReceiptEvent], *, source: str) -> list[bool]:
        """
        Store events; returns once the child has committed them: ``True`` per new event.

        :param events: the events of one webhook.
        :param source: ``"webhook"`` or ``"reconcile"``.
        :raises InvalidInputError: an event no database can store (checked here, nothing sent).
        :raises WriterProcessError: the child is gone, or the commit failed in the child; the
            events may or may not be stored.
        """
        return first_result(await self.submit_groups([events], source=source))

    async def submit_groups(
        self, groups: Sequence[Sequence[ReceiptEvent]], *, source: str
    ) -> list[GroupResult]:
        """
        Store groups of events (one per webhook); one result per group, once the child committed it.

        Groups no database can store are answered here with their :class:`InvalidInputError` and
        never sent. When the child is gone every group is answered with :class:`WriterProcessError`.

        :param groups: the groups.
        :param source: ``"webhook"`` or ``"reconcile"``.
        """
        check_source(source)
        checked, problems = checked_groups(groups)
        sendable = [
            group for group, problem in zip(checked, problems, strict=True) if problem is None and group
        ]
        committed: list[GroupResult] = []
        if sendable:
            committed = await self._hand_off(sendable, source)
        answers = iter(committed)
        return [
            problem if problem is not None else (next(answers) if group else [])
            for group, problem in zip(checked, problems, strict=True)
        ]

    async def _hand_off(self, groups: list[list[ReceiptEvent]], source: str) -> list[GroupResult]:
        if not self.running or self._writer is None:
            error = WriterProcessError(self._failure or "the writer process is not running")
            return [error for _ in groups]
        handoff_id = next(self._ids)
        future: asyncio.Future[list[GroupResult]] = asyncio.get_running_loop().create_future()
        try:
            frame = _frame(
                ("write", handoff_id, source, [[_fields_of(event) for event in g] for g in groups])
            )
        except RecursionError:
            # pickle gives up on nesting far shallower than JSON does: send such payloads as the
            # text the store keeps of them anyway.
            frame = _frame(
                (
                    "write",
                    handoff_id,
                    source,
                    [[_fields_of(event, encoded=True) for event in g] for g in groups],
                )
            )
        self._pending[handoff_id] = future
        self._writer.write(frame)
        try:
            return await future
        except WriterProcessError as error:
            return [error for _ in groups]

    async def close(self) -> None:
        """:meth:`stop` (the :class:`~airflow_provider_readreceipts.store.Writer` protocol)."""
        await self.stop()

    async def stop(self, *, timeout: float = STOP_TIMEOUT_SECONDS) -> None:
        """Let the child commit what it holds and exit; kill it if it takes longer than ``timeout``."""
        if self._process is None:
            return
        if self._writer is not None and self._process.returncode is None:
            try:
                self._writer.write(_frame(("stop",)))
                await self._writer.drain()
            except (ConnectionError, RuntimeError):
                pass
        try:
            await asyncio.wait_for(self._process.wait(), timeout)
        except (TimeoutError, asyncio.TimeoutError):
            await self._kill()
        if self._read_task is not None:
            await asyncio.gather(self._read_task, return_exceptions=True)
        self._fail_pending("the writer process was stopped")
        if self._writer is not None:
            self._writer.close()

    async def _kill(self) -> None:
        if self._process is not None and self._process.returncode is None:
            self._process.kill()
            await self._process.wait()

    async def _read_frame(self) -> Any:
        assert self._reader is not None
        try:
            header = await self._reader.readexactly(_LENGTH.size)
            body = await self._reader.readexactly(_LENGTH.unpack(header)[0])
        except (asyncio.IncompleteReadError, ConnectionError):
            return None
        # From our own child over a private socket pair, never from the network.
        return pickle.loads(body)  # noqa: S301

    async def _read_replies(self) -> None:
        while True:
            reply = await self._read_frame()
            if reply is None:
                break
            _, handoff_id, group_replies = reply
            future = self._pending.pop(handoff_id, None)
            if future is None or future.done():
                continue  # the request went away; its events were committed all the same
            future.set_result([_group_result(kind, value) for kind, value in group_replies])
        returncode = await self._process.wait() if self._process is not None else None
        self._failure = f"the writer process exited (code {returncode})"
        if self._pending:
            log.error("%s with %d hand-off(s) unanswered", self._failure, len(self._pending))
        self._fail_pending(self._failure)

    def _fail_pending(self, reason: str) -> None:
        pending, self._pending = self._pending, {}
        for future in pending.values():
            if not future.done():
                future.set_exception(WriterProcessError(reason))


def _fields_of(event: ReceiptEvent, *, encoded: bool = False) -> tuple[Any, ...]:
    """
    An event as a tuple of plain values: pickled in half the time of the dataclass.

    :param encoded: send the payload as the JSON text the store keeps (see
        :func:`~airflow_provider_readreceipts.store.payload_text`), not as a mapping.
    """
    return (
        event.vendor,
        event.conn_id,
        event.message_id,
        event.status.value,
        event.raw_status,
        event.participant,
        event.chat_id,
        event.occurred_at,
        event.event_id,
        event.error_code,
        event.error_message,
        EncodedPayload(payload_text(event.payload)) if encoded else event.payload,
    )


def _event_from(fields: tuple[Any, ...]) -> ReceiptEvent:
    vendor, conn_id, message_id, status, *rest = fields
    return ReceiptEvent(vendor, conn_id, message_id, Status(status), *rest)


# -- the child --------------------------------------------------------------------------------------


class _FrameReader:
    """Whole frames from a blocking socket: the first read waits, later ones take what has arrived."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buffer = bytearray()
        self.closed = False

    def read(self, *, wait: bool) -> list[Any]:
        self.sock.setblocking(wait)
        try:
            chunk = self.sock.recv(1 << 20)
            if not chunk:
                self.closed = True
            self.buffer += chunk
        except BlockingIOError:
            pass
        except OSError:
            self.closed = True  # the parent is gone (a reset instead of an orderly close)
        frames = []
        while len(self.buffer) >= _LENGTH.size:
            (length,) = _LENGTH.unpack_from(self.buffer)
            if len(self.buffer) < _LENGTH.size + length:
                break
            # From our own parent over a private socket pair, never from the network.
            frames.append(pickle.loads(self.buffer[_LENGTH.size : _LENGTH.size + length]))  # noqa: S301
            del self.buffer[: _LENGTH.size + length]
        return frames


def _commit(store: ReceiptStore, handoffs: list[_HandOff]) -> list[Any]:
    """Commit the hand-offs' groups together by the one commit rule; one reply per hand-off."""
    outcome = commit_groups(store.record_entries, [group for _, groups in handoffs for group in groups])
    results = iter(outcome.results)
    return [
        ("done", handoff_id, [_group_reply(next(results)) for _ in groups]) for handoff_id, groups in handoffs
    ]


def _group_reply(result: GroupResult) -> tuple[str, Any]:
    if not isinstance(result, BaseException):
        return ("done", result)
    if isinstance(result, InvalidInputError):
        return ("invalid", str(result))
    return ("failed", _describe_failure(result))


def _group_result(kind: str, value: Any) -> GroupResult:
    if kind == "done":
        return list(value)
    if kind == "invalid":
        return InvalidInputError("event", value)
    return WriterProcessError(f"the commit failed: {value}")


def _describe_failure(error: BaseException) -> str:
    # The type and first line only: a database error message never carries the store's password.
    text = str(error).strip().splitlines()[0][:300] if str(error).strip() else ""
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


_HandOff = tuple[int, list[list[tuple[ReceiptEvent, str]]]]


def _slices(handoffs: list[_HandOff]) -> list[list[_HandOff]]:
    """Consecutive runs of hand-offs of at most ``MAX_EVENTS_PER_COMMIT`` events (or one hand-off)."""
    runs: list[list[_HandOff]] = [[]]
    count = 0
    for handoff in handoffs:
        size = sum(len(group) for group in handoff[1])
        if runs[-1] and count + size > MAX_EVENTS_PER_COMMIT:
            runs.append([])
            count = 0
        runs[-1].append(handoff)
        count += size
    return runs


def serve(sock: socket.socket) -> int:
    """
    The child's loop: open the store named by the first frame, then commit hand-offs in groups.

    Whatever has arrived while one commit ran is committed together in the next (group commit
    without waiting). Returns the exit status.

    :param sock: the child's end of the socket pair.
    """
    frames = _FrameReader(sock)
    opening = frames.read(wait=True)
    while not opening and not frames.closed:
        opening = frames.read(wait=True)
    if not opening or opening[0][0] != "open":
        return 2
    try:
        store = ReceiptStore(opening[0][1])
        store.check_schema()
    except Exception as error:
        sock.sendall(_frame(("failed", _describe_failure(error))))
        return 1
    sock.sendall(_frame(("ready", "")))
    queued: list[Any] = opening[1:]
    try:
        while True:
            if not queued:
                queued = frames.read(wait=True)
            queued += frames.read(wait=False)
            handoffs: list[_HandOff] = [
                (handoff_id, [[(_event_from(fields), source) for fields in group] for group in groups])
                for kind, handoff_id, source, groups in (frame for frame in queued if frame[0] == "write")
            ]
            stopping = frames.closed or any(frame[0] == "stop" for frame in queued)
            queued = []
            replies: list[Any] = []
            for run in _slices(handoffs) if handoffs else []:
                replies += _commit(store, run)
            if replies and not frames.closed:
                sock.setblocking(True)
                try:
                    sock.sendall(b"".join(_frame(reply) for reply in replies))
                except OSError:
                    frames.closed = stopping = True  # the parent is gone; what it sent is committed
            if stopping:
                return 0
    finally:
        store.close()


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m airflow_provider_readreceipts.webhooks.writer_process <fd>``: the child."""
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) != 1 or not args[0].isdigit():
        print(
            "usage: python -m airflow_provider_readreceipts.webhooks.writer_process <socket fd>",
            file=sys.stderr,
        )
        return 2
    logging.basicConfig(level=os.environ.get("READRECEIPTS_WRITER_LOG_LEVEL", "WARNING"))
    # Ctrl-C in a terminal, or a service manager stopping the whole process group, must not cut a
    # commit short: the child stops when its parent says so or goes away (the socket closes).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    with socket.socket(fileno=int(args[0])) as sock:
        return serve(sock)


if __name__ == "__main__":
    sys.exit(main())
