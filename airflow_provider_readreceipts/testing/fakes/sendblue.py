"""Sendblue's API as CONTRACTS.md describes it: key-id and secret headers, mark-read, send, status."""

from __future__ import annotations

import re
import uuid
from datetime import datetime, timezone
from typing import Any

from airflow_provider_readreceipts.testing.fakes.server import FakeRequest, FakeResponse, VendorFake

API_KEY_ID = "sb-key-id-1"
API_SECRET = "sb-secret-Zq8tT2"  # noqa: S105 - the fake's own credential, public on purpose
LINE = "+19175551234"


def _error(status: int, message: str) -> FakeResponse:
    return FakeResponse(status, {"status": "ERROR", "message": message})


class SendblueFake(VendorFake):
    """
    :param key_id: the accepted ``sb-api-key-id``.
    :param secret: the accepted ``sb-api-secret-key``.
    :param lines: the account's registered ``from_number`` lines.
    """

    prefix = "sendblue"

    def __init__(
        self, *, key_id: str = API_KEY_ID, secret: str = API_SECRET, lines: tuple[str, ...] = (LINE,)
    ):
        super().__init__()
        self.key_id = key_id
        self.secret = secret
        self.lines = set(lines)
        self.messages: dict[str, dict[str, Any]] = {}
        self.marked_read: list[tuple[str, str]] = []
        self.typing: list[tuple[str, str]] = []
        self.route("POST", "/api/mark-read", self.mark_read)
        self.route("POST", "/api/send-message", self.send_message)
        self.route("POST", "/api/send-group-message", self.send_group_message)
        self.route("POST", "/api/send-typing-indicator", self.send_typing_indicator)
        self.route("GET", "/api/status", self.status)

    def reset(self) -> None:
        with self.lock:
            self.messages.clear()
            self.marked_read.clear()
            self.typing.clear()

    def dispatch(self, request: FakeRequest) -> FakeResponse:
        if (
            request.header("sb-api-key-id") != self.key_id
            or request.header("sb-api-secret-key") != self.secret
        ):
            return _error(401, "Invalid API credentials")
        return super().dispatch(request)

    def _body(self, request: FakeRequest, *required: str) -> dict[str, Any] | FakeResponse:
        try:
            body = request.json() or {}
        except ValueError:
            return _error(400, "Invalid JSON body")
        for name in required:
            if not body.get(name):
                return _error(400, f"You must specify a `{name}` in the request body.")
        if "from_number" in required and body["from_number"] not in self.lines:
            return _error(404, "The from_number is not registered")
        return body

    def mark_read(self, request: FakeRequest, match: re.Match[str]) -> FakeResponse:
        body = self._body(request, "number", "from_number")
        if isinstance(body, FakeResponse):
            return body
        self.marked_read.append((body["number"], body["from_number"]))
        return FakeResponse(
            200, {"status": "OK", "message": "Mark read request sent", "number": body["number"]}
        )

    def send_message(self, request: FakeRequest, match: re.Match[str]) -> FakeResponse:
        body = self._body(request, "number", "from_number", "content")
        if isinstance(body, FakeResponse):
            return body
        handle = str(uuid.uuid4())
        now = datetime.now(timezone.utc).isoformat()
        message = {
            "accountEmail": "demo@example.com",
            "content": body["content"],
            "is_outbound": True,
            "status": "QUEUED",
            "error_code": None,
            "error_message": None,
            "message_handle": handle,
            "date_sent": now,
            "date_updated": now,
            "from_number": body["from_number"],
            "number": body["number"],
            "to_number": body["number"],
            "was_downgraded": None,
            "media_url": body.get("media_url", ""),
            "message_type": "message",
            "group_id": "",
            "participants": [],
            "send_style": body.get("send_style", ""),
            "status_callback": body.get("status_callback"),
            "service": "iMessage",
        }
        self.messages[handle] = message
        return FakeResponse(202, message)

    def send_group_message(self, request: FakeRequest, match: re.Match[str]) -> FakeResponse:
        body = self._body(request, "content", "from_number")
        if isinstance(body, FakeResponse):
            return body
        if not body.get("group_id") and not body.get("numbers"):
            return _error(400, "You must specify a `group_id` or `numbers` in the request body.")
        handle = str(uuid.uuid4())
        group_id = body.get("group_id") or str(uuid.uuid4())
        self.messages[handle] = {
            "message_handle": handle,
            "status": "QUEUED",
            "group_id": group_id,
            "participants": body.get("numbers") or [],
            "message_type": "group",
            "from_number": body["from_number"],
            "content": body["content"],
        }
        return FakeResponse(202, self.messages[handle])

    def send_typing_indicator(self, request: FakeRequest, match: re.Match[str]) -> FakeResponse:
        body = self._body(request, "number", "from_number")
        if isinstance(body, FakeResponse):
            return body
        self.typing.append((body["number"], body["from_number"]))
        return FakeResponse(200, {"number": body["number"], "status": "SENT", "error_message": None})

    def status(self, request: FakeRequest, match: re.Match[str]) -> FakeResponse:
        handle = request.query.get("handle")
        if not handle:
            return _error(400, "You must specify a `handle` query parameter.")
        message = self.messages.get(handle)
        if message is None:
            return _error(404, "Message not found")
        return FakeResponse(200, message)

    def set_status(self, handle: str, status: str, **fields: Any) -> None:
        """Move a sent message along (``"DELIVERED"``, ``"READ"``, ``"ERROR"``...)."""
        with self.lock:
            self.messages[handle].update(status=status, **fields)
