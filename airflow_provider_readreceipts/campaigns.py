"""
Reading a campaign from ``@task`` code: counts, and its recipients a page at a time.

    from airflow.sdk import task

    from airflow_provider_readreceipts.campaigns import CampaignReader


    @task
    def unread_pages(result: dict) -> list[int]:
        # Page starts only: XCom stays small however many recipients there are.
        return CampaignReader(result).page_starts(outcome="unread", page_size=500)


    @task(max_active_tis_per_dag=4)
    def call_page(result: dict, after: int) -> None:
        for row in CampaignReader(result).page(outcome="unread", after=after, limit=500):
            ...  # one request per recipient

    call_page.partial(result=wait.output).expand(after=unread_pages(wait.output))

This is the way to fan a group out to a bounded mapped task (one task instance per page, not per
recipient); :class:`~airflow_provider_readreceipts.operators.campaign_http.CampaignHttpOperator`
does the same in one task. The store is opened when a reader is first used.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from airflow_provider_readreceipts.store import ReceiptStore

__all__ = ["CampaignReader"]


class CampaignReader:
    """
    One campaign step's rows in the receipt store, for ``@task`` code.

    :param campaign: a campaign step's XCom (a bulk send's, the campaign wait's) or a campaign id.
    :param step: the step, when ``campaign`` is an id (default: the campaign's latest step).
    :param store_conn_id: the receipt store's connection (default as the operators').
    :param store_path: the SQLite file when no store connection is used.
    """

    def __init__(
        self,
        campaign: str | Mapping[str, Any],
        *,
        step: str | None = None,
        store_conn_id: str | None = None,
        store_path: str | None = None,
    ) -> None:
        if isinstance(campaign, Mapping):
            self.campaign_id = str(campaign["campaign_id"])
            self._step = step or campaign.get("step")
        else:
            self.campaign_id = str(campaign)
            self._step = step
        self.store_conn_id = store_conn_id
        self.store_path = store_path
        self._store: ReceiptStore | None = None

    def __enter__(self) -> CampaignReader:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    @property
    def store(self) -> ReceiptStore:
        if self._store is None:
            from airflow_provider_readreceipts.store import ReceiptStore, store_url_from_airflow

            self._store = ReceiptStore(
                store_url_from_airflow(conn_id=self.store_conn_id, path=self.store_path)
            )
        return self._store

    @property
    def step(self) -> str:
        """The step read (the campaign's latest when none was named)."""
        if self._step is None:
            from airflow_provider_readreceipts.store.campaigns import require_step

            self._step = self.store.read(lambda conn: require_step(conn, self.campaign_id)).step
        return str(self._step)

    def counts(self) -> dict[str, int]:
        """Rows per send state and outcome, and ``total``."""
        from airflow_provider_readreceipts.store.campaigns import step_counts

        return self.store.read(lambda conn: step_counts(conn, self.campaign_id, self.step))

    def page(
        self, *, outcome: str | None = None, after: int = -1, limit: int = 1000, search: str | None = None
    ) -> list[dict[str, Any]]:
        """
        Up to ``limit`` rows after the row numbered ``after`` (``-1``: from the start), in input order,
        as plain dicts (``recipient``, ``seq``, ``outcome``, ``read_at``, ``reply_text``, the input
        ``fields``, ...). Continue with ``after=rows[-1]["seq"]``.

        :param outcome: only this outcome group (``read``, ``replied``, ``unread``, ``failed``,
            ``not_sent``); an unknown name is an error listing the valid ones.
        :param search: only recipients whose identity contains this text.
        """
        from airflow_provider_readreceipts.store.campaigns import recipients_page

        rows = self.store.read(
            lambda conn: recipients_page(
                conn, self.campaign_id, self.step, group=outcome, after_seq=after, limit=limit, search=search
            )
        )
        return [row.public() for row in rows]

    def rows(self, *, outcome: str | None = None, page_size: int = 1000) -> Iterator[dict[str, Any]]:
        """Every row of a group, read a page at a time."""
        after = -1
        while True:
            page = self.page(outcome=outcome, after=after, limit=page_size)
            yield from page
            if len(page) < page_size:
                return
            after = page[-1]["seq"]

    def page_starts(self, *, outcome: str | None = None, page_size: int = 1000) -> list[int]:
        """The ``after`` of every page of a group: what a bounded mapped task maps over."""
        starts = [-1]
        after = -1
        while True:
            page = self.page(outcome=outcome, after=after, limit=page_size)
            if len(page) < page_size:
                return starts if page or after == -1 else starts[:-1]
            after = page[-1]["seq"]
            starts.append(after)

    def close(self) -> None:
        if self._store is not None:
            self._store.close()
            self._store = None
