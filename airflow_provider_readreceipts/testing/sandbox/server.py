"""
The sandbox process: every vendor fake, the voice API and a control panel on one loopback server.

URL prefixes: ``/sendblue``, ``/chert``, ``/ryze``, ``/direct7`` (each vendor's API as CONTRACTS.md
describes it), ``/voice`` (the fake voice-call API) and ``/_sandbox``, the control panel:

- ``GET /_sandbox/healthz``: 200 once serving.
- ``GET /_sandbox/state``: every planned message with its fate and the steps taken so far, every
  webhook delivery (attempts, answers; no secrets), every call placed, every send and mark-read
  each vendor received.
- ``POST /_sandbox/inbound`` ``{"vendor", "from", "text"}``: a contact writes to us; the vendor's
  inbound webhook goes to the receiver. Answers ``{"vendor", "message_id", "chat"}``.
- ``POST /_sandbox/reset``: forget all state and pending actions (between tests).
"""

from __future__ import annotations

import re
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from airflow_provider_readreceipts.testing import sandbox
from airflow_provider_readreceipts.testing.sandbox.delivery import (
    Scheduler,
    WebhookDeliverer,
    is_loopback_url,
)
from airflow_provider_readreceipts.testing.sandbox.fates import Fate, Timing
from airflow_provider_readreceipts.testing.sandbox.vendors import (
    FakeRequest,
    FakeResponse,
    SandboxChert,
    SandboxDirect7,
    SandboxRyze,
    SandboxSendblue,
    SandboxVendor,
    VendorFake,
    VendorFakeServer,
    VoiceFake,
)

#: The control panel's URL prefix.
CONTROL_PREFIX = "_sandbox"


@dataclass
class PlannedMessage:
    """A sent message, its fate, and the steps of it taken so far."""

    vendor: str
    message_id: str
    recipient: str
    fate: Fate
    planned_at: float = field(default_factory=time.time)
    steps: list[tuple[str, float]] = field(default_factory=list)

    def public(self) -> dict[str, Any]:
        return {
            "vendor": self.vendor,
            "message_id": self.message_id,
            "recipient": self.recipient,
            "fate": self.fate.value,
            "planned_at": self.planned_at,
            "steps": [{"step": step, "at": at} for step, at in self.steps],
        }


class Ledger:
    """Every message the sandbox planned, by vendor and id."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._messages: dict[tuple[str, str], PlannedMessage] = {}

    def track(self, vendor: str, message_id: str, recipient: str, fate: Fate) -> bool:
        """Record a message; ``False`` when it was already planned."""
        with self._lock:
            if (vendor, message_id) in self._messages:
                return False
            self._messages[(vendor, message_id)] = PlannedMessage(vendor, message_id, recipient, fate)
            return True

    def stepped(self, vendor: str, message_id: str, step: str) -> None:
        with self._lock:
            message = self._messages.get((vendor, message_id))
            if message is not None:
                message.steps.append((step, time.time()))

    def messages(self) -> list[PlannedMessage]:
        with self._lock:
            return list(self._messages.values())

    def reset(self) -> None:
        with self._lock:
            self._messages.clear()


class ControlPanel(VendorFake):
    """``/_sandbox``: health, state, inbound messages and reset (no auth: loopback only)."""

    prefix = CONTROL_PREFIX

    def __init__(self, box: Sandbox) -> None:
        super().__init__()
        self.box = box
        self.route("GET", "/healthz", self.healthz)
        self.route("GET", "/state", self.state)
        self.route("POST", "/inbound", self.inbound)
        self.route("POST", "/reset", self.reset_all)

    def healthz(self, request: FakeRequest, match: re.Match[str]) -> FakeResponse:
        return FakeResponse(200, {"status": "ok", "vendors": sorted(self.box.vendors)})

    def state(self, request: FakeRequest, match: re.Match[str]) -> FakeResponse:
        return FakeResponse(200, self.box.state())

    def inbound(self, request: FakeRequest, match: re.Match[str]) -> FakeResponse:
        try:
            body = request.json() or {}
        except ValueError:
            return FakeResponse(400, {"error": "the body is not JSON"})
        vendor = self.box.vendors.get(str(body.get("vendor")))
        if vendor is None:
            return FakeResponse(422, {"error": f"vendor must be one of {sorted(self.box.vendors)}"})
        sender, text = body.get("from"), body.get("text") or "Hello!"
        if not isinstance(sender, str) or not sender.strip():
            return FakeResponse(422, {"error": "'from' (the contact's number) is required"})
        return FakeResponse(200, vendor.contact_writes(sender.strip(), str(text)))

    def reset_all(self, request: FakeRequest, match: re.Match[str]) -> FakeResponse:
        self.box.reset()
        return FakeResponse(200, {"status": "reset"})


class Sandbox:
    """
    All vendors, the voice API and the control panel on one loopback HTTP server.

    :param receiver_url: the receiver's webhook base URL; each vendor's account-level webhooks go to
        ``<receiver_url>/<conn_id>`` (Direct7's with ``?token=``). Loopback only.
    :param port: the port to listen on (0: any free port, see :attr:`url`).
    :param timing: delays of the status changes.
    :param deliverer_options: :class:`WebhookDeliverer` keyword arguments (retries, duplicates).
    """

    def __init__(
        self,
        *,
        receiver_url: str,
        port: int = 0,
        timing: Timing | None = None,
        **deliverer_options: Any,
    ) -> None:
        if not is_loopback_url(receiver_url):
            raise ValueError(f"the receiver URL must be on loopback, not {receiver_url!r}")
        self.receiver_url = receiver_url.rstrip("/")
        self.timing = timing or Timing()
        self.scheduler = Scheduler()
        self.deliverer = WebhookDeliverer(self.scheduler, **deliverer_options)
        self.ledger = Ledger()
        self.vendors: dict[str, SandboxVendor] = {
            box.vendor: box
            for box in (SandboxSendblue(self), SandboxChert(self), SandboxRyze(self), SandboxDirect7(self))
        }
        self.voice = VoiceFake()
        fakes: list[VendorFake] = [*self.vendors.values(), self.voice, ControlPanel(self)]
        self.server = VendorFakeServer(*fakes, host="127.0.0.1", port=port)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.port}"

    def account_url(self, vendor: str) -> str:
        """Where ``vendor`` sends webhooks not addressed to a per-message callback."""
        url = f"{self.receiver_url}/{sandbox.CONN_IDS[vendor]}"
        if vendor == "direct7":  # Direct7 signs nothing: the token in the URL is the proof
            url += f"?token={sandbox.DIRECT7_WEBHOOK_TOKEN}"
        return url

    def start(self) -> Sandbox:
        self.scheduler.start()
        self.server.start()
        return self

    def stop(self) -> None:
        self.server.stop()
        self.scheduler.stop()
        self.deliverer.close()

    def __enter__(self) -> Sandbox:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def reset(self) -> None:
        """Forget every message, delivery, call and pending action."""
        self.scheduler.clear()
        self.server.reset()
        self.ledger.reset()
        self.deliverer.reset()

    def state(self) -> dict[str, Any]:
        """What the control panel's ``/state`` answers (JSON; no secrets)."""
        sendblue, chert, ryze, direct7 = (self.vendors[v] for v in ("sendblue", "chert", "ryze", "direct7"))
        assert isinstance(sendblue, SandboxSendblue) and isinstance(chert, SandboxChert)
        assert isinstance(ryze, SandboxRyze) and isinstance(direct7, SandboxDirect7)
        with sendblue.lock, chert.lock, ryze.lock, direct7.lock, self.voice.lock:
            vendor_state = {
                "sendblue": {
                    "sent": [m["number"] for m in sendblue.messages.values() if m.get("is_outbound")],
                    "marked_read": [list(pair) for pair in sendblue.marked_read],
                },
                "chert": {
                    "sent": [
                        chat["phone"]
                        for chat in chert.chats.values()
                        for m in chat["messages"]
                        if m["direction"] == "outbound"
                    ],
                    "marked_read": list(chert.marked_read),
                },
                "ryze": {
                    "sent": [m["chat_jid"] for m in ryze.messages.values() if m["direction"] == "sent"],
                    "marked_read": [dict(item) for item in ryze.marked_read],
                    "chats_marked_read": list(ryze.chats_marked_read),
                },
                "direct7": {
                    "sent": [m["recipient"] for r in direct7.reports.values() for m in r["messages"]],
                    "marked_read": list(direct7.marked_read),
                },
            }
            calls = [dict(call) for call in self.voice.calls]
        return {
            "receiver_url": self.receiver_url,
            "timing": vars(self.timing),
            "messages": [m.public() for m in self.ledger.messages()],
            "deliveries": [d.public() for d in self.deliverer.deliveries()],
            "calls": calls,
            "vendors": vendor_state,
            "pending_actions": self.scheduler.pending,
        }
