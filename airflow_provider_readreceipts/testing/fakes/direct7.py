"""
Direct7's WhatsApp API as CONTRACTS.md describes it: bearer token, read receipt, send, report.

Errors use Direct7's FastAPI shapes: ``{"detail": {"code", "message"}}`` (401, 402, 404) and
``{"detail": [{"loc", "msg", "type"}]}`` (422). The 402 body's code is not documented; the fake
uses ``INSUFFICIENT_CREDIT`` in the same shape.
"""

from __future__ import annotations

import re
import uuid
from datetime import datetime, timezone
from typing import Any
from urllib.parse import unquote

from airflow_provider_readreceipts.testing.fakes.server import FakeRequest, FakeResponse, VendorFake

API_TOKEN = "d7-token-Hq4vW9"  # noqa: S105 - the fake's own credential, public on purpose
ORIGINATOR = "+971501234567"


def _error(status: int, code: str, message: str) -> FakeResponse:
    return FakeResponse(status, {"detail": {"code": code, "message": message}})


def _missing(*loc: str | int) -> dict[str, Any]:
    return {"loc": ["body", *loc], "msg": "field required", "type": "value_error.missing"}


class Direct7Fake(VendorFake):
    """
    :param token: the accepted bearer token.

    State a test can read: ``reports`` (request id -> the report ``GET /whatsapp/v2/report`` returns),
    ``inbound`` (inbound message id -> message), ``marked_read`` (ids, in call order), and the
    ``insufficient_credit`` switch that makes every send answer 402.
    """

    prefix = "direct7"

    def __init__(self, *, token: str = API_TOKEN) -> None:
        super().__init__()
        self.token = token
        self.reports: dict[str, dict[str, Any]] = {}
        self.inbound: dict[str, dict[str, Any]] = {}
        self.marked_read: list[str] = []
        self.insufficient_credit = False
        self.route("POST", r"/whatsapp/v2/read-receipt/(?P<message_id>[^/]+)", self.read_receipt)
        self.route("POST", "/whatsapp/v2/send", self.send)
        self.route("GET", r"/whatsapp/v2/report/(?P<request_id>[^/]+)", self.report)

    def reset(self) -> None:
        with self.lock:
            self.reports.clear()
            self.inbound.clear()
            self.marked_read.clear()
            self.insufficient_credit = False

    def dispatch(self, request: FakeRequest) -> FakeResponse:
        if request.header("authorization") != f"Bearer {self.token}":
            return _error(
                401,
                "ACCESS_TOKEN_SIGNATURE_VERIFICATION_FAILED",
                "It looks like your requested access token is invalid. Please verify and try again.",
            )
        return super().dispatch(request)

    # -- routes -------------------------------------------------------------------------------------

    def read_receipt(self, request: FakeRequest, match: re.Match[str]) -> FakeResponse:
        message_id = unquote(match["message_id"])
        if message_id not in self.inbound:
            return _error(
                404,
                "WHATSAPP_MESSAGE_NOT_EXISTS",
                "Given whatsapp message id not exists in the system. Please use correct message id!",
            )
        self.inbound[message_id]["read"] = True
        self.marked_read.append(message_id)
        return FakeResponse(200, {"message": "Message successfully marked as read"})

    def send(self, request: FakeRequest, match: re.Match[str]) -> FakeResponse:
        try:
            body = request.json()
        except ValueError:
            return FakeResponse(422, {"detail": [{"loc": ["body"], "msg": "invalid json", "type": "json"}]})
        problems = _validate_send(body)
        if problems:
            return FakeResponse(422, {"detail": problems})
        if self.insufficient_credit:
            return _error(402, "INSUFFICIENT_CREDIT", "Insufficient credit in your account. Please recharge.")
        request_id = str(uuid.uuid4())
        messages = []
        for message in body["messages"]:
            for recipient in message["recipients"]:
                messages.append(
                    {
                        "msg_id": str(uuid.uuid1()),
                        "originator": message["originator"],
                        "recipient": recipient["recipient"],
                        "reference": {"cust_ref": message.get("cust_ref")},
                        "conversation_type": "service",
                        "message_type": message["content"]["message_type"],
                        "status": "accepted",
                        "reason": None,
                        "report_url": message.get("report_url"),
                    }
                )
        self.reports[request_id] = {
            "request_id": request_id,
            "messages": messages,
            "request_stage": "processed",
            "schedule_time": None,
        }
        created_at = datetime.now(timezone.utc).isoformat()
        return FakeResponse(200, {"request_id": request_id, "status": "accepted", "created_at": created_at})

    def report(self, request: FakeRequest, match: re.Match[str]) -> FakeResponse:
        report = self.reports.get(unquote(match["request_id"]))
        if report is None:
            return _error(
                404,
                "WHATSAPP_LOG_NOT_EXISTS",
                "Given whatsapp message request id not exists in the system. Please Try Again!",
            )
        return FakeResponse(200, report)

    # -- test helpers -------------------------------------------------------------------------------

    def add_inbound(self, *, sender: str, text: str = "Hello", message_id: str | None = None) -> str:
        """A user writes to the business; returns the inbound message id that ``mark_read`` takes."""
        message_id = message_id or str(uuid.uuid1())
        with self.lock:
            self.inbound[message_id] = {"message_id": message_id, "from": sender, "text": text, "read": False}
        return message_id

    def set_status(self, request_id: str, status: str, *, reason: str | None = None) -> None:
        """Move every message of a send request along: ``"Delivered"``, ``"read"``, ``"Dropped"``..."""
        with self.lock:
            for message in self.reports[request_id]["messages"]:
                message.update(status=status, reason=reason)

    def delivery_reports(self, request_id: str, *, timestamp_ms: int | None = None) -> list[dict[str, Any]]:
        """The ``DELIVERY_EVENTS`` postbacks Direct7 would send now for a request, one per message."""
        now = datetime.now(timezone.utc)
        with self.lock:
            return [
                {
                    "event_type": "DELIVERY_EVENTS",
                    "timestamp": timestamp_ms if timestamp_ms is not None else int(now.timestamp() * 1000),
                    "date": now.strftime("%Y-%B-%d"),
                    "request_id": request_id,
                    "msg_id": message["msg_id"],
                    "conversation_type": message["conversation_type"],
                    "message_type": message["message_type"],
                    "recipient": message["recipient"],
                    "originator": message["originator"],
                    "cust_ref": message["reference"]["cust_ref"],
                    "status": message["status"],
                    "reason": message["reason"],
                }
                for message in self.reports[request_id]["messages"]
            ]


def _validate_send(body: Any) -> list[dict[str, Any]]:
    """FastAPI-style validation errors for a send body; empty when it is usable."""
    if not isinstance(body, dict) or not isinstance(body.get("messages"), list) or not body["messages"]:
        return [_missing("messages")]
    problems = []
    for index, message in enumerate(body["messages"]):
        if not isinstance(message, dict):
            problems.append(
                {
                    "loc": ["body", "messages", index],
                    "msg": "value is not a valid dict",
                    "type": "type_error.dict",
                }
            )
            continue
        if not message.get("originator"):
            problems.append(_missing("messages", index, "originator"))
        recipients = message.get("recipients")
        if not isinstance(recipients, list) or not recipients:
            problems.append(_missing("messages", index, "recipients"))
        else:
            for position, recipient in enumerate(recipients):
                if not isinstance(recipient, dict) or not recipient.get("recipient"):
                    problems.append(_missing("messages", index, "recipients", position, "recipient"))
        content = message.get("content")
        if not isinstance(content, dict) or not content.get("message_type"):
            problems.append(_missing("messages", index, "content", "message_type"))
        elif content["message_type"] == "TEXT" and not (content.get("text") or {}).get("body"):
            problems.append(_missing("messages", index, "content", "text", "body"))
    return problems
