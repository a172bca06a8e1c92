"""
The four vendor fakes, grown into a sandbox: each send gets a fate, and each vendor reports it its way.

Each class adds to its vendor fake (:mod:`airflow_provider_readreceipts.testing.fakes`) three
things: a hook on the send routes that plans the message's life (:meth:`SandboxVendor.plan`),
:meth:`SandboxVendor.apply` that moves the message one step in the fake's state and sends the
webhook the vendor would send, and :meth:`SandboxVendor.contact_writes` that plays a contact writing
to us.
"""

from __future__ import annotations

import functools
import re
import uuid
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from airflow_provider_readreceipts.testing import sandbox
from airflow_provider_readreceipts.testing.fakes.chert import (
    ChertFake,
    message_received_event,
    webhook_signature,
)
from airflow_provider_readreceipts.testing.fakes.direct7 import Direct7Fake
from airflow_provider_readreceipts.testing.fakes.ryze import RyzeFake
from airflow_provider_readreceipts.testing.fakes.sendblue import SendblueFake
from airflow_provider_readreceipts.testing.fakes.server import (
    FakeRequest,
    FakeResponse,
    VendorFake,
    VendorFakeServer,
)
from airflow_provider_readreceipts.testing.sandbox.fates import Fate, fate_for, last_digit

if TYPE_CHECKING:
    from airflow_provider_readreceipts.testing.sandbox.server import Sandbox

#: The steps of a message's life, in the vendor-neutral words of the receipt ladder.
SENT, DELIVERED, READ, FAILED = "SENT", "DELIVERED", "READ", "FAILED"
#: The reason every failed message gives, naming the rule so nobody mistakes it for a real fault.
FAILURE_REASON = "recipient unreachable (sandbox: numbers ending in 8 or 9 fail)"


def _now_iso() -> str:
    return datetime.now(timezone.utc).isoformat().replace("+00:00", "Z")


__all__ = [
    "FakeRequest",
    "FakeResponse",
    "SandboxChert",
    "SandboxDirect7",
    "SandboxRyze",
    "SandboxSendblue",
    "SandboxVendor",
    "VendorFake",
    "VendorFakeServer",
    "VoiceFake",
]


class SandboxVendor(VendorFake):
    """
    What the four sandbox vendors share: the fate plan of each sent message.

    Mixed in before the vendor's fake, whose ``__init__`` sets the fake up (this one only keeps the
    sandbox).
    """

    vendor: str

    def __init__(self, box: Sandbox) -> None:
        self.box = box

    def plan(self, message_id: str, recipient: str) -> None:
        """Give a just-sent message its fate and schedule every step of it."""
        fate = fate_for(recipient)
        timing = self.box.timing
        steps: list[tuple[float, str]] = [(timing.sent_delay, SENT)]
        if fate is Fate.FAILED:
            steps.append((timing.fail_delay, FAILED))
        else:
            steps.append((timing.deliver_delay, DELIVERED))
            if fate is Fate.READ:
                steps.append((timing.read_after(last_digit(recipient)), READ))
        if not self.box.ledger.track(self.vendor, message_id, recipient, fate):
            return  # already planned (a send replayed with its idempotency key)
        for delay, step in steps:
            self.box.scheduler.call_later(delay, functools.partial(self._step, message_id, step))

    def _step(self, message_id: str, step: str) -> None:
        self.apply(message_id, step)
        self.box.ledger.stepped(self.vendor, message_id, step)

    def apply(self, message_id: str, step: str) -> None:
        """Move the message to ``step`` in the vendor's state and send the vendor's webhook."""
        raise NotImplementedError

    def contact_writes(self, sender: str, text: str) -> dict[str, Any]:
        """A contact writes to us: record the message and send the vendor's inbound webhook."""
        raise NotImplementedError


class SandboxSendblue(SandboxVendor, SendblueFake):
    """Sendblue: status webhooks to each message's ``status_callback``, with the secret header."""

    vendor = "sendblue"
    _RAW = {SENT: "SENT", DELIVERED: "DELIVERED", READ: "READ", FAILED: "ERROR"}

    def __init__(self, box: Sandbox) -> None:
        SandboxVendor.__init__(self, box)
        SendblueFake.__init__(
            self,
            key_id=sandbox.SENDBLUE_KEY_ID,
            secret=sandbox.SENDBLUE_API_SECRET,
            lines=(sandbox.SENDBLUE_LINE,),
        )

    def send_message(self, request: FakeRequest, match: re.Match[str]) -> FakeResponse:
        response = super().send_message(request, match)
        if response.status < 300:
            self.plan(response.body["message_handle"], response.body["number"])
        return response

    def apply(self, message_id: str, step: str) -> None:
        with self.lock:
            message = self.messages[message_id]
            message.update(status=self._RAW[step], date_updated=_now_iso())
            if step == FAILED:
                message.update(error_code="4001", error_message=FAILURE_REASON)
            payload = {k: v for k, v in message.items() if k != "status_callback"}
            url = message.get("status_callback") or self.box.account_url(self.vendor)
        self._post(step, message_id, url, payload)

    def contact_writes(self, sender: str, text: str) -> dict[str, Any]:
        handle = str(uuid.uuid4())
        now = _now_iso()
        payload = {
            "accountEmail": "sandbox@example.com",
            "content": text,
            "is_outbound": False,
            "status": "RECEIVED",
            "error_code": None,
            "error_message": None,
            "message_handle": handle,
            "date_sent": now,
            "date_updated": now,
            "from_number": sender,
            "number": sender,
            "to_number": sandbox.SENDBLUE_LINE,
            "was_downgraded": None,
            "media_url": "",
            "message_type": "message",
            "group_id": "",
            "participants": [],
            "service": "iMessage",
        }
        with self.lock:
            self.messages[handle] = dict(payload)
        self._post("RECEIVED", handle, self.box.account_url(self.vendor), payload)
        return {"vendor": self.vendor, "message_id": handle, "chat": sender}

    def _post(self, event: str, message_id: str, url: str, payload: dict[str, Any]) -> None:
        self.box.deliverer.send(
            vendor=self.vendor,
            event=event,
            message_id=message_id,
            url=url,
            payload=payload,
            headers={"sb-signing-secret": sandbox.SENDBLUE_WEBHOOK_SECRET},
        )


class SandboxChert(SandboxVendor, ChertFake):
    """
    Chert: no status webhook at all. Delivery and reads only show in the chat's messages
    (``delivered_at``, ``read_at``), which the read sensor's reconcile polls. Inbound messages are
    signed ``message.received`` events.
    """

    vendor = "chert"

    def __init__(self, box: Sandbox) -> None:
        SandboxVendor.__init__(self, box)
        ChertFake.__init__(self, tenant=sandbox.CHERT_TENANT, secret=sandbox.CHERT_SIGNING_SECRET)

    def send(self, request: FakeRequest, match: re.Match[str]) -> FakeResponse:
        response = super().send(request, match)
        if response.status < 300:
            self.plan(response.body["message_id"], self.chats[response.body["lead_id"]]["phone"])
        return response

    def send_to_chat(self, request: FakeRequest, match: re.Match[str]) -> FakeResponse:
        response = super().send_to_chat(request, match)
        if response.status < 300:
            message = response.body["message"]
            self.plan(message["id"], self.chats[message["chat_id"]]["phone"])
        return response

    def apply(self, message_id: str, step: str) -> None:
        if step == DELIVERED:
            self.deliver(message_id)
        elif step == READ:
            self.read(message_id)
        elif step == FAILED:
            self.fail(message_id, reason=FAILURE_REASON)
        # SENT: a Chert message is "sent" from the start.

    def contact_writes(self, sender: str, text: str) -> dict[str, Any]:
        with self.lock:
            chat = next((c for c in self.chats.values() if c["phone"] == sender), None)
            chat_id = chat["id"] if chat is not None else self.add_chat(sender)
            message = self.add_inbound(chat_id, text)
        event = message_received_event(chat_id=chat_id, message_id=message["id"], sender=sender, text=text)

        def sign(body: bytes) -> dict[str, str]:
            return {"X-Webhook-Signature": webhook_signature(body, secret=sandbox.CHERT_WEBHOOK_SECRET)}

        self.box.deliverer.send(
            vendor=self.vendor,
            event=event["event"],
            message_id=message["id"],
            url=self.box.account_url(self.vendor),
            payload=event,
            headers={"X-Webhook-Event": event["event"], "X-Webhook-Event-Id": event["event_id"]},
            sign=sign,
        )
        return {"vendor": self.vendor, "message_id": message["id"], "chat": chat_id}


class SandboxRyze(SandboxVendor, RyzeFake):
    """RyzeAPI: ``message.status`` and ``message.exchange`` envelopes with the static Authorization."""

    vendor = "ryze"
    _RAW = {SENT: "sent", DELIVERED: "delivered", READ: "read", FAILED: "error"}

    def __init__(self, box: Sandbox) -> None:
        SandboxVendor.__init__(self, box)
        RyzeFake.__init__(self, tokens=(sandbox.RYZE_TOKEN,), instance=sandbox.RYZE_INSTANCE)

    def send_text(self, request: FakeRequest, match: re.Match[str]) -> FakeResponse:
        response = super().send_text(request, match)
        if response.status < 300:
            self.plan(response.body["messageId"], response.body["chat"]["jid"])
        return response

    def apply(self, message_id: str, step: str) -> None:
        self.set_status(message_id, self._RAW[step])
        envelope = self.status_webhook(message_id)
        if step == FAILED:
            envelope["data"]["error"] = {"message": FAILURE_REASON}
        self._post(step, message_id, envelope)

    def contact_writes(self, sender: str, text: str) -> dict[str, Any]:
        digits = "".join(ch for ch in sender if ch.isdigit())
        message_id = self.receive(number=digits, text=text)
        envelope = self.exchange_webhook(message_id)
        self._post("message.exchange", message_id, envelope)
        return {"vendor": self.vendor, "message_id": message_id, "chat": envelope["data"]["chat"]["jid"]}

    def _post(self, event: str, message_id: str, envelope: dict[str, Any]) -> None:
        self.box.deliverer.send(
            vendor=self.vendor,
            event=event,
            message_id=message_id,
            url=self.box.account_url(self.vendor),
            payload=envelope,
            headers={"Authorization": sandbox.RYZE_WEBHOOK_AUTHORIZATION},
        )


class SandboxDirect7(SandboxVendor, Direct7Fake):
    """Direct7: one delivery report per message to the send's ``report_url`` (it carries the token)."""

    vendor = "direct7"
    _RAW = {SENT: "Sent", DELIVERED: "Delivered", READ: "Read", FAILED: "Dropped"}

    def __init__(self, box: Sandbox) -> None:
        SandboxVendor.__init__(self, box)
        Direct7Fake.__init__(self, token=sandbox.DIRECT7_API_TOKEN)

    def send(self, request: FakeRequest, match: re.Match[str]) -> FakeResponse:
        response = super().send(request, match)
        if response.status < 300:
            request_id = response.body["request_id"]
            # One fate per request: the send operators send one recipient per request.
            self.plan(request_id, self.reports[request_id]["messages"][0]["recipient"])
        return response

    def apply(self, message_id: str, step: str) -> None:
        self.set_status(message_id, self._RAW[step], reason=FAILURE_REASON if step == FAILED else None)
        with self.lock:
            urls = [m.get("report_url") for m in self.reports[message_id]["messages"]]
        for report, url in zip(self.delivery_reports(message_id), urls, strict=True):
            self._post(step, message_id, url or self.box.account_url(self.vendor), report)

    def contact_writes(self, sender: str, text: str) -> dict[str, Any]:
        message_id = self.add_inbound(sender=sender, text=text)
        payload = {
            "message_id": message_id,
            "from": sender,
            "to": sandbox.DIRECT7_ORIGINATOR,
            "message_type": "TEXT",
            "text": text,
            "timestamp": int(datetime.now(timezone.utc).timestamp() * 1000),
        }
        self._post("inbound", message_id, self.box.account_url(self.vendor), payload)
        return {"vendor": self.vendor, "message_id": message_id, "chat": sender}

    def _post(self, event: str, message_id: str, url: str, payload: dict[str, Any]) -> None:
        self.box.deliverer.send(
            vendor=self.vendor, event=event, message_id=message_id, url=url, payload=payload
        )


class VoiceFake(VendorFake):
    """
    A minimal voice-call API (any provider's would do): ``POST /v1/calls`` places a call that reads
    ``say`` aloud to ``to``; ``GET /v1/calls`` lists them. Bearer-token auth.
    """

    prefix = "voice"

    def __init__(self, *, token: str = sandbox.VOICE_API_TOKEN) -> None:
        super().__init__()
        self.token = token
        self.calls: list[dict[str, Any]] = []
        self.route("POST", "/v1/calls", self.place_call)
        self.route("GET", "/v1/calls", self.list_calls)

    def reset(self) -> None:
        with self.lock:
            self.calls.clear()

    def dispatch(self, request: FakeRequest) -> FakeResponse:
        if request.header("authorization") != f"Bearer {self.token}":
            return FakeResponse(401, {"error": "missing or invalid bearer token"})
        return super().dispatch(request)

    def place_call(self, request: FakeRequest, match: re.Match[str]) -> FakeResponse:
        try:
            body = request.json() or {}
        except ValueError:
            return FakeResponse(400, {"error": "the body is not JSON"})
        if not isinstance(body, dict) or not body.get("to"):
            return FakeResponse(422, {"error": "'to' is required"})
        call = {
            "call_id": f"call_{uuid.uuid4().hex[:12]}",
            "status": "queued",
            "to": body["to"],
            "from": body.get("from") or sandbox.VOICE_CALLER_ID,
            "say": body.get("say", ""),
            "created_at": _now_iso(),
        }
        self.calls.append(call)
        return FakeResponse(201, call)

    def list_calls(self, request: FakeRequest, match: re.Match[str]) -> FakeResponse:
        return FakeResponse(200, {"calls": list(self.calls)})
