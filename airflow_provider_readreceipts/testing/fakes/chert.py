"""
Chert's API as CONTRACTS.md describes it: HMAC v1 or bearer auth, send, chat messages, mark-read.

Every error uses Chert's envelope (``{"success": false, "error": {...}, "trace_id"}``) with the
``X-Trace-ID`` header. Chert documents only 2013 (timestamp skew) and 2004 (bad signature) among
its auth codes, so the fake answers 2004 for every other credential failure too.

Test helpers move messages along (:meth:`ChertFake.deliver`, :meth:`ChertFake.read`,
:meth:`ChertFake.fail`), make a chat's mark-read fail (:meth:`ChertFake.fail_mark_read`), and sign
webhooks (:func:`webhook_signature`, :func:`message_received_event`).
"""

from __future__ import annotations

import hashlib
import hmac
import re
import time
import uuid
from datetime import datetime, timezone
from typing import Any
from urllib.parse import unquote

from airflow_provider_readreceipts.testing.fakes.server import FakeRequest, FakeResponse, Fault, VendorFake

TENANT = "acme-7a3f"
SIGNING_SECRET = "chert-signing-secret-8f2c9d41"  # noqa: S105 - the fake's own credential, public on purpose
WEBHOOK_SECRET = "chert-webhook-secret-1a2b3c4d"  # noqa: S105
LINE = "+14152165723"
WINDOW_SECONDS = 300
#: GET /chats/{id}/messages returns at most this many, the most recent ones.
PAGE_LIMIT = 200

#: Mark-read's documented errors: code -> (HTTP status, message, retryable by default).
MARK_READ_ERRORS: dict[int, tuple[int, str, bool]] = {
    2002: (404, "Chat not found in your tenant.", False),
    1002: (422, "Chat has no resolvable recipient.", False),
    4001: (502, "Delivery failed downstream.", True),
    4099: (501, "Mark-read is not available on this phone line.", False),
}

_CHAT = r"/chats/(?P<chat_id>[^/]+)"


def _now_iso() -> str:
    return datetime.now(timezone.utc).isoformat().replace("+00:00", "Z")


def chert_error(
    status: int, code: int, message: str, *, retryable: bool = False, retry_after: int | None = None
) -> FakeResponse:
    """A response in Chert's error envelope, with its trace id in the body and ``X-Trace-ID``."""
    trace_id = uuid.uuid4().hex[:12]
    error: dict[str, Any] = {"status": status, "code": code, "message": message, "retryable": retryable}
    headers = {"X-Trace-ID": trace_id}
    if retry_after is not None:
        error["retry_after"] = retry_after
        headers["Retry-After"] = str(retry_after)
    return FakeResponse(status, {"success": False, "error": error, "trace_id": trace_id}, headers)


def chert_fault(
    status: int,
    code: int,
    message: str = "scripted failure",
    *,
    retryable: bool = False,
    retry_after: int | None = None,
    path: str | None = None,
    method: str | None = None,
) -> Fault:
    """A :class:`Fault` answering once with Chert's error envelope (for ``server.inject``)."""
    response = chert_error(status, code, message, retryable=retryable, retry_after=retry_after)
    return Fault(status=status, body=response.body, headers=response.headers, path=path, method=method)


def rate_limited(retry_after: int = 1, **match: Any) -> Fault:
    """Chert's 429: code 1007, retryable, with ``retry_after`` in the body and ``Retry-After``."""
    return chert_fault(429, 1007, "Rate limit exceeded.", retryable=True, retry_after=retry_after, **match)


def sign(secret: str, timestamp: str, body: bytes) -> str:
    """Lowercase hex HMAC-SHA256 over ``"<timestamp>.<body>"`` (written apart from the hook's own)."""
    return hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()


def webhook_signature(
    body: bytes, *, secret: str = WEBHOOK_SECRET, timestamp: int | None = None, style: str = "v1"
) -> str:
    """
    A webhook signature header value.

    :param style: ``"v1"`` for ``v1,<ts>,<hex>``, ``"t="`` for ``t=<ts>,v1=<hex>``.
    """
    ts = str(int(time.time()) if timestamp is None else timestamp)
    digest = sign(secret, ts, body)
    return f"v1,{ts},{digest}" if style == "v1" else f"t={ts},v1={digest}"


def message_received_event(
    *,
    chat_id: str,
    message_id: str,
    sender: str = "+14155551234",
    text: str = "Sure, what time?",
    event_id: str | None = None,
    is_group: bool = False,
) -> dict[str, Any]:
    """A ``message.received`` body in the documented envelope."""
    me = {"handle": LINE, "service": "imessage", "is_me": True}
    them = {"handle": sender, "service": "imessage", "is_me": False}
    return {
        "event": "message.received",
        "event_id": event_id or f"chert:msg:{uuid.uuid4().hex[:24]}",
        "timestamp": _now_iso(),
        "api_version": "v1",
        "event_type": "message.received",
        "partner_id": TENANT,
        "data": {
            "chat": {"id": chat_id, "is_group": is_group, "handles": [me, them], "owner_handle": me},
            "message": {
                "id": message_id,
                "direction": "inbound",
                "sender_handle": them,
                "parts": [{"type": "text", "value": text}],
            },
        },
    }


class ChertFake(VendorFake):
    """
    :param tenant: the accepted ``x-chert-tenant``.
    :param secret: the signing secret, which is also the accepted bearer token.
    """

    prefix = "chert"

    def __init__(self, *, tenant: str = TENANT, secret: str = SIGNING_SECRET) -> None:
        super().__init__()
        self.tenant = tenant
        self.secret = secret
        self.chats: dict[str, dict[str, Any]] = {}
        self.marked_read: list[str] = []
        self._by_idempotency_key: dict[str, FakeResponse] = {}
        self._mark_read_errors: dict[str, dict[str, Any]] = {}
        self._lost_answers = 0
        self.route("POST", "/send", self.send)
        self.route("POST", f"{_CHAT}/messages", self.send_to_chat)
        self.route("GET", f"{_CHAT}/messages", self.list_messages)
        self.route("POST", f"{_CHAT}/mark-read", self.mark_read)

    def reset(self) -> None:
        with self.lock:
            self.chats.clear()
            self.marked_read.clear()
            self._by_idempotency_key.clear()
            self._mark_read_errors.clear()
            self._lost_answers = 0

    # -- auth -------------------------------------------------------------------------------------

    def dispatch(self, request: FakeRequest) -> FakeResponse:
        refusal = self._authenticate(request)
        return refusal if refusal is not None else super().dispatch(request)

    def _authenticate(self, request: FakeRequest) -> FakeResponse | None:
        signature = request.header("x-chert-signature")
        if signature is not None:  # checked first when both are present, as Chert does
            if request.header("x-chert-tenant") != self.tenant:
                return chert_error(401, 2004, "Unknown tenant or bad signature.")
            parts = signature.split(",")
            if len(parts) != 3 or parts[0] != "v1" or not parts[1].isdigit():
                return chert_error(401, 2004, "Malformed x-chert-signature.")
            if abs(time.time() - int(parts[1])) > WINDOW_SECONDS:
                return chert_error(401, 2013, "Request timestamp is outside the 5-minute window.")
            if not hmac.compare_digest(parts[2], sign(self.secret, parts[1], request.body)):
                return chert_error(401, 2004, "Signature verification failed.")
            return None
        authorization = request.header("authorization") or ""
        tenant = request.header("x-chert-tenant")
        if not hmac.compare_digest(authorization.encode(), f"Bearer {self.secret}".encode()) or (
            tenant is not None and tenant != self.tenant
        ):
            return chert_error(401, 2004, "Missing or invalid credentials.")
        return None

    # -- routes -----------------------------------------------------------------------------------

    def _json(self, request: FakeRequest) -> dict[str, Any] | FakeResponse:
        try:
            body = request.json() or {}
        except ValueError:
            return chert_error(400, 1001, "Body is not valid JSON.")
        return body if isinstance(body, dict) else chert_error(400, 1001, "Body must be a JSON object.")

    def _chat(self, match: re.Match[str]) -> dict[str, Any] | None:
        return self.chats.get(unquote(match["chat_id"]))

    def _answer(self, response: FakeResponse) -> FakeResponse:
        # The message was sent; only the answer is lost (see lose_next_answers).
        if self._lost_answers:
            self._lost_answers -= 1
            return chert_error(503, 3001, "Upstream timeout.", retryable=True)
        return response

    def send(self, request: FakeRequest, match: re.Match[str]) -> FakeResponse:
        body = self._json(request)
        if isinstance(body, FakeResponse):
            return body
        for name in ("phone", "body"):
            if not body.get(name):
                return chert_error(400, 1001, f"Missing required field: {name}")
        if not re.fullmatch(r"\+[1-9]\d{6,14}", str(body["phone"])):
            return chert_error(422, 1002, "phone must be in E.164 format.")
        key = body.get("idempotency_key")
        if key and key in self._by_idempotency_key:
            return self._answer(self._by_idempotency_key[key])
        chat = next((c for c in self.chats.values() if c["phone"] == body["phone"]), None)
        lead_created = chat is None
        if chat is None:
            chat = self._new_chat(body["phone"])
        message = self._new_message(chat, body["body"])
        response = FakeResponse(
            200,
            {
                "status": "sent",
                "message_id": message["id"],
                "lead_id": chat["id"],
                "lead_created": lead_created,
                "convo_id": chat["convo_id"],
            },
        )
        if key:
            self._by_idempotency_key[key] = response
        return self._answer(response)

    def send_to_chat(self, request: FakeRequest, match: re.Match[str]) -> FakeResponse:
        chat = self._chat(match)
        if chat is None:
            return chert_error(404, 2002, "Chat not found in your tenant.")
        body = self._json(request)
        if isinstance(body, FakeResponse):
            return body
        message = body.get("message")
        if not isinstance(message, dict) or not isinstance(message.get("parts"), list):
            return chert_error(400, 1001, "Missing required field: message.parts")
        text = " ".join(str(p.get("value", "")) for p in message["parts"] if isinstance(p, dict))
        key = message.get("idempotency_key")
        scoped_key = f"{chat['id']}:{key}"
        if key and scoped_key in self._by_idempotency_key:
            return self._answer(self._by_idempotency_key[scoped_key])
        response = FakeResponse(200, {"message": dict(self._new_message(chat, text))})
        if key:
            self._by_idempotency_key[scoped_key] = response
        return self._answer(response)

    def list_messages(self, request: FakeRequest, match: re.Match[str]) -> FakeResponse:
        chat = self._chat(match)
        if chat is None:
            return chert_error(404, 2002, "Chat not found in your tenant.")
        messages = chat["messages"]
        return FakeResponse(
            200,
            {"messages": [dict(m) for m in messages[-PAGE_LIMIT:]], "has_more": len(messages) > PAGE_LIMIT},
        )

    def mark_read(self, request: FakeRequest, match: re.Match[str]) -> FakeResponse:
        chat_id = unquote(match["chat_id"])
        scripted = self._mark_read_errors.get(chat_id)
        if scripted is not None:
            if scripted["times"] is not None:
                scripted["times"] -= 1
                if scripted["times"] <= 0:
                    del self._mark_read_errors[chat_id]
            return chert_error(*scripted["error"], retryable=scripted["retryable"])
        chat = self.chats.get(chat_id)
        if chat is None:
            return chert_error(404, 2002, "Chat not found in your tenant.")
        now = _now_iso()
        for message in chat["messages"]:
            if message["direction"] == "inbound" and not message["read_at"]:
                message["read_at"] = now
        self.marked_read.append(chat_id)
        return FakeResponse(200, {"chat_id": chat_id, "status": "read"})

    # -- state ------------------------------------------------------------------------------------

    def _new_chat(self, phone: str, chat_id: str | None = None) -> dict[str, Any]:
        chat: dict[str, Any] = {
            "id": chat_id or str(uuid.uuid4()),
            "convo_id": str(uuid.uuid4()),
            "phone": phone,
            "messages": [],
        }
        self.chats[chat["id"]] = chat
        return chat

    def _new_message(self, chat: dict[str, Any], text: str, *, direction: str = "outbound") -> dict[str, Any]:
        now = _now_iso()
        inbound = direction == "inbound"
        message = {
            "id": uuid.uuid4().hex,
            "chat_id": chat["id"],
            "parts": [{"type": "text", "value": text}],
            "status": "delivered" if inbound else "sent",
            "direction": direction,
            "created_at": now,
            "delivered_at": now if inbound else None,
            "read_at": None,
            "service": "imessage",
        }
        chat["messages"].append(message)
        return message

    def _message(self, message_id: str) -> dict[str, Any]:
        for chat in self.chats.values():
            for message in chat["messages"]:
                if message["id"] == message_id:
                    return message
        raise KeyError(f"no Chert message {message_id!r} in the fake")

    # -- test helpers -----------------------------------------------------------------------------

    def add_chat(self, phone: str = "+14155551234", *, chat_id: str | None = None) -> str:
        """Create a chat (as Chert does on a first send or an inbound message); returns its id."""
        with self.lock:
            return self._new_chat(phone, chat_id)["id"]

    def add_inbound(self, chat_id: str, text: str = "Sure, what time?") -> dict[str, Any]:
        """A message the contact wrote in ``chat_id``, unread until mark-read."""
        with self.lock:
            return dict(self._new_message(self.chats[chat_id], text, direction="inbound"))

    def deliver(self, message_id: str, *, at: str | None = None) -> None:
        """The recipient's device got the message: ``delivered_at`` set, status ``delivered``."""
        with self.lock:
            message = self._message(message_id)
            message.update(status="delivered", delivered_at=at or _now_iso())

    def read(self, message_id: str, *, at: str | None = None) -> None:
        """The recipient read the message: ``read_at`` set (and ``delivered_at`` if still unset)."""
        with self.lock:
            message = self._message(message_id)
            when = at or _now_iso()
            message.update(status="read", read_at=when, delivered_at=message["delivered_at"] or when)

    def fail(self, message_id: str, *, code: int = 4001, reason: str = "Delivery failed downstream.") -> None:
        """The message could not be delivered."""
        with self.lock:
            self._message(message_id).update(status="failed", error_code=code, error_message=reason)

    def fail_mark_read(
        self, chat_id: str, code: int, *, retryable: bool | None = None, times: int | None = None
    ) -> None:
        """
        Make mark-read of ``chat_id`` answer one of its documented errors.

        :param code: 2002, 1002, 4001 or 4099 (see :data:`MARK_READ_ERRORS`).
        :param retryable: override the error's ``retryable`` flag (Chert may send either).
        :param times: answer the error this many times, then recover; ``None`` for always.
        """
        status, message, default_retryable = MARK_READ_ERRORS[code]
        with self.lock:
            self._mark_read_errors[chat_id] = {
                "error": (status, code, message),
                "retryable": default_retryable if retryable is None else retryable,
                "times": times,
            }

    def lose_next_answers(self, count: int = 1) -> None:
        """Carry out the next ``count`` sends but answer 503 (retryable), as if the reply was lost."""
        with self.lock:
            self._lost_answers = count

    def messages(self) -> list[dict[str, Any]]:
        """Every message in every chat."""
        with self.lock:
            return [dict(m) for chat in self.chats.values() for m in chat["messages"]]
