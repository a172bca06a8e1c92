"""
A real HTTP server on loopback that hosts the vendor fakes, one URL prefix per vendor.

Each fake (one module per vendor beside this one) follows CONTRACTS.md: the vendor's paths, auth,
bodies and error envelopes. The server adds what every test needs around them: a log of the
requests it received (to assert what went over the wire, and how often) and scripted faults (429
with ``Retry-After``, 5xx, slow answers, dropped connections) consumed in order.

    with VendorFakeServer(SendblueFake()) as server:
        server.url("sendblue")          # http://127.0.0.1:<port>/sendblue
        server.inject("sendblue", Fault(status=429, headers={"Retry-After": "1"}))
"""

from __future__ import annotations

import json
import re
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit


@dataclass
class FakeRequest:
    """One request as the fake received it; ``path`` is below the vendor prefix."""

    vendor: str
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: bytes
    received_at: float = field(default_factory=time.time)

    def json(self) -> Any:
        return json.loads(self.body) if self.body else None

    def header(self, name: str) -> str | None:
        return self.headers.get(name.lower())


@dataclass
class FakeResponse:
    status: int = 200
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class Fault:
    """
    A scripted misbehaviour, used once by the next request that matches.

    :param status: answer with this status (and ``body``, ``headers``) instead of the real handler.
    :param delay: seconds to wait before answering (or before dropping).
    :param drop: close the connection without any answer, after reading the request.
    :param method: only match this HTTP method.
    :param path: only match paths that this regular expression finds.
    """

    status: int | None = None
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0
    drop: bool = False
    method: str | None = None
    path: str | None = None

    def matches(self, request: FakeRequest) -> bool:
        if self.method and self.method != request.method:
            return False
        return not (self.path and not re.search(self.path, request.path))


Handler = Callable[[FakeRequest, "re.Match[str]"], FakeResponse]


class VendorFake:
    """Base of a vendor fake: a URL prefix, routes, and the vendor's state."""

    prefix: str = ""

    def __init__(self) -> None:
        self.lock = threading.RLock()
        self._routes: list[tuple[str, re.Pattern[str], Handler]] = []

    def route(self, method: str, pattern: str, handler: Handler) -> None:
        self._routes.append((method, re.compile(f"^{pattern}$"), handler))

    def dispatch(self, request: FakeRequest) -> FakeResponse:
        allowed = False
        for method, pattern, handler in self._routes:
            match = pattern.match(request.path)
            if match:
                allowed = True
                if method == request.method:
                    with self.lock:
                        return handler(request, match)
        if allowed:
            return FakeResponse(405, {"message": f"{request.method} not allowed on {request.path}"})
        return FakeResponse(404, {"message": f"no route {request.method} {request.path}"})

    def reset(self) -> None:
        """Forget all state; called between tests."""


class VendorFakeServer:
    """Hosts vendor fakes on ``127.0.0.1`` on a free port, in a background thread."""

    def __init__(self, *fakes: VendorFake, host: str = "127.0.0.1", port: int = 0) -> None:
        self.fakes = {fake.prefix: fake for fake in fakes}
        self.requests: list[FakeRequest] = []
        self._faults: dict[str, list[Fault]] = {prefix: [] for prefix in self.fakes}
        self._lock = threading.Lock()
        self._httpd = _Server((host, port), _make_handler(self))
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return self._httpd.server_address[1]

    def url(self, vendor: str) -> str:
        return f"http://127.0.0.1:{self.port}/{vendor}"

    def inject(self, vendor: str, *faults: Fault) -> None:
        with self._lock:
            self._faults[vendor].extend(faults)

    def requests_to(
        self, vendor: str, path: str | None = None, method: str | None = None
    ) -> list[FakeRequest]:
        with self._lock:
            return [
                r
                for r in self.requests
                if r.vendor == vendor
                and (path is None or re.search(path, r.path))
                and (method is None or r.method == method)
            ]

    def reset(self) -> None:
        with self._lock:
            self.requests.clear()
            for faults in self._faults.values():
                faults.clear()
        for fake in self.fakes.values():
            fake.reset()

    def start(self) -> VendorFakeServer:
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="vendor-fakes", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()

    def __enter__(self) -> VendorFakeServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _take_fault(self, request: FakeRequest) -> Fault | None:
        with self._lock:
            self.requests.append(request)
            queue = self._faults.get(request.vendor, [])
            for index, fault in enumerate(queue):
                if fault.matches(request):
                    return queue.pop(index)
        return None


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 256


def _make_handler(server: VendorFakeServer) -> type[BaseHTTPRequestHandler]:
    class _Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        # Headers and body go out in separate writes; with Nagle on, each answer on a reused
        # connection waits ~40 ms for the delayed ACK.
        disable_nagle_algorithm = True

        def log_message(self, format: str, *args: Any) -> None:  # quiet: tests read server.requests
            pass

        def _handle(self) -> None:
            parts = urlsplit(self.path)
            vendor, _, rest = parts.path.lstrip("/").partition("/")
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            request = FakeRequest(
                vendor=vendor,
                method=self.command,
                path="/" + rest,
                query={k: v[-1] for k, v in parse_qs(parts.query).items()},
                headers={k.lower(): v for k, v in self.headers.items()},
                body=body,
            )
            fake = server.fakes.get(vendor)
            if fake is None:
                self._write(FakeResponse(404, {"message": f"no vendor fake at /{vendor}"}))
                return
            fault = server._take_fault(request)
            if fault is not None:
                time.sleep(fault.delay)
                if fault.drop:
                    self.close_connection = True
                    self.connection.shutdown(socket.SHUT_RDWR)
                    return
                if fault.status is not None:
                    self._write(FakeResponse(fault.status, fault.body, fault.headers))
                    return
            self._write(fake.dispatch(request))

        def _write(self, response: FakeResponse) -> None:
            if isinstance(response.body, (bytes, str)):
                payload = response.body.encode() if isinstance(response.body, str) else response.body
                content_type = "text/plain"
            else:
                payload = b"" if response.body is None else json.dumps(response.body).encode()
                content_type = "application/json"
            self.send_response(response.status)
            headers = {"Content-Type": content_type, **response.headers}
            for name, value in headers.items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = _handle

    return _Handler
