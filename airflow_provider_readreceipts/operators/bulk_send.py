"""
Send one message to every recipient of a campaign step, in one task: thousands to millions of
recipients, no task instance per recipient, per-recipient state in the receipt store.

Recipients come from a list or an upstream XCom (``recipients``), a CSV or JSON Lines file
(``recipients_file``), or an outcome group of an earlier step (``campaign`` and ``outcome``: follow
up the readers, switch the failed to another channel). Each recipient's text is the Jinja template
``text`` rendered for that recipient (``{{ recipient.name }}``, and the task's context).

What the task guarantees:

- **Resumable.** The step and its rows are registered once (a retry finds them by campaign id and
  step); a retried task sends only to rows not sent yet.
- **Never twice.** A row is marked ``sending`` just before its request goes out. A send whose
  outcome is unknown (timeout, dropped connection, 5xx, or the task stopping mid-request) is
  recorded as ``send_unknown`` and never sent again automatically. Chert sends carry a
  per-recipient idempotency key instead, so Chert resends them safely.
- **Bad rows do not stop the rest.** An invalid number is recorded as ``refused`` with the reason;
  the task fails only past ``max_failures`` / ``max_failure_rate``.
- **Within the vendor's limit.** Every request draws from the one budget of the vendor token in the
  process (:mod:`airflow_provider_readreceipts.rate_limits`), shared with bulk mark-read and the
  waits' reconcile.

XCom carries the campaign id, the step and counts (a :class:`CampaignStepRef`), never the recipient
list. Hooks, the store and the engine are imported when the task runs.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, ClassVar, TypedDict

from airflow_provider_readreceipts.operators._base import HookT, VendorOperator
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
    from airflow_provider_readreceipts.hooks.ryze import RyzeHook  # noqa: F401
    from airflow_provider_readreceipts.hooks.sendblue import SendblueHook  # noqa: F401
    from airflow_provider_readreceipts.operators._campaign_send import Sent
    from airflow_provider_readreceipts.store.campaigns import RecipientRow

__all__ = [
    "BaseBulkSendMessageOperator",
    "CampaignStepRef",
    "ChertBulkSendMessageOperator",
    "Direct7BulkSendMessageOperator",
    "RyzeBulkSendMessageOperator",
    "SendblueBulkSendMessageOperator",
    "campaign_id_for",
]


class CampaignStepRef(TypedDict):
    """What a bulk step pushes to XCom, and what the campaign wait and later steps take."""

    campaign_id: str
    step: str
    vendor: str
    conn_id: str
    channel: str
    #: Rows per send state and outcome (``pending``, ``sent``, ``refused``, ``send_unknown``, ...).
    counts: dict[str, int]
    total: int


def campaign_id_for(*, dag_id: str, run_id: str, task_id: str) -> str:
    """The default campaign id: the same on every try of a task instance, readable in reports."""
    return f"{dag_id}/{run_id}/{task_id}"


class BaseBulkSendMessageOperator(VendorOperator[HookT]):
    """
    Base of the bulk send operators; see the module for what they guarantee.

    :param text: the message, a Jinja template rendered for each recipient (not at task start):
        ``recipient`` is the row (``{{ recipient.name }}``; ``{{ recipient.recipient }}`` is the
        identity), and the task's context is there too (``{{ params.event }}``).
    :param recipients: a list of numbers (or JIDs), or of rows (mappings with ``recipient`` or
        ``number`` and any other fields), or an XComArg resolving to one (templated).
    :param recipients_file: instead: a CSV file with a header line, or a JSON Lines file
        (``.jsonl``), one row a line (templated path).
    :param recipient_column: the rows' identity column, when it is not ``recipient``, ``number``,
        ``phone`` or ``to``.
    :param campaign: a later step: the campaign to add this step to, as an earlier step's or the
        campaign wait's XCom (``wait.output``) or a campaign id (templated).
    :param outcome: with ``campaign``: send to this outcome group of the source step (``read``,
        ``replied``, ``unread``, ``failed``, or ``not_sent``) instead of ``recipients``.
    :param source_step: the step whose group ``outcome`` names; default the one ``campaign`` names,
        else the campaign's latest.
    :param exclude_labels: with ``outcome``: leave out recipients whose reply, in any step of the
        campaign, was classified under one of these labels (default ``("stop",)``: people who
        answered STOP are never messaged again by a later step).
    :param campaign_id: a first step: the campaign's id (templated); default derived from the DAG
        id, run id and task id, so a retry finds it again. Reusing an id with another recipient set
        fails, naming the difference.
    :param step: the step's name in the campaign (templated); default the task id.
    :param max_concurrency: requests in flight at once.
    :param rate_limit: at most this many requests per ``rate_limit_period`` seconds, if stricter
        than the vendor token's shared budget.
    :param rate_limit_period: the window of ``rate_limit``, in seconds.
    :param max_failures: fail the task when more rows than this are refused or of unknown outcome
        (``None``: no count limit).
    :param max_failure_rate: fail the task when more than this fraction of the rows are.
    :param store_conn_id: the receipt store's connection; default ``readreceipts_store_default``
        when it exists, else the SQLite file.
    :param store_path: the SQLite file when no store connection is used.
    """

    template_fields: Sequence[str] = (
        "recipients",
        "recipients_file",
        "campaign",
        "outcome",
        "source_step",
        "campaign_id",
        "step",
        "store_conn_id",
        "store_path",
    )
    #: The vendor takes an idempotency key, so a send of unknown outcome may be repeated safely.
    idempotent_sends: ClassVar[bool] = False
    ui_color = "#e8f0fe"

    def __init__(
        self,
        *,
        text: str,
        recipients: Any = None,
        recipients_file: str | None = None,
        recipient_column: str | None = None,
        campaign: str | Mapping[str, Any] | None = None,
        outcome: str | None = None,
        source_step: str | None = None,
        exclude_labels: Sequence[str] = ("stop",),
        campaign_id: str | None = None,
        step: str | None = None,
        max_concurrency: int = 8,
        rate_limit: int | None = None,
        rate_limit_period: float = 60.0,
        max_failures: int | None = None,
        max_failure_rate: float | None = 0.1,
        store_conn_id: str | None = None,
        store_path: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        sources = sum(value is not None for value in (recipients, recipients_file, outcome))
        if sources != 1:
            raise ValueError(
                f"{type(self).__name__} needs exactly one of recipients=, recipients_file= and "
                "outcome= (with campaign=)"
            )
        if outcome is not None and campaign is None:
            raise ValueError(
                f"{type(self).__name__}: outcome= names a group of an earlier step: pass campaign="
            )
        if max_concurrency < 1:
            raise ValueError(f"max_concurrency must be at least 1, not {max_concurrency!r}")
        if rate_limit is not None and rate_limit < 1:
            raise ValueError(f"rate_limit must be at least 1 or None, not {rate_limit!r}")
        if max_failure_rate is not None and not 0 <= max_failure_rate <= 1:
            raise ValueError(f"max_failure_rate must be between 0 and 1, not {max_failure_rate!r}")
        if not isinstance(text, str) or not text.strip():
            raise ValueError(f"{type(self).__name__} needs a non-empty text=")
        if outcome is not None and "{{" not in outcome:
            from airflow_provider_readreceipts.store.campaigns import GROUPS

            if outcome not in GROUPS:
                raise ValueError(f"unknown outcome {outcome!r}: expected one of {', '.join(GROUPS)}")
        self.text = text
        self.recipients = recipients
        self.recipients_file = recipients_file
        self.recipient_column = recipient_column
        self.campaign = campaign
        self.outcome = outcome
        self.source_step = source_step
        self.exclude_labels = tuple(exclude_labels)
        self.campaign_id = campaign_id
        self.step = step
        self.max_concurrency = max_concurrency
        self.rate_limit = rate_limit
        self.rate_limit_period = rate_limit_period
        self.max_failures = max_failures
        self.max_failure_rate = max_failure_rate
        self.store_conn_id = store_conn_id
        self.store_path = store_path

    def hook_kwargs(self) -> dict[str, Any]:
        return {"max_connections": self.max_concurrency}

    def execute(self, context: Context) -> CampaignStepRef:
        from airflow_provider_readreceipts.operators._campaign_send import run_step

        return run_step(self, context)

    # -- what each vendor says --------------------------------------------------------------------

    def prepare(self) -> None:
        """Check task-wide settings once, before any row (raise ``InvalidInputError``)."""

    def address(self, value: str) -> tuple[str, str]:
        """
        ``(identity, chat)`` of one recipient as given: the row's key (E.164, a JID) and the
        vendor's own form of it; raise ``InvalidInputError`` for an unusable one.
        """
        raise NotImplementedError

    def send_one(self, row: RecipientRow, text: str, *, idempotency_key: str) -> Sent:
        """Send one row's message; raise as the hook does (the engine sorts the errors)."""
        raise NotImplementedError


class SendblueBulkSendMessageOperator(BaseBulkSendMessageOperator["SendblueHook"]):
    """
    Send an iMessage (or SMS/RCS) to every recipient of a campaign step through Sendblue.

    :param from_number: your Sendblue line, E.164 (templated); default the connection's
        ``from_number`` extra.
    :param status_callback: URL for the status webhooks (templated); default the connection's
        ``receiver_url``; ``""`` sends none.
    :param sendblue_conn_id: the Sendblue connection (templated).
    :param kwargs: recipients, text, campaign, limits: see :class:`BaseBulkSendMessageOperator`.
    """

    vendor = SENDBLUE.conn_type
    template_fields: Sequence[str] = (
        *BaseBulkSendMessageOperator.template_fields,
        "from_number",
        "status_callback",
        "sendblue_conn_id",
    )

    def __init__(
        self,
        *,
        from_number: str | None = None,
        status_callback: str | None = None,
        sendblue_conn_id: str = SENDBLUE.default_conn_id,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.from_number = from_number
        self.status_callback = status_callback
        self.sendblue_conn_id = sendblue_conn_id

    def prepare(self) -> None:
        from airflow_provider_readreceipts.hooks.inputs import normalize_e164

        self._line = normalize_e164(self.from_number or self.hook.extra("from_number"), field="from_number")
        callback = (
            self.status_callback if self.status_callback is not None else self.hook.extra("receiver_url")
        )
        self._callback = callback or None

    def address(self, value: str) -> tuple[str, str]:
        from airflow_provider_readreceipts.hooks.inputs import normalize_e164

        number = normalize_e164(value, field="recipient")
        return number, number

    def send_one(self, row: RecipientRow, text: str, *, idempotency_key: str) -> Sent:
        from airflow_provider_readreceipts.operators._campaign_send import Sent

        response = self.hook.send_message(
            number=row.chat, content=text, from_number=self._line, status_callback=self._callback
        )
        return Sent((response or {}).get("message_handle"), row.chat, line=self._line)


class ChertBulkSendMessageOperator(BaseBulkSendMessageOperator["ChertHook"]):
    """
    Send an iMessage to every recipient of a campaign step through Chert.

    Every request carries a per-recipient idempotency key (from the campaign, the step and the
    recipient), so a send of unknown outcome is safely sent again: Chert answers a repeat with the
    original message.

    :param chert_conn_id: the Chert connection (templated).
    :param kwargs: recipients, text, campaign, limits: see :class:`BaseBulkSendMessageOperator`.
    """

    vendor = CHERT.conn_type
    idempotent_sends = True
    template_fields: Sequence[str] = (*BaseBulkSendMessageOperator.template_fields, "chert_conn_id")

    def __init__(self, *, chert_conn_id: str = CHERT.default_conn_id, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.chert_conn_id = chert_conn_id

    def address(self, value: str) -> tuple[str, str]:
        from airflow_provider_readreceipts.hooks.inputs import normalize_e164

        number = normalize_e164(value, field="recipient")
        return number, ""

    def send_one(self, row: RecipientRow, text: str, *, idempotency_key: str) -> Sent:
        from airflow_provider_readreceipts.operators._campaign_send import Sent

        response = self.hook.send_message(phone=row.recipient, body=text, idempotency_key=idempotency_key)
        return Sent((response or {}).get("message_id"), str((response or {}).get("lead_id") or ""))


class RyzeBulkSendMessageOperator(BaseBulkSendMessageOperator["RyzeHook"]):
    """
    Send a WhatsApp text to every recipient of a campaign step through RyzeAPI.

    Keeps to RyzeAPI's published 100 requests a minute per token (shared with every other call on
    the token in the process) unless the connection's ``rate_limit_per_minute`` says otherwise.

    :param ryze_conn_id: the RyzeAPI connection (templated).
    :param kwargs: recipients, text, campaign, limits: see :class:`BaseBulkSendMessageOperator`.
    """

    vendor = RYZE.conn_type
    template_fields: Sequence[str] = (*BaseBulkSendMessageOperator.template_fields, "ryze_conn_id")

    def __init__(self, *, ryze_conn_id: str = RYZE.default_conn_id, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.ryze_conn_id = ryze_conn_id

    def address(self, value: str) -> tuple[str, str]:
        from airflow_provider_readreceipts.hooks.ryze import normalize_recipient
        from airflow_provider_readreceipts.identity import normalize_identity

        chat = normalize_recipient(value, field="recipient")
        return normalize_identity(chat), chat

    def send_one(self, row: RecipientRow, text: str, *, idempotency_key: str) -> Sent:
        from airflow_provider_readreceipts.hooks.ryze import sent_message_id
        from airflow_provider_readreceipts.operators._campaign_send import Sent

        response = self.hook.send_message(number=row.chat, message=text)
        return Sent(sent_message_id(response), row.chat)


class Direct7BulkSendMessageOperator(BaseBulkSendMessageOperator["Direct7Hook"]):
    """
    Send a WhatsApp text to every recipient of a campaign step through Direct7.

    :param originator: your WhatsApp business number, E.164 (templated); default the connection's
        ``originator`` extra.
    :param report_url: URL for the delivery reports (templated); default the connection's
        ``receiver_url`` with its ``webhook_token``; ``""`` sends none.
    :param direct7_conn_id: the Direct7 connection (templated).
    :param kwargs: recipients, text, campaign, limits: see :class:`BaseBulkSendMessageOperator`.
    """

    vendor = DIRECT7.conn_type
    template_fields: Sequence[str] = (
        *BaseBulkSendMessageOperator.template_fields,
        "originator",
        "report_url",
        "direct7_conn_id",
    )

    def __init__(
        self,
        *,
        originator: str | None = None,
        report_url: str | None = None,
        direct7_conn_id: str = DIRECT7.default_conn_id,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.originator = originator
        self.report_url = report_url
        self.direct7_conn_id = direct7_conn_id

    def prepare(self) -> None:
        from airflow_provider_readreceipts.hooks.inputs import normalize_e164

        self._originator = normalize_e164(
            self.originator or self.hook.extra("originator"), field="originator"
        )
        url = self.report_url if self.report_url is not None else self.hook.report_url_from_connection()
        self._report_url = url or None

    def address(self, value: str) -> tuple[str, str]:
        from airflow_provider_readreceipts.hooks.inputs import normalize_e164

        number = normalize_e164(value, field="recipient")
        return number, number

    def send_one(self, row: RecipientRow, text: str, *, idempotency_key: str) -> Sent:
        from airflow_provider_readreceipts.operators._campaign_send import Sent

        response = self.hook.send_message(
            number=row.chat, body=text, originator=self._originator, report_url=self._report_url
        )
        return Sent((response or {}).get("request_id"), row.chat)
