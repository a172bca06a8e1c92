"""What the operators share. Imports nothing heavy: operator modules are imported at every DAG parse."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from airflow_provider_readreceipts.receipts import InvalidInputError


@contextmanager
def invalid_input_fails_task() -> Iterator[None]:
    """
    Turn :class:`~airflow_provider_readreceipts.receipts.InvalidInputError` into a task failure that
    is not retried: the same input would fail the same way. The message names the argument.
    """
    try:
        yield
    except InvalidInputError as exc:
        from airflow.sdk.exceptions import AirflowFailException

        raise AirflowFailException(f"invalid {exc}") from exc
