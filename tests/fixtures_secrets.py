"""
Secret hygiene across the whole suite: no secret the tests use may show up in a log, an output or
an exception text the suite produced.

Loaded as a plugin by ``tests/conftest.py`` like every ``tests/fixtures_*.py``, it

1. learns the suite's secret values: every ``AIRFLOW_CONN_*`` variable seen during the session
   (snapshotted around each test, so connections defined with ``monkeypatch.setenv`` count), the
   connection documents the receiver helpers and the vendor sandbox build for child processes,
   and the ``*SECRET*``/``*TOKEN*``/``*PASSWORD*``/``*AUTHORIZATION*`` constants of the fixture,
   support and fake modules. From a connection it takes the password, ``webhook_secret``, ``webhook_token``,
   ``webhook_authorization`` and any extra named like a secret; values shorter than 8 characters are
   left out (too likely to occur by chance);
2. captures what the suite wrote: every stdlib log record (a root handler, with exception text),
   every test report's exception messages and captured stdout, stderr and log sections, and, at the
   end, every text file under pytest's base temporary folder and ``AIRFLOW_HOME`` (child processes'
   logs: standalone receivers with their access logs, the sandbox, Airflow's components and tasks);
3. fails the session when any secret appears, printing which kind of secret, where, and the line
   with the secret replaced by ``<SECRET>``.

Test source is not scanned (tests name secrets on purpose, e.g. to pass them to redaction
functions or to assert their absence), nor are tracebacks' source lines: only exception messages.

The figures go to the reliability report (section ``secret_hygiene``, case ``suite``) when
``READRECEIPTS_RELIABILITY_REPORT`` is set. ``READRECEIPTS_SECRET_SCAN=0`` turns the scan off.
"""

from __future__ import annotations

import json
import logging
import os
import re
import threading
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests import support
from tests.support import NOT_SECRET_NAME, REPORT_ENV, SECRET_NAME, scale_name, secrets_of_connection

SCAN_ENV = "READRECEIPTS_SECRET_SCAN"
#: Shorter values are not treated as secrets: they would match by chance.
MIN_SECRET_LENGTH = 8
#: Files larger than this are read in part only (the first bytes); logs are far smaller.
MAX_FILE_BYTES = 256 * 1024 * 1024
_BINARY_SUFFIXES = (".db", ".db-wal", ".db-shm", ".sqlite", ".pyc", ".so", ".gz", ".zip", ".whl")


@dataclass
class Finding:
    kind: str
    where: str
    line: str


@dataclass
class SecretScan:
    """What the session's secret scan has learnt and captured so far."""

    #: Secret value -> the kinds of field it was found in, e.g. ``{"AIRFLOW_CONN_SB_BASE password"}``.
    secrets: dict[str, set[str]] = field(default_factory=dict)
    #: (where, text): captured log records and report texts.
    texts: list[tuple[str, str]] = field(default_factory=list)
    log_records: int = 0
    files_scanned: int = 0
    bytes_scanned: int = 0
    findings: list[Finding] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def learn(self, value: Any, kind: str) -> None:
        if isinstance(value, str) and len(value.strip()) >= MIN_SECRET_LENGTH:
            with self._lock:
                self.secrets.setdefault(value.strip(), set()).add(kind)

    def keep(self, where: str, text: str) -> None:
        if text:
            with self._lock:
                self.texts.append((where, text))


def _learn_environment(scan: SecretScan, environment: Mapping[str, str], origin: str = "") -> None:
    for name, value in environment.items():
        if name.startswith("AIRFLOW_CONN_"):
            for secret, kind in secrets_of_connection(value, f"{origin}{name}"):
                scan.learn(secret, kind)


def _learn_module_constants(scan: SecretScan) -> None:
    """Secrets the fixtures hand to child processes without putting them in ``os.environ``."""
    import importlib
    import pkgutil

    from airflow_provider_readreceipts.testing import fakes

    modules = [f"{fakes.__name__}.{m.name}" for m in pkgutil.iter_modules(fakes.__path__)]
    modules += [f"tests.{path.stem}" for path in Path(__file__).parent.glob("fixtures_*.py")]
    modules.append("tests.support")
    for module_name in modules:
        try:
            module = importlib.import_module(module_name)
        except Exception:  # noqa: S112 - a module that does not import has no secrets to learn
            continue
        for name, value in vars(module).items():
            if name.isupper() and SECRET_NAME.search(name) and not NOT_SECRET_NAME.search(name):
                scan.learn(value, f"{module_name}.{name}")
    for conn_type, fields in (
        ("sendblue", support.sendblue_connection_fields()),
        ("direct7", support.direct7_connection_fields()),
    ):
        document = support.connection_document(conn_type, **fields)
        for secret, kind in secrets_of_connection(document, f"tests.support {conn_type} connection"):
            scan.learn(secret, kind)
    try:
        from airflow_provider_readreceipts.testing.sandbox import connection_environment

        environment = connection_environment(
            sandbox_url="http://127.0.0.1:1", receiver_url="http://127.0.0.1:2"
        )
        _learn_environment(scan, environment, origin="sandbox ")
    except Exception:  # noqa: S110 - nothing to learn without the sandbox
        pass


class _CapturingHandler(logging.Handler):
    """Keeps every record that reaches the root logger, formatted with its exception text."""

    def __init__(self, scan: SecretScan) -> None:
        super().__init__(logging.DEBUG)
        self.scan = scan
        self.setFormatter(logging.Formatter("%(name)s %(levelname)s %(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        try:
            text = self.format(record)
        except Exception:
            return
        self.scan.log_records += 1
        self.scan.keep(f"log record of {record.name}", text)


_SCAN_KEY = pytest.StashKey[SecretScan]()
_HANDLER_KEY = pytest.StashKey[_CapturingHandler]()


def _enabled(config: pytest.Config) -> bool:
    return os.environ.get(SCAN_ENV, "1") != "0" and not config.option.collectonly


def pytest_configure(config: pytest.Config) -> None:
    if not _enabled(config):
        return
    scan = SecretScan()
    config.stash[_SCAN_KEY] = scan
    handler = _CapturingHandler(scan)
    config.stash[_HANDLER_KEY] = handler
    logging.getLogger().addHandler(handler)
    _learn_environment(scan, os.environ)


def _attach(config: pytest.Config) -> None:
    # Airflow's logging set-up (dictConfig) may replace the root handlers: put ours back.
    handler = config.stash.get(_HANDLER_KEY, None)
    if handler is not None and handler not in logging.getLogger().handlers:
        logging.getLogger().addHandler(handler)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Iterator[None]:
    scan = item.config.stash.get(_SCAN_KEY, None)
    if scan is not None:
        _attach(item.config)
        _learn_environment(scan, os.environ)  # what the test's fixtures defined
    try:
        return (yield)
    finally:
        if scan is not None:
            _learn_environment(scan, os.environ)  # what the test itself defined


@pytest.hookimpl(wrapper=True)
def pytest_runtest_teardown(item: pytest.Item, nextitem: pytest.Item | None) -> Iterator[None]:
    scan = item.config.stash.get(_SCAN_KEY, None)
    if scan is not None:
        _attach(item.config)
        _learn_environment(scan, os.environ)
    return (yield)


def _exception_texts(report: pytest.TestReport) -> Iterator[str]:
    """The exception messages of a report (not the tracebacks' source lines)."""
    longrepr = report.longrepr
    if longrepr is None:
        return
    if isinstance(longrepr, tuple):  # a skip: (path, line, reason)
        yield str(longrepr[-1])
        return
    if isinstance(longrepr, str):
        yield longrepr
        return
    for _, crash, _ in getattr(longrepr, "chain", ()):
        if crash is not None:
            yield crash.message
    crash = getattr(longrepr, "reprcrash", None)
    if crash is not None:
        yield crash.message


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    # The report carries no config; the scan is reached through the session-wide instance below.
    scan = _current_scan
    if scan is None:
        return
    for title, content in report.sections:
        scan.keep(f"{report.nodeid}: {title}", content)
    for text in _exception_texts(report):
        scan.keep(f"{report.nodeid}: exception ({report.when})", text)


_current_scan: SecretScan | None = None


def pytest_sessionstart(session: pytest.Session) -> None:
    global _current_scan
    _current_scan = session.config.stash.get(_SCAN_KEY, None)


def _folders_to_scan(session: pytest.Session) -> list[Path]:
    folders = []
    factory = getattr(session.config, "_tmp_path_factory", None)
    basetemp = getattr(factory, "_basetemp", None)
    if basetemp is not None:
        folders.append(Path(basetemp))
    home = os.environ.get("AIRFLOW_HOME")
    if home:
        folders.append(Path(home))
    return [folder for folder in folders if folder.is_dir()]


def _text_files(folders: Iterable[Path]) -> Iterator[Path]:
    seen: set[Path] = set()
    for folder in folders:
        for path in sorted(folder.rglob("*")):
            try:
                resolved = path.resolve()
                if resolved in seen or not path.is_file() or path.is_symlink():
                    continue
            except OSError:
                continue
            seen.add(resolved)
            if not path.name.endswith(_BINARY_SUFFIXES):
                yield path


def _read_text(path: Path) -> str | None:
    try:
        with path.open("rb") as handle:
            data = handle.read(MAX_FILE_BYTES)
    except OSError:
        return None
    if b"\x00" in data[:8192]:
        return None  # a database or another binary file, not a log
    return data.decode("utf-8", "replace")


def _redact(line: str, pattern: re.Pattern[str]) -> str:
    line = pattern.sub("<SECRET>", line.strip())
    return line if len(line) <= 300 else line[:300] + "…"


def _scan_text(scan: SecretScan, pattern: re.Pattern[str], where: str, text: str) -> None:
    scan.bytes_scanned += len(text)
    if not pattern.search(text):
        return
    for line in text.splitlines():
        for match in pattern.finditer(line):
            kinds = ", ".join(sorted(scan.secrets[match.group(0)]))
            scan.findings.append(Finding(kinds, where, _redact(line, pattern)))


def run_scan(session: pytest.Session, scan: SecretScan) -> None:
    if not scan.secrets:
        return
    # Longest first, so a secret that contains another is reported as itself.
    alternatives = sorted(scan.secrets, key=len, reverse=True)
    pattern = re.compile("|".join(re.escape(secret) for secret in alternatives))
    with scan._lock:
        texts = list(scan.texts)
    for where, text in texts:
        _scan_text(scan, pattern, where, text)
    for path in _text_files(_folders_to_scan(session)):
        text = _read_text(path)
        if text is None:
            continue
        scan.files_scanned += 1
        _scan_text(scan, pattern, f"file {path}", text)


def _record_figures(scan: SecretScan) -> None:
    report = os.environ.get(REPORT_ENV)
    if not report:
        return
    path = Path(report)
    try:
        document = json.loads(path.read_text()) if path.exists() else {}
    except ValueError:
        document = {}
    document.setdefault("scale", scale_name())
    document.setdefault("sections", {})["secret_hygiene"] = {
        "suite": {
            "secrets_known": len(scan.secrets),
            "log_records_scanned": scan.log_records,
            "texts_scanned": len(scan.texts),
            "files_scanned": scan.files_scanned,
            "bytes_scanned": scan.bytes_scanned,
            "findings": len(scan.findings),
        }
    }
    path.write_text(json.dumps(document, indent=2, sort_keys=True) + "\n")


# tryfirst: before the temporary folders are cleaned up and before the terminal summary.
@pytest.hookimpl(tryfirst=True)
def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    scan = session.config.stash.get(_SCAN_KEY, None)
    if scan is None:
        return
    handler = session.config.stash.get(_HANDLER_KEY, None)
    if handler is not None:
        logging.getLogger().removeHandler(handler)
    _learn_environment(scan, os.environ)
    _learn_module_constants(scan)
    run_scan(session, scan)
    _record_figures(scan)
    if scan.findings and session.exitstatus == pytest.ExitCode.OK:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    scan = config.stash.get(_SCAN_KEY, None)
    if scan is None:
        return
    if not scan.findings:
        terminalreporter.write_line(
            f"secret scan: {len(scan.secrets)} secrets, {scan.log_records} log records, "
            f"{len(scan.texts)} texts, {scan.files_scanned} files, {scan.bytes_scanned} bytes:"
            " no secret found"
        )
        return
    terminalreporter.section("secrets leaked", sep="=", red=True, bold=True)
    shown: set[tuple[str, str, str]] = set()
    for finding in scan.findings:
        key = (finding.kind, finding.where, finding.line)
        if key in shown:
            continue
        shown.add(key)
        terminalreporter.write_line(f"{finding.kind} in {finding.where}:\n    {finding.line}")
    terminalreporter.write_line(f"{len(scan.findings)} secret occurrence(s): the session fails", red=True)
