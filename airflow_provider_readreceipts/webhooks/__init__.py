"""
The webhook receiver: a FastAPI app (:mod:`.app`), its Airflow plugin (:mod:`.plugin`) and its
standalone server (:mod:`.standalone`).

This module holds only what all three share and what must stay cheap to import (the plugin module
imports it in every Airflow process): the log redaction that keeps webhook secrets out of access
logs. Direct7 signs nothing, so its reports carry a secret token in the URL's query string, and
every access log prints the URL.
"""

from __future__ import annotations

import logging
import re
from typing import Any
from urllib.parse import unquote_plus

#: Query parameter names whose values are secrets: ``token``, ``webhook_token``, ``api_key``,
#: ``signature``, ``access_token``, ``secret``, ``password`` and the like.
_SECRET_NAME = re.compile(
    r"(token|secret|signature|sig|passw(or)?d|pwd|api[_\-]?key|apikey|auth(orization)?|credentials?|key)$",
    re.IGNORECASE,
)
#: One ``name=value`` pair of a query string, wherever it appears in a log line.
_PARAMETER = re.compile(r"(?P<head>(?:^|[?&;\s])(?P<name>[^=&;\s?#\"']+)=)(?P<value>[^&;\s\"'#]*)")
REDACTED = "***"

#: Loggers that print request URLs: uvicorn's access log (standalone server) and the Airflow API
#: server's access log (``http.access``), in case it is routed through the standard library.
ACCESS_LOGGERS = ("uvicorn.access", "http.access")


def redact_secrets(text: str) -> str:
    """
    Replace the values of secret-looking query parameters in ``text`` with ``***``.

    :param text: a URL, a path with its query string, or a whole log line.
    """
    if "=" not in text:
        return text
    return _PARAMETER.sub(_redact_parameter, text)


def _redact_parameter(match: re.Match[str]) -> str:
    # Servers percent-decode parameter names (?tok%65n= is ?token=), so decide on the decoded name.
    if match["value"] and _SECRET_NAME.search(unquote_plus(match["name"])):
        return f"{match['head']}{REDACTED}"
    return match[0]


def _redact_argument(value: Any) -> Any:
    return redact_secrets(value) if isinstance(value, str) else value


class RedactSecretsFilter(logging.Filter):
    """
    A logging filter that redacts secret query parameters in a record's message and arguments.

    It never drops a record. uvicorn's access log passes the request path with its query string
    as an argument (``'%s - "%s %s HTTP/%s" %d'``), so the arguments are redacted one by one
    before any formatter sees them.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.msg, str):
            record.msg = redact_secrets(record.msg)
        if isinstance(record.args, tuple):
            record.args = tuple(_redact_argument(value) for value in record.args)
        elif isinstance(record.args, dict):
            record.args = {key: _redact_argument(value) for key, value in record.args.items()}
        return True


def install_access_log_redaction(logger_names: tuple[str, ...] = ACCESS_LOGGERS) -> None:
    """
    Add :class:`RedactSecretsFilter` to the access loggers and to their handlers, once.

    Filters on a logger apply only to records logged on that very logger, and filters on a handler
    to everything it prints, so both are set. Safe to call more than once.

    :param logger_names: the loggers to protect.
    """
    for name in logger_names:
        logger = logging.getLogger(name)
        for holder in (logger, *logger.handlers):
            if not any(isinstance(existing, RedactSecretsFilter) for existing in holder.filters):
                holder.addFilter(RedactSecretsFilter())
