"""
The deferred wait for a whole campaign step: :class:`CampaignWaitTrigger`.

One trigger serves every recipient of the step. Each poll follows the receipt store's new events
by id and decides the rows they touch, decides in one statement the rows whose deadline passed,
and looks up at the vendor's status API the waiting rows nearest their deadline, within the
vendor's budget (for lost webhooks, and for Chert, whose reads are only visible there). Nothing
per recipient is kept in the trigger: its cursor and every decision are in the store, so a
restarted triggerer carries on where the last one stopped.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any

from airflow.triggers.base import BaseTrigger, TriggerEvent

from airflow_provider_readreceipts.triggers._store_url import cached_store_url
from airflow_provider_readreceipts.waits import (
    FAULT_CONFIGURATION,
    FAULT_INTERNAL,
    FAULT_STORE,
    ReadReceiptWaitError,
    as_utc,
)

if TYPE_CHECKING:
    from airflow_provider_readreceipts.hooks.base import ReadReceiptsHook
    from airflow_provider_readreceipts.store import AsyncReceiptStore
    from airflow_provider_readreceipts.store.campaign_waits import Classified, InboundMessage, WaitPlan

log = logging.getLogger(__name__)

#: Seconds a vendor look-up may take.
RECONCILE_TIMEOUT = 30.0
#: Look-ups in flight at once.
RECONCILE_IN_FLIGHT = 4
#: Backoff between failed store polls.
STORE_RETRY_MIN, STORE_RETRY_MAX = 0.5, 10.0


def cursor_name(campaign_id: str, step: str) -> str:
    """The campaign wait's cursor in ``rr_cursors``."""
    return f"campaign-wait:{campaign_id}\n{step}"


class CampaignWaitTrigger(BaseTrigger):
    """
    Wait until every sent recipient of a campaign step has an outcome; fire one event with counts.

    The event: ``{"campaign_id", "step", "counts", "waited_seconds"}``, or ``{"outcome": "error",
    "kind", "error"}`` for a fault of our own, which the sensor turns into a task failure.

    :param campaign_id: the campaign.
    :param step: the step to wait on.
    :param conn_id: the step's vendor connection.
    :param vendor: the vendor (connection type).
    :param until: ``"read"`` (a READ or a reply ends a recipient's wait) or ``"reply"``.
    :param read_within: each recipient's deadline is this many seconds after its send...
    :param deadline: ... or this absolute time (ISO 8601) for all of them.
    :param reply_choices: label -> regular expression, to classify replies (already checked).
    :param poll_interval: seconds between polls when nothing happens.
    :param reconcile_interval: seconds between two look-ups of one message at the vendor; ``None``
        turns reconcile off.
    :param reconcile_rate_per_minute: look-ups a minute; default the vendor registry's.
    :param store_conn_id: the store's Airflow connection (see the read sensor).
    :param store_path: the SQLite file when no store connection is used.
    :param store_error_grace: seconds the store may stay unreachable before the wait fails.
    """

    def __init__(
        self,
        *,
        campaign_id: str,
        step: str,
        conn_id: str,
        vendor: str,
        until: str = "read",
        read_within: float | None = None,
        deadline: str | None = None,
        reply_choices: dict[str, str] | None = None,
        poll_interval: float = 5.0,
        reconcile_interval: float | None = None,
        reconcile_rate_per_minute: float | None = None,
        store_conn_id: str | None = None,
        store_path: str | None = None,
        store_error_grace: float = 60.0,
    ) -> None:
        super().__init__()
        self.campaign_id = campaign_id
        self.step = step
        self.conn_id = conn_id
        self.vendor = vendor
        self.until = until
        self.read_within = read_within
        self.deadline = deadline
        self.reply_choices = dict(reply_choices or {})
        self.poll_interval = poll_interval
        self.reconcile_interval = reconcile_interval
        self.reconcile_rate_per_minute = reconcile_rate_per_minute
        self.store_conn_id = store_conn_id
        self.store_path = store_path
        self.store_error_grace = store_error_grace
        self._hook: ReadReceiptsHook | None = None
        #: Look-ups made, and since when this wait's reconcile allowance counts.
        self._spent = 0
        self._allowance_since: float | None = None

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (
            f"{type(self).__module__}.{type(self).__qualname__}",
            {
                "campaign_id": self.campaign_id,
                "step": self.step,
                "conn_id": self.conn_id,
                "vendor": self.vendor,
                "until": self.until,
                "read_within": self.read_within,
                "deadline": self.deadline,
                "reply_choices": self.reply_choices,
                "poll_interval": self.poll_interval,
                "reconcile_interval": self.reconcile_interval,
                "reconcile_rate_per_minute": self.reconcile_rate_per_minute,
                "store_conn_id": self.store_conn_id,
                "store_path": self.store_path,
                "store_error_grace": self.store_error_grace,
            },
        )

    async def run(self) -> AsyncIterator[TriggerEvent]:
        try:
            payload = await self._wait()
        except ReadReceiptWaitError as fault:
            log.error("campaign wait %s/%s failed: %s", self.campaign_id, self.step, fault)
            payload = dict(fault.to_event())
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a bug or an unexpected library error: fail, never "unread"
            log.exception("campaign wait %s/%s crashed", self.campaign_id, self.step)
            payload = dict(ReadReceiptWaitError(FAULT_INTERNAL, f"{type(exc).__name__}: {exc}").to_event())
        finally:
            await self._close_hook()
        yield TriggerEvent(payload)

    async def cleanup(self) -> None:
        await self._close_hook()

    # -- the wait -----------------------------------------------------------------------------------

    def _plan(self) -> WaitPlan:
        from airflow_provider_readreceipts.store.campaign_waits import WaitPlan

        return WaitPlan(
            campaign_id=self.campaign_id,
            step=self.step,
            conn_id=self.conn_id,
            until=self.until,
            read_within=self.read_within,
            deadline=as_utc(self.deadline, field="deadline") if self.deadline else None,
        )

    async def _wait(self) -> dict[str, Any]:
        from airflow_provider_readreceipts.store import AsyncReceiptStore, StoreError
        from airflow_provider_readreceipts.store.campaign_waits import begin_wait, finish_wait, poll
        from airflow_provider_readreceipts.store.campaigns import step_counts
        from airflow_provider_readreceipts.triggers._listen import StoreListener

        started = time.monotonic()
        plan = self._plan()
        url = await cached_store_url(self.store_conn_id, self.store_path)
        store = AsyncReceiptStore(url)
        wake = asyncio.Event()
        listener = (
            StoreListener(store.url, on_notify=wake.set, on_lost=wake.set)
            if store.dialect == "postgresql"
            else None
        )
        classify = self._classifier()
        name = cursor_name(self.campaign_id, self.step)
        try:
            try:
                await store.check_schema()
            except StoreError as exc:
                raise ReadReceiptWaitError(FAULT_CONFIGURATION, str(exc)) from None
            await store.write(lambda conn: begin_wait(conn, plan))
            failing_since: float | None = None
            failures = 0
            while True:
                if listener is not None:
                    await listener.ensure()
                poll_started = datetime.now(timezone.utc)
                try:
                    result = await store.write(
                        lambda conn, now=poll_started: poll(  # type: ignore[misc]
                            conn,
                            plan,
                            cursor_name=name,
                            classify=classify,
                            now=now,
                            reconcile_interval=self.reconcile_interval,
                        )
                    )
                except Exception as exc:
                    failures += 1
                    failing_since = failing_since or time.monotonic()
                    if time.monotonic() - failing_since >= self.store_error_grace:
                        raise ReadReceiptWaitError(
                            FAULT_STORE,
                            f"the receipt store {store.url_for_display} could not be used for"
                            f" {time.monotonic() - failing_since:.0f}s: {type(exc).__name__}: {exc}",
                        ) from None
                    log.warning("campaign wait poll failed (%d in a row): %s", failures, exc)
                    await asyncio.sleep(min(STORE_RETRY_MIN * 2**failures, STORE_RETRY_MAX))
                    continue
                failing_since, failures = None, 0
                if result.decided or result.expired:
                    log.info(
                        "campaign %s/%s: %s; %d unread at their deadline; %d still waiting",
                        self.campaign_id,
                        self.step,
                        dict(result.decided) or "no new outcome",
                        result.expired,
                        result.waiting,
                    )
                if result.waiting == 0 and result.sending_finished:
                    break
                if self.reconcile_interval and result.waiting:
                    await self._reconcile(store, plan)
                await self._sleep(wake, result.next_deadline)
            counts = await store.read(lambda conn: step_counts(conn, self.campaign_id, self.step))
            await store.write(lambda conn: finish_wait(conn, plan))
        finally:
            if listener is not None:
                await listener.close()
            await store.dispose()
        return {
            "campaign_id": self.campaign_id,
            "step": self.step,
            "vendor": self.vendor,
            "conn_id": self.conn_id,
            "counts": counts,
            "waited_seconds": round(time.monotonic() - started, 3),
        }

    async def _sleep(self, wake: asyncio.Event, next_deadline: datetime | None) -> None:
        timeout = self.poll_interval
        if next_deadline is not None:
            until_deadline = (next_deadline - datetime.now(timezone.utc)).total_seconds()
            # Just after the deadline, so that the poll that decides "unread" starts after it.
            timeout = min(timeout, max(until_deadline + 0.01, 0.0))
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(wake.wait(), timeout)
        wake.clear()

    def _classifier(self) -> Any:
        from airflow_provider_readreceipts.replies import classify, compile_choices
        from airflow_provider_readreceipts.store.campaign_waits import Classified
        from airflow_provider_readreceipts.vendors import SPECS, hook_class_for

        choices = compile_choices(self.reply_choices)

        def classified(message: InboundMessage) -> Classified:
            try:
                payload = json.loads(message.payload) if isinstance(message.payload, str) else message.payload
            except ValueError:
                payload = {}
            text = ""
            if isinstance(payload, dict) and message.vendor in SPECS:
                text = hook_class_for(message.vendor).inbound_text(payload)
            return Classified(text=text, label=classify(text, choices))

        return classified

    # -- reconcile ----------------------------------------------------------------------------------

    async def _reconcile(self, store: AsyncReceiptStore, plan: WaitPlan) -> None:
        """Look up at the vendor the waiting rows nearest their deadline, as the budget allows."""
        from airflow_provider_readreceipts.receipts import VendorAPIError
        from airflow_provider_readreceipts.store.campaign_waits import mark_reconciled, reconcile_candidates

        assert self.reconcile_interval is not None
        # This wait's own share of the vendor's budget (the token's shared budget caps every caller
        # in the process together); at most a few look-ups per poll, so that a poll never sits on
        # them while webhooks arrive.
        room = min(RECONCILE_IN_FLIGHT * 4, int(self._reconcile_allowance()))
        if room < 1:
            return
        hook = await self._hook_instance()
        now = datetime.now(timezone.utc)
        candidates = await store.read(
            lambda conn: reconcile_candidates(
                conn, plan, limit=room, looked_before=now - timedelta(seconds=self.reconcile_interval or 0)
            )
        )
        if not candidates:
            return
        semaphore = asyncio.Semaphore(RECONCILE_IN_FLIGHT)
        looked: list[str] = []

        async def look(recipient: str, message_id: str, chat: str) -> None:
            async with semaphore:
                try:
                    events = await asyncio.wait_for(
                        hook.afetch_receipt_events(message_id=message_id, chat=chat), RECONCILE_TIMEOUT * 2
                    )
                except VendorAPIError as exc:
                    if exc.status_code in (401, 403):
                        raise ReadReceiptWaitError(
                            FAULT_CONFIGURATION,
                            f"the vendor refused the credentials of connection {self.conn_id!r}: {exc}",
                        ) from None
                    log.warning("reconcile of %s/%s failed: %s", self.conn_id, message_id, exc)
                    return
                except (asyncio.TimeoutError, OSError) as exc:
                    log.warning("reconcile of %s/%s failed: %s", self.conn_id, message_id, exc)
                    return
                events = [event for event in events if event.message_id == message_id]
                if events:
                    await store.record(events, source="reconcile")
                looked.append(recipient)

        self._spent += len(candidates)
        await asyncio.gather(*(look(*candidate) for candidate in candidates))
        await store.write(lambda conn: mark_reconciled(conn, plan, looked, now))

    def _reconcile_allowance(self) -> float:
        """Look-ups allowed now by this wait's own rate (a token bucket refilled since the first poll)."""
        from airflow_provider_readreceipts.triggers._reconcile import default_reconcile_rate

        rate = (self.reconcile_rate_per_minute or default_reconcile_rate(self.vendor)) / 60.0
        now = time.monotonic()
        if self._allowance_since is None:
            self._allowance_since = now
        return max(0.0, 1.0 + (now - self._allowance_since) * rate - self._spent)

    async def _hook_instance(self) -> ReadReceiptsHook:
        if self._hook is None:
            from airflow.sdk.exceptions import AirflowNotFoundException

            from airflow_provider_readreceipts.receipts import InvalidInputError
            from airflow_provider_readreceipts.vendors import hook_for

            try:
                hook = hook_for(self.conn_id, self.vendor, max_attempts=1, timeout=RECONCILE_TIMEOUT)
            except (KeyError, InvalidInputError, AirflowNotFoundException) as exc:
                raise ReadReceiptWaitError(
                    FAULT_CONFIGURATION, f"reconcile is not possible on connection {self.conn_id!r}: {exc}"
                ) from None
            hook.share_rate_budget()
            self._hook = hook
        return self._hook

    async def _close_hook(self) -> None:
        hook, self._hook = self._hook, None
        if hook is not None:
            with contextlib.suppress(Exception):
                await hook.aclose()
