"""
One HTTP request per recipient of a campaign step, in one task: a phone call for each unread, a
CRM update for each reply, recorded as a step (``kind="call"``) of the campaign.

The request goes to an HTTP connection (providers-http's ``http`` type, so any voice or CRM API can
be plugged in), its body a Jinja template rendered for each recipient. As with the bulk sends,
a request is never repeated when its outcome is unknown (a timeout, a 5xx, a dropped connection):
calling someone twice is worse than not calling. Escalating 10,000 unread recipients is one task
instance, within ``rate_limit``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from airflow_provider_readreceipts.operators._campaign_step import CampaignStepOperator

if TYPE_CHECKING:
    from airflow_provider_readreceipts.operators._campaign_send import Sent
    from airflow_provider_readreceipts.store.campaigns import RecipientRow

__all__ = ["CampaignHttpOperator"]


class CampaignHttpOperator(CampaignStepOperator):
    """
    Make one HTTP request for each recipient of a campaign's outcome group, recorded in the campaign.

    Each answered request is the row's "sent"; ``response_id_field`` names where the answer keeps
    an id worth recording (a call id). A 4xx answer is ``refused`` with the API's message; a
    timeout, a 5xx or a dropped connection is ``send_unknown`` and not repeated; a refused
    connection leaves the row to send on the task's retry.

    :param http_conn_id: the HTTP connection of the API (templated).
    :param endpoint: the path below the connection's base URL (templated).
    :param text: the request body, a Jinja template rendered for each recipient, e.g.
        ``'{"to": "{{ recipient.recipient }}", "say": "You have an invitation waiting"}'``.
    :param method: the HTTP method.
    :param headers: extra request headers.
    :param response_id_field: dotted path of an id in the JSON answer (default ``id``, then
        ``call_id``); the HTTP status otherwise.
    :param timeout: seconds a request may take.
    :param kwargs: recipients, campaign, outcome, limits: see :class:`CampaignStepOperator`.
    """

    template_fields: Sequence[str] = (*CampaignStepOperator.template_fields, "http_conn_id", "endpoint")
    step_kind = "call"

    def __init__(
        self,
        *,
        http_conn_id: str,
        endpoint: str,
        method: str = "POST",
        headers: Mapping[str, str] | None = None,
        response_id_field: str | None = None,
        timeout: float = 30.0,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.http_conn_id = http_conn_id
        self.endpoint = endpoint
        self.method = method.upper()
        self.headers = dict(headers or {"Content-Type": "application/json"})
        self.response_id_field = response_id_field
        self.timeout = timeout

    @property
    def sender(self) -> str:
        return "http"

    @property
    def sender_conn_id(self) -> str:
        return self.http_conn_id

    @property
    def sender_name(self) -> str:
        return f"the HTTP API of connection {self.http_conn_id!r}"

    @property
    def channel(self) -> str:
        return "call"

    def prepare_session(self) -> None:
        from airflow.providers.http.hooks.http import HttpHook

        from airflow_provider_readreceipts.rate_limits import SlidingWindowRateLimiter, rate_limit_session

        hook = HttpHook(method=self.method, http_conn_id=self.http_conn_id)
        self._session = hook.get_conn()
        self._url = hook.url_from_endpoint(self.endpoint)
        if self.rate_limit is not None:
            rate_limit_session(
                self._session, SlidingWindowRateLimiter(self.rate_limit, self.rate_limit_period)
            )

    def address(self, value: str) -> tuple[str, str]:
        from airflow_provider_readreceipts.hooks.inputs import require_text
        from airflow_provider_readreceipts.identity import normalize_identity

        identity = normalize_identity(require_text(value, field="recipient"))
        return identity, identity

    def send_one(self, row: RecipientRow, text: str, *, idempotency_key: str) -> Sent:
        import requests

        from airflow_provider_readreceipts.hooks.payload import dig
        from airflow_provider_readreceipts.operators._campaign_send import Sent
        from airflow_provider_readreceipts.receipts import DeliveryUnknownError, VendorAPIError

        def error(status: int | None, message: str, *, unknown: bool, retryable: bool = False) -> Exception:
            kind = DeliveryUnknownError if unknown else VendorAPIError
            return kind(
                vendor=self.sender_name,
                operation=self.endpoint,
                status_code=status,
                message=message,
                retryable=retryable,
            )

        try:
            response = self._session.request(
                self.method, self._url, data=text.encode(), headers=self.headers, timeout=self.timeout
            )
        except requests.exceptions.ConnectionError as exc:
            if isinstance(exc, requests.exceptions.ConnectTimeout) or "refused" in str(exc).lower():
                raise error(None, "could not connect", unknown=False, retryable=True) from None
            raise error(None, f"the connection failed ({type(exc).__name__})", unknown=True) from None
        except requests.exceptions.Timeout:
            raise error(None, "the API did not answer in time", unknown=True) from None
        if response.status_code >= 500:
            raise error(response.status_code, response.text[:200] or "server error", unknown=True)
        if response.status_code >= 400:
            raise error(response.status_code, response.text[:200] or "refused", unknown=False)
        try:
            document: Any = response.json()
        except ValueError:
            document = None
        call_id = None
        for path in (self.response_id_field,) if self.response_id_field else ("id", "call_id"):
            value = dig(document, path)
            if isinstance(value, (str, int)) and not isinstance(value, bool) and str(value):
                call_id = str(value)
                break
        return Sent(call_id or f"http-{response.status_code}-{idempotency_key[-12:]}", row.chat)
