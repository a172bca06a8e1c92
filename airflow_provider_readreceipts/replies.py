"""
What a reply says: ``reply_choices`` map labels to regular expressions, matched case-insensitively
against the reply's text, first label first.

Compiled where a DAG is parsed or a task starts (the sensors call :func:`compile_choices`), so that
an invalid expression fails there, naming its label, and never in the triggerer. Standard library
only: sensor modules import this at parse time.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

from airflow_provider_readreceipts.receipts import InvalidInputError

#: Labels whose replies mean "never message me again": later campaign steps leave these people
#: out by default (``exclude_labels``).
STOP_LABELS = ("stop",)

#: Choices that fit a "Reply YES to join" message in English, Spanish, Portuguese and French.
YES_NO_STOP: dict[str, str] = {
    "stop": r"^\s*(stop|unsubscribe|cancel|end|quit)\b",
    "yes": r"^\s*(yes|y|yeah|yep|sure|ok|si|sí|sim|oui)\b",
    "no": r"^\s*(no|n|nope|não|nao|non)\b",
}

CompiledChoices = Sequence[tuple[str, "re.Pattern[str]"]]


def compile_choices(choices: Mapping[str, str] | None) -> CompiledChoices:
    """
    The choices compiled, in order; :class:`InvalidInputError` naming the label of a bad one.

    :param choices: label -> regular expression; ``None`` or empty for no classification.
    """
    if not choices:
        return ()
    if not isinstance(choices, Mapping):
        raise InvalidInputError("reply_choices", f"must map labels to patterns, not {type(choices).__name__}")
    compiled = []
    for label, pattern in choices.items():
        if not isinstance(label, str) or not label.strip():
            raise InvalidInputError("reply_choices", f"labels must be non-empty strings, not {label!r}")
        if not isinstance(pattern, str):
            raise InvalidInputError("reply_choices", f"{label}: the pattern must be a string")
        try:
            compiled.append((label.strip(), re.compile(pattern, re.IGNORECASE)))
        except re.error as exc:
            raise InvalidInputError(
                "reply_choices", f"{label}: {pattern!r} is not a valid regular expression ({exc})"
            ) from None
    return tuple(compiled)


def classify(text: str, choices: CompiledChoices) -> str:
    """The first label whose pattern matches ``text`` (``re.search``), or ``""``."""
    for label, pattern in choices:
        if pattern.search(text or ""):
            return label
    return ""


def choices_to_kwargs(choices: Mapping[str, str] | None) -> dict[str, Any]:
    """Choices as trigger kwargs (plain JSON, order kept)."""
    return dict(choices or {})
