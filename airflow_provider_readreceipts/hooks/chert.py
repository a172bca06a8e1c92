"""
Chert (iMessage): everything vendor-specific in one place.

Auth, either mode from the connection (``auth_mode`` extra, default ``hmac`` when a tenant is set):

- ``hmac``: headers ``x-chert-tenant: <login>`` and ``x-chert-signature: v1,<unix seconds>,<hex>``,
  the hex being HMAC-SHA256 with the signing secret (password) over ``"<unix seconds>.<raw body>"``
  (``"<unix seconds>."`` for a request without a body). Chert refuses timestamps more than five
  minutes off (401, code 2013) and bad signatures (401, code 2004); each attempt is signed afresh.
- ``bearer``: ``Authorization: Bearer <password>``, plus ``x-chert-tenant`` when a tenant is set
  (multi-tenant accounts need it).

Mark-read works on a whole chat. Chert sends no read webhook: READ is learned by polling
``read_at`` on the chat's messages (:meth:`ChertHook.afetch_receipt_events`,
:func:`receipt_events_from_message`). Webhooks (``message.received``, ``reaction.added``,
``reaction.removed``) are signed with the subscription secret (extra ``webhook_secret``).

Choices made where Chert's documentation is silent:

- The webhook signature header is not pinned down (``X-Webhook-Signature`` or
  ``x-chert-signature``): the extra ``webhook_signature_header`` names it; empty accepts either.
- Reaction payloads are not documented: the reacted-to message id is read from the first of
  :data:`REACTION_MESSAGE_ID_PATHS` that is present.
- Events other than the three documented ones are stored as ``UNKNOWN`` (raw status = the event
  name) when a message id can be found, and acknowledged without storing anything otherwise.
- Message polling: ``delivered_at`` proves DELIVERED and ``read_at`` proves READ. The status
  words ``delivered``/``read`` add nothing of their own; without their timestamp they are kept as
  ``UNKNOWN`` rather than trusted. ``sent`` is SENT; ``failed``/``error`` or an error code is FAILED.
  An inbound message is RECEIVED (its ``read_at`` is our own mark-read, not a receipt).
- A host typed without a path gets Chert's ``/api/v1`` appended: every API route lives below it.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from collections.abc import Mapping
from typing import Any
from urllib.parse import quote, urlsplit, urlunsplit

from airflow_provider_readreceipts.hooks.base import ReadReceiptsHook
from airflow_provider_readreceipts.hooks.inputs import normalize_e164, require_text
from airflow_provider_readreceipts.hooks.payload import (
    WebhookRequest,
    dig,
    first,
    first_text,
    is_present,
    parse_timestamp,
    secrets_equal,
    text,
)
from airflow_provider_readreceipts.receipts import (
    InvalidInputError,
    ReceiptEvent,
    Status,
    VendorAPIError,
    WebhookAuthError,
    WebhookPayloadError,
)
from airflow_provider_readreceipts.vendors.chert import SPEC

VENDOR = SPEC.conn_type
API_ROOT_PATH = "/api/v1"
AUTH_MODES = ("hmac", "bearer")
#: Chert refuses request timestamps further off than this, and so does the webhook check.
SIGNATURE_WINDOW_SECONDS = 300
#: Tried in this order when the connection names no webhook signature header (names lower case).
DEFAULT_WEBHOOK_SIGNATURE_HEADERS = ("x-webhook-signature", "x-chert-signature")

EVENT_MESSAGE_RECEIVED = "message.received"
REACTION_EVENTS = ("reaction.added", "reaction.removed")

#: Where a webhook's message id may be: the documented ``data.message.id`` first, then the legacy
#: top-level aliases Chert mentions (``message_guid``) and flat layouts seen in other versions.
MESSAGE_ID_PATHS: tuple[str, ...] = (
    "data.message.id",
    "data.message_id",
    "message_id",
    "message_guid",
    "data.message_guid",
)
#: Reaction payloads are undocumented: the reacted-to message, by the most specific path first.
REACTION_MESSAGE_ID_PATHS: tuple[str, ...] = (
    "data.reaction.message_id",
    "data.reaction.target_message_id",
    "data.target_message_id",
    *MESSAGE_ID_PATHS,
)
CHAT_ID_PATHS: tuple[str, ...] = ("data.chat.id", "data.chat_id", "chat_id")
SENDER_PATHS: tuple[str, ...] = (
    "data.message.sender_handle.handle",
    "data.reaction.sender_handle.handle",
    "data.sender_handle.handle",
    "from",
)
EVENT_ID_PATHS: tuple[str, ...] = ("event_id",)
#: Where the signed body names its event, most specific first; a bare ``type`` is only a fallback
#: after the (unsigned) ``X-Webhook-Event`` header, since it may mean something else.
EVENT_NAME_PATHS: tuple[str, ...] = ("event", "event_type")
FALLBACK_EVENT_NAME_PATHS: tuple[str, ...] = ("type",)
OCCURRED_AT_PATHS: tuple[str, ...] = (
    "timestamp",
    "data.message.created_at",
    "data.reaction.created_at",
)

_FAILED_STATUSES = frozenset({"failed", "error"})
#: Status words whose evidence is a timestamp field; the word alone proves nothing.
_TIMESTAMPED_STATUSES = {"delivered": "delivered_at", "read": "read_at"}


def _unix_now() -> int:
    """The signing clock; a function of its own so tests can set it off."""
    return int(time.time())


def sign(secret: str, timestamp: str, body: bytes) -> str:
    """
    Chert's HMAC v1 digest: lowercase hex of HMAC-SHA256(secret, ``"<timestamp>.<body>"``).

    :param secret: the signing secret (API) or subscription secret (webhooks).
    :param timestamp: unix seconds, exactly as they appear in the header.
    :param body: the raw body bytes; empty for a request without a body.
    """
    return hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()


class ChertHook(ReadReceiptsHook, spec=SPEC):
    """
    Talk to the Chert Messaging API.

    The connection: login is the tenant slug (HMAC mode), password the signing secret (HMAC) or
    the bearer token, host an optional base URL (default ``https://console.trychert.com/api/v1``);
    extras ``auth_mode`` (``hmac`` or ``bearer``), ``webhook_secret`` and
    ``webhook_signature_header``.

    :param chert_conn_id: the Airflow connection of the Chert account.
    :param kwargs: timeouts and retry bounds, see :class:`ReadReceiptsHook`.
    """

    #: A chat id no tenant has: listing its messages answers 404 code 2002 once auth passed.
    PROBE_CHAT_ID = "airflow-connection-test"

    def __init__(self, *, chert_conn_id: str = SPEC.default_conn_id, **kwargs: Any) -> None:
        super().__init__(conn_id=chert_conn_id, **kwargs)
        self.chert_conn_id = chert_conn_id

    # -- connection and auth ----------------------------------------------------------------------

    def _auth_mode_of(self, conn: Any) -> str:
        configured = self._extra_of(conn, "auth_mode")
        if configured is None:
            return "hmac" if conn.login else "bearer"
        mode = str(configured).strip().lower()
        if mode not in AUTH_MODES:
            raise InvalidInputError("auth_mode", f"must be 'hmac' or 'bearer', not {configured!r}")
        return mode

    def _check_connection(self, conn: Any) -> None:
        where = f"connection {conn.conn_id!r}"
        mode = self._auth_mode_of(conn)
        if not conn.password:
            raise InvalidInputError(
                where, "Chert needs the signing secret (HMAC mode) or the bearer token as password"
            )
        if mode == "hmac" and not (conn.login or "").strip():
            raise InvalidInputError(
                where, "Chert's HMAC mode needs the tenant slug as login (or set auth_mode to bearer)"
            )

    def _set_base_url(self, connection: Any) -> None:
        super()._set_base_url(connection)
        parts = urlsplit(self.base_url)
        if parts.path in ("", "/"):
            # "console.trychert.com" alone: every Chert route lives below /api/v1.
            self.base_url = urlunsplit(parts._replace(path=API_ROOT_PATH))

    def auth_headers(self, method: str, path: str, body: bytes) -> dict[str, str]:
        # The signature covers the timestamp and the body only, not the method or the path, so
        # the base URL's own path (/api/v1, or a sandbox prefix) does not matter here.
        conn = self._current_connection()
        secret = conn.password or ""
        tenant = (conn.login or "").strip()
        if self._auth_mode_of(conn) == "bearer":
            headers = {"Authorization": f"Bearer {secret}"}
            if tenant:
                headers["x-chert-tenant"] = tenant
            return headers
        timestamp = str(_unix_now())
        return {
            "x-chert-tenant": tenant,
            "x-chert-signature": f"v1,{timestamp},{sign(secret, timestamp, body)}",
        }

    def parse_error_body(self, body: Any) -> tuple[str | None, str | None, bool | None]:
        # {"success": false, "error": {"status", "code", "message", "retryable", "retry_after"?},
        #  "trace_id"}. Chert calls `retryable` authoritative ("never re-derive it"): pass it on.
        if isinstance(body, Mapping) and isinstance(body.get("error"), Mapping):
            error = body["error"]
            code = error.get("code")
            message = error.get("message")
            retryable = error.get("retryable")
            return (
                None if code is None else str(code),
                None if message is None else str(message),
                retryable if isinstance(retryable, bool) else None,
            )
        # Not Chert's envelope (a proxy or load balancer answered): the base reads what it can.
        return super().parse_error_body(body)

    # -- outbound calls ---------------------------------------------------------------------------

    def mark_read(self, *, chat_id: str) -> dict[str, Any]:
        """
        Mark the chat's unread inbound messages read and send a read receipt from its line.

        Idempotent at Chert (re-marking is a no-op), so it is retried on 429, 5xx flagged
        retryable and connection errors.

        :param chat_id: the Chert ``chat_id`` (a ``lead_id`` from :meth:`send_message` is one).
        """
        return self.request("mark_read", "POST", f"/chats/{_chat_path(chat_id)}/mark-read", idempotent=True)

    def send_message(self, *, phone: str, body: str, idempotency_key: str | None = None) -> dict[str, Any]:
        """
        Send a 1:1 iMessage; the response's ``message_id`` is its id, ``lead_id`` its chat id.

        With an ``idempotency_key`` Chert returns the original response for a repeated request, so
        the send is retried like any idempotent call. Without one, it is retried only where it
        surely did not reach Chert; after a timeout or a 5xx,
        :class:`~airflow_provider_readreceipts.receipts.DeliveryUnknownError` is raised instead.

        :param phone: the recipient, E.164.
        :param body: the text; blank lines split it into separate bubbles.
        :param idempotency_key: a key unique to this message (e.g. built from the DAG run and task).
        """
        payload: dict[str, Any] = {
            "phone": normalize_e164(phone, field="phone"),
            "body": require_text(body, field="body"),
        }
        if idempotency_key is not None:
            payload["idempotency_key"] = require_text(idempotency_key, field="idempotency_key")
        return self.request(
            "send_message", "POST", "/send", json_body=payload, idempotent=idempotency_key is not None
        )

    def send_to_chat(self, *, chat_id: str, body: str, idempotency_key: str | None = None) -> dict[str, Any]:
        """
        Send a text follow-up in an existing chat; the response's ``message.id`` is its id.

        Retried as :meth:`send_message` is: freely with an ``idempotency_key``, otherwise only where
        it surely did not reach Chert.

        :param chat_id: the Chert ``chat_id``.
        :param body: the text.
        :param idempotency_key: a key unique to this message.
        """
        message: dict[str, Any] = {"parts": [{"type": "text", "value": require_text(body, field="body")}]}
        if idempotency_key is not None:
            # Chert reads this key inside `message` on this route (at the top level on /send).
            message["idempotency_key"] = require_text(idempotency_key, field="idempotency_key")
        return self.request(
            "send_to_chat",
            "POST",
            f"/chats/{_chat_path(chat_id)}/messages",
            json_body={"message": message},
            idempotent=idempotency_key is not None,
        )

    def list_messages(self, chat_id: str) -> dict[str, Any]:
        """
        The chat's 200 most recent messages, oldest first: ``{"messages": [...], "has_more"}``.

        Each message has ``id``, ``status``, ``direction``, ``created_at``, ``delivered_at`` and
        ``read_at``.

        :param chat_id: the Chert ``chat_id``.
        """
        return self.request("list_messages", "GET", f"/chats/{_chat_path(chat_id)}/messages", idempotent=True)

    async def alist_messages(self, chat_id: str) -> dict[str, Any]:
        """
        Async twin of :meth:`list_messages`, for triggers.

        :param chat_id: the Chert ``chat_id``.
        """
        return await self.arequest("list_messages", "GET", f"/chats/{_chat_path(chat_id)}/messages")

    # -- reconcile --------------------------------------------------------------------------------

    async def afetch_receipt_events(self, *, message_id: str, chat: str = "") -> list[ReceiptEvent]:
        """
        Poll the chat's messages and return what the message's fields prove.

        The only way to learn READ from Chert. Returns ``[]`` when the message is not among the
        chat's 200 most recent ones (Chert lists no older messages).

        :param message_id: the ``message_id`` returned by the send.
        :param chat: the chat id (the send's ``lead_id``); required for Chert.
        """
        wanted = require_text(message_id, field="message_id")
        chat_id = require_text(chat, field="chat")
        listing = await self.alist_messages(chat_id)
        for message in _messages_of(listing):
            if text(message.get("id")) == wanted:
                return receipt_events_from_message(message, conn_id=self.chert_conn_id, chat_id=chat_id)
        return []

    # -- webhooks ---------------------------------------------------------------------------------

    def verify_webhook(self, request: WebhookRequest) -> None:
        """
        Check the HMAC-SHA256 signature made with the subscription secret over ``"<ts>.<raw body>"``.

        Accepts ``v1,<ts>,<hex>`` and ``t=<ts>,v1=<hex>`` in the header the connection's
        ``webhook_signature_header`` names, or in ``X-Webhook-Signature`` or ``x-chert-signature``
        when it names none. The timestamp must be within 300 seconds of receipt, either way.
        """
        secret = self.extra("webhook_secret")
        if not secret:
            raise WebhookAuthError(f"connection {self.chert_conn_id!r} has no webhook_secret configured")
        configured = str(self.extra("webhook_signature_header", "")).strip().lower()
        names = (configured,) if configured else DEFAULT_WEBHOOK_SIGNATURE_HEADERS
        presented = [(name, request.headers.get(name)) for name in names if request.headers.get(name)]
        if not presented:
            raise WebhookAuthError(f"missing {' or '.join(names)} header")
        reasons = []
        for name, value in presented:
            reason = _signature_problem(
                str(value), request.body, str(secret), received_at=request.received_at
            )
            if reason is None:
                return
            reasons.append(f"{name}: {reason}")
        raise WebhookAuthError("; ".join(reasons))

    def parse_webhook(self, request: WebhookRequest) -> list[ReceiptEvent]:
        """
        ``message.received`` becomes one RECEIVED event; ``reaction.added`` and ``reaction.removed``
        one ``UNKNOWN`` event (raw status: the event name) on the reacted-to message, kept for audit.

        The signature covers the body, not the headers: so the body's own ``event`` (or
        ``event_type``) and ``event_id`` win, and the ``X-Webhook-Event`` and ``X-Webhook-Event-Id``
        headers count only when the body does not say. Otherwise a replay inside the signature's
        window with an edited header could pass a genuine delivery off as another event, or dodge
        the store's replay guard (the event id) with a new id.
        """
        body = request.json_object()
        event = (
            first_text(body, EVENT_NAME_PATHS)
            or text(request.headers.get("x-webhook-event")).strip()
            or first_text(body, FALLBACK_EVENT_NAME_PATHS)
        )
        if not event:
            raise WebhookPayloadError("the event name is missing (X-Webhook-Event header or body 'event')")
        event_id = first_text(body, EVENT_ID_PATHS) or text(request.headers.get("x-webhook-event-id")).strip()
        is_reaction = event in REACTION_EVENTS
        message_id = first_text(body, REACTION_MESSAGE_ID_PATHS if is_reaction else MESSAGE_ID_PATHS)
        if not message_id:
            if event == EVENT_MESSAGE_RECEIVED or is_reaction:
                raise WebhookPayloadError(f"{event}: the message id is missing (data.message.id)")
            # An event this package does not know and cannot tie to a message: acknowledge it.
            return []
        is_group = dig(body, "data.chat.is_group") is True
        return [
            ReceiptEvent(
                vendor=VENDOR,
                conn_id=request.conn_id,
                message_id=message_id,
                status=Status.RECEIVED if event == EVENT_MESSAGE_RECEIVED else Status.UNKNOWN,
                raw_status=event,
                # In a group chat, who wrote or reacted; a 1:1 chat's id already says who.
                participant=first_text(body, SENDER_PATHS) if is_group else "",
                chat_id=first_text(body, CHAT_ID_PATHS),
                occurred_at=parse_timestamp(first(body, OCCURRED_AT_PATHS, is_present)),
                event_id=event_id,
                payload=body,
            )
        ]

    @classmethod
    def inbound_text(cls, payload: Mapping[str, Any]) -> str:
        """A ``message.received`` text: its text parts joined, or the legacy ``text`` / ``body``."""
        parts = dig(payload, "data.message.parts")
        if isinstance(parts, list):
            texts = [
                str(part.get("value"))
                for part in parts
                if isinstance(part, Mapping) and part.get("type") == "text" and part.get("value")
            ]
            if texts:
                return "\n".join(texts).strip()
        return first_text(payload, ("data.message.text", "data.message.body", "text", "body"))

    # -- connection test --------------------------------------------------------------------------

    def probe(self) -> None:
        # Listing a chat that cannot exist changes nothing; 404 code 2002 ("chat not found in your
        # tenant") proves the credentials were accepted. Any other 404 (a wrong base URL) fails.
        try:
            self.list_messages(self.PROBE_CHAT_ID)
        except VendorAPIError as exc:
            if exc.status_code == 404 and exc.code == "2002":
                return
            raise


def receipt_events_from_message(
    message: Mapping[str, Any], *, conn_id: str, chat_id: str = ""
) -> list[ReceiptEvent]:
    """
    The receipt events one message row of ``GET /chats/{id}/messages`` proves.

    ``read_at`` set: READ (at ``read_at``); ``delivered_at`` set: DELIVERED; status ``sent``: SENT;
    status ``failed``/``error`` or an error code: FAILED with the error fields; an inbound message:
    RECEIVED only. Other statuses are kept as ``UNKNOWN``. For READ and DELIVERED the raw status
    names the field that proves it (``read_at``, ``delivered_at``). Shared by the hook's reconcile
    and the read sensor.

    :param message: one element of the response's ``messages``.
    :param conn_id: the Airflow connection the events belong to.
    :param chat_id: the chat the message was listed in (used when the row names none).
    """
    message_id = text(message.get("id"))
    if not message_id:
        return []
    chat = text(message.get("chat_id")) or chat_id
    raw_status = text(message.get("status")).strip()
    status_word = raw_status.lower()
    payload = dict(message)

    def event(status: Status, raw: str, at: Any = None, **errors: str) -> ReceiptEvent:
        return ReceiptEvent(
            vendor=VENDOR,
            conn_id=conn_id,
            message_id=message_id,
            status=status,
            raw_status=raw,
            chat_id=chat,
            occurred_at=parse_timestamp(at),
            payload=payload,
            **errors,
        )

    if text(message.get("direction")).lower() == "inbound":
        return [event(Status.RECEIVED, raw_status or "inbound", message.get("created_at"))]

    events = []
    if message.get("read_at"):
        events.append(event(Status.READ, "read_at", message["read_at"]))
    if message.get("delivered_at"):
        events.append(event(Status.DELIVERED, "delivered_at", message["delivered_at"]))
    error_code, error_message = _message_error(message)
    if status_word == "sent":
        events.append(event(Status.SENT, raw_status, message.get("created_at")))
    elif status_word in _FAILED_STATUSES or error_code:
        events.append(
            event(Status.FAILED, raw_status or "error", error_code=error_code, error_message=error_message)
        )
    elif status_word in _TIMESTAMPED_STATUSES:
        if not message.get(_TIMESTAMPED_STATUSES[status_word]):
            events.append(event(Status.UNKNOWN, raw_status))
    elif raw_status:
        events.append(event(Status.UNKNOWN, raw_status))
    return events


def _chat_path(chat_id: Any) -> str:
    # Chat ids are opaque: quote everything, so "a/b" cannot reach another route.
    return quote(require_text(chat_id, field="chat_id"), safe="")


def _signature_problem(header: str, body: bytes, secret: str, *, received_at: float) -> str | None:
    """Why a webhook signature header does not verify, or ``None`` when it does. Never quotes it."""
    parsed = _parse_signature_header(header)
    if parsed is None:
        return "not in the form v1,<ts>,<hex> or t=<ts>,v1=<hex>"
    timestamp, digests = parsed
    if abs(received_at - int(timestamp)) > SIGNATURE_WINDOW_SECONDS:
        return f"timestamp is more than {SIGNATURE_WINDOW_SECONDS} s from the time of receipt"
    expected = sign(secret, timestamp, body)
    # Check every candidate (key rotation sends several) without stopping early.
    matched = False
    for digest in digests:
        matched |= secrets_equal(digest.lower(), expected)
    return None if matched else "signature does not match"


def _parse_signature_header(header: str) -> tuple[str, list[str]] | None:
    """``(timestamp, [hex, ...])`` from ``v1,<ts>,<hex>`` or ``t=<ts>,v1=<hex>[,v1=<hex>]``."""
    parts = [part.strip() for part in header.split(",")]
    if len(parts) == 3 and parts[0] == "v1":
        timestamp, digests = parts[1], [parts[2]]
    else:
        timestamp, digests = "", []
        for part in parts:
            key, _, value = part.partition("=")
            if key.strip() == "t":
                timestamp = value.strip()
            elif key.strip() == "v1" and value.strip():
                digests.append(value.strip())
    # Digits only, and few of them: int() of a huge string is slow and the window needs no more.
    if not (timestamp.isascii() and timestamp.isdigit() and len(timestamp) <= 12) or not digests:
        return None
    return timestamp, digests


def _messages_of(listing: Any) -> list[Mapping[str, Any]]:
    messages = listing.get("messages") if isinstance(listing, Mapping) else None
    if not isinstance(messages, list):
        return []
    return [message for message in messages if isinstance(message, Mapping)]


def _message_error(message: Mapping[str, Any]) -> tuple[str, str]:
    error = message.get("error")
    if isinstance(error, Mapping):
        return text(error.get("code")), text(error.get("message"))
    return text(message.get("error_code")), text(message.get("error_message") or error)
