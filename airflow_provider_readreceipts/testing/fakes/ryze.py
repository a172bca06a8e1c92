"""
RyzeAPI's API as CONTRACTS.md describes it: an instance in every path, a token (``token`` header or
``Authorization: Bearer``), mark-read, mark-chat-read, send text, status, and a per-token rate limit.

The rate limit is a sliding window: at most ``rate_limit`` accepted requests per token in any
``window_seconds``. That is stricter than a counter that resets on the minute, so a client that
stays within it here stays within RyzeAPI's limit too. Every request a token makes is recorded, so
a benchmark can ask for the busiest window a client produced (:meth:`RyzeFake.peak_requests_per_window`).
"""

from __future__ import annotations

import math
import re
import time
import uuid
from collections import deque
from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any
from urllib.parse import unquote

from airflow_provider_readreceipts.testing.fakes.server import FakeRequest, FakeResponse, VendorFake

TOKEN = "ryze-instance-token-Q7v2"  # noqa: S105 - the fake's own credential, public on purpose
INSTANCE = "airflow-wa"
DEFAULT_RATE_LIMIT = 100
DEFAULT_WINDOW_SECONDS = 60.0

#: RyzeAPI's status names and their WhatsMeow codes.
STATUS_CODES = {"pending": 0, "sent": 1, "delivered": 2, "received": 3, "read": 4, "played": 5, "error": -1}

_INSTANCE = r"(?P<instance>[^/]*)"


def _error(status: int, message: str) -> FakeResponse:
    return FakeResponse(status, {"success": False, "error": {"message": message}})


def _now_iso() -> str:
    return datetime.now(timezone.utc).isoformat().replace("+00:00", "Z")


def chat_jid(number: str) -> str:
    """The JID RyzeAPI resolves a ``number`` to: digits become a person's JID, JIDs stay."""
    return number if "@" in number else f"{number}@s.whatsapp.net"


class RyzeFake(VendorFake):
    """
    :param tokens: the accepted tokens (instance and account tokens alike).
    :param instance: the one instance that exists; :attr:`connected` says whether it is online.
    :param rate_limit: accepted requests per token per window.
    :param window_seconds: the rate-limit window.
    :param clock: unix time now (tests of the window pass their own).
    """

    prefix = "ryze"

    def __init__(
        self,
        *,
        tokens: tuple[str, ...] = (TOKEN,),
        instance: str = INSTANCE,
        rate_limit: int = DEFAULT_RATE_LIMIT,
        window_seconds: float = DEFAULT_WINDOW_SECONDS,
        clock: Callable[[], float] = time.time,
    ) -> None:
        super().__init__()
        self._defaults = (instance, rate_limit, window_seconds)
        self.tokens = set(tokens)
        self.clock = clock
        self.instance, self.rate_limit, self.window_seconds = self._defaults
        #: Switch off to answer 503 "Instance is not connected to WhatsApp" to mark-read and send.
        self.connected = True
        self.messages: dict[str, dict[str, Any]] = {}
        self.marked_read: list[dict[str, Any]] = []
        self.chats_marked_read: list[str] = []
        #: Every request per presented token (unix times), accepted or refused with 429.
        self.attempts: dict[str, list[float]] = {}
        self._accepted: dict[str, deque[float]] = {}
        self.route("POST", f"/api/chat/markRead/{_INSTANCE}", self.mark_read)
        self.route("POST", f"/api/chat/markChatRead/{_INSTANCE}", self.mark_chat_read)
        self.route("POST", f"/api/message/text/{_INSTANCE}", self.send_text)
        self.route("GET", f"/api/chat/status/{_INSTANCE}", self.status)

    def reset(self) -> None:
        with self.lock:
            self.instance, self.rate_limit, self.window_seconds = self._defaults
            self.connected = True
            self.messages.clear()
            self.marked_read.clear()
            self.chats_marked_read.clear()
            self.attempts.clear()
            self._accepted.clear()

    # -- auth and rate limit ----------------------------------------------------------------------

    def dispatch(self, request: FakeRequest) -> FakeResponse:
        token = _presented_token(request)
        with self.lock:
            admitted, limit_headers = self._admit(token)
        if not admitted:
            response = _error(429, "Rate limit exceeded. Try again later.")
        elif not token:
            response = _error(401, "Missing token in header, Authorization header, or query parameter")
        elif token not in self.tokens:
            response = _error(401, "Invalid token")
        else:
            response = super().dispatch(request)
        # RyzeAPI sends the rate-limit headers on every response, successful or not.
        response.headers.update(limit_headers)
        return response

    def _admit(self, token: str) -> tuple[bool, dict[str, str]]:
        now = self.clock()
        self.attempts.setdefault(token, []).append(now)
        accepted = self._accepted.setdefault(token, deque())
        while accepted and accepted[0] <= now - self.window_seconds:
            accepted.popleft()
        admitted = len(accepted) < self.rate_limit
        if admitted:
            accepted.append(now)
        # The earliest moment a slot frees up: when the oldest counted request leaves the window.
        reset_at = (accepted[0] if accepted else now) + self.window_seconds
        return admitted, {
            "X-RateLimit-Limit": str(self.rate_limit),
            "X-RateLimit-Remaining": str(max(self.rate_limit - len(accepted), 0)),
            "X-RateLimit-Reset": str(math.ceil(reset_at)),
        }

    def requests_in_window(self, token: str = TOKEN) -> int:
        """Accepted requests of ``token`` in the window ending now (what the limit counts)."""
        with self.lock:
            now = self.clock()
            return sum(1 for t in self._accepted.get(token, ()) if t > now - self.window_seconds)

    def peak_requests_per_window(self, token: str = TOKEN) -> int:
        """The most requests ``token`` made in any ``window_seconds`` span, 429s included."""
        with self.lock:
            times = sorted(self.attempts.get(token, ()))
        peak, start = 0, 0
        for end, at in enumerate(times):
            while at - times[start] >= self.window_seconds:
                start += 1
            peak = max(peak, end - start + 1)
        return peak

    # -- routes -----------------------------------------------------------------------------------

    def _instance_error(self, match: re.Match[str], *, needs_whatsapp: bool) -> FakeResponse | None:
        name = unquote(match["instance"])
        if not name:
            return _error(400, "Instance name is required")
        if name != self.instance:
            return _error(404, "Instance not found")
        if needs_whatsapp and not self.connected:
            return _error(503, "Instance is not connected to WhatsApp")
        return None

    def _body(self, request: FakeRequest) -> dict[str, Any] | FakeResponse:
        try:
            body = request.json()
        except ValueError as exc:
            return _error(400, f"Invalid request body: {exc}")
        if not isinstance(body, dict):
            return _error(400, "Invalid request body: expected a JSON object")
        return body

    def _checked(
        self, request: FakeRequest, match: re.Match[str], *, needs_whatsapp: bool = True
    ) -> dict[str, Any] | FakeResponse:
        refused = self._instance_error(match, needs_whatsapp=needs_whatsapp)
        if refused is not None:
            return refused
        body = self._body(request)
        if isinstance(body, dict) and not body.get("number"):
            return _error(400, "Number is required")
        return body

    def mark_read(self, request: FakeRequest, match: re.Match[str]) -> FakeResponse:
        body = self._checked(request, match)
        if isinstance(body, FakeResponse):
            return body
        if not body.get("messageId"):
            return _error(400, "messageId is required")
        if body["number"].endswith("@g.us") and not body.get("sender"):
            return _error(400, "sender is required for group messages")
        self.marked_read.append(body)
        return FakeResponse(
            200,
            {
                "success": True,
                "message": "Message marked as read successfully",
                "message_id": body["messageId"],
                "chat_jid": chat_jid(body["number"]),
            },
        )

    def mark_chat_read(self, request: FakeRequest, match: re.Match[str]) -> FakeResponse:
        body = self._checked(request, match)
        if isinstance(body, FakeResponse):
            return body
        self.chats_marked_read.append(body["number"])
        return FakeResponse(
            200,
            {"success": True, "message": "Chat marked as read", "chat_jid": chat_jid(body["number"])},
        )

    def send_text(self, request: FakeRequest, match: re.Match[str]) -> FakeResponse:
        body = self._checked(request, match)
        if isinstance(body, FakeResponse):
            return body
        if not body.get("message"):
            return _error(400, "Message is required")
        message_id = "3EB0" + uuid.uuid4().hex[:16].upper()
        self.messages[message_id] = {
            "message_id": message_id,
            "status": "sent",
            "status_code": STATUS_CODES["sent"],
            "direction": "sent",
            "chat_jid": chat_jid(body["number"]),
            "timestamp": _now_iso(),
            "text": body["message"],
        }
        return FakeResponse(
            200,
            {
                "success": True,
                "message": "Message sent successfully",
                "status": "sent",
                "messageId": message_id,
                "direction": "outgoing",
                "chat": {"jid": chat_jid(body["number"])},
            },
        )

    def status(self, request: FakeRequest, match: re.Match[str]) -> FakeResponse:
        # A read of RyzeAPI's own records: works while the phone is offline.
        refused = self._instance_error(match, needs_whatsapp=False)
        if refused is not None:
            return refused
        message_id = request.query.get("messageId")
        if not message_id:
            return _error(400, "messageId query parameter is required")
        message = self.messages.get(message_id)
        if message is None:
            return _error(404, "Message not found")
        fields = {k: message[k] for k in ("status", "status_code", "direction", "chat_jid", "timestamp")}
        return FakeResponse(
            200,
            {"success": True, "message": "Message status retrieved successfully", "message_id": message_id}
            | fields,
        )

    # -- test helpers -----------------------------------------------------------------------------

    def set_status(self, message_id: str, status: str) -> None:
        """Move a message along: ``"delivered"``, ``"read"``, ``"played"``, ``"error"``..."""
        with self.lock:
            self.messages[message_id].update(status=status, status_code=STATUS_CODES[status])

    def receive(self, *, number: str, text: str) -> str:
        """Record an inbound message from ``number`` (digits or JID); returns its id."""
        message_id = "3A" + uuid.uuid4().hex[:18].upper()
        with self.lock:
            self.messages[message_id] = {
                "message_id": message_id,
                "status": "received",
                "status_code": STATUS_CODES["received"],
                "direction": "received",
                "chat_jid": chat_jid(number),
                "timestamp": _now_iso(),
                "text": text,
            }
        return message_id

    def status_webhook(self, message_id: str, *, reader: str | None = None) -> dict[str, Any]:
        """
        A ``message.status`` envelope for the message's current status, in the layout the hook
        reads by default (RyzeAPI does not document it). ``reader`` names who read it in a group.
        """
        with self.lock:
            message = dict(self.messages[message_id])
        data: dict[str, Any] = {
            "messageId": message_id,
            "status": message["status"],
            "status_code": message["status_code"],
            "chat": {"jid": message["chat_jid"]},
            "timestamp": _now_iso(),
        }
        if reader:
            data["sender"] = {"jid": reader}
        return self._envelope("message.status", data)

    def exchange_webhook(self, message_id: str, *, author: str | None = None) -> dict[str, Any]:
        """A ``message.exchange`` envelope for an inbound message recorded with :meth:`receive`."""
        with self.lock:
            message = dict(self.messages[message_id])
        chat = message["chat_jid"]
        data = {
            "id": message_id,
            "direction": "incoming",
            "timestamp": message["timestamp"],
            "chat": {"jid": chat, "type": "group" if chat.endswith("@g.us") else "user"},
            "sender": {"jid": author or chat},
            "message": {"type": "text", "content": message["text"]},
        }
        return self._envelope("message.exchange", data)

    def _envelope(self, event: str, data: dict[str, Any]) -> dict[str, Any]:
        # RyzeAPI includes the instance's own token in every envelope.
        token = next(iter(sorted(self.tokens)))
        return {
            "event": event,
            "data": data,
            "instanceData": {"baseUrl": "https://ryzeapi.cloud", "instance": self.instance, "token": token},
        }


def _presented_token(request: FakeRequest) -> str:
    token = request.header("token")
    if token:
        return token
    authorization = request.header("authorization") or ""
    scheme, _, credentials = authorization.partition(" ")
    return credentials.strip() if scheme.lower() == "bearer" else ""
