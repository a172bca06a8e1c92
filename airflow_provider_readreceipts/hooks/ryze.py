"""
RyzeAPI (WhatsApp): everything vendor-specific in one place.

An *instance* is one connected WhatsApp number; its name is part of every path. Auth is one token
(the instance token, or the account token) sent as a ``token`` header, or as ``Authorization:
Bearer`` when the connection's ``auth_scheme`` extra says ``bearer``.

Recipients (``number``) are either a phone number or a WhatsApp JID:

* Phone numbers are sent as digits only (``5511987654321``), the form RyzeAPI's documentation
  calls preferred. They are given in E.164 (``+55 11 98765-4321``, formatting allowed) or already
  as that digit string, which is read the way RyzeAPI reads it, country code first, so the hook's
  own output is valid input again. Either way ``phonenumbers`` must find a valid number: a national
  ``4155551234`` (RyzeAPI would read ``+41 55...``) is refused, not guessed.
* JIDs are passed through: ``<digits>@s.whatsapp.net`` (a person), ``<digits>@lid`` (a hidden
  number), ``<digits>@g.us`` (a group; needs ``sender`` when marking read) and
  ``<digits>@newsletter`` (a channel).

Webhooks carry no signature: the only proof of origin is the static ``authorization`` value set on
the RyzeAPI webhook, which RyzeAPI sends back as the ``Authorization`` header. Keep the webhook's
``byEvents`` option off: it appends the event name to the URL, which the receiver's route does not
expect.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any
from urllib.parse import quote

from airflow_provider_readreceipts.hooks.base import ReadReceiptsHook
from airflow_provider_readreceipts.hooks.inputs import normalize_e164, require_text
from airflow_provider_readreceipts.hooks.payload import (
    WebhookRequest,
    dig,
    first,
    first_text,
    is_text,
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
    WebhookRejected,
)
from airflow_provider_readreceipts.vendors.ryze import SPEC

VENDOR = SPEC.conn_type

#: Status names as RyzeAPI writes them (lower case; ``-`` read as ``_``). ``read_self`` and
#: ``played_self`` mean *we* read an inbound message on another device, not that the recipient
#: read ours: they are deliberately absent and end up as UNKNOWN with the raw value kept.
STATUS_BY_NAME: dict[str, Status] = {
    "pending": Status.QUEUED,
    "sent": Status.SENT,
    "server_ack": Status.SENT,
    "delivered": Status.DELIVERED,
    "delivery_ack": Status.DELIVERED,
    "received": Status.DELIVERED,
    "read": Status.READ,
    "played": Status.READ,
    "error": Status.FAILED,
    "failed": Status.FAILED,
}
#: The numeric ``status_code`` RyzeAPI takes from WhatsMeow.
STATUS_BY_CODE: dict[int, Status] = {
    0: Status.QUEUED,
    1: Status.SENT,
    2: Status.DELIVERED,
    3: Status.DELIVERED,
    4: Status.READ,
    5: Status.READ,
    -1: Status.FAILED,
}

STATUS_EVENT = "message.status"
EXCHANGE_EVENT = "message.exchange"

#: Where ``message.status`` keeps each field is not documented by RyzeAPI, so each is
#: looked up through dotted paths from the envelope's root. A connection extra of the same name
#: replaces the defaults with its own comma-separated paths; the first path that holds a usable
#: value wins.
DEFAULT_STATUS_PATHS: dict[str, tuple[str, ...]] = {
    "webhook_message_id_path": (
        "data.messageId",
        "data.messageIds",
        "data.message_id",
        "data.id",
        "data.ids",
        "data.key.id",
    ),
    "webhook_status_path": ("data.status", "data.status_code", "data.ack", "data.type"),
    "webhook_chat_path": (
        "data.chat.jid",
        "data.chat",
        "data.chatJid",
        "data.chat_jid",
        "data.key.remoteJid",
        "data.remoteJid",
        "data.from",
    ),
    "webhook_participant_path": (
        "data.sender.jid",
        "data.sender",
        "data.participant",
        "data.key.participant",
    ),
    "webhook_timestamp_path": ("data.timestamp", "data.messageTimestamp", "data.time"),
}

# message.exchange: the layout RyzeAPI documents and integrators report, plus the Baileys-style
# ``key`` object that WhatsApp gateways commonly use.
_EXCHANGE_ID_PATHS = ("data.id", "data.messageId", "data.key.id", "data.message.id")
_EXCHANGE_CHAT_PATHS = DEFAULT_STATUS_PATHS["webhook_chat_path"]
_EXCHANGE_AUTHOR_PATHS = DEFAULT_STATUS_PATHS["webhook_participant_path"]
_EXCHANGE_TIME_PATHS = ("data.timestamp", "data.messageTimestamp", "data.message.timestamp")
_OUTBOUND_DIRECTIONS = frozenset({"outgoing", "outbound", "sent"})
_FROM_ME_PATHS = ("data.fromMe", "data.key.fromMe", "data.message.fromMe")

_PERSON_JID = re.compile(r"\d{5,20}@s\.whatsapp\.net")
_HIDDEN_JID = re.compile(r"\d{1,25}@lid")
_GROUP_JID = re.compile(r"\d{5,25}(?:-\d{5,15})?@g\.us")
_CHANNEL_JID = re.compile(r"\d{5,25}@newsletter")
_SENDER_JIDS = (_PERSON_JID, _HIDDEN_JID)
_CHAT_JIDS = (_PERSON_JID, _HIDDEN_JID, _GROUP_JID, _CHANNEL_JID)

_AUTH_SCHEMES = ("token", "bearer")
#: A message id that cannot exist: the connection test looks it up and expects "Message not found".
_PROBE_MESSAGE_ID = "airflow-connection-test"


def is_group_jid(value: str) -> bool:
    """Whether ``value`` names a WhatsApp group chat (``...@g.us``)."""
    return value.strip().lower().endswith("@g.us")


def normalize_recipient(value: Any, *, field: str) -> str:
    """
    A RyzeAPI ``number``: E.164 phone numbers become digits only; JIDs are checked and kept.

    :param value: a phone number in E.164 (or as RyzeAPI's digits-only form of it), or a JID
        (``...@s.whatsapp.net``, ``...@lid``, ``...@g.us``, ``...@newsletter``). JIDs are kept as
        given: a person's JID is not turned into digits, because RyzeAPI resolves digits itself
        (trying Brazilian numbers with and without the extra 9) while a JID names one account.
    :param field: the argument's name, for the error message.
    """
    given = require_text(value, field=field)
    if "@" in given:
        jid = given.lower()
        if any(pattern.fullmatch(jid) for pattern in _CHAT_JIDS):
            return jid
        raise InvalidInputError(
            field,
            f"{given!r} is not a WhatsApp JID; expected <digits>@s.whatsapp.net, <digits>@lid, "
            "<digits>@g.us or <digits>@newsletter",
        )
    if given.isdigit() and given.isascii():
        # RyzeAPI's own form: country code first, no "+". Valid only if it is valid read that way.
        try:
            return normalize_e164(f"+{given}", field=field).lstrip("+")
        except InvalidInputError:
            raise InvalidInputError(
                field,
                f"{given!r} read country code first, as RyzeAPI reads digits, is not a valid phone "
                "number; write it in E.164 with its country code, e.g. +14155551234",
            ) from None
    if not given.startswith("+"):
        raise InvalidInputError(
            field,
            f"{given!r} is not in international form: write phone numbers in E.164 (e.g. "
            "+5511987654321) or pass a JID such as 5511987654321@s.whatsapp.net",
        )
    return normalize_e164(given, field=field).lstrip("+")


def normalize_sender(value: Any, *, field: str = "sender") -> str:
    """
    The author of a group message as RyzeAPI wants it: a person's JID.

    :param value: a JID (``...@s.whatsapp.net`` or ``...@lid``) or an E.164 phone number, which
        becomes ``<digits>@s.whatsapp.net``.
    :param field: the argument's name, for the error message.
    """
    given = require_text(value, field=field)
    if "@" not in given:
        return f"{normalize_recipient(given, field=field)}@s.whatsapp.net"
    jid = given.lower()
    if any(pattern.fullmatch(jid) for pattern in _SENDER_JIDS):
        return jid
    raise InvalidInputError(
        field, f"{given!r} is not a person's JID; expected <digits>@s.whatsapp.net or <digits>@lid"
    )


def sent_message_id(response: Any) -> str | None:
    """
    The id of a message :meth:`RyzeHook.send_message` sent, wherever the response keeps it.

    RyzeAPI documents that the send response "includes messageId" but not whether at the top level
    or under ``data`` (its general envelope), so both are read.
    """
    for path in ("messageId", "data.messageId", "message_id", "data.message_id", "data.id", "key.id"):
        value = dig(response, path)
        if isinstance(value, str) and value:
            return value
    return None


class RyzeHook(ReadReceiptsHook, spec=SPEC):
    """
    Talk to RyzeAPI, a WhatsApp gateway.

    The connection: password is the token (instance or account token), host an optional base URL
    (default ``https://ryzeapi.cloud``), extras ``instance`` (required: the instance name),
    ``auth_scheme`` (``token``, the default, or ``bearer``), ``webhook_authorization`` (the value
    RyzeAPI sends as the webhook's Authorization header) and the ``webhook_*_path`` field paths
    described in :meth:`parse_webhook`.

    :param ryze_conn_id: the Airflow connection of the RyzeAPI instance.
    :param kwargs: timeouts and retry bounds, see :class:`ReadReceiptsHook`.
    """

    def __init__(self, *, ryze_conn_id: str = SPEC.default_conn_id, **kwargs: Any) -> None:
        super().__init__(conn_id=ryze_conn_id, **kwargs)
        self.ryze_conn_id = ryze_conn_id

    # -- connection -------------------------------------------------------------------------------

    def _check_connection(self, conn: Any) -> None:
        where = f"connection {conn.conn_id!r}"
        if not conn.password:
            raise InvalidInputError(where, "the password field must hold the RyzeAPI token")
        instance = self._extra_of(conn, "instance")
        if not isinstance(instance, str) or not instance.strip():
            raise InvalidInputError(where, "the extra field 'instance' must name the RyzeAPI instance")
        mode = str(self._extra_of(conn, "auth_scheme", "token")).strip().lower()
        if mode not in _AUTH_SCHEMES:
            raise InvalidInputError(
                where, f"the extra field 'auth_scheme' must be 'token' or 'bearer', not {mode!r}"
            )

    @property
    def instance(self) -> str:
        """The instance name from the connection, as typed (not URL-quoted)."""
        return str(self._extra_of(self._current_connection(), "instance")).strip()

    def _endpoint(self, prefix: str) -> str:
        # Instance names are free text: quote every reserved character, "/" included.
        return f"{prefix}/{quote(self.instance, safe='')}"

    def auth_headers(self, method: str, path: str, body: bytes) -> dict[str, str]:
        conn = self._current_connection()
        token = conn.password or ""
        if str(self._extra_of(conn, "auth_scheme", "token")).strip().lower() == "bearer":
            return {"Authorization": f"Bearer {token}"}
        return {"token": token}

    def parse_error_body(self, body: Any) -> tuple[str | None, str | None, bool | None]:
        # {"success": false, "error": {"message": "..."}}; no error code exists, so none is returned
        # and retryability follows the HTTP status (429 and 503 "not connected" are transient).
        if isinstance(body, Mapping):
            error = body.get("error")
            if isinstance(error, Mapping) and error.get("message"):
                return None, str(error["message"]), None
            if isinstance(error, str) and error:
                return None, error, None
            if body.get("message"):
                return None, str(body["message"]), None
        return None, None, None

    # -- outbound calls ---------------------------------------------------------------------------

    def mark_read(self, *, message_id: str, number: str, sender: str | None = None) -> dict[str, Any]:
        """
        Send the read receipt (blue ticks) for one message.

        :param message_id: the WhatsApp id of the message being marked read.
        :param number: the chat: an E.164 phone number or a JID; a group JID (``...@g.us``) needs
            ``sender``.
        :param sender: the message's author (JID or E.164 number); required in groups, optional in
            one-to-one chats.
        """
        body: dict[str, Any] = {
            "messageId": require_text(message_id, field="message_id"),
            "number": normalize_recipient(number, field="number"),
        }
        if sender is not None and str(sender).strip():
            body["sender"] = normalize_sender(sender)
        elif is_group_jid(body["number"]):
            raise InvalidInputError(
                "sender", "is required for a group chat: pass the JID of the message's author"
            )
        return self.request(
            "mark_read", "POST", self._endpoint("/api/chat/markRead"), json_body=body, idempotent=True
        )

    def mark_chat_read(self, *, number: str) -> dict[str, Any]:
        """
        Mark every message of a chat read at once.

        :param number: the chat: an E.164 phone number or a JID.
        """
        body = {"number": normalize_recipient(number, field="number"), "read": True}
        return self.request(
            "mark_chat_read",
            "POST",
            self._endpoint("/api/chat/markChatRead"),
            json_body=body,
            idempotent=True,
        )

    def send_message(self, *, number: str, message: str) -> dict[str, Any]:
        """
        Send a text message; the response's ``messageId`` is its id.

        RyzeAPI has no idempotency key, so a send is retried only when it surely did not reach
        RyzeAPI (connection refused, 429); after a timeout or a 5xx,
        :class:`~airflow_provider_readreceipts.receipts.DeliveryUnknownError` is raised instead of
        sending twice. Where the response keeps the id under ``data``, it is copied to a top-level
        ``messageId`` so callers read it in one place.

        :param number: the recipient: an E.164 phone number or a JID (a group or channel too).
        :param message: the text.
        """
        body = {
            "number": normalize_recipient(number, field="number"),
            "message": require_text(message, field="message"),
        }
        response = self.request(
            "send_message", "POST", self._endpoint("/api/message/text"), json_body=body, idempotent=False
        )
        if isinstance(response, dict):
            message_id = sent_message_id(response)
            if message_id:
                response.setdefault("messageId", message_id)
            else:
                self.log.warning("RyzeAPI accepted the message but its response names no messageId")
        return response

    def get_status(self, message_id: str) -> dict[str, Any]:
        """
        The message's delivery status now: ``status`` (name), ``status_code``, ``direction``,
        ``chat_jid`` and ``timestamp`` (when the message travelled, not when it was read).

        :param message_id: the WhatsApp id of the message.
        """
        wanted = require_text(message_id, field="message_id")
        return self.request(
            "get_status",
            "GET",
            self._endpoint("/api/chat/status"),
            params={"messageId": wanted},
            idempotent=True,
        )

    async def aget_status(self, message_id: str) -> dict[str, Any]:
        """
        Async twin of :meth:`get_status`, for triggers.

        :param message_id: the WhatsApp id of the message.
        """
        wanted = require_text(message_id, field="message_id")
        await self._aget_session()  # loads the connection without blocking; the path needs it
        return await self.arequest(
            "get_status", "GET", self._endpoint("/api/chat/status"), params={"messageId": wanted}
        )

    async def afetch_receipt_events(self, *, message_id: str, chat: str = "") -> list[ReceiptEvent]:
        """
        The status API's view of one message as receipt events; ``[]`` for pending and sent.

        ``occurred_at`` stays empty: the status API's ``timestamp`` is when the message travelled,
        not when it was delivered or read.

        :param message_id: the WhatsApp id of the message.
        :param chat: the chat the caller knows, used when the response names none.
        """
        snapshot = await self.aget_status(message_id)
        if not isinstance(snapshot, Mapping):
            return []
        raw = snapshot.get("status")
        if raw in (None, ""):
            raw = snapshot.get("status_code")
        if raw in (None, "") or not _is_status_value(raw):
            return []
        status, raw_status = normalize_status(raw)
        if status is Status.UNKNOWN and _is_status_value(snapshot.get("status_code")):
            status = normalize_status(snapshot["status_code"])[0]
        if status in (Status.QUEUED, Status.SENT):
            return []
        return [
            ReceiptEvent(
                vendor=VENDOR,
                conn_id=self.ryze_conn_id,
                message_id=message_id,
                status=status,
                raw_status=raw_status,
                chat_id=text(snapshot.get("chat_jid")) or chat,
                payload=dict(snapshot),
            )
        ]

    def probe(self) -> None:
        """
        Look up a message id that cannot exist: "Message not found" proves the token and the
        instance; 401 (bad token) and 404 "Instance not found" are raised.
        """
        try:
            self.get_status(_PROBE_MESSAGE_ID)
        except VendorAPIError as exc:
            if exc.status_code == 404 and "instance not found" not in exc.message.lower():
                return
            raise

    @classmethod
    def inbound_text(cls, payload: Mapping[str, Any]) -> str:
        """A ``message.exchange`` text, wherever RyzeAPI and WhatsApp gateways keep it."""
        return first_text(
            payload,
            (
                "data.message.content",
                "data.message.conversation",
                "data.message.text",
                "data.message.extendedTextMessage.text",
                "data.text",
                "data.body",
            ),
        )

    # -- webhooks ---------------------------------------------------------------------------------

    def verify_webhook(self, request: WebhookRequest) -> None:
        """
        RyzeAPI signs nothing: it sends the webhook's configured ``authorization`` value itself as
        the ``Authorization`` header. The connection's ``webhook_authorization`` must hold that
        exact value (``Bearer s3cret`` if that is what was configured); a connection without one
        refuses every webhook.
        """
        expected = self.extra("webhook_authorization")
        if not expected:
            raise WebhookAuthError(
                f"connection {self.ryze_conn_id!r} has no webhook_authorization configured"
            )
        given = request.headers.get("authorization")
        if not secrets_equal(given.strip() if given else None, str(expected).strip()):
            raise WebhookAuthError("missing or wrong Authorization header")

    def parse_webhook(self, request: WebhookRequest) -> list[ReceiptEvent]:
        """
        Normalise a verified webhook: ``{"event", "data", "instanceData": {"instance", ...}}``.

        * ``message.status``: one event per message id. Where ``data`` keeps each field is not
          documented, so each is read through dotted paths from the envelope's root, set per
          connection in extras (comma-separated alternatives, first usable wins) or else these
          defaults:

          - ``webhook_message_id_path``: ``data.messageId``, ``data.messageIds`` (a list gives one
            event per id), ``data.message_id``, ``data.id``, ``data.ids``, ``data.key.id``
          - ``webhook_status_path``: ``data.status``, ``data.status_code``, ``data.ack``,
            ``data.type``; names (``read``) or numbers (``4``), see :data:`STATUS_BY_NAME` and
            :data:`STATUS_BY_CODE`; anything else is kept raw as UNKNOWN
          - ``webhook_chat_path``: ``data.chat.jid``, ``data.chat``, ``data.chatJid``,
            ``data.chat_jid``, ``data.key.remoteJid``, ``data.remoteJid``, ``data.from``
          - ``webhook_participant_path`` (groups only: who read or received it):
            ``data.sender.jid``, ``data.sender``, ``data.participant``, ``data.key.participant``
          - ``webhook_timestamp_path``: ``data.timestamp``, ``data.messageTimestamp``, ``data.time``

        * ``message.exchange``: an inbound message becomes RECEIVED (in a group, ``participant`` is
          its author, whom :meth:`mark_read` needs as ``sender``); outbound echoes (``direction``
          outgoing, or ``fromMe``) give no event.
        * Every other event (calls, groups, instance state) gives no event.

        An envelope for another instance is refused as a payload error: the Authorization value
        proved it comes from RyzeAPI, so it is not forged, but it belongs to another instance whose
        webhook points at this connection's URL, a set-up mistake that storing would hide.
        ``instanceData.token`` (RyzeAPI puts the instance token there) is removed from the kept
        payload.
        """
        body = request.json_object()
        try:
            return self._parse_envelope(request.conn_id, body)
        except WebhookRejected:
            raise
        except (TypeError, ValueError, AttributeError, KeyError, IndexError, RecursionError) as exc:
            # A trust boundary: whatever slipped past the checks is still only a bad payload.
            raise WebhookPayloadError(f"unusable RyzeAPI payload ({type(exc).__name__})") from None

    def _parse_envelope(self, conn_id: str, body: Mapping[str, Any]) -> list[ReceiptEvent]:
        event = body.get("event")
        if not isinstance(event, str) or not event:
            raise WebhookPayloadError("event is missing")
        self._check_webhook_instance(conn_id, body)
        if event not in (STATUS_EVENT, EXCHANGE_EVENT):
            return []
        if not isinstance(body.get("data"), Mapping):
            raise WebhookPayloadError("data must be a JSON object")
        payload = _without_token(body)
        if event == STATUS_EVENT:
            return self._status_events(conn_id, body, payload)
        return _exchange_events(conn_id, body, payload)

    def _check_webhook_instance(self, conn_id: str, body: Mapping[str, Any]) -> None:
        sent_for = dig(body, "instanceData.instance")
        if not isinstance(sent_for, str) or not sent_for:
            raise WebhookPayloadError("instanceData.instance is missing")
        if sent_for != self.instance:
            raise WebhookPayloadError(
                f"the webhook is for instance {sent_for[:100]!r}, but connection {conn_id!r} is for "
                f"instance {self.instance!r}"
            )

    def _paths(self, name: str) -> tuple[str, ...]:
        configured = self.extra(name)
        if isinstance(configured, str) and configured.strip():
            return tuple(path.strip() for path in configured.split(",") if path.strip())
        return DEFAULT_STATUS_PATHS[name]

    def _status_events(
        self, conn_id: str, body: Mapping[str, Any], payload: Mapping[str, Any]
    ) -> list[ReceiptEvent]:
        id_paths = self._paths("webhook_message_id_path")
        found_ids = first(body, id_paths, _is_message_ids)
        if found_ids is None:
            raise WebhookPayloadError(f"no message id at {', '.join(id_paths)}")
        status_paths = self._paths("webhook_status_path")
        raw = first(body, status_paths, _is_status_value)
        if raw is None:
            raise WebhookPayloadError(f"no status at {', '.join(status_paths)}")
        status, raw_status = normalize_status(raw)
        chat = first(body, self._paths("webhook_chat_path"), is_text) or ""
        participant = ""
        if is_group_jid(chat):
            participant = first(body, self._paths("webhook_participant_path"), is_text) or ""
        occurred_at = parse_timestamp(first(body, self._paths("webhook_timestamp_path"), _is_timestamp))
        error_message = first(body, ("data.error.message", "data.error"), is_text) or ""
        message_ids = [found_ids] if isinstance(found_ids, str) else found_ids
        return [
            ReceiptEvent(
                vendor=VENDOR,
                conn_id=conn_id,
                message_id=message_id,
                status=status,
                raw_status=raw_status,
                participant=participant,
                chat_id=chat,
                occurred_at=occurred_at,
                error_message=error_message if status is Status.FAILED else "",
                payload=payload,
            )
            for message_id in dict.fromkeys(message_ids)  # once each, in order
        ]


def normalize_status(raw: Any) -> tuple[Status, str]:
    """
    A RyzeAPI status, by name (``"read"``) or number (``4``, ``"4"``), on the shared ladder.

    Returns the normalised status and the raw value as text; unknown values are UNKNOWN.
    """
    if isinstance(raw, bool):
        return Status.UNKNOWN, str(raw).lower()
    if isinstance(raw, float) and raw.is_integer():
        raw = int(raw)
    if isinstance(raw, int):
        return STATUS_BY_CODE.get(raw, Status.UNKNOWN), str(raw)
    text = str(raw).strip()
    if re.fullmatch(r"-?\d{1,3}", text):
        return STATUS_BY_CODE.get(int(text), Status.UNKNOWN), text
    return STATUS_BY_NAME.get(text.lower().replace("-", "_"), Status.UNKNOWN), text


def _exchange_events(conn_id: str, body: Mapping[str, Any], payload: Mapping[str, Any]) -> list[ReceiptEvent]:
    direction = dig(body, "data.direction")
    if isinstance(direction, str) and direction:
        if direction.lower() in _OUTBOUND_DIRECTIONS:
            return []  # our own message echoed back, not something someone sent us
    elif any(dig(body, path) is True for path in _FROM_ME_PATHS):
        return []
    message_id = first(body, _EXCHANGE_ID_PATHS, is_text)
    if message_id is None:
        raise WebhookPayloadError(f"no message id at {', '.join(_EXCHANGE_ID_PATHS)}")
    chat = first(body, _EXCHANGE_CHAT_PATHS, is_text) or ""
    author = first(body, _EXCHANGE_AUTHOR_PATHS, is_text) or ""
    return [
        ReceiptEvent(
            vendor=VENDOR,
            conn_id=conn_id,
            message_id=message_id,
            status=Status.RECEIVED,
            raw_status="received",
            participant=author if is_group_jid(chat) else "",
            chat_id=chat or author,
            occurred_at=parse_timestamp(first(body, _EXCHANGE_TIME_PATHS, _is_timestamp)),
            payload=payload,
        )
    ]


def _is_message_ids(value: Any) -> bool:
    if isinstance(value, list):
        return bool(value) and all(is_text(item) for item in value)
    return is_text(value)


def _is_status_value(value: Any) -> bool:
    return is_text(value) or (isinstance(value, (int, float)) and not isinstance(value, bool))


def _is_timestamp(value: Any) -> bool:
    return _is_status_value(value)


def _without_token(body: Mapping[str, Any]) -> dict[str, Any]:
    """The envelope as kept for audit, minus the instance token RyzeAPI includes in it."""
    kept = dict(body)
    instance_data = kept.get("instanceData")
    if isinstance(instance_data, Mapping) and "token" in instance_data:
        kept["instanceData"] = {k: v for k, v in instance_data.items() if k != "token"}
    return kept
