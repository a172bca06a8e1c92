"""
What every vendor hook shares: one reused session, timeouts, the retry policy, error mapping, masking.

``HttpHook`` (providers-http) is the base, used through one seam. What a vendor hook takes from
it: connection loading, the session's adapters, ``url_from_endpoint`` and the ``http_conn_id``
plumbing. What it overrides, and why (:data:`HTTP_HOOK_OVERRIDES` lists the same names; a test
keeps the list and the class in step):

- ``_extract_auth``: never HTTP Basic, which ``HttpHook`` sends whenever the login field is set
  (our login fields hold key ids and tenant slugs): each vendor signs its own requests.
- ``_configure_session_from_extra``: ``HttpHook`` copies every unknown connection extra into a
  request header; our extras hold webhook secrets, so none of them becomes a header.
- ``_set_base_url``: a host typed without a scheme means ``https://``, not ``http://``
  (credentials must not go out in cleartext); an empty host means the vendor's public API.
- ``get_conn``: one session for the hook's life, instead of a new one per call.
- ``test_connection``: a vendor-specific read-only probe.
- ``run``, ``run_and_check``, ``run_with_advanced_retry`` and ``check_response``: closed. They would
  skip this package's retry policy (429 and 5xx with backoff, ``Retry-After``, never repeating a
  send whose outcome is unknown) and its error mapping; :meth:`ReadReceiptsHook.request` is the
  one way a vendor call goes out.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Callable, Mapping
from email.utils import parsedate_to_datetime
from functools import cached_property
from typing import TYPE_CHECKING, Any, ClassVar, NoReturn
from urllib.parse import urlsplit, urlunsplit

import requests
from airflow.providers.http.hooks.http import HttpHook
from requests.auth import AuthBase
from requests_toolbelt.adapters.socket_options import TCPKeepAliveAdapter
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    Retrying,
    retry_if_exception,
    stop_after_attempt,
    stop_before_delay,
    wait_exponential_jitter,
)
from urllib3.exceptions import ConnectTimeoutError, NameResolutionError

from airflow_provider_readreceipts import __version__
from airflow_provider_readreceipts.hooks.inputs import normalize_e164, require_text
from airflow_provider_readreceipts.hooks.payload import (
    WebhookRequest,
    first_text,
    optional_text,
    parse_timestamp,
    secrets_equal,
)
from airflow_provider_readreceipts.rate_limits import (
    SlidingWindowRateLimiter,
    rate_limit_session,
    shared_budget,
    token_fingerprint,
)
from airflow_provider_readreceipts.receipts import (
    DeliveryUnknownError,
    InvalidInputError,
    ReceiptEvent,
    VendorAPIError,
)

if TYPE_CHECKING:
    import aiohttp
    from airflow.sdk import Connection

    from airflow_provider_readreceipts.vendors import VendorSpec

__all__ = [
    "HTTP_HOOK_OVERRIDES",
    "USER_AGENT",
    "ReadReceiptsHook",
    "WebhookRequest",
    "normalize_e164",
    "parse_retry_after",
    "parse_timestamp",
    "require_text",
    "secrets_equal",
]

#: The ``HttpHook`` methods :class:`ReadReceiptsHook` replaces (see the module docstring for why).
HTTP_HOOK_OVERRIDES = (
    "_extract_auth",
    "_configure_session_from_extra",
    "_set_base_url",
    "get_conn",
    "test_connection",
    "run",
    "run_and_check",
    "run_with_advanced_retry",
    "check_response",
)

USER_AGENT = f"airflow-provider-readreceipts/{__version__}"

#: Statuses that never succeed on retry even though they are 5xx.
_PERMANENT_5XX = frozenset({501, 505})


def parse_retry_after(
    headers: Mapping[str, str], body: Any = None, *, status: int = 429, now: float | None = None
) -> float | None:
    """
    Seconds a vendor asks us to wait: ``Retry-After`` (seconds or HTTP date), a ``retry_after``
    field in the JSON body (top level or under ``error``), or, for a 429 only, ``X-RateLimit-Reset``
    (unix seconds).

    :param status: the response's HTTP status. RyzeAPI sends ``X-RateLimit-Reset`` on every
        response; it says when the rate-limit window reopens, which matters after a 429 only (a
        503 must back off as usual, not wait up to a minute for an unrelated counter).
    """
    now = time.time() if now is None else now
    value = headers.get("Retry-After")
    if value:
        try:
            return max(float(value), 0.0)
        except ValueError:
            try:
                return max(parsedate_to_datetime(value).timestamp() - now, 0.0)
            except (TypeError, ValueError):
                pass
    if isinstance(body, Mapping):
        for holder in (body, body.get("error")):
            if isinstance(holder, Mapping) and isinstance(holder.get("retry_after"), (int, float)):
                return max(float(holder["retry_after"]), 0.0)
    reset = headers.get("X-RateLimit-Reset") if status == 429 else None
    if reset:
        try:
            reset_at = float(reset)
        except ValueError:
            return None
        # Unix seconds as RyzeAPI documents; small values are read as a delay in seconds.
        return max(reset_at - now, 0.0) if reset_at > 1_000_000_000 else max(reset_at, 0.0)
    return None


class _SigningAuth(AuthBase):
    """Adds a vendor's auth headers to each request, computed from the final method, path and body."""

    def __init__(self, sign: Callable[[str, str, bytes], dict[str, str]]) -> None:
        self._sign = sign

    def __call__(self, request: requests.PreparedRequest) -> requests.PreparedRequest:
        body = request.body or b""
        if isinstance(body, str):
            body = body.encode()
        request.headers.update(self._sign(request.method or "GET", request.path_url, body))
        return request

    def __repr__(self) -> str:
        return "<vendor auth>"


class ReadReceiptsHook(HttpHook):
    """
    Base of the vendor hooks; not used directly.

    A vendor hook names its spec from the vendor registry, which sets the class attributes Airflow
    reads (``conn_type``, ``conn_name_attr``, ``default_conn_name``, ``hook_name``) and this
    package's own (``vendor_name``, ``default_base_url``, ``secret_extras``)::

        class SendblueHook(ReadReceiptsHook, spec=vendors.sendblue.SPEC): ...

    :param conn_id: the Airflow connection holding the vendor account.
    :param timeout: seconds allowed for connecting and for each read of a response.
    :param max_attempts: attempts per call, the first included, for calls that may be retried.
    :param retry_max_seconds: total time a call may spend waiting between attempts.
    :param max_connections: connections kept open to the vendor (raise for concurrent bulk calls).
    """

    #: The vendor's facts (vendor registry).
    spec: ClassVar[VendorSpec]
    #: The vendor as people write it, used in every error message.
    vendor_name: ClassVar[str]
    #: The vendor's public API root, used when the connection's host is empty.
    default_base_url: ClassVar[str]
    #: Connection extras that hold secrets: masked in logs as soon as the connection is loaded.
    secret_extras: ClassVar[tuple[str, ...]] = ()

    def __init_subclass__(cls, *, spec: VendorSpec | None = None, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if spec is None:
            return
        cls.spec = spec
        cls.conn_type = spec.conn_type
        cls.conn_name_attr = spec.conn_id_param
        cls.default_conn_name = spec.default_conn_id
        cls.hook_name = spec.hook_name
        cls.vendor_name = spec.name
        cls.default_base_url = spec.default_base_url
        cls.secret_extras = spec.secret_extras

    def __init__(
        self,
        *,
        conn_id: str,
        timeout: float = 30.0,
        max_attempts: int = 5,
        retry_max_seconds: float = 120.0,
        max_connections: int = 10,
    ) -> None:
        super().__init__(
            method="POST",
            http_conn_id=conn_id,
            adapter=TCPKeepAliveAdapter(pool_connections=1, pool_maxsize=max_connections),
        )
        self.timeout = timeout
        self.max_attempts = max_attempts
        self.retry_max_seconds = retry_max_seconds
        self._session: requests.Session | None = None
        self._async_session: aiohttp.ClientSession | None = None
        self._async_loop: asyncio.AbstractEventLoop | None = None
        self._async_connection: Connection | None = None
        self._parsed_extras: tuple[Connection, dict[str, Any]] | None = None
        #: (limit, period) asked for by share_rate_budget(); the budget itself once resolved.
        self._budget_request: tuple[int | None, float | None] | None = None
        self._budget: SlidingWindowRateLimiter | None = None

    def __repr__(self) -> str:
        return f"<{type(self).__name__} conn_id={self.http_conn_id!r}>"

    @property
    def conn_id(self) -> str:
        """The Airflow connection of the vendor account."""
        return self.http_conn_id

    # -- closed: HttpHook's request helpers bypass the retry policy and the error mapping ----------

    def run(self, *args: Any, **kwargs: Any) -> NoReturn:
        """Closed: use :meth:`request`, which retries safely and maps the vendor's errors."""
        self._closed_method("run")

    def run_and_check(self, *args: Any, **kwargs: Any) -> NoReturn:
        """Closed: use :meth:`request`."""
        self._closed_method("run_and_check")

    def run_with_advanced_retry(self, *args: Any, **kwargs: Any) -> NoReturn:
        """Closed: use :meth:`request`, whose retries never repeat a send of unknown outcome."""
        self._closed_method("run_with_advanced_retry")

    def check_response(self, *args: Any, **kwargs: Any) -> NoReturn:
        """Closed: :meth:`request` maps every error response to :class:`VendorAPIError`."""
        self._closed_method("check_response")

    def _closed_method(self, name: str) -> NoReturn:
        raise NotImplementedError(
            f"{type(self).__name__}.{name}() is closed: it would skip the vendor retry policy and error"
            f" mapping. Call a vendor method, or {type(self).__name__}.request(operation, method,"
            " endpoint, idempotent=...)."
        )

    # -- connection -------------------------------------------------------------------------------

    @cached_property
    def connection(self) -> Connection:
        """The Airflow connection, loaded once; its secrets are registered with the log masker."""
        return self._adopt_connection(self.get_connection(self.http_conn_id))

    def _adopt_connection(self, conn: Connection) -> Connection:
        from airflow.sdk.log import mask_secret

        if conn.password:
            mask_secret(conn.password)
        for name in self.secret_extras:
            value = self._extra_of(conn, name)
            if value:
                mask_secret(value)
        self._check_connection(conn)
        return conn

    def _check_connection(self, conn: Connection) -> None:
        """Refuse a connection that lacks what the vendor needs; override per vendor."""

    def _current_connection(self) -> Connection:
        """
        The loaded connection. Inside a trigger, the one the async path loaded: ``self.connection``
        would look it up with a blocking call and stall the triggerer's event loop.
        """
        loaded = self.__dict__.get("connection") or self._async_connection
        return loaded if loaded is not None else self.connection

    def extra(self, name: str, default: Any = None) -> Any:
        """A connection extra, as the 3.x form stores it or with the older ``extra__<type>__`` prefix."""
        return self._extra_of(self._current_connection(), name, default)

    def _extra_of(self, conn: Connection, name: str, default: Any = None) -> Any:
        # extra_dejson parses and re-masks the JSON on every access; the receiver reads extras on
        # every webhook, so keep the parsed form of the connection last seen.
        if self._parsed_extras is None or self._parsed_extras[0] is not conn:
            self._parsed_extras = (conn, conn.extra_dejson or {})
        extras = self._parsed_extras[1]
        for key in (name, f"extra__{self.conn_type}__{name}"):
            value = extras.get(key)
            if value not in (None, ""):
                return value
        return default

    def _set_base_url(self, connection: Any) -> None:
        # A bare host means https, never http: credentials must not go out in cleartext by default.
        host = (connection.host or "").strip()
        if not host:
            base = self.default_base_url
        elif "://" in host:
            base = host
        else:
            base = f"https://{host}"
        parts = urlsplit(base.rstrip("/"))
        if connection.port and not parts.port:
            parts = parts._replace(netloc=f"{parts.hostname}:{connection.port}")
        self.base_url = urlunsplit(parts)
        self._base_url_initialized = True

    def _extract_auth(self, connection: Any) -> Any:
        # Never HTTP Basic: the login field holds a key id or tenant, not a Basic-auth user.
        return _SigningAuth(self.auth_headers)

    def _configure_session_from_extra(self, session: requests.Session, connection: Any, extra_options: Any):
        # Extras hold webhook secrets and settings: none of them is a request header.
        session.verify = bool(self._extra_of(connection, "verify", True))
        return session

    def get_conn(
        self, headers: dict[Any, Any] | None = None, extra_options: dict[str, Any] | None = None
    ) -> requests.Session:
        """The hook's one HTTP session, built on first use and reused for every later call."""
        if self._session is None:
            self.connection  # noqa: B018 - load and mask secrets before the session exists
            session = super().get_conn()
            session.headers.update({"User-Agent": USER_AGENT, "Accept": "application/json"})
            budget = self._resolve_budget()
            if budget is not None:
                rate_limit_session(session, budget)
            self._session = session
        if headers:
            self._session.headers.update(headers)
        return self._session

    # -- the token's request budget ---------------------------------------------------------------

    def share_rate_budget(self, *, limit: int | None = None, period: float | None = None) -> None:
        """
        Draw every request of this hook, sync and async, retries included, from the one budget of
        its vendor token in this process (:func:`~airflow_provider_readreceipts.rate_limits.shared_budget`).

        Call it before the first request. The budget's size is the connection's
        ``rate_limit_per_minute`` extra, else the vendor registry's default; ``limit`` per
        ``period`` narrows it when stricter.
        """
        if self._session is not None or self._async_session is not None:
            raise RuntimeError("share_rate_budget() must be called before the hook's first request")
        self._budget_request = (limit, period)

    @property
    def rate_budget(self) -> SlidingWindowRateLimiter | None:
        """The shared budget this hook draws from, once resolved; ``None`` when it draws from none."""
        return self._budget

    def _resolve_budget(self) -> SlidingWindowRateLimiter | None:
        if self._budget_request is None or self._budget is not None:
            return self._budget
        conn = self._current_connection()
        configured = self._extra_of(conn, "rate_limit_per_minute")
        budget = shared_budget(
            self.conn_type,
            token_fingerprint(conn.login, conn.password),
            limit=int(configured) if configured not in (None, "") else None,
            period=60.0 if configured not in (None, "") else None,
        )
        limit, period = self._budget_request
        if limit is not None:
            budget.narrow(limit, period or 60.0)
        self._budget = budget
        return budget

    def auth_headers(self, method: str, path: str, body: bytes) -> dict[str, str]:
        """
        The vendor's auth headers for one request.

        :param method: the HTTP method.
        :param path: the path and query of the final URL, e.g. ``/api/v1/chats/7/mark-read``.
        :param body: the exact body bytes that will be sent (signatures cover them).
        """
        raise NotImplementedError

    def close(self) -> None:
        """Close the HTTP session; the hook opens a new one if used again."""
        if self._session is not None:
            self._session.close()
            self._session = None

    # -- errors -----------------------------------------------------------------------------------

    def parse_error_body(self, body: Any) -> tuple[str | None, str | None, bool | None]:
        """
        The vendor's error code, message and retryable flag from a JSON error body, where present.

        Override per vendor; the base reads the common ``{"message": ...}`` and ``{"error": ...}``.
        """
        if isinstance(body, Mapping):
            error = body.get("error")
            if isinstance(error, Mapping):
                return optional_text(error.get("code")), optional_text(error.get("message")), None
            if isinstance(error, str):
                return None, error, None
            return (
                optional_text(body.get("code")),
                optional_text(body.get("message") or body.get("detail")),
                None,
            )
        return None, None, None

    def _error_from_response(
        self,
        operation: str,
        status: int,
        headers: Mapping[str, str],
        content: bytes,
        *,
        idempotent: bool,
    ) -> VendorAPIError:
        try:
            body: Any = json.loads(content) if content else None
        except ValueError:
            body = None
        code, message, vendor_retryable = self.parse_error_body(body)
        if not message:
            snippet = content[:200].decode("utf-8", "replace").strip()
            message = snippet or f"HTTP {status} with no body"
        transient = status == 429 or (status >= 500 and status not in _PERMANENT_5XX)
        retryable = transient if vendor_retryable is None else vendor_retryable
        kwargs: dict[str, Any] = {
            "vendor": self.vendor_name,
            "operation": operation,
            "status_code": status,
            "code": code,
            "message": message,
            "retry_after": parse_retry_after(headers, body, status=status),
            "trace_id": headers.get("X-Trace-ID")
            or headers.get("X-Request-ID")
            or (optional_text(body.get("trace_id")) if isinstance(body, Mapping) else None),
        }
        if not idempotent and status != 429 and retryable:
            # A 5xx on a send: the vendor may have queued the message before failing.
            return DeliveryUnknownError(retryable=False, **kwargs)
        return VendorAPIError(retryable=retryable, **kwargs)

    def _transport_error(self, operation: str, exc: Exception, *, idempotent: bool) -> VendorAPIError:
        never_sent = _failed_before_sending(exc)
        kwargs: dict[str, Any] = {
            "vendor": self.vendor_name,
            "operation": operation,
            "status_code": None,
            "message": _describe_transport_error(exc),
        }
        if idempotent or never_sent:
            return VendorAPIError(retryable=True, **kwargs)
        return DeliveryUnknownError(retryable=False, **kwargs)

    # -- requests ---------------------------------------------------------------------------------

    def _retry_policy(self) -> dict[str, Any]:
        backoff = wait_exponential_jitter(multiplier=0.5, max=30, jitter=0.5)

        def wait(state: RetryCallState) -> float:
            exc = state.outcome.exception() if state.outcome else None
            if isinstance(exc, VendorAPIError) and exc.retry_after is not None:
                return exc.retry_after
            return backoff(state)

        def log_retry(state: RetryCallState) -> None:
            exc = state.outcome.exception() if state.outcome else None
            sleep = state.next_action.sleep if state.next_action else 0.0
            self.log.warning("%s; attempt %d, retrying in %.1fs", exc, state.attempt_number, sleep)

        return {
            "stop": stop_after_attempt(self.max_attempts) | stop_before_delay(self.retry_max_seconds),
            "wait": wait,
            "retry": retry_if_exception(lambda exc: isinstance(exc, VendorAPIError) and exc.retryable),
            "before_sleep": log_retry,
            "reraise": True,
        }

    def request(
        self,
        operation: str,
        method: str,
        endpoint: str,
        *,
        json_body: Any = None,
        params: Mapping[str, Any] | None = None,
        idempotent: bool,
    ) -> Any:
        """
        Call the vendor and return the decoded JSON response (``None`` for an empty body).

        :param operation: what is being done, for errors and logs, e.g. ``"mark_read"``.
        :param method: the HTTP method.
        :param endpoint: the path below the base URL.
        :param json_body: the JSON body, if any.
        :param params: query parameters.
        :param idempotent: whether the call may be repeated safely. A call that is not is retried
            only where the vendor surely did not act on it (connection refused, 429); otherwise
            :class:`DeliveryUnknownError` is raised.
        """
        session = self.get_conn()
        url = self.url_from_endpoint(endpoint)
        data = None if json_body is None else json.dumps(json_body, separators=(",", ":")).encode()
        headers = {"Content-Type": "application/json"} if data is not None else None

        for attempt in Retrying(**self._retry_policy()):
            with attempt:
                try:
                    response = session.request(
                        method, url, data=data, params=params, headers=headers, timeout=self.timeout
                    )
                except requests.RequestException as exc:
                    raise self._transport_error(operation, exc, idempotent=idempotent) from None
                self.log.debug("%s %s %s -> %s", self.vendor_name, method, endpoint, response.status_code)
                if response.status_code >= 400:
                    raise self._error_from_response(
                        operation,
                        response.status_code,
                        response.headers,
                        response.content,
                        idempotent=idempotent,
                    )
                return _decode(response.content)
        raise AssertionError("unreachable: tenacity reraises")  # pragma: no cover

    async def arequest(
        self, operation: str, method: str, endpoint: str, *, params: Mapping[str, Any] | None = None
    ) -> Any:
        """
        The async twin of :meth:`request` for read-only calls, for use inside triggers.

        Same connection, auth, retry policy and errors; never blocks the event loop.
        """
        import aiohttp
        from yarl import URL

        session = await self._aget_session()
        url = URL(self.url_from_endpoint(endpoint))
        if params:
            url = url.with_query({k: str(v) for k, v in params.items()})

        budget = self._resolve_budget()
        async for attempt in AsyncRetrying(**self._retry_policy()):
            with attempt:
                try:
                    async with (
                        budget.aslot() if budget is not None else contextlib.nullcontext(),
                        session.request(
                            method, url, headers=self.auth_headers(method, url.raw_path_qs, b"")
                        ) as response,
                    ):
                        content = await response.read()
                except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
                    raise self._transport_error(operation, exc, idempotent=True) from None
                if response.status >= 400:
                    raise self._error_from_response(
                        operation, response.status, response.headers, content, idempotent=True
                    )
                return _decode(content)
        raise AssertionError("unreachable: tenacity reraises")  # pragma: no cover

    async def _aget_session(self) -> aiohttp.ClientSession:
        import aiohttp

        loop = asyncio.get_running_loop()
        if self._async_session is None or self._async_loop is not loop or self._async_session.closed:
            if self._async_connection is None:
                conn = await self.aget_connection(self.http_conn_id)
                self._async_connection = self._adopt_connection(conn)
                self._set_base_url(conn)
            self._async_session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(sock_connect=self.timeout, sock_read=self.timeout),
                headers={"User-Agent": USER_AGENT, "Accept": "application/json"},
            )
            self._async_loop = loop
        return self._async_session

    async def aclose(self) -> None:
        """Close the async session opened by the ``a*`` methods."""
        if self._async_session is not None:
            await self._async_session.close()
            self._async_session = None

    # -- inbound webhooks (used by the receiver) --------------------------------------------------

    def verify_webhook(self, request: WebhookRequest) -> None:
        """
        Prove that a webhook comes from the vendor, or raise :class:`WebhookAuthError`.

        Runs before the body is parsed. Compares secrets with :func:`secrets_equal`.
        """
        raise NotImplementedError

    def parse_webhook(self, request: WebhookRequest) -> list[ReceiptEvent]:
        """
        Normalise a verified webhook into receipt events (none for events that carry no status).

        Raise :class:`WebhookPayloadError` for a payload that cannot be used; never any other error.
        Unknown statuses become ``Status.UNKNOWN`` with the raw value kept; unknown fields stay in
        the payload.
        """
        raise NotImplementedError

    @classmethod
    def inbound_text(cls, payload: Mapping[str, Any]) -> str:
        """
        The text of an inbound message from the payload the store kept of it ("" for none), for
        classifying replies. Per vendor; the base reads the common ``text``, ``body``, ``content``.
        """
        return first_text(payload, ("text", "body", "content", "message"))

    # -- reconcile (used by the read sensor's trigger) --------------------------------------------

    async def afetch_receipt_events(self, *, message_id: str, chat: str = "") -> list[ReceiptEvent]:
        """
        Ask the vendor's status API about one message; return what it says as receipt events.

        For lost webhooks and for vendors (Chert) whose reads are only visible by polling. Async,
        read-only; events carry the hook's ``conn_id``. Returns ``[]`` when the vendor knows
        nothing newer than "sent".

        :param message_id: the message id of the message reference.
        :param chat: the conversation of the message reference (Chert needs the chat id).
        """
        raise NotImplementedError

    # -- connection test --------------------------------------------------------------------------

    def probe(self) -> None:
        """A read-only request that proves the credentials work; raises on failure. Per vendor."""
        raise NotImplementedError

    def test_connection(self) -> tuple[bool, str]:
        """Check the credentials with a read-only call that changes nothing at the vendor."""
        try:
            self.probe()
        except (VendorAPIError, InvalidInputError, ValueError) as exc:
            return False, str(exc)
        return True, f"Connected to {self.vendor_name} at {self.base_url}"


def _decode(content: bytes) -> Any:
    if not content:
        return None
    try:
        return json.loads(content)
    except ValueError:
        return {"raw": content.decode("utf-8", "replace")}


def _failed_before_sending(exc: BaseException) -> bool:
    """Whether a transport error happened before any byte of the request reached the vendor."""
    import aiohttp

    if isinstance(exc, (requests.exceptions.ConnectTimeout, aiohttp.ClientConnectorError)):
        return True
    if isinstance(exc, requests.exceptions.ConnectionError) and exc.args:
        # NewConnectionError (refused) subclasses ConnectTimeoutError in urllib3 2.
        reason = getattr(exc.args[0], "reason", exc.args[0])
        return isinstance(reason, (ConnectTimeoutError, NameResolutionError))
    return False


def _describe_transport_error(exc: BaseException) -> str:
    if isinstance(exc, (requests.exceptions.Timeout, asyncio.TimeoutError)):
        return "the vendor did not answer in time"
    if _failed_before_sending(exc):
        return "could not connect to the vendor"
    return f"the connection failed ({type(exc).__name__})"
