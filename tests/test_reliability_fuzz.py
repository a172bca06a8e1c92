"""
Hostile input: property-based fuzzing of ``POST /webhooks/{conn_id}`` for all four vendors, over
real HTTP against the standalone receiver process (its RSS is what "memory bounded" measures), on a
real SQLite file and on the real PostgreSQL.

Hypothesis draws a *plan* per request (valid, mutated-but-authenticated, or forged); the test body
turns it into bytes with a fresh message id and a fresh signature (Chert's window is 300 s, so
signatures are made at send time, not at generation time). Most requests are authenticated, so the
parser and the store see the hostile values, not just the auth check.

Message ids say what a request is: ``ok-…`` valid (must be acknowledged and stored), ``mut-…``
authenticated with a hostile body (anything below 500 is fine, but a 4xx must store nothing),
``forged-…`` unauthenticated (must be 401 and store nothing). After the run the store is read
directly: the number of rows per connection must equal the sum of ``stored`` the receiver
acknowledged, which catches any event written by a refused request whatever its id became.

The schema-driven part loads the receiver's own OpenAPI document (the app hides the route, but
``create_app().openapi()`` builds it) into schemathesis. The route reads the raw body (signatures
cover the bytes), so the document declares no body: each vendor's payload shape is added to it here,
and schemathesis generates positive and negative cases from that, sent with the vendor's auth.
"""

from __future__ import annotations

import concurrent.futures
import copy
import functools
import hashlib
import hmac
import itertools
import json
import os
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from airflow_provider_readreceipts.hooks.store import ReceiptStore
from tests.support import (
    SCALE_ENV,
    Figures,
    Scale,
    StandaloneReceiver,
    connection_document,
    receiver_environment,
    reset_postgres_database,
    sendblue_payload,
)

pytestmark = pytest.mark.reliability

#: Small, so that oversized bodies are cheap to send; far above any real webhook.
MAX_BODY_BYTES = 32 * 1024
#: How much the receiver's RSS may grow between warm-up and the end of the run.
RSS_GROWTH_BOUND_MIB = 64.0
WARM_UP_REQUESTS = 50

SENDBLUE_SECRET = "fz-sendblue-secret-Xq81"
CHERT_SECRET = "fz-chert-subscription-secret-4LmZ"
RYZE_AUTHORIZATION = "Bearer fz-ryze-hook-9Tt0"
RYZE_INSTANCE = "fuzz-wa"
DIRECT7_TOKEN = "fz-direct7-token-Pp27"

CONNECTIONS = {
    "fz_sendblue": connection_document(
        "sendblue", login="k", password="s", extra={"webhook_secret": SENDBLUE_SECRET}
    ),
    "fz_chert": connection_document(
        "chert", login="tenant", password="signing", extra={"webhook_secret": CHERT_SECRET}
    ),
    "fz_ryze": connection_document(
        "ryze",
        password="token",
        extra={"instance": RYZE_INSTANCE, "webhook_authorization": RYZE_AUTHORIZATION},
    ),
    "fz_direct7": connection_document(
        "direct7", password="token", extra={"originator": "+971501234567", "webhook_token": DIRECT7_TOKEN}
    ),
}


# -- the vendors' payloads and auth ---------------------------------------------------------------


def chert_signature(body: bytes, *, secret: str = CHERT_SECRET, at: int | None = None) -> str:
    timestamp = str(int(time.time()) if at is None else at)
    digest = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()
    return f"v1,{timestamp},{digest}"


@dataclass(frozen=True)
class Vendor:
    """One vendor's connection, payload shape and auth, as the fuzzer needs them."""

    name: str
    conn_id: str
    statuses: tuple[Any, ...]
    build: Callable[[str, Any], dict[str, Any]]
    #: Auth headers (and query) for a body, made at send time.
    authenticate: Callable[[bytes, dict[str, Any]], tuple[dict[str, str], dict[str, str]]]
    #: JSON schema of the payload, for schemathesis.
    json_schema: dict[str, Any] = field(default_factory=dict)


def _sendblue_body(message_id: str, status: Any) -> dict[str, Any]:
    return sendblue_payload(message_id, status)


def _chert_body(message_id: str, status: Any) -> dict[str, Any]:
    return {
        "event": status,
        "event_id": f"evt-{message_id}",
        "timestamp": "2026-11-22T10:00:00Z",
        "data": {
            "message": {"id": message_id, "text": "hello", "created_at": "2026-11-22T10:00:00Z"},
            "reaction": {"message_id": message_id, "type": "love"},
            "chat": {"id": "chat-fuzz", "is_group": False},
        },
    }


def _ryze_body(message_id: str, status: Any) -> dict[str, Any]:
    return {
        "event": "message.status",
        "data": {
            "messageId": message_id,
            "status": status,
            "chat": {"jid": "5511987654321@s.whatsapp.net"},
            "timestamp": 1763805600,
        },
        "instanceData": {"instance": RYZE_INSTANCE},
    }


def _direct7_body(message_id: str, status: Any) -> dict[str, Any]:
    return {
        "event_type": "DELIVERY_EVENTS",
        "request_id": message_id,
        "msg_id": f"d7-{message_id}",
        "status": status,
        "recipient": "+971501234567",
        "originator": "+971509999999",
        "timestamp": 1763805600000,
    }


def _sendblue_auth(body: bytes, plan: dict[str, Any]) -> tuple[dict[str, str], dict[str, str]]:
    return {"sb-signing-secret": SENDBLUE_SECRET}, {}


def _chert_auth(body: bytes, plan: dict[str, Any]) -> tuple[dict[str, str], dict[str, str]]:
    headers = {"x-webhook-signature": chert_signature(body)}
    if plan.get("event_headers"):
        headers["x-webhook-event-id"] = f"evt-{plan['message_id']}"
    return headers, {}


def _ryze_auth(body: bytes, plan: dict[str, Any]) -> tuple[dict[str, str], dict[str, str]]:
    return {"authorization": RYZE_AUTHORIZATION}, {}


def _direct7_auth(body: bytes, plan: dict[str, Any]) -> tuple[dict[str, str], dict[str, str]]:
    if plan.get("token_in_query"):
        return {}, {"token": DIRECT7_TOKEN}
    return {"x-webhook-token": DIRECT7_TOKEN}, {}


def _object(properties: dict[str, Any], required: list[str]) -> dict[str, Any]:
    return {"type": "object", "properties": properties, "required": required}


VENDORS = {
    "sendblue": Vendor(
        "sendblue",
        "fz_sendblue",
        ("QUEUED", "SENT", "DELIVERED", "READ", "FAILED", "ERROR", "DECLINED", "SUCCESS", "PENDING"),
        _sendblue_body,
        _sendblue_auth,
        _object(
            {
                "message_handle": {"type": "string"},
                "status": {"type": "string"},
                "is_outbound": {"type": "boolean"},
                "number": {"type": "string"},
                "date_updated": {"type": "string"},
                "message_type": {"type": "string", "enum": ["message", "group"]},
                "group_id": {"type": "string"},
                "error_code": {"type": ["integer", "null"]},
            },
            ["message_handle", "status"],
        ),
    ),
    "chert": Vendor(
        "chert",
        "fz_chert",
        ("message.received", "reaction.added", "reaction.removed", "message.updated"),
        _chert_body,
        _chert_auth,
        _object(
            {
                "event": {
                    "type": "string",
                    "enum": ["message.received", "reaction.added", "reaction.removed"],
                },
                "event_id": {"type": "string"},
                "timestamp": {"type": "string"},
                "data": _object(
                    {
                        "message": _object(
                            {"id": {"type": "string"}, "created_at": {"type": "string"}}, ["id"]
                        ),
                        "chat": _object({"id": {"type": "string"}, "is_group": {"type": "boolean"}}, []),
                    },
                    ["message"],
                ),
            },
            ["event", "data"],
        ),
    ),
    "ryze": Vendor(
        "ryze",
        "fz_ryze",
        ("pending", "sent", "delivered", "received", "read", "played", "error", 0, 1, 2, 3, 4, 5, -1),
        _ryze_body,
        _ryze_auth,
        _object(
            {
                "event": {"type": "string", "enum": ["message.status", "message.exchange"]},
                "data": _object(
                    {
                        "messageId": {"type": "string"},
                        "status": {"type": ["string", "integer"]},
                        "chat": {"type": "string"},
                        "timestamp": {"type": "integer"},
                    },
                    ["messageId"],
                ),
                "instanceData": _object(
                    {"instance": {"type": "string", "enum": [RYZE_INSTANCE]}}, ["instance"]
                ),
            },
            ["event", "data", "instanceData"],
        ),
    ),
    "direct7": Vendor(
        "direct7",
        "fz_direct7",
        ("Queued", "Sent", "Delivered", "Read", "Dropped", "undelivered", "accepted"),
        _direct7_body,
        _direct7_auth,
        _object(
            {
                "event_type": {"type": "string", "enum": ["DELIVERY_EVENTS"]},
                "request_id": {"type": "string"},
                "status": {"type": "string"},
                "recipient": {"type": "string"},
                "timestamp": {"type": "integer"},
            },
            ["request_id", "status"],
        ),
    ),
}


# -- what hypothesis generates ---------------------------------------------------------------------

_SURROGATES = st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF)
HOSTILE_VALUES = st.one_of(
    st.sampled_from([10**400, -(10**400), 2**63, -(2**63) - 1, 1e308, -0.0, None, True, False, [], {}]),
    st.integers(),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=40),
    st.text(alphabet=st.characters(codec="utf-8") | st.just("\x00"), max_size=20).map(lambda t: t + "\x00"),
    st.builds(lambda a, s: a + s, st.text(max_size=5), _SURROGATES),
    st.integers(min_value=513, max_value=5000).map(lambda n: "x" * n),
    st.lists(st.text(max_size=5), max_size=4),
    st.dictionaries(st.text(max_size=5), st.integers(), max_size=3),
    st.integers(min_value=1, max_value=200).map(lambda depth: json.loads("[" * depth + "]" * depth)),
    st.sampled_from(
        ["READ", "read", "Read", "unknown-status", "", " ", "READ\n", "\uff32\uff25\uff21\uff24", "4", "-1"]
    ),
)

#: Whole bodies that replace the JSON: (kind, size or depth).
RAW_BODIES = st.one_of(
    st.tuples(st.just("empty"), st.just(0)),
    st.tuples(st.sampled_from(["null", "number", "string", "array", "truncated", "bom", "nan"]), st.just(0)),
    st.tuples(st.just("invalid_utf8"), st.integers(min_value=0, max_value=200)),
    st.tuples(st.just("deep"), st.integers(min_value=500, max_value=MAX_BODY_BYTES // 2 - 10)),
    st.tuples(st.just("deep_in_field"), st.integers(min_value=100, max_value=5000)),
    st.tuples(st.just("huge_number"), st.integers(min_value=300, max_value=6000)),
    st.tuples(st.just("huge_exponent"), st.integers(min_value=309, max_value=10**9)),
    st.tuples(st.just("oversized"), st.integers(min_value=1, max_value=MAX_BODY_BYTES)),
    st.tuples(st.just("oversized_chunked"), st.integers(min_value=1, max_value=MAX_BODY_BYTES)),
)

CONTENT_TYPES = st.sampled_from(
    [
        "application/json",
        "application/json",
        "text/plain",
        "application/x-www-form-urlencoded",
        "multipart/form-data; boundary=x",
        "application/xml",
        "application/json; charset=latin-1",
        "",
    ]
)

FORGERIES = st.sampled_from(
    ["missing", "wrong_secret", "empty", "prefix_only", "suffix_junk", "other_header", "swapped_case"]
)
CHERT_FORGERIES = st.sampled_from(
    [
        "other_body",
        "stale",
        "future",
        "wrong_secret_hmac",
        "malformed",
        "no_digest",
        "t_v1_wrong",
        "v0_scheme",
        "huge_ts",
        "signature_in_unnamed_header",
    ]
)


@st.composite
def request_plans(draw: st.DrawFn, vendor: Vendor) -> dict[str, Any]:
    """A request to make: mostly authenticated, a quarter of them hostile, a sixth forged."""
    kind = draw(
        st.sampled_from(["valid"] * 5 + ["mutated"] * 5 + ["raw"] * 2 + ["forged"] * 2 + ["content_type"])
    )
    plan: dict[str, Any] = {
        "kind": kind,
        "status": draw(st.sampled_from(vendor.statuses)),
        "event_headers": draw(st.booleans()),
        "token_in_query": draw(st.booleans()),
    }
    if kind == "mutated":
        plan["mutations"] = draw(
            st.lists(
                st.tuples(st.integers(min_value=0, max_value=50), HOSTILE_VALUES), min_size=1, max_size=3
            )
        )
        plan["add_field"] = draw(st.booleans())
    elif kind == "raw":
        plan["raw"] = draw(RAW_BODIES)
    elif kind == "content_type":
        plan["content_type"] = draw(CONTENT_TYPES)
    elif kind == "forged":
        strategy = (FORGERIES | CHERT_FORGERIES) if vendor.name == "chert" else FORGERIES
        plan["forgery"] = draw(strategy)
    return plan


# -- turning a plan into a request -----------------------------------------------------------------


def _leaves(document: Any, path: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    if isinstance(document, dict) and document:
        for key, value in document.items():
            yield from _leaves(value, (*path, key))
    else:
        yield path


def _set(document: Any, path: tuple[Any, ...], value: Any) -> Any:
    if not path:
        return value
    document[path[0]] = _set(document[path[0]], path[1:], value)
    return document


def _dumps(document: Any) -> bytes:
    return json.dumps(document).encode()


def _raw_body(kind: str, size: int, body: dict[str, Any]) -> tuple[bytes, bool]:
    """(bytes, send chunked) for a whole-body replacement."""
    encoded = _dumps(body)
    if kind == "empty":
        return b"", False
    if kind == "null":
        return b"null", False
    if kind == "number":
        return b"12345", False
    if kind == "string":
        return _dumps(json.dumps(body)), False
    if kind == "array":
        return _dumps([body]), False
    if kind == "truncated":
        return encoded[: len(encoded) // 2], False
    if kind == "bom":
        return b"\xef\xbb\xbf" + encoded, False
    if kind == "nan":
        return encoded[:-1] + b', "nan": NaN, "inf": -Infinity}', False
    if kind == "invalid_utf8":
        cut = min(size, len(encoded) - 1)
        return encoded[:cut] + b"\xff\xfe\xc3" + encoded[cut:], False
    if kind == "deep":
        return b"[" * size + b"]" * size, False
    if kind == "deep_in_field":
        return encoded[:-1] + b', "deep": ' + b"[" * size + b"]" * size + b"}", False
    if kind == "huge_number":
        return encoded[:-1] + b', "n": ' + b"9" * size + b"}", False
    if kind == "huge_exponent":
        return encoded[:-1] + b', "n": 1e' + str(size).encode() + b"}", False
    if kind in ("oversized", "oversized_chunked"):
        padding = b" " * (MAX_BODY_BYTES + size - len(encoded))
        return encoded[:-1] + padding + b"}", kind == "oversized_chunked"
    raise AssertionError(kind)


def _forge(vendor: Vendor, forgery: str, body: bytes, good: dict[str, str]) -> dict[str, str]:
    """Headers that look like the vendor's but prove nothing."""
    name, secret = next(iter(good.items())) if good else ("x-webhook-token", DIRECT7_TOKEN)
    if vendor.name == "chert":
        now = int(time.time())
        chert = {
            "other_body": chert_signature(body + b" "),
            "stale": chert_signature(body, at=now - 301 - (len(body) % 5000)),
            "future": chert_signature(body, at=now + 301 + (len(body) % 5000)),
            "wrong_secret_hmac": chert_signature(body, secret="not-the-subscription-secret"),
            "malformed": "v1,abc,def",
            "no_digest": f"v1,{now},",
            "t_v1_wrong": f"t={now},v1={'0' * 64}",
            "v0_scheme": "v0" + chert_signature(body)[2:],
            "huge_ts": "v1," + "9" * 5000 + "," + "0" * 64,
        }
        if forgery in chert:
            return {"x-webhook-signature": chert[forgery]}
        if forgery == "signature_in_unnamed_header":
            return {"x-signature": chert_signature(body)}
    if forgery == "missing":
        return {}
    if forgery == "wrong_secret":
        return {name: "definitely-not-the-secret"}
    if forgery == "empty":
        return {name: ""}
    if forgery == "prefix_only":
        return {name: secret[: len(secret) // 2]}
    if forgery == "suffix_junk":
        return {name: secret + "x"}
    if forgery == "other_header":
        return {"x-some-other-header": secret}
    if forgery == "swapped_case":
        return {name: secret.swapcase()}
    raise AssertionError(forgery)


@dataclass
class Tally:
    """What one vendor's fuzzing run saw, request by request."""

    statuses: Counter[int] = field(default_factory=Counter)
    authenticated: int = 0
    stored: int = 0
    valid_acknowledged: list[str] = field(default_factory=list)
    refused_ids: list[str] = field(default_factory=list)
    forged_ids: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    @property
    def tried(self) -> int:
        return sum(self.statuses.values())


class Fuzzer:
    """
    Sends planned requests to one receiver and tallies the answers.

    A few threads send at once, each over its own keep-alive client: the receiver's group commit
    then gathers their events into shared commits, as it does for a real vendor's traffic (one
    request at a time would measure fsync latency, not the receiver).
    """

    def __init__(self, base_url: str, *, threads: int = 6) -> None:
        self.base_url = base_url
        self.threads = threads
        self.ids = itertools.count()
        self._local = threading.local()
        self._clients: list[httpx.Client] = []
        self._lock = threading.Lock()

    def close(self) -> None:
        for client in self._clients:
            client.close()

    def _client(self) -> httpx.Client:
        client = getattr(self._local, "client", None)
        if client is None:
            client = self._local.client = httpx.Client(base_url=self.base_url, timeout=60.0)
            with self._lock:
                self._clients.append(client)
        return client

    def send_all(self, vendor: Vendor, plans: list[dict[str, Any]], *, tally: Tally) -> None:
        with concurrent.futures.ThreadPoolExecutor(self.threads) as pool:
            for outcome in pool.map(functools.partial(self.send, vendor, tally=tally), plans):
                assert outcome is None

    def send(self, vendor: Vendor, plan: dict[str, Any], *, tally: Tally) -> None:
        kind = plan["kind"]
        prefix = {"valid": "ok", "forged": "forged"}.get(kind, "mut")
        message_id = f"{prefix}-{vendor.name}-{next(self.ids)}-end"
        plan = {**plan, "message_id": message_id}
        document = vendor.build(message_id, plan["status"])
        headers = {"content-type": "application/json"}
        if vendor.name == "chert" and plan["event_headers"]:
            headers["x-webhook-event"] = str(plan["status"])
        chunked = False
        if kind == "mutated":
            leaves = list(_leaves(document))
            for index, value in plan["mutations"]:
                _set(document, leaves[index % len(leaves)], value)
            if plan["add_field"]:
                document["extra"] = plan["mutations"][0][1]
            body = _dumps(document)
        elif kind == "raw":
            body, chunked = _raw_body(*plan["raw"], document)
        else:
            body = _dumps(document)
            if kind == "content_type":
                headers["content-type"] = plan["content_type"]
        auth_headers, query = vendor.authenticate(body, plan)
        if kind == "forged":
            auth_headers, query = _forge(vendor, plan["forgery"], body, auth_headers), {}
        headers.update(auth_headers)
        content: bytes | Iterator[bytes] = (
            iter([body[i : i + 8192] for i in range(0, len(body), 8192)]) if chunked else body
        )
        try:
            response = self._client().post(
                f"/webhooks/{vendor.conn_id}", content=content, headers=headers, params=query
            )
        except httpx.TransportError as exc:
            # The receiver may answer 413 before reading a body it refuses, and close the
            # connection; only an oversized body may end that way.
            if kind == "raw" and plan["raw"][0].startswith("oversized"):
                self._local.client = None
                with self._lock:
                    tally.statuses[413] += 1
                    tally.refused_ids.append(message_id)
                return
            raise AssertionError(f"{vendor.name} {plan}: {type(exc).__name__}: {exc}") from exc
        with self._lock:
            self._tally(tally, kind, plan, message_id, response)

    @staticmethod
    def _tally(
        tally: Tally, kind: str, plan: dict[str, Any], message_id: str, response: httpx.Response
    ) -> None:
        status = response.status_code
        tally.statuses[status] += 1
        if kind != "forged":
            tally.authenticated += 1
        if status >= 500:
            tally.problems.append(f"{status} for {kind} {plan}: {response.text[:300]}")
        elif 200 <= status < 300:
            tally.stored += response.json()["stored"]
        else:
            tally.refused_ids.append(message_id)
        if kind == "valid":
            if status != 200 or response.json() != {"stored": 1, "duplicates": 0}:
                tally.problems.append(f"valid request answered {status} {response.text[:300]} for {plan}")
            else:
                tally.valid_acknowledged.append(message_id)
        elif kind == "forged":
            tally.forged_ids.append(message_id)
            if status != 401:
                tally.problems.append(f"forged request answered {status} {response.text[:200]} for {plan}")


def _hypothesis_settings(examples: int) -> settings:
    return settings(
        max_examples=examples,
        database=None,
        derandomize=True,
        deadline=None,
        phases=[Phase.generate],
        suppress_health_check=list(HealthCheck),
    )


def run_generated(strategy: st.SearchStrategy[Any], examples: int, action: Callable[[Any], None]) -> None:
    """Run ``action`` on ``examples`` values drawn by hypothesis (seeded, no shrinking, no database)."""

    @_hypothesis_settings(examples)
    @given(value=strategy)
    def run(value: Any) -> None:
        action(value)

    run()


def rss_mib(pid: int) -> float:
    """The resident set size of a process, from ``/proc/<pid>/status`` (``VmRSS``, in kB)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError(f"no VmRSS for process {pid}")


def stored_message_ids(store: ReceiptStore, conn_id: str) -> list[str]:
    events = sa.table("rr_events", sa.column("conn_id"), sa.column("message_id"))
    with store.engine.connect() as conn:
        return list(conn.execute(sa.select(events.c.message_id).where(events.c.conn_id == conn_id)).scalars())


def payloads_mentioning(store: ReceiptStore, conn_id: str, text: str) -> int:
    events = sa.table("rr_events", sa.column("conn_id"), sa.column("payload"))
    query = sa.select(sa.func.count()).where(events.c.conn_id == conn_id, events.c.payload.contains(text))
    with store.engine.connect() as conn:
        return int(conn.execute(query).scalar_one())


# -- the receiver -----------------------------------------------------------------------------------


@dataclass
class FuzzTarget:
    kind: str
    receiver: StandaloneReceiver
    store: ReceiptStore


#: PostgreSQL doubles the run (a second receiver, a second pass): at the ``ci`` scale, which must stay
#: within CI's budget, the fuzzing runs on SQLite only; the ``full`` scale runs both.
STORE_KINDS = ["sqlite"] + (
    [pytest.param("postgres", marks=pytest.mark.postgres)]
    if os.environ.get(SCALE_ENV, "ci") == "full"
    else []
)


@pytest.fixture(scope="module", params=STORE_KINDS)
def fuzz_target(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[FuzzTarget]:
    """The standalone receiver with the four vendors' connections, on a SQLite file or PostgreSQL."""
    folder = tmp_path_factory.mktemp(f"fuzz-{request.param}")
    if request.param == "sqlite":
        url = f"sqlite:///{folder / 'receipts.db'}"
    else:
        url = request.getfixturevalue("postgres_url")
        reset_postgres_database(url)
    receiver = StandaloneReceiver(
        store_url=url,
        environment=receiver_environment(**CONNECTIONS),
        log_path=folder / "receiver.log",
        arguments=["--max-body-bytes", str(MAX_BODY_BYTES), "--no-access-log"],
    )
    receiver.start().wait_ready()
    store = ReceiptStore(url)
    try:
        yield FuzzTarget(request.param, receiver, store)
    finally:
        store.close()
        receiver.stop()


# -- the tests ----------------------------------------------------------------------------------------


def test_hostile_webhooks_never_get_500_and_store_nothing_they_should_not(
    fuzz_target: FuzzTarget, scale: Scale, figures: Figures
) -> None:
    """
    Thousands of generated requests per vendor, most authenticated, many hostile: no answer is a
    5xx, every forged one is 401, every valid one is stored, no refused one left a row, and the
    receiver's memory stays bounded.

    Why both stores: the hostile values (NUL, surrogates, huge numbers) are exactly what one
    database accepts and the other refuses.
    """
    process = fuzz_target.receiver.process
    assert process is not None
    fuzzer = Fuzzer(fuzz_target.receiver.url())
    tallies = {name: Tally() for name in VENDORS}
    warm_up = {name: Tally() for name in VENDORS}
    try:
        for name, vendor in VENDORS.items():  # warm-up: imports, caches, connections resolved
            plans: list[dict[str, Any]] = []
            run_generated(request_plans(vendor), WARM_UP_REQUESTS, plans.append)
            fuzzer.send_all(vendor, plans, tally=warm_up[name])
        rss_after_warm_up = rss_mib(process.pid)
        started = time.monotonic()
        for name, vendor in VENDORS.items():
            plans = []
            run_generated(request_plans(vendor), scale.fuzz_requests_per_vendor, plans.append)
            fuzzer.send_all(vendor, plans, tally=tallies[name])
        elapsed = time.monotonic() - started
        rss_growth = rss_mib(process.pid) - rss_after_warm_up
    finally:
        fuzzer.close()

    for name, vendor in VENDORS.items():
        tally, warm = tallies[name], warm_up[name]
        stored_ids = stored_message_ids(fuzz_target.store, vendor.conn_id)
        stored_set = set(stored_ids)
        from_invalid = sum(1 for message_id in stored_ids if message_id.startswith("forged-"))
        from_invalid += payloads_mentioning(fuzz_target.store, vendor.conn_id, '"forged-')
        from_invalid += len(stored_set.intersection(tally.refused_ids))
        from_invalid += len(stored_set.intersection(warm.refused_ids))
        acknowledged = tally.valid_acknowledged + warm.valid_acknowledged
        missing = [message_id for message_id in acknowledged if message_id not in stored_set]
        server_errors = sum(count for status, count in tally.statuses.items() if status >= 500)
        figures.add(
            "fuzzing",
            f"{name}/{fuzz_target.kind}",
            tried=tally.tried,
            authenticated=tally.authenticated,
            refused=sum(count for status, count in tally.statuses.items() if 400 <= status < 500),
            acknowledged=sum(count for status, count in tally.statuses.items() if 200 <= status < 300),
            reached_store=tally.stored,
            server_errors=server_errors,
            stored_from_invalid=from_invalid,
            acknowledged_missing=len(missing),
            rss_growth_mib=round(rss_growth, 1),
            seconds=round(elapsed, 1),
        )
        assert tally.tried >= scale.fuzz_requests_per_vendor * 0.9, (name, tally.tried)
        problems = warm.problems + tally.problems
        assert problems == [], f"{name}: {len(problems)} problems, e.g. {problems[:5]}"
        assert server_errors == 0, (name, tally.statuses)
        assert from_invalid == 0, name
        assert missing == [], (name, missing[:10])
        # Every row the store holds for this connection was acknowledged as newly stored.
        assert len(stored_ids) == warm.stored + tally.stored, (
            name,
            len(stored_ids),
            warm.stored,
            tally.stored,
        )
        assert tally.forged_ids, f"{name}: the run forged nothing"
    assert rss_growth < RSS_GROWTH_BOUND_MIB, f"the receiver's RSS grew by {rss_growth:.1f} MiB"


# -- schemathesis -----------------------------------------------------------------------------------


def _openapi_for(vendor: Vendor) -> dict[str, Any]:
    """The receiver's own OpenAPI document, with the vendor's payload as the route's body."""
    from airflow_provider_readreceipts.webhooks.app import create_app

    document = copy.deepcopy(create_app().openapi())
    operation = document["paths"]["/webhooks/{conn_id}"]["post"]
    operation["requestBody"] = {
        "required": True,
        "content": {"application/json": {"schema": vendor.json_schema}},
    }
    return document


def test_schema_driven_fuzzing_of_every_vendor_route_never_gets_500(
    fuzz_target: FuzzTarget, scale: Scale, figures: Figures
) -> None:
    """
    Schemathesis generates positive (schema-conforming) and negative (schema-violating) bodies
    for each vendor's route from the receiver's OpenAPI document; each is sent authenticated, the
    way the vendor would sign it. Nothing may be a 5xx. A last run lets schemathesis pick the
    connection id too (unknown ids, odd characters), unauthenticated.
    """
    import schemathesis
    from schemathesis import GenerationMode

    client = httpx.Client(base_url=fuzz_target.receiver.url(), timeout=60.0)
    server_errors: list[str] = []

    def send(vendor: Vendor | None, case: Any, *, counts: Counter[str]) -> None:
        body = case.body
        raw = body if isinstance(body, bytes) else b"" if body is None else json.dumps(body).encode()
        headers, query = {}, {}
        if vendor is not None:
            headers, query = vendor.authenticate(raw, {"token_in_query": False})
        headers["content-type"] = case.media_type or "application/json"
        response = client.post(case.formatted_path, content=raw, headers=headers, params=query)
        counts["tried"] += 1
        counts[str(response.status_code // 100) + "xx"] += 1
        if response.status_code >= 500:
            server_errors.append(
                f"{case.formatted_path} {raw[:200]!r}: {response.status_code} {response.text[:200]}"
            )

    try:
        for name, vendor in VENDORS.items():
            operation = schemathesis.openapi.from_dict(_openapi_for(vendor))["/webhooks/{conn_id}"]["POST"]
            counts: Counter[str] = Counter()
            for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
                strategy = operation.as_strategy(
                    generation_mode=mode, path_parameters={"conn_id": vendor.conn_id}
                )
                run_generated(
                    strategy, scale.schema_examples // 2, functools.partial(send, vendor, counts=counts)
                )
            figures.add("schema_fuzzing", name, tried=counts["tried"], server_errors=counts["5xx"])
            assert counts["tried"] >= scale.schema_examples * 0.5, (name, counts)
            # Positive cases conform to the vendor's payload shape: some must have been stored.
            assert counts["2xx"] > 0, (name, counts)

        operation = schemathesis.openapi.from_dict(_openapi_for(VENDORS["sendblue"]))["/webhooks/{conn_id}"][
            "POST"
        ]
        counts = Counter()

        any_strategy = operation.as_strategy(generation_mode=GenerationMode.POSITIVE)
        run_generated(any_strategy, scale.schema_examples, functools.partial(send, None, counts=counts))
        figures.add("schema_fuzzing", "any_conn_id", tried=counts["tried"], server_errors=counts["5xx"])
    finally:
        client.close()
    assert server_errors == [], server_errors[:10]
