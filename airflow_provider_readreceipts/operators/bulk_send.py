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

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from airflow_provider_readreceipts.operators._base import HookT, VendorOperator
from airflow_provider_readreceipts.operators._campaign_step import (
    CampaignStepOperator,
    CampaignStepRef,
    campaign_id_for,
)
from airflow_provider_readreceipts.vendors.chert import SPEC as CHERT
from airflow_provider_readreceipts.vendors.direct7 import SPEC as DIRECT7
from airflow_provider_readreceipts.vendors.ryze import SPEC as RYZE
from airflow_provider_readreceipts.vendors.sendblue import SPEC as SENDBLUE

if TYPE_CHECKING:
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


class BaseBulkSendMessageOperator(CampaignStepOperator, VendorOperator[HookT]):
    """
    Base of the bulk send operators: a campaign step whose requests are a vendor's sends. See the
    module for what they guarantee, and :class:`CampaignStepOperator` for the arguments they share.
    """

    def hook_kwargs(self) -> dict[str, Any]:
        return {"max_connections": self.max_concurrency}

    @property
    def sender(self) -> str:
        return self.vendor

    @property
    def sender_conn_id(self) -> str:
        return self.conn_id

    @property
    def sender_name(self) -> str:
        return self.vendor_name

    @property
    def channel(self) -> str:
        return self.spec.channel

    def prepare_session(self) -> None:
        self.hook.share_rate_budget(limit=self.rate_limit, period=self.rate_limit_period)
        self.hook.get_conn()


class SendblueBulkSendMessageOperator(BaseBulkSendMessageOperator["SendblueHook"]):
    """
    Send an iMessage (or SMS/RCS) to every recipient of a campaign step through Sendblue.

    :param from_number: your Sendblue line, E.164 (templated); default the connection's
        ``from_number`` extra.
    :param status_callback: URL for the status webhooks (templated); default the connection's
        ``receiver_url``; ``""`` sends none.
    :param sendblue_conn_id: the Sendblue connection (templated).
    :param kwargs: recipients, text, campaign, limits: see :class:`CampaignStepOperator`.
    """

    vendor = SENDBLUE.conn_type
    template_fields: Sequence[str] = (
        *CampaignStepOperator.template_fields,
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
    :param kwargs: recipients, text, campaign, limits: see :class:`CampaignStepOperator`.
    """

    vendor = CHERT.conn_type
    idempotent_sends = True
    template_fields: Sequence[str] = (*CampaignStepOperator.template_fields, "chert_conn_id")

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
    :param kwargs: recipients, text, campaign, limits: see :class:`CampaignStepOperator`.
    """

    vendor = RYZE.conn_type
    template_fields: Sequence[str] = (*CampaignStepOperator.template_fields, "ryze_conn_id")

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
    :param kwargs: recipients, text, campaign, limits: see :class:`CampaignStepOperator`.
    """

    vendor = DIRECT7.conn_type
    template_fields: Sequence[str] = (
        *CampaignStepOperator.template_fields,
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
