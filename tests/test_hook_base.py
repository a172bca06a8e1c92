"""The shared hook behaviour (retries, unknown outcomes, HttpHook pitfalls, secrets), through Sendblue."""

from __future__ import annotations

import logging
import socket

import pytest

from airflow_provider_readreceipts.hooks.base import parse_retry_after
from airflow_provider_readreceipts.hooks.sendblue import SendblueHook
from airflow_provider_readreceipts.receipts import DeliveryUnknownError, VendorAPIError
from airflow_provider_readreceipts.testing.fakes import sendblue as fake
from airflow_provider_readreceipts.testing.fakes.server import Fault

CONTACT = "+14155551234"
WEBHOOK_SECRET = "sb-webhook-secret-Kx7"


@pytest.fixture
def make_hook(vendors, airflow_connection):
    def make(host: str | None = None, **kwargs) -> SendblueHook:
        conn_id = airflow_connection(
            "sb_base",
            "sendblue",
            host=host or vendors.url("sendblue"),
            login=fake.API_KEY_ID,
            password=fake.API_SECRET,
            extra={"from_number": fake.LINE, "webhook_secret": WEBHOOK_SECRET, "X-Leak": "extra-value"},
        )
        kwargs.setdefault("retry_max_seconds", 10)
        return SendblueHook(sendblue_conn_id=conn_id, **kwargs)

    return make


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_no_basic_auth_no_extras_as_headers(make_hook, vendors):
    make_hook().mark_read(number=CONTACT)

    (request,) = vendors.requests_to("sendblue")
    assert "authorization" not in request.headers
    assert "x-leak" not in request.headers
    assert WEBHOOK_SECRET not in str(request.headers)


def test_host_without_scheme_means_https(make_hook):
    hook = make_hook(host="api.sendblue.example")
    hook.get_conn()
    assert hook.base_url == "https://api.sendblue.example"


def test_empty_host_means_the_vendors_public_url(vendors, airflow_connection):
    conn_id = airflow_connection("sb_default_host", "sendblue", login="k", password="s")
    hook = SendblueHook(sendblue_conn_id=conn_id)
    hook.get_conn()
    assert hook.base_url == "https://api.sendblue.co"


def test_one_session_reused(make_hook, vendors):
    hook = make_hook()
    session = hook.get_conn()
    hook.mark_read(number=CONTACT)
    hook.mark_read(number=CONTACT)
    assert hook.get_conn() is session
    assert len(vendors.requests_to("sendblue")) == 2


def test_429_waits_for_retry_after(make_hook, vendors):
    vendors.inject("sendblue", Fault(status=429, body={"message": "Too many"}, headers={"Retry-After": "1"}))

    make_hook().mark_read(number=CONTACT)

    first, second = vendors.requests_to("sendblue")
    assert second.received_at - first.received_at >= 0.9


def test_5xx_is_retried_for_idempotent_calls(make_hook, vendors):
    vendors.inject("sendblue", Fault(status=503), Fault(status=502, body="Bad gateway"))

    assert make_hook().mark_read(number=CONTACT)["status"] == "OK"
    assert len(vendors.requests_to("sendblue")) == 3


def test_retries_are_bounded(make_hook, vendors):
    vendors.inject("sendblue", *[Fault(status=503, body={"message": "down"}) for _ in range(10)])

    with pytest.raises(VendorAPIError) as caught:
        make_hook(max_attempts=3).mark_read(number=CONTACT)

    assert (caught.value.status_code, caught.value.retryable, caught.value.message) == (503, True, "down")
    assert len(vendors.requests_to("sendblue")) == 3


def test_retry_after_beyond_the_budget_is_not_slept(make_hook, vendors):
    vendors.inject("sendblue", Fault(status=429, headers={"Retry-After": "3600"}))

    with pytest.raises(VendorAPIError) as caught:
        make_hook().mark_read(number=CONTACT)

    assert caught.value.retry_after == 3600
    assert len(vendors.requests_to("sendblue")) == 1


def test_send_after_5xx_is_not_repeated(make_hook, vendors):
    vendors.inject("sendblue", Fault(status=503, body={"message": "upstream"}))

    with pytest.raises(DeliveryUnknownError) as caught:
        make_hook().send_message(number=CONTACT, content="Hi")

    assert "may have been sent" in str(caught.value)
    assert len(vendors.requests_to("sendblue", "/api/send-message")) == 1


def test_send_after_timeout_is_not_repeated(make_hook, vendors):
    vendors.inject("sendblue", Fault(delay=1.5))

    with pytest.raises(DeliveryUnknownError, match="did not answer in time"):
        make_hook(timeout=0.5).send_message(number=CONTACT, content="Hi")

    assert len(vendors.requests_to("sendblue", "/api/send-message")) == 1


def test_send_after_dropped_connection_is_not_repeated(make_hook, vendors):
    vendors.inject("sendblue", Fault(drop=True))

    with pytest.raises(DeliveryUnknownError):
        make_hook().send_message(number=CONTACT, content="Hi")

    assert len(vendors.requests_to("sendblue", "/api/send-message")) == 1


def test_send_after_429_is_retried(make_hook, vendors):
    vendors.inject("sendblue", Fault(status=429, headers={"Retry-After": "0"}))

    sent = make_hook().send_message(number=CONTACT, content="Hi")

    assert sent["status"] == "QUEUED"
    assert len(vendors.requests_to("sendblue", "/api/send-message")) == 2
    assert len(vendors.fakes["sendblue"].messages) == 1


def test_send_to_a_refused_port_is_retried_then_fails_clearly(make_hook):
    hook = make_hook(host=f"http://127.0.0.1:{_free_port()}", max_attempts=2)

    with pytest.raises(VendorAPIError) as caught:
        hook.send_message(number=CONTACT, content="Hi")

    assert not isinstance(caught.value, DeliveryUnknownError)
    assert caught.value.status_code is None
    assert "could not connect" in str(caught.value)


def test_mark_read_after_timeout_is_retried(make_hook, vendors):
    vendors.inject("sendblue", Fault(delay=1.0))

    assert make_hook(timeout=0.3).mark_read(number=CONTACT)["status"] == "OK"
    assert len(vendors.requests_to("sendblue")) == 2


def test_secrets_stay_out_of_logs_errors_and_repr(make_hook, vendors, caplog, capsys):
    caplog.set_level(logging.DEBUG)
    vendors.inject("sendblue", Fault(status=503), Fault(status=503))
    hook = make_hook(max_attempts=2)

    with pytest.raises(VendorAPIError) as caught:
        hook.mark_read(number=CONTACT)

    # Airflow's hook logger writes through structlog to stdout; urllib3 uses stdlib logging.
    logs = capsys.readouterr().out + caplog.text
    exposed = "\n".join([logs, str(caught.value), repr(caught.value), repr(hook), repr(hook.get_conn().auth)])
    assert "retrying" in logs
    for secret in (fake.API_SECRET, WEBHOOK_SECRET):
        assert secret not in exposed


def test_errors_survive_pickling():
    import pickle

    error = DeliveryUnknownError(
        vendor="Chert", operation="send_message", status_code=502, message="x", code="4001"
    )
    copy = pickle.loads(pickle.dumps(error))
    assert type(copy) is DeliveryUnknownError
    assert (copy.vendor, copy.status_code, copy.code, str(copy)) == ("Chert", 502, "4001", str(error))


@pytest.mark.parametrize(
    ("headers", "body", "expected"),
    [
        ({"Retry-After": "7"}, None, 7.0),
        ({"Retry-After": "Thu, 01 Jan 1970 00:00:30 GMT"}, None, 20.0),
        ({}, {"error": {"retry_after": 4}}, 4.0),
        ({}, {"retry_after": 2.5}, 2.5),
        ({"X-RateLimit-Reset": "1000000060"}, None, 50.0),
        ({}, {"message": "nothing said"}, None),
    ],
)
def test_parse_retry_after(headers, body, expected):
    now = 1_000_000_010 if "X-RateLimit-Reset" in headers else 10
    assert parse_retry_after(headers, body, now=now) == expected


def test_rate_limit_reset_counts_only_for_a_429():
    # RyzeAPI sends X-RateLimit-Reset on every answer; a 503 must not wait for that window.
    headers = {"X-RateLimit-Reset": "1000000060"}
    assert parse_retry_after(headers, None, status=503, now=1_000_000_010) is None
    assert parse_retry_after(headers, None, status=429, now=1_000_000_010) == 50.0


def test_the_httphook_seam_is_listed_in_one_place():
    # Every HttpHook method the base replaces is named in HTTP_HOOK_OVERRIDES, and nothing else is.
    from airflow.providers.http.hooks.http import HttpHook

    from airflow_provider_readreceipts.hooks.base import HTTP_HOOK_OVERRIDES, ReadReceiptsHook

    replaced = {
        name
        for name in vars(ReadReceiptsHook)
        if not name.startswith("__") and callable(getattr(HttpHook, name, None))
    }
    assert replaced == set(HTTP_HOOK_OVERRIDES)


@pytest.mark.parametrize("method", ["run", "run_and_check", "run_with_advanced_retry", "check_response"])
def test_httphooks_request_helpers_are_closed(make_hook, vendors, method):
    # They would bypass the retry policy (a send repeated after a 5xx) and the error mapping.
    hook = make_hook()
    with pytest.raises(NotImplementedError, match=r"request\("):
        getattr(hook, method)("/api/send-message", data={"number": "+14155550100"})
    assert vendors.requests_to("sendblue") == []


def test_hook_class_attributes_come_from_the_vendor_registry():
    from airflow_provider_readreceipts.vendors import SPECS, hook_class_for

    for conn_type, spec in SPECS.items():
        hook_class = hook_class_for(conn_type)
        assert hook_class.spec is spec
        assert (hook_class.conn_type, hook_class.conn_name_attr, hook_class.default_conn_name) == (
            conn_type,
            spec.conn_id_param,
            spec.default_conn_id,
        )
        assert (hook_class.hook_name, hook_class.vendor_name) == (spec.hook_name, spec.name)
        assert f"{hook_class.__module__}.{hook_class.__qualname__}" == spec.hook_class
