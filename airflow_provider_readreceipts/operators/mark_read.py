"""
Send read receipts: one conversation or message per task, or a whole inbox in one task.

Every single operator pushes the same small result to XCom, whatever the vendor::

    {"vendor": "sendblue", "conn_id": "sendblue_default", "target": "+14155551234", "outcome": "read"}

``outcome`` is ``"read"``: the vendor accepted the read receipt. Vendors deliver them best effort
(Sendblue's are iMessage-only and must be enabled for the account), so "read" means "the vendor
took it", not "the other party's phone showed it". A refused receipt fails the task.

The bulk operators (``...BulkMarkReadOperator``) mark hundreds to thousands of conversations read in
one task: concurrent requests over one HTTP session, a per-connection rate limit, one outcome per
item, and a failure threshold. Their XCom is a report (see :class:`BaseBulkMarkReadOperator`).

Hooks are imported when a task runs, never at DAG parse time.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, ClassVar, TypedDict

from airflow_provider_readreceipts.operators._base import HookT, VendorOperator
from airflow_provider_readreceipts.operators._common import invalid_input_fails_task
from airflow_provider_readreceipts.receipts import InvalidInputError
from airflow_provider_readreceipts.vendors.chert import SPEC as CHERT
from airflow_provider_readreceipts.vendors.direct7 import SPEC as DIRECT7
from airflow_provider_readreceipts.vendors.ryze import SPEC as RYZE
from airflow_provider_readreceipts.vendors.sendblue import SPEC as SENDBLUE

if TYPE_CHECKING:
    from airflow.sdk import Context

    # Named in the operators' base-class type parameters (strings, so nothing is imported at parse
    # time), which ruff does not count as uses.
    from airflow_provider_readreceipts.hooks.chert import ChertHook  # noqa: F401
    from airflow_provider_readreceipts.hooks.direct7 import Direct7Hook  # noqa: F401
    from airflow_provider_readreceipts.hooks.ryze import RyzeHook
    from airflow_provider_readreceipts.hooks.sendblue import SendblueHook  # noqa: F401
    from airflow_provider_readreceipts.operators._bulk import BulkFailure, BulkItem, BulkReport

__all__ = [
    "MARKED_READ",
    "OUTCOME_READ",
    "BaseBulkMarkReadOperator",
    "ChertBulkMarkReadOperator",
    "ChertMarkReadOperator",
    "Direct7BulkMarkReadOperator",
    "Direct7MarkReadOperator",
    "MarkReadResult",
    "RyzeBulkMarkReadOperator",
    "RyzeMarkReadOperator",
    "SendblueBulkMarkReadOperator",
    "SendblueMarkReadOperator",
]

#: The vendor accepted the read receipt (the bulk reports' per-item outcome for success, too). Not
#: a wait's outcome (:data:`airflow_provider_readreceipts.waits.OUTCOME_READ`): the vendor took
#: our receipt, nobody read anything.
MARKED_READ = "read"
#: The former name of :data:`MARKED_READ`, kept for existing imports.
OUTCOME_READ = MARKED_READ

#: RyzeAPI's published limit: 100 requests a minute per token (from the vendor registry).
RYZE_RATE_LIMIT = RYZE.rate_limit.requests


class MarkReadResult(TypedDict):
    """What a single mark-read operator pushes to XCom, the same for every vendor."""

    vendor: str
    conn_id: str
    #: What was marked read: a phone number, a chat id or JID, or a message id.
    target: str
    outcome: str


def _result(vendor: str, conn_id: str, target: str) -> MarkReadResult:
    return {"vendor": vendor, "conn_id": conn_id, "target": target, "outcome": MARKED_READ}


# -- one at a time ------------------------------------------------------------------------------------


class SendblueMarkReadOperator(VendorOperator["SendblueHook"]):
    """
    Mark the whole conversation with ``number`` read on Sendblue (iMessage only, best effort).

    :param number: the other party, E.164 (templated).
    :param from_number: your Sendblue line, E.164 (templated); defaults to the connection's
        ``from_number`` extra.
    :param sendblue_conn_id: the Sendblue connection (templated).
    """

    vendor = SENDBLUE.conn_type
    template_fields: Sequence[str] = ("number", "from_number", "sendblue_conn_id")

    def __init__(
        self,
        *,
        number: str,
        from_number: str | None = None,
        sendblue_conn_id: str = SENDBLUE.default_conn_id,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.number = number
        self.from_number = from_number
        self.sendblue_conn_id = sendblue_conn_id

    def execute(self, context: Context) -> MarkReadResult:
        from airflow_provider_readreceipts.hooks.base import normalize_e164

        with invalid_input_fails_task():
            number = normalize_e164(self.number, field="number")
            self.hook.mark_read(number=number, from_number=self.from_number)
        self.log.info("Sendblue: marked the conversation with %s read", number)
        return _result(self.vendor, self.conn_id, number)


class ChertMarkReadOperator(VendorOperator["ChertHook"]):
    """
    Mark a Chert chat read (its unread inbound messages) and send a read receipt from its line.

    :param chat_id: the Chert chat id (templated); the ``chat`` of a Chert message reference is one.
    :param chert_conn_id: the Chert connection (templated).
    """

    vendor = CHERT.conn_type
    template_fields: Sequence[str] = ("chat_id", "chert_conn_id")

    def __init__(self, *, chat_id: str, chert_conn_id: str = CHERT.default_conn_id, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.chat_id = chat_id
        self.chert_conn_id = chert_conn_id

    def execute(self, context: Context) -> MarkReadResult:
        from airflow_provider_readreceipts.hooks.base import require_text

        with invalid_input_fails_task():
            chat_id = require_text(self.chat_id, field="chat_id")
            self.hook.mark_read(chat_id=chat_id)
        self.log.info("Chert: marked chat %s read", chat_id)
        return _result(self.vendor, self.conn_id, chat_id)


class RyzeMarkReadOperator(VendorOperator["RyzeHook"]):
    """
    Send WhatsApp read receipts through RyzeAPI: for one message, or for a whole chat.

    :param number: the chat: an E.164 phone number or a JID (templated). A group JID
        (``...@g.us``) needs ``sender`` when marking one message.
    :param message_id: the WhatsApp id of the message to mark read (templated); required unless
        ``whole_chat`` is set, and must be empty when it is.
    :param sender: the message's author, JID or E.164 (templated); required in group chats.
    :param whole_chat: mark every message of the chat read at once (``markChatRead``).
    :param ryze_conn_id: the RyzeAPI connection (templated).
    """

    vendor = RYZE.conn_type
    template_fields: Sequence[str] = ("number", "message_id", "sender", "ryze_conn_id")

    def __init__(
        self,
        *,
        number: str,
        message_id: str | None = None,
        sender: str | None = None,
        whole_chat: bool = False,
        ryze_conn_id: str = RYZE.default_conn_id,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.number = number
        self.message_id = message_id
        self.sender = sender
        self.whole_chat = whole_chat
        self.ryze_conn_id = ryze_conn_id

    def execute(self, context: Context) -> MarkReadResult:
        with invalid_input_fails_task():
            target = _ryze_mark_read(
                self.hook,
                number=self.number,
                message_id=self.message_id,
                sender=self.sender,
                whole_chat=self.whole_chat,
            )
        self.log.info("RyzeAPI: marked %s read", target)
        return _result(self.vendor, self.conn_id, target)


def _ryze_mark_read(hook: RyzeHook, *, number: Any, message_id: Any, sender: Any, whole_chat: bool) -> str:
    """Mark one message or a whole chat read; returns the target (message id, or chat as sent)."""
    from airflow_provider_readreceipts.hooks.base import require_text
    from airflow_provider_readreceipts.hooks.ryze import normalize_recipient

    if whole_chat:
        if message_id not in (None, ""):
            raise InvalidInputError("message_id", "must be empty when whole_chat=True marks the whole chat")
        chat = normalize_recipient(number, field="number")
        hook.mark_chat_read(number=chat)
        return chat
    if message_id in (None, ""):
        raise InvalidInputError("message_id", "is required unless whole_chat=True")
    message = require_text(message_id, field="message_id")
    hook.mark_read(message_id=message, number=number, sender=sender)
    return message


class Direct7MarkReadOperator(VendorOperator["Direct7Hook"]):
    """
    Mark an inbound WhatsApp message read through Direct7 (the sender sees blue ticks).

    :param message_id: Direct7's id of the inbound message, from its webhook (templated).
    :param direct7_conn_id: the Direct7 connection (templated).
    """

    vendor = DIRECT7.conn_type
    template_fields: Sequence[str] = ("message_id", "direct7_conn_id")

    def __init__(
        self, *, message_id: str, direct7_conn_id: str = DIRECT7.default_conn_id, **kwargs: Any
    ) -> None:
        super().__init__(**kwargs)
        self.message_id = message_id
        self.direct7_conn_id = direct7_conn_id

    def execute(self, context: Context) -> MarkReadResult:
        from airflow_provider_readreceipts.hooks.base import require_text

        with invalid_input_fails_task():
            message_id = require_text(self.message_id, field="message_id")
            self.hook.mark_read(message_id=message_id)
        self.log.info("Direct7: marked message %s read", message_id)
        return _result(self.vendor, self.conn_id, message_id)


# -- many at once -------------------------------------------------------------------------------------


class BaseBulkMarkReadOperator(VendorOperator[HookT]):
    """
    Base of the bulk operators: one hook, a thread pool, a rate limit, a failure threshold.

    Every item gets one outcome: ``read``, ``failed`` (the vendor refused it or could not be reached,
    after the hook's retries) or ``invalid`` (unusable input, refused before any HTTP call). The
    XCom result is a report: ``{"vendor", "conn_id", "total", "read", "failed", "invalid",
    "failures": [{"target", "outcome", "error"}, ...]}``. Past the threshold the task fails naming
    the failed items, and pushes the report under the XCom key ``report``; when every failure is
    bad input it fails without retrying. Duplicate items are marked once. Marking read is
    idempotent, so a task retry simply marks everything again.

    :param max_concurrency: requests in flight at once; also the size of the hook's connection pool.
    :param rate_limit: at most this many requests (retries included) in any ``rate_limit_period``
        seconds; ``None`` for no limit. The limit holds within the task: give tasks that share a
        connection an Airflow pool of one slot, so two of them never run at once.
    :param rate_limit_period: the rate-limit window, in seconds.
    :param max_failures: fail the task when more items than this fail (``None``: no count limit).
    :param max_failure_rate: fail the task when more than this fraction of the items fail, e.g.
        ``0.05`` (``None``: no fraction limit). Either threshold fails the task.
    """

    #: The templated argument that holds the items; named in input errors (``numbers[3]``).
    items_argument: ClassVar[str]
    #: The vendor's published rate limit, used when ``rate_limit`` is not given.
    default_rate_limit: ClassVar[int | None] = None

    def __init__(
        self,
        *,
        max_concurrency: int = 8,
        rate_limit: int | None = None,
        rate_limit_period: float = 60.0,
        max_failures: int | None = 0,
        max_failure_rate: float | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if max_concurrency < 1:
            raise ValueError(f"max_concurrency must be at least 1, not {max_concurrency!r}")
        if rate_limit is not None and rate_limit < 1:
            raise ValueError(f"rate_limit must be at least 1 or None, not {rate_limit!r}")
        if max_failure_rate is not None and not 0 <= max_failure_rate <= 1:
            raise ValueError(f"max_failure_rate must be between 0 and 1, not {max_failure_rate!r}")
        self.max_concurrency = max_concurrency
        self.rate_limit = self.default_rate_limit if rate_limit is None else rate_limit
        self.rate_limit_period = rate_limit_period
        self.max_failures = max_failures
        self.max_failure_rate = max_failure_rate

    def hook_kwargs(self) -> dict[str, Any]:
        # One connection per concurrent request: the pool must not be the bottleneck.
        return {"max_connections": self.max_concurrency}

    def prepare(self) -> None:
        """Check task-wide arguments once, before any item (raise ``InvalidInputError``)."""

    def build_item(self, argument: str, value: Any) -> BulkItem:
        """The call for one item; raise ``InvalidInputError`` for an unusable item."""
        raise NotImplementedError

    def _items(self) -> list[Any]:
        values = getattr(self, self.items_argument)
        if isinstance(values, (str, bytes, Mapping)) or not isinstance(values, Iterable):
            raise InvalidInputError(
                self.items_argument,
                f"must be a list, not {type(values).__name__}; a Jinja template renders to a string "
                "unless the DAG sets render_template_as_native_obj=True (or pass an XComArg)",
            )
        return list(values)

    def execute(self, context: Context) -> BulkReport:
        # The engine (threads, limiter) is imported when a bulk task runs, not at DAG parse time.
        from airflow_provider_readreceipts.operators._bulk import (
            describe_failures,
            invalid_item,
            run_bulk,
            threshold_exceeded,
        )
        from airflow_provider_readreceipts.rate_limits import SlidingWindowRateLimiter, rate_limit_session

        with invalid_input_fails_task():
            values = self._items()
            self.prepare()
            # Load the connection and build the one session now, before the threads share it.
            session = self.hook.get_conn()
        if self.rate_limit is not None:
            limiter = SlidingWindowRateLimiter(self.rate_limit, self.rate_limit_period)
            rate_limit_session(session, limiter)
            self.log.info("Rate limit: %s on connection %s", limiter, self.conn_id)

        items: list[BulkItem] = []
        rejected: list[BulkFailure] = []
        seen: set[str] = set()
        for index, value in enumerate(values):
            argument = f"{self.items_argument}[{index}]"
            try:
                item = self.build_item(argument, value)
            except InvalidInputError as exc:
                rejected.append(invalid_item(argument=argument, target=_label(value), error=exc))
                continue
            if item.target in seen:
                continue  # the same conversation twice: one receipt is enough
            seen.add(item.target)
            items.append(item)
        if len(seen) + len(rejected) < len(values):
            self.log.info("Skipped %d duplicate items", len(values) - len(seen) - len(rejected))

        report = run_bulk(
            items,
            vendor=self.vendor,
            conn_id=self.conn_id,
            workers=self.max_concurrency,
            log=self.log,
            rejected=rejected,
        )
        reason = threshold_exceeded(
            report, max_failures=self.max_failures, max_failure_rate=self.max_failure_rate
        )
        if reason is None:
            return report

        from airflow.sdk.exceptions import AirflowException, AirflowFailException

        # A failed task pushes no return value: keep the report where the UI and callbacks find it.
        context["ti"].xcom_push(key="report", value=report)
        message = describe_failures(report, reason)
        if report["failed"] == 0:
            raise AirflowFailException(message)  # only bad input: a retry would fail the same way
        raise AirflowException(message)


def _label(value: Any) -> str:
    if isinstance(value, Mapping):
        value = value.get("message_id") or value.get("number") or ""
    return value if isinstance(value, str) else repr(value)[:80]


def _text_item(argument: str, value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise InvalidInputError(argument, f"must be a non-empty string, not {value!r}")
    return value.strip()


class SendblueBulkMarkReadOperator(BaseBulkMarkReadOperator["SendblueHook"]):
    """
    Mark many Sendblue conversations read in one task.

    Sendblue's rate limits vary by plan and are not published: set ``rate_limit`` to your plan's.

    :param numbers: the other parties, E.164 (templated; a list, or an XComArg resolving to one).
    :param from_number: your Sendblue line, E.164 (templated); defaults to the connection's
        ``from_number`` extra.
    :param sendblue_conn_id: the Sendblue connection (templated).
    :param kwargs: concurrency, rate limit and failure threshold, see :class:`BaseBulkMarkReadOperator`.
    """

    vendor = SENDBLUE.conn_type
    items_argument = "numbers"
    template_fields: Sequence[str] = ("numbers", "from_number", "sendblue_conn_id")

    def __init__(
        self,
        *,
        numbers: Iterable[str],
        from_number: str | None = None,
        sendblue_conn_id: str = SENDBLUE.default_conn_id,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.numbers = numbers
        self.from_number = from_number
        self.sendblue_conn_id = sendblue_conn_id

    def prepare(self) -> None:
        from airflow_provider_readreceipts.hooks.base import normalize_e164

        self._line = normalize_e164(self.from_number or self.hook.extra("from_number"), field="from_number")

    def build_item(self, argument: str, value: Any) -> BulkItem:
        from airflow_provider_readreceipts.hooks.base import normalize_e164
        from airflow_provider_readreceipts.operators._bulk import BulkItem

        number = normalize_e164(value, field=argument)
        return BulkItem(
            target=number,
            argument=argument,
            call=lambda: self.hook.mark_read(number=number, from_number=self._line),
            field="number",
        )


class ChertBulkMarkReadOperator(BaseBulkMarkReadOperator["ChertHook"]):
    """
    Mark many Chert chats read in one task.

    Chert's rate limit is not published; it answers 429 (code 1007) with ``retry_after``, which the
    hook honours. Set ``rate_limit`` to stay under it.

    :param chat_ids: the Chert chat ids (templated; a list, or an XComArg resolving to one).
    :param chert_conn_id: the Chert connection (templated).
    :param kwargs: concurrency, rate limit and failure threshold, see :class:`BaseBulkMarkReadOperator`.
    """

    vendor = CHERT.conn_type
    items_argument = "chat_ids"
    template_fields: Sequence[str] = ("chat_ids", "chert_conn_id")

    def __init__(
        self, *, chat_ids: Iterable[str], chert_conn_id: str = CHERT.default_conn_id, **kwargs: Any
    ) -> None:
        super().__init__(**kwargs)
        self.chat_ids = chat_ids
        self.chert_conn_id = chert_conn_id

    def build_item(self, argument: str, value: Any) -> BulkItem:
        from airflow_provider_readreceipts.operators._bulk import BulkItem

        chat_id = _text_item(argument, value)
        return BulkItem(
            target=chat_id,
            argument=argument,
            call=lambda: self.hook.mark_read(chat_id=chat_id),
            field="chat_id",
        )


class RyzeBulkMarkReadOperator(BaseBulkMarkReadOperator["RyzeHook"]):
    """
    Mark many WhatsApp chats (or messages) read through RyzeAPI in one task.

    Keeps to RyzeAPI's published limit of 100 requests a minute per token unless ``rate_limit``
    says otherwise; at that limit 1,000 chats take about ten minutes.

    :param chats: the items (templated; a list, or an XComArg resolving to one). A string (E.164
        number or JID) marks that whole chat read; a mapping ``{"number", "message_id", "sender"?}``
        marks one message read (``sender`` is required in groups); a mapping without
        ``message_id`` marks the whole chat of ``number``.
    :param ryze_conn_id: the RyzeAPI connection (templated).
    :param kwargs: concurrency, rate limit and failure threshold, see :class:`BaseBulkMarkReadOperator`.
    """

    vendor = RYZE.conn_type
    items_argument = "chats"
    default_rate_limit = RYZE_RATE_LIMIT
    template_fields: Sequence[str] = ("chats", "ryze_conn_id")

    def __init__(
        self,
        *,
        chats: Iterable[str | Mapping[str, str]],
        ryze_conn_id: str = RYZE.default_conn_id,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.chats = chats
        self.ryze_conn_id = ryze_conn_id

    def build_item(self, argument: str, value: Any) -> BulkItem:
        from airflow_provider_readreceipts.hooks.ryze import normalize_recipient
        from airflow_provider_readreceipts.operators._bulk import BulkItem

        if isinstance(value, Mapping):
            unknown = sorted(set(value) - {"number", "message_id", "sender"})
            if unknown:
                raise InvalidInputError(argument, f"unknown keys {unknown}; use number, message_id, sender")
            number, message_id, sender = value.get("number"), value.get("message_id"), value.get("sender")
        else:
            number, message_id, sender = value, None, None
        if not isinstance(value, Mapping) or message_id in (None, ""):
            # Normalised first, so "+5511..." and "5511..." count as one chat (a JID stays apart:
            # RyzeAPI resolves digits itself, while a JID names one account).
            chat = normalize_recipient(number, field=argument if not isinstance(value, Mapping) else "number")
            return BulkItem(
                target=chat,
                argument=argument,
                call=lambda: self.hook.mark_chat_read(number=chat),
                field="number",
            )
        return BulkItem(
            target=str(message_id),
            argument=argument,
            call=lambda: _ryze_mark_read(
                self.hook, number=number, message_id=message_id, sender=sender, whole_chat=False
            ),
        )


class Direct7BulkMarkReadOperator(BaseBulkMarkReadOperator["Direct7Hook"]):
    """
    Mark many inbound WhatsApp messages read through Direct7 in one task.

    Direct7 has no chat-level receipt: each item is the id of an inbound message. Its rate limit is
    not published; set ``rate_limit`` to stay under yours.

    :param message_ids: Direct7 ids of inbound messages (templated; a list, or an XComArg).
    :param direct7_conn_id: the Direct7 connection (templated).
    :param kwargs: concurrency, rate limit and failure threshold, see :class:`BaseBulkMarkReadOperator`.
    """

    vendor = DIRECT7.conn_type
    items_argument = "message_ids"
    template_fields: Sequence[str] = ("message_ids", "direct7_conn_id")

    def __init__(
        self, *, message_ids: Iterable[str], direct7_conn_id: str = DIRECT7.default_conn_id, **kwargs: Any
    ) -> None:
        super().__init__(**kwargs)
        self.message_ids = message_ids
        self.direct7_conn_id = direct7_conn_id

    def build_item(self, argument: str, value: Any) -> BulkItem:
        from airflow_provider_readreceipts.operators._bulk import BulkItem

        message_id = _text_item(argument, value)
        return BulkItem(
            target=message_id,
            argument=argument,
            call=lambda: self.hook.mark_read(message_id=message_id),
            field="message_id",
        )
