"""
Where a campaign step's recipients come from: a list, an upstream XCom, a file of rows, or an
outcome group of an earlier step. Imported when a bulk task runs, never at DAG parse time.

Each recipient is a row: its identity (a phone number or JID, in ``recipient`` or ``number``, or
the column ``recipient_column`` names) and its other fields, which the step's text template can
use (``{{ recipient.name }}``).
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

from airflow_provider_readreceipts.receipts import InvalidInputError

#: Columns read as the recipient's identity when ``recipient_column`` is not given, in this order.
IDENTITY_COLUMNS = ("recipient", "number", "phone", "to")


def rows_from_values(values: Any, *, argument: str, column: str | None) -> list[dict[str, Any]]:
    """
    Rows from a list of identities (strings) or of mappings (an identity column and fields).

    :param values: what the task got: a list, or an XCom's value.
    :param argument: the argument's name, for errors.
    :param column: the mappings' identity column; default the first of :data:`IDENTITY_COLUMNS`.
    """
    if isinstance(values, (str, bytes, Mapping)) or not isinstance(values, Iterable):
        raise InvalidInputError(
            argument,
            f"must be a list of numbers or of rows, not {type(values).__name__}; a Jinja template renders"
            " to a string unless the DAG sets render_template_as_native_obj=True (or pass an XComArg)",
        )
    rows = []
    for index, value in enumerate(values):
        if isinstance(value, Mapping):
            rows.append(_row(value, column=column, where=f"{argument}[{index}]"))
        else:
            rows.append({"recipient": _identity(value)})
    return rows


def _identity(value: Any) -> str:
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        return "" if value is None else str(value)
    if isinstance(value, int):
        # What Airflow's render_template_as_native_obj makes of "+14155550100": the "+" is lost, and
        # guessing the country back could message a stranger. The row is refused with this reason.
        return f"{value} (a number, not text: the '+' of an E.164 number was lost, e.g. to native rendering)"
    return value


def rows_from_file(path: str, *, column: str | None) -> Iterator[dict[str, Any]]:
    """
    Rows from a CSV file with a header line, or a JSON Lines file (one object a line).

    The format is the file's: ``.jsonl``/``.ndjson`` are JSON Lines, anything else CSV.

    :raises InvalidInputError: the file is missing, a row lacks the identity column (naming the
        column and the line), or a JSON line is not an object.
    """
    file = Path(path).expanduser()
    if not file.is_file():
        raise InvalidInputError("recipients_file", f"{path!r} is not a file")
    if file.suffix.lower() in (".jsonl", ".ndjson"):
        yield from _json_lines(file, column=column)
    else:
        yield from _csv_rows(file, column=column)


def _csv_rows(file: Path, *, column: str | None) -> Iterator[dict[str, Any]]:
    with file.open(newline="", encoding="utf-8-sig") as handle:
        reader = csv.DictReader(handle)
        header = reader.fieldnames or []
        identity = column or next((name for name in IDENTITY_COLUMNS if name in header), None)
        if identity is None or identity not in header:
            wanted = column or " or ".join(IDENTITY_COLUMNS)
            raise InvalidInputError(
                "recipients_file",
                f"{file.name}, line 1: no column {wanted!r} in the header ({', '.join(header) or 'empty'})",
            )
        for row in reader:
            value = (row.get(identity) or "").strip()
            if not value:
                raise InvalidInputError(
                    "recipients_file", f"{file.name}, line {reader.line_num}: column {identity!r} is empty"
                )
            fields = {key: item for key, item in row.items() if key is not None and key != identity}
            yield {**fields, "recipient": value}


def _json_lines(file: Path, *, column: str | None) -> Iterator[dict[str, Any]]:
    with file.open(encoding="utf-8") as handle:
        for line_number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            where = f"{file.name}, line {line_number}"
            try:
                document = json.loads(line)
            except ValueError as exc:
                raise InvalidInputError("recipients_file", f"{where}: not JSON ({exc})") from None
            if not isinstance(document, Mapping):
                raise InvalidInputError("recipients_file", f"{where}: expected a JSON object")
            yield _row(document, column=column, where=where, argument="recipients_file")


def _row(value: Mapping[str, Any], *, column: str | None, where: str, argument: str = "") -> dict[str, Any]:
    identity = column or next((name for name in IDENTITY_COLUMNS if name in value), None)
    if identity is None or value.get(identity) in (None, ""):
        wanted = column or " or ".join(IDENTITY_COLUMNS)
        raise InvalidInputError(argument or where.split("[")[0], f"{where}: no {wanted!r} field")
    fields = {key: item for key, item in value.items() if key != identity}
    return {**fields, "recipient": _identity(value[identity]).strip()}
