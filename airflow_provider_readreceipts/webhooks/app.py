"""
The webhook receiver: ``POST /webhooks/{conn_id}`` verifies a vendor's webhook, normalises it and
stores its receipt events; ``GET /healthz`` tells a load balancer whether the store answers.

The guarantees, and where each is kept:

- **2xx only after the commit.** Events go to the store through a writer
  (:class:`~airflow_provider_readreceipts.store.Writer`), whose submissions resolve only once the
  transaction holding them has committed (group commit: one commit for every request that arrived
  meanwhile, which is what makes durable writes fast).
  The requests of one turn of the event loop are handed over as one submission
  (:meth:`Receiver.record`), and each is answered from that submission's result, so still only
  after its commit. A failed or slow commit answers 503 so the vendor retries; its events may or
  may not have been stored, and the retry is then a duplicate, which the store keeps once.
- **No 500 for any input.** Each stage maps its own failures to a status, unexpected exceptions of
  a vendor adapter included: verification 401, parsing 422, the store 503. The batch writer refuses
  events no database can hold (NUL characters, unpaired surrogates, oversized ids) before they join
  a shared transaction, and that refusal is the sender's 422.
- **No secret in a log line.** Headers and bodies are never logged; access-log redaction lives in
  :mod:`airflow_provider_readreceipts.webhooks`.

The app opens no store and resolves no connection when it is created: the lifespan does, and a
store that is down at startup does not stop the process (it would take the whole Airflow API
server down with it); requests get 503 until the store answers.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import os
import re
import socket
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeAlias, TypeVar

from fastapi import APIRouter, FastAPI, HTTPException, Request
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse, Response
from fastapi.routing import APIRoute

from airflow_provider_readreceipts.hooks.base import WebhookRequest
from airflow_provider_readreceipts.receipts import (
    InvalidInputError,
    ReceiptEvent,
    WebhookAuthError,
    WebhookRejected,
)
from airflow_provider_readreceipts.webhooks import install_access_log_redaction

if TYPE_CHECKING:
    from airflow_provider_readreceipts.hooks.base import ReadReceiptsHook
    from airflow_provider_readreceipts.store import ReceiptStore, Writer

log = logging.getLogger(__name__)
_T = TypeVar("_T")

#: What Airflow accepts as a connection id (letters, digits, ``_``, ``-``, ``.``; 250 at most).
CONN_ID_PATTERN = re.compile(r"[A-Za-z0-9_.\-]{1,250}")
DEFAULT_MAX_BODY_BYTES = 1_048_576
#: How long a resolved connection (and its hook) is reused, so a rotated secret takes effect soon.
CONNECTION_CACHE_SECONDS = 60.0
#: How long "no such connection" is remembered, so a flood of bad URLs does not hammer the
#: secrets backend, while a connection created a moment ago is found quickly.
MISSING_CONNECTION_CACHE_SECONDS = 5.0
HEARTBEAT_SECONDS = 30.0
#: Events handed to the batch writer at once at most, so that it commits some while the event loop
#: reads more.
HAND_OFF_SIZE = 32
#: Hand-offs the writer may hold at once: one being committed and the next one waiting. Requests
#: that arrive meanwhile gather into the hand-off after, so a busy receiver hands over fewer, larger
#: batches (each hand-off costs the event loop about as much as a request).
HAND_OFFS_IN_FLIGHT = 2
#: How long a request waits for the commit of its events before answering 503 (vendor retries).
COMMIT_TIMEOUT_SECONDS = 15.0

_STANDALONE_HINT = (
    " This standalone receiver resolves connections only from environment variables "
    "(AIRFLOW_CONN_<CONN_ID>) and the configured secrets backend, never from the Airflow metadata "
    "database."
)


@dataclass(frozen=True)
class _Resolution:
    """A cached answer to "which hook serves this connection": a hook, or why there is none."""

    hook: ReadReceiptsHook | None
    status_code: int
    problem: str
    expires_at: float


class ConnectionResolver:
    """
    Finds the vendor hook of a connection id, caching the answer briefly.

    Airflow's ``BaseHook.get_connection()`` is blocking (environment, secrets backend, metadata
    database), so it runs in a worker thread, once per connection id however many requests wait
    for it, and never again until the entry expires.

    :param standalone: whether this process is a standalone receiver (changes the 404 message).
    :param ttl: seconds a resolved connection is reused.
    :param missing_ttl: seconds an unknown connection is remembered as unknown.
    :param max_entries: cache size; the oldest entries go first.
    """

    def __init__(
        self,
        *,
        standalone: bool = False,
        ttl: float = CONNECTION_CACHE_SECONDS,
        missing_ttl: float = MISSING_CONNECTION_CACHE_SECONDS,
        max_entries: int = 1024,
    ) -> None:
        self.standalone = standalone
        self.ttl = ttl
        self.missing_ttl = missing_ttl
        self.max_entries = max_entries
        self._entries: dict[str, _Resolution] = {}
        self._pending: dict[str, asyncio.Future[_Resolution]] = {}

    async def hook_for(self, conn_id: str) -> ReadReceiptsHook:
        """
        The hook of ``conn_id``, or :class:`HTTPException` (404 unknown, 503 unusable right now).

        :param conn_id: a connection id of valid shape.
        """
        entry = self._entries.get(conn_id)
        if entry is None or entry.expires_at <= time.monotonic():
            entry = await self._resolve_once(conn_id)
        if entry.hook is None:
            raise HTTPException(entry.status_code, entry.problem)
        return entry.hook

    async def _resolve_once(self, conn_id: str) -> _Resolution:
        pending = self._pending.get(conn_id)
        if pending is None:
            pending = asyncio.ensure_future(asyncio.to_thread(self._resolve, conn_id))
            self._pending[conn_id] = pending
            pending.add_done_callback(lambda _: self._pending.pop(conn_id, None))
        entry = await asyncio.shield(pending)
        if len(self._entries) >= self.max_entries:
            self._entries.pop(next(iter(self._entries)))
        self._entries[conn_id] = entry
        return entry

    def _resolve(self, conn_id: str) -> _Resolution:
        from airflow.sdk import BaseHook
        from airflow.sdk.exceptions import AirflowNotFoundException

        from airflow_provider_readreceipts.vendors import SPECS, hook_for

        now = time.monotonic()
        try:
            connection = BaseHook.get_connection(conn_id)
        except AirflowNotFoundException:
            return _Resolution(None, 404, self._not_found(conn_id), now + self.missing_ttl)
        except Exception as exc:
            # A secrets backend that is down is our problem, not the vendor's: 503 makes it retry.
            log.exception("Looking up connection %r failed", conn_id)
            return _Resolution(
                None, 503, f"connection {conn_id!r} could not be looked up ({type(exc).__name__})", now + 1.0
            )
        conn_type = connection.conn_type
        if conn_type not in SPECS:
            problem = (
                f"connection {conn_id!r} is of type {conn_type!r}, which is not a read-receipts vendor "
                f"(expected one of {', '.join(sorted(SPECS))})"
            )
            return _Resolution(None, 404, problem, now + self.missing_ttl)
        try:
            hook = hook_for(conn_id, conn_type)
            # Load (and mask) the connection now, in this thread, so verifying later needs no I/O.
            hook.connection  # noqa: B018
        except Exception as exc:
            log.exception("Connection %r cannot serve webhooks", conn_id)
            problem = f"connection {conn_id!r} cannot be used to verify webhooks: {_describe(exc)}"
            return _Resolution(None, 503, problem, now + self.missing_ttl)
        return _Resolution(hook, 200, "", now + self.ttl)

    def _not_found(self, conn_id: str) -> str:
        message = f"no Airflow connection {conn_id!r} was found."
        return message + (_STANDALONE_HINT if self.standalone else "")


#: What one request awaits: its events' flags (True = newly stored), or the failure.
_Waiter: TypeAlias = "asyncio.Future[list[bool]]"


def _settle(waiter: asyncio.Future[list[bool]], outcome: list[bool] | BaseException) -> None:
    if waiter.done():  # the request went away (cancelled); its events are stored all the same
        return
    if isinstance(outcome, BaseException):
        waiter.set_exception(outcome)
    else:
        waiter.set_result(outcome)


class Receiver:
    """
    One receiver's state: the store, its batch writer, the heartbeat, the connection cache.

    :param store: the receipt store to write to; ``None`` opens one with ``store_factory``.
    :param store_factory: opens the store when none is given (default:
        ``ReceiptStore.from_airflow()``); a store opened this way is closed on shutdown.
    :param receiver_id: the name this process records its heartbeat under.
    :param heartbeat_seconds: time between heartbeats.
    :param commit_timeout: seconds a request waits for its commit before answering 503.
    :param hand_off_size: events handed to the batch writer at once at most (see :meth:`record`).
    :param writer_process: commit in a child process
        (:class:`~airflow_provider_readreceipts.webhooks.writer_process.WriterProcess`) instead of a
        thread of this process: what the standalone receiver does, since a writer thread competes
        with the event loop for the GIL.
    """

    def __init__(
        self,
        *,
        store: ReceiptStore | None = None,
        store_factory: Callable[[], ReceiptStore] | None = None,
        receiver_id: str | None = None,
        heartbeat_seconds: float = HEARTBEAT_SECONDS,
        commit_timeout: float = COMMIT_TIMEOUT_SECONDS,
        hand_off_size: int = HAND_OFF_SIZE,
        writer_process: bool = False,
    ) -> None:
        self.hand_off_size = hand_off_size
        self.writer_process = writer_process
        self.store = store
        self._store_factory = store_factory
        self._owns_store = store is None
        self.receiver_id = receiver_id or default_receiver_id()
        self.heartbeat_seconds = heartbeat_seconds
        self.commit_timeout = commit_timeout
        self.writer: Writer | None = None
        self.last_heartbeat_error: str | None = None
        self._ready_lock = asyncio.Lock()
        self._heartbeat_task: asyncio.Task[None] | None = None
        # Events of requests waiting for the next hand-off to the writer, and hand-offs in flight.
        self._pending: list[tuple[list[ReceiptEvent], _Waiter]] = []
        self._submitting: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        """Open and migrate the store, start the batch writer, write a heartbeat; never raises."""
        # The first heartbeat is written before the app takes requests: from then on a waiter can
        # tell that this store has a receiver.
        await self._beat_once()
        self._heartbeat_task = asyncio.create_task(self._heartbeat_loop(), name="readreceipts-heartbeat")

    async def stop(self) -> None:
        """Stop the heartbeat, flush and stop the batch writer, close a store this receiver opened."""
        if self._heartbeat_task is not None:
            self._heartbeat_task.cancel()
            await asyncio.gather(self._heartbeat_task, return_exceptions=True)
            self._heartbeat_task = None
        if self._submitting:
            await asyncio.gather(*self._submitting, return_exceptions=True)
        if self.writer is not None:
            await self.writer.close()
            self.writer = None
        if self._owns_store and self.store is not None:
            await asyncio.to_thread(self.store.close)
            self.store = None

    async def ready_writer(self) -> Writer:
        """
        The running batch writer; opens and migrates the store first if that has not succeeded, and
        replaces a writer that died (a writer process that was killed, say).
        """
        if self.writer is not None and self.writer.running:
            return self.writer
        async with self._ready_lock:
            if self.writer is not None and not self.writer.running:
                log.warning("The batch writer stopped; starting a new one")
                await self.writer.close()
                self.writer = None
            if self.writer is None:
                store = await self._ready_store()
                await asyncio.to_thread(store.migrate)
                self.writer = await self._start_writer(store)
                log.info("Receiving webhooks into %s as %s", store.url_for_display, self.receiver_id)
        return self.writer

    async def _start_writer(self, store: ReceiptStore) -> Writer:
        if self.writer_process:
            from airflow_provider_readreceipts.webhooks.writer_process import WriterProcess

            process = WriterProcess(store.url.render_as_string(hide_password=False))
            await process.start()
            return process
        from airflow_provider_readreceipts.store import BatchWriter

        thread = BatchWriter(store)
        thread.start()
        return thread

    async def _ready_store(self) -> ReceiptStore:
        if self.store is None:
            self.store = await asyncio.to_thread(self._open_store)
        return self.store

    def _open_store(self) -> ReceiptStore:
        if self._store_factory is not None:
            return self._store_factory()
        from airflow_provider_readreceipts.store import ReceiptStore

        return ReceiptStore.from_airflow()

    async def record(self, events: list[ReceiptEvent]) -> list[bool]:
        """
        Store ``events``; returns once they are committed (``True`` for each newly stored one).

        Requests that reach this point in the same turn of the event loop are handed to the batch
        writer as ONE submission: one hand-off and one wake-up per turn instead of one per request,
        which is most of what a webhook costs on top of the bare HTTP exchange. While the writer
        already holds :data:`HAND_OFFS_IN_FLIGHT` submissions, requests keep gathering and go over
        together when one of those is answered. The writer's group commit then gathers submissions
        into commits. Each request still resolves only after the commit that holds its events.

        :raises InvalidInputError: an event no database can hold (this request's own).
        :raises Exception: the commit failed or did not finish within ``commit_timeout``.
        """
        writer = await self.ready_writer()
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[list[bool]] = loop.create_future()
        self._pending.append((events, waiter))
        if len(self._pending) >= self.hand_off_size:
            # Hand over now: the writer commits these while this turn goes on with other requests.
            self._flush(writer)
        elif len(self._pending) == 1:
            # Runs after every request already runnable in this turn has queued its events.
            loop.call_soon(self._flush, writer)
        return await waiter

    def _flush(self, writer: Writer) -> None:
        if not self._pending or len(self._submitting) >= HAND_OFFS_IN_FLIGHT:
            return  # a hand-off that finishes flushes what gathered meanwhile
        batch, self._pending = self._pending, []
        task = asyncio.ensure_future(self._submit(writer, batch))
        self._submitting.add(task)
        task.add_done_callback(lambda done: self._handed_off(done, writer))

    def _handed_off(self, task: asyncio.Task[None], writer: Writer) -> None:
        self._submitting.discard(task)
        self._flush(writer)

    async def _submit(self, writer: Writer, batch: list[tuple[list[ReceiptEvent], _Waiter]]) -> None:
        # One group per request: the writer's commit rule then fails only the request whose events
        # no database can hold, and answers every other one from the commit that holds it.
        try:
            # On timeout the wait is cancelled, not the commit: the writer still stores the events
            # (the vendor's retry is then a duplicate); this answer just no longer waits for it.
            results = await _wait_at_most(
                writer.submit_groups([events for events, _ in batch], source="webhook"), self.commit_timeout
            )
        except Exception as exc:
            for _, waiter in batch:
                _settle(waiter, exc)
            return
        for (_, waiter), result in zip(batch, results, strict=True):
            _settle(waiter, result)

    async def beat(self) -> None:
        """Record one heartbeat (opening the store first if needed)."""
        await self.ready_writer()
        assert self.store is not None
        await asyncio.to_thread(self.store.heartbeat, self.receiver_id)

    async def _beat_once(self) -> None:
        try:
            await self.beat()
            self.last_heartbeat_error = None
        except Exception as exc:
            # A store that is down at startup must not stop the process (inside the Airflow API
            # server it would take the whole API down): webhooks get 503 until the store answers.
            self.last_heartbeat_error = _describe(exc)
            log.warning("The receipt store is not available: %s; retrying", self.last_heartbeat_error)

    async def _heartbeat_loop(self) -> None:
        while True:
            await asyncio.sleep(self.heartbeat_seconds)
            await self._beat_once()


def default_receiver_id() -> str:
    """``<host>/<pid>/<random>``: unique per process, readable in the store's heartbeat table."""
    return f"{socket.gethostname()}/{os.getpid()}/{uuid.uuid4().hex[:8]}"


def create_app(
    *,
    store: ReceiptStore | None = None,
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    store_factory: Callable[[], ReceiptStore] | None = None,
    standalone: bool = False,
    receiver_id: str | None = None,
    heartbeat_seconds: float = HEARTBEAT_SECONDS,
    connection_cache_seconds: float = CONNECTION_CACHE_SECONDS,
    commit_timeout: float = COMMIT_TIMEOUT_SECONDS,
    writer_process: bool = False,
) -> FastAPI:
    """
    Build the receiver app. Nothing is opened here: the store is opened and migrated at startup.

    :param store: the receipt store; ``None`` opens one at startup (see ``store_factory``) and
        closes it at shutdown. A store passed in is migrated but left open.
    :param max_body_bytes: larger bodies get 413, by ``Content-Length`` or while streaming.
    :param store_factory: opens the store when ``store`` is ``None``; default
        ``ReceiptStore.from_airflow()``.
    :param standalone: a standalone receiver (not the Airflow API server): the 404 for an unknown
        connection then says that only environment variables and secrets backends are consulted.
    :param receiver_id: the heartbeat's name for this process; default ``<host>/<pid>/<random>``.
    :param heartbeat_seconds: time between heartbeats.
    :param connection_cache_seconds: how long a resolved connection and its secret are reused.
    :param commit_timeout: seconds a webhook waits for its commit before the answer is 503.
    :param writer_process: commit in a child process instead of a thread (see :class:`Receiver`).
    """
    receiver = Receiver(
        store=store,
        store_factory=store_factory,
        receiver_id=receiver_id,
        heartbeat_seconds=heartbeat_seconds,
        commit_timeout=commit_timeout,
        writer_process=writer_process,
    )

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        install_access_log_redaction()
        await receiver.start()
        try:
            yield
        finally:
            await receiver.stop()

    app = FastAPI(
        title="Read receipts webhook receiver",
        description="Vendor status webhooks (Sendblue, Chert, RyzeAPI, Direct7) into the receipt store",
        lifespan=lifespan,
        # No interactive docs: this app faces the internet, often without authentication.
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
    )
    app.state.receiver = receiver
    app.state.resolver = ConnectionResolver(standalone=standalone, ttl=connection_cache_seconds)
    app.state.max_body_bytes = max_body_bytes
    app.include_router(_routes())
    app.openapi = functools.partial(_openapi, app)  # type: ignore[method-assign]
    return app


# -- request handling -----------------------------------------------------------------------------
#
# The hot path takes the Request and nothing FastAPI must resolve per call: each dependency costs
# about as much as the whole bare endpoint, and throughput on one worker is the benchmark's measure.


def _check_conn_id(conn_id: str) -> None:
    if not CONN_ID_PATTERN.fullmatch(conn_id):
        raise HTTPException(
            404,
            "not a valid connection id: use at most 250 letters, digits, underscores, hyphens and dots",
        )


def _check_declared_length(headers: dict[str, str], limit: int) -> None:
    """Refuse a body announced too large before reading a byte of it, or before any look-up."""
    declared = headers.get("content-length")
    if declared is None:
        return
    if not declared.isdigit():
        raise HTTPException(400, "the Content-Length header is not a number")
    if int(declared) > limit:
        raise HTTPException(413, f"the body is larger than {limit} bytes")


async def _read_body(request: Request, limit: int) -> bytes:
    """The raw body, read no further than ``limit`` bytes (a chunked body has no Content-Length)."""
    # ASGI's receive() directly: Starlette's request.stream() adds an async generator per request.
    receive = request.receive
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            # Nobody will read the answer; nothing was acknowledged.
            raise HTTPException(400, "the client went away before sending the whole body")
        chunk: bytes = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise HTTPException(413, f"the body is larger than {limit} bytes")
        chunks.append(chunk)
        if not message.get("more_body", False):
            return chunks[0] if len(chunks) == 1 else b"".join(chunks)


async def read_webhook(request: Request, conn_id: str) -> tuple[ReadReceiptsHook, WebhookRequest]:
    """
    The connection's hook and the webhook as received; answers 404 and 413 on its own.

    The order saves work on junk: the connection id's shape, then the announced length, then the
    connection (cached), and only then the body.

    :param request: the HTTP request.
    :param conn_id: the connection named in the URL.
    """
    _check_conn_id(conn_id)
    limit: int = request.app.state.max_body_bytes
    # From the ASGI scope as they came (names are lower case already); the last of repeats wins.
    headers = {name.decode("latin-1"): value.decode("latin-1") for name, value in request.scope["headers"]}
    _check_declared_length(headers, limit)
    resolver: ConnectionResolver = request.app.state.resolver
    hook = await resolver.hook_for(conn_id)
    body = await _read_body(request, limit)
    webhook = WebhookRequest(
        conn_id=conn_id,
        headers=headers,
        query=dict(request.query_params) if request.scope["query_string"] else {},
        body=body,
        received_at=time.time(),
    )
    return hook, webhook


def verify(hook: ReadReceiptsHook, webhook: WebhookRequest) -> None:
    """
    Prove the webhook comes from the vendor, or :class:`HTTPException` 401.

    :param hook: the connection's vendor hook.
    :param webhook: the webhook as received.
    """
    try:
        hook.verify_webhook(webhook)
    except WebhookRejected as exc:
        raise HTTPException(WebhookAuthError.status_code, exc.reason) from None
    except Exception as exc:
        # An adapter bug must neither let an unverified webhook through nor become a 500.
        log.exception("Verifying a webhook for connection %r failed unexpectedly", webhook.conn_id)
        raise HTTPException(401, f"the webhook could not be verified ({type(exc).__name__})") from None


def parse_events(hook: ReadReceiptsHook, webhook: WebhookRequest) -> list[ReceiptEvent]:
    """
    The webhook's receipt events, or :class:`HTTPException` 422 with the reason.

    :param hook: the connection's vendor hook.
    :param webhook: a verified webhook.
    """
    try:
        return hook.parse_webhook(webhook)
    except WebhookRejected as exc:
        raise HTTPException(exc.status_code, exc.reason) from None
    except Exception as exc:
        # The adapters promise WebhookPayloadError only; whatever else escapes is still the
        # payload's doing (it is the only input), so it is the sender's 4xx, never our 500.
        log.exception("Parsing a webhook for connection %r failed unexpectedly", webhook.conn_id)
        raise HTTPException(422, f"the payload could not be read ({type(exc).__name__})") from None


async def store_events(receiver: Receiver, events: list[ReceiptEvent], conn_id: str) -> dict[str, int]:
    """
    Store events and return the counts, only after their commit; :class:`HTTPException` otherwise.

    :param receiver: the receiver whose batch writer commits them.
    :param events: the webhook's events.
    :param conn_id: the connection, for the log.
    """
    if not events:
        return {"stored": 0, "duplicates": 0}
    try:
        stored = await receiver.record(events)
    except InvalidInputError as exc:
        # A field no database can hold (a NUL character, an unpaired surrogate, an id longer than
        # 512 characters): the store refused it before it joined a transaction shared with others.
        raise HTTPException(422, f"the payload cannot be stored: {exc}") from None
    except Exception as exc:
        # Not committed, or not known to be: never acknowledge. The vendor retries; if the events
        # did commit after all, the retry is a duplicate and is stored once.
        log.error("Could not store %d event(s) for connection %r: %s", len(events), conn_id, _describe(exc))
        raise HTTPException(503, "the receipt store is unavailable; nothing stored, please retry") from None
    new = sum(stored)
    return {"stored": new, "duplicates": len(events) - new}


@functools.lru_cache(maxsize=64)
def _counts_body(stored: int, duplicates: int) -> bytes:
    return json.dumps({"stored": stored, "duplicates": duplicates}, separators=(",", ":")).encode()


def _counts_response(stored: int, duplicates: int) -> Response:
    """The 200 answer; its body is cached per count pair (JSONResponse encodes on every request)."""
    return Response(_counts_body(stored, duplicates), media_type="application/json")


async def receive_webhook(request: Request) -> Response:
    """Verify, normalise and store a webhook; answer 200 only after its events are committed."""
    conn_id: str = request.path_params["conn_id"]
    hook, webhook = await read_webhook(request, conn_id)
    verify(hook, webhook)
    events = parse_events(hook, webhook)
    counts = await store_events(request.app.state.receiver, events, conn_id)
    return _counts_response(counts["stored"], counts["duplicates"])


def _routes() -> APIRouter:
    router = APIRouter()

    # A plain Starlette route: FastAPI's per-request parameter resolution (validating a path
    # parameter that read_webhook checks anyway) cost a fifth of the event loop's time per webhook.
    # HTTPException still becomes FastAPI's {"detail": ...} answer; _openapi documents the route.
    router.add_route("/webhooks/{conn_id}", receive_webhook, methods=["POST"], include_in_schema=False)

    @router.get("/healthz", summary="Whether the receiver can reach its store")
    async def healthz(request: Request) -> JSONResponse:
        """200 with the store's address and dialect when it answers a query; 503 otherwise."""
        receiver: Receiver = request.app.state.receiver
        try:
            await receiver.ready_writer()
            store = receiver.store
            assert store is not None
            await asyncio.wait_for(asyncio.to_thread(store.last_heartbeat), 5.0)
        except Exception as exc:
            # The reason goes to the log only: this endpoint faces the internet.
            log.warning("Health check: the receipt store is unavailable: %s", _describe(exc))
            where = receiver.store.url_for_display if receiver.store is not None else None
            return JSONResponse({"status": "unavailable", "store": where}, status_code=503)
        return JSONResponse(
            {
                "status": "ok",
                "store": store.url_for_display,
                "dialect": store.dialect,
                "receiver_id": receiver.receiver_id,
            }
        )

    return router


async def _webhook_parameters(conn_id: str) -> None:
    """Never called: the signature tells the OpenAPI document what receive_webhook takes."""


def _openapi(app: FastAPI) -> dict[str, Any]:
    """
    The app's OpenAPI document (not served: this app faces the internet; tests and tools build it),
    with ``POST /webhooks/{conn_id}`` described as the FastAPI route it would be without its
    plain-route fast path.
    """
    if app.openapi_schema is None:
        webhook_route = APIRoute(
            "/webhooks/{conn_id}",
            _webhook_parameters,
            methods=["POST"],
            summary="Receive one vendor webhook",
            description=receive_webhook.__doc__,
            operation_id=receive_webhook.__name__,
            responses={
                200: {"description": "Stored (and committed); duplicates are counted, not stored again."},
                401: {"description": "The webhook did not prove it comes from the vendor."},
                404: {"description": "No such connection, or not a read-receipts vendor connection."},
                413: {"description": "The body is too large."},
                422: {"description": "Malformed JSON or an unusable payload."},
                503: {"description": "The store is unavailable; nothing was acknowledged, retry."},
            },
        )
        app.openapi_schema = get_openapi(
            title=app.title,
            version=app.version,
            description=app.description,
            routes=[webhook_route, *app.routes],
        )
    return app.openapi_schema


# -- helpers --------------------------------------------------------------------------------------


async def _wait_at_most(awaitable: Awaitable[_T], seconds: float) -> _T:
    """``await awaitable``, or ``TimeoutError`` after ``seconds``; no extra task on Python 3.11+."""
    if sys.version_info >= (3, 11):
        async with asyncio.timeout(seconds):
            return await awaitable
    return await asyncio.wait_for(awaitable, seconds)  # pragma: no cover - Python 3.10


def _describe(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {text}"[:300] if text else type(exc).__name__
