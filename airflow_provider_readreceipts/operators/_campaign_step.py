"""
What every campaign step operator shares: where its recipients come from, which campaign and step
it records into, its limits and its failure threshold. The bulk send operators (a message to each
recipient) and the campaign HTTP operator (a call for each) build on it.

Light to import (the scheduler imports operator modules at every DAG parse): the engine, the
store and the hooks are imported when the task runs.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, ClassVar, TypedDict

from airflow.sdk import BaseOperator

if TYPE_CHECKING:
    from airflow.sdk import Context

    from airflow_provider_readreceipts.operators._campaign_send import Sent
    from airflow_provider_readreceipts.store.campaigns import RecipientRow


class CampaignStepRef(TypedDict):
    """What a campaign step pushes to XCom, and what the campaign wait and later steps take."""

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


class CampaignStepOperator(BaseOperator):
    """
    Base of the campaign step operators.

    :param text: what each recipient gets, a Jinja template rendered for each recipient (not at
        task start): ``recipient`` is the row (``{{ recipient.name }}``; ``{{ recipient.recipient }}``
        is the identity), and the task's context is there too (``{{ params.event }}``).
    :param recipients: a list of numbers (or JIDs), or of rows (mappings with ``recipient`` or
        ``number`` and any other fields), or an XComArg resolving to one (templated).
    :param recipients_file: instead: a CSV file with a header line, or a JSON Lines file
        (``.jsonl``), one row a line (templated path).
    :param recipient_column: the rows' identity column, when it is not ``recipient``, ``number``,
        ``phone`` or ``to``.
    :param campaign: a later step: the campaign to add this step to, as an earlier step's or the
        campaign wait's XCom (``wait.output``) or a campaign id (templated).
    :param outcome: with ``campaign``: act on this outcome group of the source step (``read``,
        ``replied``, ``unread``, ``failed``, or ``not_sent``) instead of ``recipients``.
    :param source_step: the step whose group ``outcome`` names; default the one ``campaign`` names,
        else the campaign's latest.
    :param exclude_labels: with ``outcome``: leave out recipients whose reply, in any step of the
        campaign, was classified under one of these labels (default ``("stop",)``: people who
        answered STOP are never contacted again by a later step).
    :param campaign_id: a first step: the campaign's id (templated); default derived from the DAG
        id, run id and task id, so a retry finds it again. Reusing an id with another recipient set
        fails, naming the difference.
    :param step: the step's name in the campaign (templated); default the task id.
    :param max_concurrency: requests in flight at once.
    :param rate_limit: at most this many requests per ``rate_limit_period`` seconds, if stricter
        than the budget the requests already draw from.
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
    #: ``"message"`` or ``"call"`` (the step's kind in reports).
    step_kind: ClassVar[str] = "message"
    #: The request may be repeated safely (an idempotency key), so an unknown outcome is retried.
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
        name = type(self).__name__
        if sum(value is not None for value in (recipients, recipients_file, outcome)) != 1:
            raise ValueError(
                f"{name} needs exactly one of recipients=, recipients_file= and outcome= (with campaign=)"
            )
        if outcome is not None and campaign is None:
            raise ValueError(f"{name}: outcome= names a group of an earlier step: pass campaign=")
        if max_concurrency < 1:
            raise ValueError(f"max_concurrency must be at least 1, not {max_concurrency!r}")
        if rate_limit is not None and rate_limit < 1:
            raise ValueError(f"rate_limit must be at least 1 or None, not {rate_limit!r}")
        if max_failure_rate is not None and not 0 <= max_failure_rate <= 1:
            raise ValueError(f"max_failure_rate must be between 0 and 1, not {max_failure_rate!r}")
        if not isinstance(text, str) or not text.strip():
            raise ValueError(f"{name} needs a non-empty text=")
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

    def execute(self, context: Context) -> CampaignStepRef:
        from airflow_provider_readreceipts.operators._campaign_send import run_step

        return run_step(self, context)

    # -- what each kind of step says ---------------------------------------------------------------

    @property
    def sender(self) -> str:
        """What carries the step (a vendor's connection type, ``"http"``)."""
        raise NotImplementedError

    @property
    def sender_conn_id(self) -> str:
        """The Airflow connection the step's requests use."""
        raise NotImplementedError

    @property
    def sender_name(self) -> str:
        """The carrier as people write it, for messages."""
        raise NotImplementedError

    @property
    def channel(self) -> str:
        """The step's channel in reports (``"iMessage"``, ``"WhatsApp"``, ``"call"``)."""
        raise NotImplementedError

    def prepare(self) -> None:
        """Check task-wide settings once, before any row (raise ``InvalidInputError``)."""

    def prepare_session(self) -> None:
        """Build the one session the threads share, within its rate limit, before any request."""
        raise NotImplementedError

    def address(self, value: str) -> tuple[str, str]:
        """
        ``(identity, chat)`` of one recipient as given: the row's key (E.164, a JID) and the
        carrier's own form of it; raise ``InvalidInputError`` for an unusable one.
        """
        raise NotImplementedError

    def send_one(self, row: RecipientRow, text: str, *, idempotency_key: str) -> Sent:
        """Make one row's request; raise as the hooks do (the engine sorts the errors)."""
        raise NotImplementedError
