"""`phoenix dashboard`: pages and a JSON API over the store, served by
uvicorn in a process of its own (never the master's: a slow browser never
slows the master).

A page is one template and one API route: the page handler reads what the
API route answers (views.py) and renders it once; the page's script
(static/dashboard.js) then polls that route and redraws the page's tables
from the JSON, with textContent. Every string a user or a job wrote is data:
autoescaped by Jinja2 here, set as text there.

Safety (docs/dashboard.md): the Content-Security-Policy allows only this
server's own script and style, no inline script, no framing; no CORS header
is ever sent; on a loopback address a request for another host name (DNS
rebinding) is refused; actions need the token, compared in constant time,
and without one configured the dashboard is read-only."""

from __future__ import annotations

import asyncio
import hmac
import ipaddress
import json
import logging
import math
import signal
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, TypeVar
from urllib.parse import urlencode

import jinja2
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from uvicorn.protocols.http.h11_impl import H11Protocol

from phoenix.cli.jobsview import BadCursor, parse_cursor
from phoenix.cli.status import formatted
from phoenix.errors import Conflict, Unavailable
from phoenix.linux.paths import StatePaths
from phoenix.linux.untrusted import visible
from phoenix.log import event
from phoenix.log import setup as setup_log
from phoenix.store.base import JOB_STATES, JournalError, RetryRefused, Store
from phoenix.web import views

HERE = Path(__file__).parent
REFRESH_SECONDS = 2.0  # how often a page polls its API route
# Only this server's files; no inline script or style, no plugin, no framing, forms post here only.
CONTENT_SECURITY_POLICY = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
                           "connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'")
SECURITY_HEADERS = [
    (b"content-security-policy", CONTENT_SECURITY_POLICY.encode()),
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),  # frame-ancestors for browsers that predate it
    (b"referrer-policy", b"no-referrer"),  # a job's key in the URL stays here
    (b"cross-origin-resource-policy", b"same-origin"),
    (b"cache-control", b"no-store"),  # live data, and the pages name jobs
]
GATEWAY_TIMEOUT = 504  # an action the master was given and did not answer: its result is unknown
LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "[::1]"})


class DashboardError(Unavailable):
    """The dashboard cannot start: one line for the operator, and the exit
    status (2: a host that is no address, the user's mistake; 1: the port is taken)."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code


@dataclass(frozen=True)
class Column:
    """A column of a live table: the field of each row it shows, its heading,
    and how to show it (text, time, seconds, pre, state, a link to the job, actions)."""

    field: str
    heading: str = ""
    kind: str = "text"

    @property
    def title(self) -> str:
        return self.heading or self.field


JOB_COLUMNS = (Column("key", kind="job"), Column("state", kind="state"), Column("target"), Column("attempt"),
               Column("node"), Column("outcome"), Column("reason"), Column("updated_at", "changed", "time"),
               Column("", "actions", "actions"))
ATTEMPT_COLUMNS = (Column("n", "attempt"), Column("pid"), Column("node"), Column("started_at", "started", "time"),
                   Column("duration", kind="seconds"), Column("outcome"), Column("reason"),
                   Column("max_rss_kb", "max RSS (KiB)"), Column("error", kind="pre"))
MASTER_COLUMNS = (Column("node"), Column("pid"), Column("generation"), Column("state", kind="state"),
                  Column("lease_expires_in", "lease (s)", "seconds"), Column("slots_used", "slots used"),
                  Column("slots"), Column("app"), Column("degraded_reason", "degraded: why", "pre"))
FAILURE_COLUMNS = (Column("failed_at", "failed", "time"), Column("key", kind="job"), Column("target"),
                   Column("outcome"), Column("reason"), Column("error_line", "error"),
                   Column("max_rss_kb", "max RSS (KiB)"))
EVENT_COLUMNS = (Column("at", "when", "time"), Column("kind"), Column("generation"), Column("pid"),
                 Column("detail"))
TIMELINE_COLUMNS = (Column("started_at", "started", "time"), Column("ended_at", "ended", "time"),
                    Column("key", kind="job"), Column("n", "attempt"), Column("pid"), Column("outcome"),
                    Column("reason"))


def shown(value: Any, kind: str = "text") -> str:
    """A value as the page shows it (static/dashboard.js's `format` does the same):
    controls and bidi overrides written out, never markup (autoescape does that)."""
    if kind == "time":  # (a time or a number another tool damaged, text or bytes: shown as it is)
        return formatted(value, lambda at: time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(at)))
    if kind == "seconds":
        return formatted(value, lambda seconds: f"{seconds:.2f}")
    if value is None:
        return "-"
    if kind == "json":  # as the script's JSON.stringify writes it
        return visible(json.dumps(value, ensure_ascii=False, separators=(",", ":")))
    return visible(str(value), multiline=kind == "pre")


def job_link(key: Any) -> str:
    """The address of a job's page. A key that is not UTF-8 (bytes another
    tool stored) cannot be put in a URL as it is: its escaped text is, as the
    page shows it (and as the script's link says it)."""
    return "/job?" + urlencode({"key": shown(key)})


def _environment() -> jinja2.Environment:
    environment = jinja2.Environment(loader=jinja2.FileSystemLoader(HERE / "templates"), autoescape=True,
                                     undefined=jinja2.StrictUndefined)  # a typo in a template fails its test
    environment.filters["shown"] = shown
    environment.filters["job_link"] = job_link
    environment.globals.update(job_states=JOB_STATES, refresh_ms=int(REFRESH_SECONDS * 1000))
    return environment


# -- what the server is given, and its answers --------------------------------------------------

Opener = Callable[[], Store]
Read = TypeVar("Read")
Action = Callable[[str], dict[str, Any]]  # a job's key -> the answer; raises RetryRefused or ActionRefused


class ActionRefused(Conflict, ValueError):
    """An action that is well formed but at odds with the job's state: 409 with this text."""


class ActionUnknown(Unavailable, RuntimeError):
    """An action delivered to the master, which did not answer in time: it may
    still take effect. 504 with this text, and `result=unknown` in the log."""


@dataclass
class Dashboard:
    """What the pages read and act on: the state directory, the store (a
    shared store's URL, or None for the state directory's journal), how to
    open it for a look, the two actions, and the token (None: read-only)."""

    paths: StatePaths
    store_url: str | None
    open_store: Opener
    retry: Action
    cancel: Action
    token: bytes | None
    environment: jinja2.Environment = field(default_factory=_environment)

    def read(self, look: Callable[[Store], Read]) -> Read:
        with self.open_store() as store:
            return look(store)


def json_response(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    # ensure_ascii: whatever a job wrote (a lone surrogate too), the bytes sent are ASCII; allow_nan=False:
    # NaN is not JSON, and a browser's parser would refuse the whole answer (_finite writes it as text first)
    text = json.dumps(body, ensure_ascii=True, allow_nan=False)
    return Response(text, status, headers=headers, media_type="application/json")


def _finite(body: Any) -> Any:
    """NaN and infinities (a job's result may hold them, JSON cannot) as strings."""
    if isinstance(body, float) and not math.isfinite(body):
        return str(body)
    if isinstance(body, dict):
        return {key: _finite(value) for key, value in body.items()}
    if isinstance(body, list):
        return [_finite(value) for value in body]
    return body


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> Response:
    return json_response({"error": visible(message)}, status, headers)


# -- reading requests ---------------------------------------------------------------------------


def _jobs_query(request: Request) -> dict[str, Any]:
    """The filters of /api/jobs and /jobs: state, target, q (a key prefix), limit, after."""
    params = request.query_params
    try:
        limit = int(params.get("limit") or views.JOBS_PAGE)
    except ValueError:
        raise views.BadQuery("limit must be a whole number") from None
    try:
        after = parse_cursor(params["after"]) if params.get("after") else None
    except BadCursor:
        raise views.BadQuery("after must be the next_after of the page before") from None
    return {"state": params.get("state") or None, "target": params.get("target") or None,
            "key_prefix": params.get("q") or None, "limit": limit, "after": after}


# -- pages --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Page:
    """One page: its path and template, and its API route (the pattern
    served, how to read its answer, and the address the page's script polls
    for this request). A new page is one of these, its template and its read."""

    path: str
    template: str
    title: str
    api_route: str
    read: Callable[[Dashboard, Request], dict[str, Any]]
    api: Callable[[Request], str]


def _read_masters(dashboard: Dashboard, _request: Request) -> dict[str, Any]:
    if dashboard.store_url is not None:
        return views.shared_masters(dashboard.store_url)  # (it opens the store itself, as status does)
    return dashboard.read(lambda store: views.local_master(dashboard.paths, store))


def _read_jobs(dashboard: Dashboard, request: Request) -> dict[str, Any]:
    query = _jobs_query(request)
    return dashboard.read(lambda store: views.jobs(store, **query))


def _read_job(dashboard: Dashboard, request: Request) -> dict[str, Any]:
    """The page names the job in its query (/job?key=KEY: any key), the API in its path (/api/jobs/KEY)."""
    key = request.path_params.get("key", request.query_params.get("key"))
    if key is None:
        raise views.BadQuery("which job? /job?key=KEY")
    found = dashboard.read(lambda store: views.job(store, key))
    if found is None:
        raise LookupError(f"no job with key {key!r}")
    return found


def _read_failures(dashboard: Dashboard, _request: Request) -> dict[str, Any]:
    return dashboard.read(lambda store: views.failures(store))


def _read_timeline(dashboard: Dashboard, _request: Request) -> dict[str, Any]:
    return dashboard.read(views.timeline)


def _job_api(request: Request) -> str:
    from urllib.parse import quote

    return "/api/jobs/" + quote(request.query_params.get("key", ""), safe="")


PAGES = (
    Page("/", "masters.html", "masters", "/api/masters", _read_masters, lambda _r: "/api/masters"),
    Page("/jobs", "jobs.html", "jobs", "/api/jobs", _read_jobs,
         lambda r: "/api/jobs" + (f"?{r.url.query}" if r.url.query else "")),
    Page("/job", "job.html", "job", "/api/jobs/{key:path}", _read_job, _job_api),
    Page("/failures", "failures.html", "failures", "/api/failures", _read_failures, lambda _r: "/api/failures"),
    Page("/timeline", "timeline.html", "timeline", "/api/timeline", _read_timeline, lambda _r: "/api/timeline"),
)


def _render(dashboard: Dashboard, page: Page, request: Request, data: dict[str, Any] | None, error: str | None,
            status: int) -> Response:
    template = dashboard.environment.get_template(page.template)
    text = template.render(page=page, pages=PAGES, data=data, error=error, query=request.query_params,
                           api=page.api(request), actions=dashboard.token is not None,
                           columns={"jobs": JOB_COLUMNS, "attempts": ATTEMPT_COLUMNS, "masters": MASTER_COLUMNS,
                                    "failures": FAILURE_COLUMNS, "events": EVENT_COLUMNS,
                                    "timeline": TIMELINE_COLUMNS})
    return Response(text, status, media_type="text/html")


def page_endpoint(dashboard: Dashboard, page: Page) -> Callable[[Request], Response]:
    def endpoint(request: Request) -> Response:
        try:
            return _render(dashboard, page, request, page.read(dashboard, request), None, 200)
        except views.BadQuery as exc:
            return _render(dashboard, page, request, None, str(exc), 400)
        except LookupError as exc:
            return _render(dashboard, page, request, None, str(exc), 404)
        except (JournalError, OSError) as exc:  # the store cannot be read now (StoreUnavailable is one)
            return _render(dashboard, page, request, None, str(exc), 503)

    return endpoint


# -- the API ------------------------------------------------------------------------------------


def api_endpoint(dashboard: Dashboard, read: Callable[[Dashboard, Request], dict[str, Any] | None],
                 ) -> Callable[[Request], Response]:
    def endpoint(request: Request) -> Response:
        try:
            body = read(dashboard, request)
        except views.BadQuery as exc:
            return _error(400, str(exc))
        except LookupError as exc:
            return _error(404, str(exc))
        except (JournalError, OSError) as exc:  # the store cannot be read now (StoreUnavailable is one)
            return _error(503, str(exc))
        return json_response(_finite(body))

    return endpoint


def _authorized(dashboard: Dashboard, request: Request) -> Response | None:
    """None if the request carries the token; else the answer: 403 when no
    token is configured (read-only), 401 when it is missing or wrong."""
    if dashboard.token is None:
        return _error(403, "the dashboard is read-only: start it with PHOENIX_DASHBOARD_TOKEN or --token-file "
                           "to allow retry and cancel")
    scheme, _space, given = request.headers.get("authorization", "").partition(" ")
    # latin-1: the header's bytes as sent; compare_digest: no timing tells how much of a guess was right
    if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode("latin-1"), dashboard.token):
        return _error(401, "this action needs the dashboard's token: Authorization: Bearer TOKEN",
                      {"WWW-Authenticate": 'Bearer realm="phoenix dashboard"'})
    return None


def action_endpoint(dashboard: Dashboard, which: str) -> Callable[[Request], Response]:
    def endpoint(request: Request) -> Response:
        response = _act(dashboard, which, request)
        # Every action asked for, done or refused, is a line in the dashboard's log: who changed a job, and
        # who tried a token (a refused one at WARNING).
        event(logging.INFO if response.status_code < 400 else logging.WARNING, "dashboard_action", action=which,
              job=visible(request.path_params["key"]), status=response.status_code,
              result=action_result(response.status_code), client=request.client.host if request.client else "-")
        return response

    return endpoint


def action_result(status: int) -> str:
    """What the audit line says an action did: done; unknown (504: delivered
    to a master that did not answer, it may still happen); failed (503: the
    store or the master could not be reached, nothing was done); refused."""
    if status < 400:
        return "done"
    return {GATEWAY_TIMEOUT: "unknown", 503: "failed"}.get(status, "refused")


def _act(dashboard: Dashboard, which: str, request: Request) -> Response:
    refusal = _authorized(dashboard, request)
    if refusal is not None:
        return refusal
    act = dashboard.retry if which == "retry" else dashboard.cancel
    try:
        return json_response(act(request.path_params["key"]))
    except (RetryRefused, ActionRefused) as exc:
        return _error(409, str(exc))
    except ActionUnknown as exc:
        return _error(GATEWAY_TIMEOUT, str(exc))
    except LookupError as exc:
        return _error(404, str(exc))
    except (JournalError, OSError) as exc:  # the store cannot be written now (StoreUnavailable is one)
        return _error(503, str(exc))


# -- headers, hosts -----------------------------------------------------------------------------


def _host_name(host_header: str) -> str:
    """The host of a Host header without its port ("[::1]:8000" -> "[::1]")."""
    if host_header.startswith("["):
        return host_header.partition("]")[0] + "]"
    return host_header.rpartition(":")[0] if host_header.count(":") == 1 else host_header


class Guard:
    """Adds the security headers to every answer; on a loopback address,
    refuses a request that names another host (a page of another site whose
    name was made to resolve to 127.0.0.1 would otherwise read the API)."""

    def __init__(self, app: ASGIApp, allowed_hosts: frozenset[str] | None) -> None:
        self.app, self.allowed_hosts = app, allowed_hosts

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), *SECURITY_HEADERS]
            await send(message)

        if self.allowed_hosts is not None:
            host = next((value.decode("latin-1") for name, value in scope["headers"] if name == b"host"), "")
            if _host_name(host).lower() not in self.allowed_hosts:
                response = Response("unknown host: use the address the dashboard printed\n", 421,
                                    media_type="text/plain")
                await response(scope, receive, send_with_headers)
                return
        await self.app(scope, receive, send_with_headers)


def create_app(dashboard: Dashboard, allowed_hosts: frozenset[str] | None) -> ASGIApp:
    routes: list[Route | Mount] = [
        # before the job's own route, whose {key:path} would take "KEY/retry" for a key
        Route("/api/jobs/{key:path}/retry", action_endpoint(dashboard, "retry"), methods=["POST"]),
        Route("/api/jobs/{key:path}/cancel", action_endpoint(dashboard, "cancel"), methods=["POST"]),
    ]
    for page in PAGES:
        routes += [Route(page.path, page_endpoint(dashboard, page)),
                   Route(page.api_route, api_endpoint(dashboard, page.read))]
    routes.append(Mount("/static", StaticFiles(directory=HERE / "static"), name="static"))
    return Guard(Starlette(routes=routes), allowed_hosts)


# -- serving ------------------------------------------------------------------------------------


def _is_loopback(address: str) -> bool:
    try:
        return ipaddress.ip_address(address.split("%")[0]).is_loopback
    except ValueError:
        return False


def listen(host: str, port: int) -> tuple[socket.socket, str, frozenset[str] | None]:
    """A listening socket on host:port (port 0: a free one), the URL to print,
    and the host names a request may give (None: any, off loopback)."""
    try:
        family, kind, proto, _name, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    except socket.gaierror as exc:
        raise DashboardError(f"--host {host!r}: {exc.strerror}; give an address such as 127.0.0.1", 2) from None
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(128)
    except OSError as exc:
        sock.close()
        raise DashboardError(f"cannot listen on {host}:{port}: {exc.strerror}; choose another --port", 1) from None
    bound, bound_port = sock.getsockname()[:2]
    shown_host = f"[{bound}]" if family == socket.AF_INET6 else bound
    allowed = LOOPBACK_NAMES | {shown_host} if _is_loopback(bound) else None
    return sock, f"http://{shown_host}:{bound_port}/", allowed


HEADER_TIMEOUT = 5.0  # seconds a client has, from its connection or its request's first byte, to send the headers
KEEP_ALIVE_TIMEOUT = 5  # seconds an idle connection is kept after an answer (uvicorn's timeout_keep_alive)
MAX_HEADER_BYTES = 16 * 1024  # a request's line and headers (h11's max_incomplete_event_size); more: 400, closed


class HeaderDeadline(H11Protocol):
    """uvicorn's h11 protocol with a deadline on a request's headers. uvicorn
    has none: its keep-alive timer starts after an answer and stops at the
    next byte, so a client that sends half a request (slowloris) would hold
    its connection, and a descriptor, for ever."""

    deadline: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm()

    def data_received(self, data: bytes) -> None:
        between_requests = self.cycle is None or self.cycle.response_complete
        if between_requests and self.deadline is None:  # the first byte of the next request
            self._arm()
        super().data_received(data)
        if self.cycle is not None and not self.cycle.response_complete:  # its headers are in: the app answers
            self._disarm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def _arm(self) -> None:
        self._disarm()
        self.deadline = asyncio.get_running_loop().call_later(HEADER_TIMEOUT, self._expire)

    def _disarm(self) -> None:
        if self.deadline is not None:
            self.deadline.cancel()
            self.deadline = None

    def _expire(self) -> None:
        self.deadline = None
        if not self.transport.is_closing():
            self.transport.close()


def serve(dashboard: Dashboard, host: str, port: int, ready: Callable[[str], None]) -> None:
    """Listen, call `ready` with the URL, and serve until TERM or INT."""
    sock, url, allowed = listen(host, port)
    setup_log("info")  # the actions' lines (dashboard_action), on stderr
    config = uvicorn.Config(create_app(dashboard, allowed), log_level="warning", access_log=False, lifespan="off",
                            server_header=False, timeout_graceful_shutdown=2, http=HeaderDeadline,
                            timeout_keep_alive=KEEP_ALIVE_TIMEOUT, h11_max_incomplete_event_size=MAX_HEADER_BYTES)
    for signum in (signal.SIGINT, signal.SIGTERM):
        # uvicorn shuts down on these, then raises the signal again for the handler it found:
        # this one lets the command end as a clean stop (exit 0), not killed by it or a KeyboardInterrupt.
        signal.signal(signum, lambda _signum, _frame: None)
    ready(url)
    uvicorn.Server(config).run(sockets=[sock])

