"""
The secret scan itself (``tests/fixtures_secrets.py``): it must catch a leak, or its silence on the
whole suite proves nothing.

Each check runs a small pytest session in a child process with the scan loaded as a plugin: one
whose test leaks a connection secret (through a log record, stdout, an exception message and a log
file a child process would write) must fail with every place named and the secret itself never
printed; one that only handles secrets properly must pass.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.support import secrets_of_connection

pytestmark = pytest.mark.reliability

ROOT = Path(__file__).resolve().parent.parent

LEAKY = """
import json, logging

import pytest

SECRET = "leaky-" + "webhook-secret-" + "77f1"
TOKEN = "leaky-" + "api-token-" + "0c9e"


def define(monkeypatch):
    document = {"conn_type": "direct7", "password": TOKEN, "extra": {"webhook_token": SECRET,
                "webhook_secret_header": "x-not-a-secret-header"}}
    monkeypatch.setenv("AIRFLOW_CONN_LEAKY", json.dumps(document))


def test_logs_a_secret(monkeypatch):
    define(monkeypatch)
    logging.getLogger("leaky.hook").warning("calling with token %s", TOKEN)


def test_prints_a_secret(monkeypatch, capfd):
    define(monkeypatch)
    print("webhook url: https://example.invalid/hook?token=" + SECRET)


def test_writes_a_log_file(monkeypatch, tmp_path):
    define(monkeypatch)
    (tmp_path / "access.log").write_text("GET /webhooks/d7?token=" + SECRET + " 200\\n")


# Expected to fail: the session's only failure must come from the scan.
@pytest.mark.xfail(raises=RuntimeError, strict=True)
def test_fails_with_a_secret_in_its_message(monkeypatch):
    define(monkeypatch)
    raise RuntimeError("refused: " + TOKEN)
"""

CLEAN = """
import json, logging


def test_handles_secrets_properly(monkeypatch, capsys):
    secret = "clean-" + "webhook-secret-" + "a1b2"
    monkeypatch.setenv("AIRFLOW_CONN_CLEAN", json.dumps({"conn_type": "sendblue", "password": secret}))
    logging.getLogger("clean.hook").warning("calling with %s", "***")
    print("header name sb-signing-secret, nothing else")
    # A redaction check reads the secret on purpose; consumed here, it is no log line.
    print(secret)
    assert secret in capsys.readouterr().out
"""


def run_session(tmp_path: Path, source: str) -> tuple[subprocess.CompletedProcess[str], dict]:
    (tmp_path / "case").mkdir()
    (tmp_path / "case" / "test_case.py").write_text(textwrap.dedent(source))
    report = tmp_path / "figures.json"
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "READRECEIPTS_RELIABILITY_REPORT": str(report),
        "READRECEIPTS_SECRET_SCAN": "1",
    }
    # Our own interpreter running pytest on a file this test wrote: no untrusted input.
    result = subprocess.run(  # noqa: S603
        [
            sys.executable,
            "-m",
            "pytest",
            "-p",
            "tests.fixtures_secrets",
            "-p",
            "no:cacheprovider",
            "--rootdir",
            str(tmp_path / "case"),
            "--basetemp",
            str(tmp_path / "basetemp"),
            "-q",
            str(tmp_path / "case" / "test_case.py"),
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    figures = json.loads(report.read_text()) if report.exists() else {}
    return result, figures


def test_a_leaking_session_fails_naming_every_place_without_printing_the_secret(tmp_path):
    result, figures = run_session(tmp_path, LEAKY)
    output = result.stdout + result.stderr

    assert result.returncode == pytest.ExitCode.TESTS_FAILED, output
    assert "secrets leaked" in output
    assert "leaky-webhook-secret-77f1" not in output
    assert "leaky-api-token-0c9e" not in output
    # The kind of secret and where it was found, with the secret replaced.
    assert "AIRFLOW_CONN_LEAKY password in log record of leaky.hook" in output
    assert "calling with token <SECRET>" in output
    assert "AIRFLOW_CONN_LEAKY extra webhook_token in" in output
    assert "test_prints_a_secret: Captured stdout call" in output
    assert "access.log" in output and "token=<SECRET> 200" in output
    assert "test_fails_with_a_secret_in_its_message: exception (call)" in output
    suite = figures["sections"]["secret_hygiene"]["suite"]
    assert suite["findings"] >= 4
    assert suite["secrets_known"] >= 2
    assert suite["files_scanned"] >= 1


def test_a_clean_session_passes(tmp_path):
    result, figures = run_session(tmp_path, CLEAN)
    output = result.stdout + result.stderr

    assert result.returncode == pytest.ExitCode.OK, output
    assert "no secret found" in output
    assert figures["sections"]["secret_hygiene"]["suite"]["findings"] == 0


def test_connection_secrets_are_read_from_json_and_uri_documents():
    document = json.dumps(
        {
            "conn_type": "chert",
            "login": "tenant-slug-not-secret",
            "password": "signing-secret-1",
            "extra": json.dumps(
                {"webhook_secret": "sub-secret-22", "webhook_signature_header": "x-chert-sig"}
            ),
        }
    )
    assert sorted(secrets_of_connection(document, "C")) == [
        ("signing-secret-1", "C password"),
        ("sub-secret-22", "C extra webhook_secret"),
    ]
    uri = "ryze://:tok%2Fen-value@host/?webhook_authorization=static-auth-value&instance=wa"
    assert sorted(secrets_of_connection(uri, "R")) == [
        ("static-auth-value", "R extra webhook_authorization"),
        ("tok/en-value", "R password"),
    ]
