"""
Timed actions and webhook delivery for the sandbox: retries until 2xx, and the odd duplicate.

Vendors deliver at least once: they retry until the receiver answers 2xx, and now and then a
webhook arrives twice. :class:`WebhookDeliverer` does both, deterministically (every
``duplicate_every``-th acknowledged webhook is sent again), so a test can count on it. Everything
is bounded: attempts per webhook, pending actions, and only loopback URLs are ever called (the
sandbox takes callback URLs from whoever sends through it).
"""

from __future__ import annotations

import heapq
import ipaddress
import itertools
import json
import logging
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import requests

log = logging.getLogger(__name__)

#: Most actions waiting at once; more means a runaway client, and the sandbox refuses them.
MAX_PENDING_ACTIONS = 20_000
#: Query parameters whose values are secrets (Direct7's report URL carries the webhook token).
_SECRET_PARAMETERS = frozenset({"token"})


class Scheduler:
    """
    Runs callables at a later time on one background thread, earliest first.

    :param max_pending: refuse new actions beyond this many waiting ones.
    """

    def __init__(self, *, max_pending: int = MAX_PENDING_ACTIONS) -> None:
        self.max_pending = max_pending
        self._heap: list[tuple[float, int, Callable[[], None]]] = []
        self._counter = itertools.count()
        self._changed = threading.Condition()
        self._stopped = False
        self._thread = threading.Thread(target=self._run, name="sandbox-scheduler", daemon=True)

    def start(self) -> Scheduler:
        self._thread.start()
        return self

    def stop(self) -> None:
        with self._changed:
            self._stopped = True
            self._changed.notify_all()
        self._thread.join(5)

    @property
    def pending(self) -> int:
        with self._changed:
            return len(self._heap)

    def clear(self) -> None:
        """Forget every waiting action."""
        with self._changed:
            self._heap.clear()

    def call_later(self, delay: float, action: Callable[[], None]) -> None:
        """Run ``action`` in ``delay`` seconds."""
        with self._changed:
            if len(self._heap) >= self.max_pending:
                raise RuntimeError(f"the sandbox already has {self.max_pending} pending actions")
            heapq.heappush(self._heap, (time.monotonic() + max(delay, 0.0), next(self._counter), action))
            self._changed.notify_all()

    def _run(self) -> None:
        while True:
            with self._changed:
                while not self._stopped and (not self._heap or self._heap[0][0] > time.monotonic()):
                    timeout = self._heap[0][0] - time.monotonic() if self._heap else None
                    self._changed.wait(timeout)
                if self._stopped:
                    return
                _, _, action = heapq.heappop(self._heap)
            try:
                action()
            except Exception:
                log.exception("a sandbox action failed")


def is_loopback_url(url: str) -> bool:
    """Whether ``url`` is http(s) to this machine only (127.0.0.0/8, ::1 or localhost)."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return False
    if parts.hostname == "localhost":
        return True
    try:
        return ipaddress.ip_address(parts.hostname).is_loopback
    except ValueError:
        return False


def redact_url(url: str) -> str:
    """``url`` with secret query parameters (``token``) replaced by ``***``, for logs and state."""
    parts = urlsplit(url)
    if not parts.query:
        return url
    query = [(k, "***" if k.lower() in _SECRET_PARAMETERS else v) for k, v in parse_qsl(parts.query)]
    return urlunsplit(parts._replace(query=urlencode(query, safe="*")))


@dataclass
class Delivery:
    """
    One webhook and what became of it.

    :param id: the delivery's number, in order of creation.
    :param vendor: who sends it.
    :param event: what it reports, e.g. ``"DELIVERED"`` or ``"message.received"``.
    :param message_id: the vendor's message id it is about.
    :param url: where it goes (may hold a secret: see :attr:`public`).
    :param body: the exact bytes sent (signatures cover them).
    :param headers: the headers sent (may hold secrets).
    :param duplicate_of: the delivery this one repeats on purpose, if any.
    """

    id: int
    vendor: str
    event: str
    message_id: str
    url: str
    body: bytes
    headers: dict[str, str]
    duplicate_of: int | None = None
    attempts: list[dict[str, Any]] = field(default_factory=list)
    acknowledged: bool = False
    gave_up: bool = False
    answer: Any = None

    def public(self) -> dict[str, Any]:
        """What the sandbox's state endpoint shows: no header values, no secret in the URL."""
        return {
            "id": self.id,
            "vendor": self.vendor,
            "event": self.event,
            "message_id": self.message_id,
            "url": redact_url(self.url),
            "duplicate_of": self.duplicate_of,
            "attempts": list(self.attempts),
            "acknowledged": self.acknowledged,
            "gave_up": self.gave_up,
            "answer": self.answer,
        }


class WebhookDeliverer:
    """
    Delivers webhooks: retries with exponential backoff until 2xx, sends some twice on purpose.

    :param scheduler: runs attempts and retries.
    :param max_attempts: give up on a webhook after this many attempts.
    :param first_backoff: seconds before the first retry; doubled after each failed attempt.
    :param max_backoff: longest wait between two attempts.
    :param duplicate_every: every n-th acknowledged webhook is delivered once more (0: never).
    :param duplicate_delay: seconds between a webhook and its duplicate.
    :param timeout: seconds an attempt may take.
    :param workers: attempts in flight at once (a slow receiver must not hold up the clock).
    """

    def __init__(
        self,
        scheduler: Scheduler,
        *,
        max_attempts: int = 8,
        first_backoff: float = 0.25,
        max_backoff: float = 5.0,
        duplicate_every: int = 3,
        duplicate_delay: float = 0.2,
        timeout: float = 10.0,
        workers: int = 4,
    ) -> None:
        self.scheduler = scheduler
        self.max_attempts = max_attempts
        self.first_backoff = first_backoff
        self.max_backoff = max_backoff
        self.duplicate_every = duplicate_every
        self.duplicate_delay = duplicate_delay
        self.timeout = timeout
        self._lock = threading.Lock()
        self._deliveries: list[Delivery] = []
        self._acknowledged_originals = 0
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="sandbox-webhook")

    def close(self) -> None:
        """Stop taking attempts; attempts in flight finish."""
        self._pool.shutdown(wait=True, cancel_futures=True)

    def reset(self) -> None:
        with self._lock:
            self._deliveries.clear()
            self._acknowledged_originals = 0

    def deliveries(self) -> list[Delivery]:
        with self._lock:
            return list(self._deliveries)

    def send(
        self,
        *,
        vendor: str,
        event: str,
        message_id: str,
        url: str,
        payload: Any,
        headers: Mapping[str, str] | None = None,
        sign: Callable[[bytes], Mapping[str, str]] | None = None,
        delay: float = 0.0,
    ) -> Delivery | None:
        """
        Deliver ``payload`` as JSON to ``url`` (in ``delay`` seconds); ``None`` if the URL is refused.

        :param sign: makes headers from the exact body bytes (a signature), added to ``headers``.
        """
        if not is_loopback_url(url):
            log.warning("not delivering a %s webhook to %s: the sandbox calls loopback only", vendor, url)
            return None
        body = json.dumps(payload, separators=(",", ":")).encode()
        sent_headers = {"Content-Type": "application/json", **(headers or {})}
        if sign is not None:
            sent_headers.update(sign(body))
        return self._add(vendor, event, message_id, url, body, sent_headers, None, delay)

    def _add(
        self,
        vendor: str,
        event: str,
        message_id: str,
        url: str,
        body: bytes,
        headers: dict[str, str],
        duplicate_of: int | None,
        delay: float,
    ) -> Delivery:
        with self._lock:
            delivery = Delivery(
                len(self._deliveries) + 1, vendor, event, message_id, url, body, headers, duplicate_of
            )
            self._deliveries.append(delivery)
        self._attempt_later(delivery, delay)
        return delivery

    def _attempt_later(self, delivery: Delivery, delay: float) -> None:
        def submit() -> None:
            try:
                self._pool.submit(self._attempt, delivery)
            except RuntimeError:  # shutting down
                pass

        self.scheduler.call_later(delay, submit)

    def _attempt(self, delivery: Delivery) -> None:
        started = time.time()
        record: dict[str, Any] = {"at": started}
        try:
            response = requests.post(
                delivery.url, data=delivery.body, headers=delivery.headers, timeout=self.timeout
            )
            record["status"] = response.status_code
            ok = 200 <= response.status_code < 300
            if ok:
                try:
                    delivery.answer = response.json()
                except ValueError:
                    delivery.answer = response.text[:200]
        except requests.RequestException as exc:
            record["error"] = type(exc).__name__
            ok = False
        delivery.attempts.append(record)
        log.info(
            "%s %s webhook %d%s for %s, attempt %d: %s",
            delivery.vendor,
            delivery.event,
            delivery.id,
            f" (duplicate of {delivery.duplicate_of})" if delivery.duplicate_of else "",
            delivery.message_id,
            len(delivery.attempts),
            record.get("status") or record.get("error"),
        )
        if ok:
            delivery.acknowledged = True
            self._maybe_duplicate(delivery)
            return
        if len(delivery.attempts) >= self.max_attempts:
            delivery.gave_up = True
            log.warning(
                "gave up on %s webhook %d to %s after %d attempts",
                delivery.vendor,
                delivery.id,
                redact_url(delivery.url),
                len(delivery.attempts),
            )
            return
        backoff = min(self.first_backoff * 2 ** (len(delivery.attempts) - 1), self.max_backoff)
        self._attempt_later(delivery, backoff)

    def _maybe_duplicate(self, delivery: Delivery) -> None:
        if delivery.duplicate_of is not None or self.duplicate_every <= 0:
            return
        with self._lock:
            self._acknowledged_originals += 1
            due = self._acknowledged_originals % self.duplicate_every == 0
        if due:
            # The same bytes and headers again, as a vendor's at-least-once delivery does.
            self._add(
                delivery.vendor,
                delivery.event,
                delivery.message_id,
                delivery.url,
                delivery.body,
                dict(delivery.headers),
                delivery.id,
                self.duplicate_delay,
            )
