"""HTTP control API (and the metrics endpoint) on loopback, with asyncio and no framework.

Endpoints (JSON in and out; errors are ``{"error": "...", "code": "..."}`` with a 4xx status)::

    GET    /healthz                       200 {"status": "ok"} while the process runs
    GET    /readyz                        200 when config is loaded and listeners open, else 503
    GET    /regions                       regions x services: addresses, meta, health, drains, feeds,
                                          the state store (up, staleness) and the fleet's instances
    GET    /audit?limit=N                 the audit log (fleet-wide with an etcd store), oldest first
    GET    /status                        the raw runtime snapshot (drains, health, feeds, expiries)
    GET    /countries?record=NAME         where each country's clients are sent now, for one dynamic
                                          record (default the first): {"countries": {"FR": {"name",
                                          "regions", "random", "fallback"}}, "records": [...]}
    GET    /ui                            the operator page (HTML; reads /regions, /audit, /countries)
    POST   /regions/{region}/drain        body or query: service, reason, force, actor, for (90, "2h")
    DELETE /regions/{region}/drain        body or query: service, reason, actor
    POST   /regions/{region}/feed         {"service": optional, "values": {"up": bool or 1/0,
                                           "connections": n, "requests": n, "loadavg": n},
                                           "ttl": optional duration: the values expire after it}
    DELETE /regions/{region}/feed         {"service": optional, "keys": optional list (default all),
                                           "reason", "actor"}: clear feed values (audited)
    POST   /reload                        200 {"ok": true, ...}; 422 {"ok": false, "reasons": [...]}
    GET    /metrics                       Prometheus text exposition

The read-only GETs need no token (like /metrics, they are for whoever can reach the loopback
address and passes the Host check). Every mutating call (POST, DELETE) needs ``Authorization: Bearer <token>``. The token comes from
``--control-token-file PATH`` or the environment variable ``FILTERDNS_CONTROL_TOKEN``
(``load_token``). With none configured, mutating calls get 403 and a message saying how to
configure one; a missing or wrong token gets 401. Tokens are compared with
``hmac.compare_digest``.

Status codes: 400 bad JSON/value or malformed request, 401 token, 403 no token configured, 404
unknown path, region or service, 405 method, 408 request not received in time, 409 refused by
the drain safety rule, 413/431 size limits, 421 Host not ours (DNS rebinding guard), 422 reload
rejected, 501 chunked bodies, 503 every connection slot busy answering, or the change could not
be made durable or the state store is unreachable (nothing was changed).

The server is small on purpose, and strict (``HttpServer`` lists what it survives): HTTP/1.1
request line, headers (at most 16 KiB), a ``Content-Length`` body (at most 64 KiB, JSON at most
32 levels deep), 10 s to send the whole request, 256 connections at once (idle ones give way to
new ones), one request per connection (``Connection: close``), a Host allow-list (loopback
names, the bound address, ``--http-allow-host`` names). It was kept rather than replaced by an
HTTP library: every rule above would still be ours to write (libraries accept any Host and
nest JSON without limit), and nine JSON endpoints and one page do not need a framework on the DNS
server.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import os
import re
from pathlib import Path
from typing import Any, Awaitable, Callable
from urllib.parse import parse_qs, unquote, urlsplit

from filterdns.ops.controller import BadRequest, Controller, OpError
from filterdns.ops.store import StoreError

log = logging.getLogger("filterdns.ops.api")

DEFAULT_CONTROL = "127.0.0.1:9154"
TOKEN_ENV = "FILTERDNS_CONTROL_TOKEN"
MAX_HEADER = 16 * 1024
MAX_BODY = 64 * 1024
READ_TIMEOUT = 10.0

_REASONS = {200: "OK", 400: "Bad Request", 401: "Unauthorized", 403: "Forbidden", 404: "Not Found",
            405: "Method Not Allowed", 408: "Request Timeout", 409: "Conflict", 411: "Length Required",
            413: "Payload Too Large", 422: "Unprocessable Entity", 431: "Request Header Fields Too Large",
            421: "Misdirected Request", 500: "Internal Server Error", 501: "Not Implemented",
            503: "Service Unavailable"}
_REGION_PATH = re.compile(r"^/regions/([^/]+)/(drain|feed)$")


class TokenError(Exception):
    """The configured token file cannot be used."""


def load_token(token_file: str | os.PathLike | None = None, env: dict | None = None) -> str | None:
    """The control token: from ``token_file`` if given, else ``$FILTERDNS_CONTROL_TOKEN``, else None.

    The file's first line is the token (surrounding whitespace stripped); an empty file or a
    token shorter than 16 characters is an error, so a typo does not leave the API open.
    """
    env = os.environ if env is None else env
    if token_file:
        path = Path(token_file)
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as e:
            raise TokenError(f"cannot read control token file {path}: {e.strerror or e}") from None
        token = text.strip().splitlines()[0].strip() if text.strip() else ""
        where = str(path)
        try:
            if path.stat().st_mode & 0o077:
                log.warning("control token file %s is readable by group or others (chmod 600 it)", path)
        except OSError:
            pass
    else:
        token = (env.get(TOKEN_ENV) or "").strip()
        where = f"${TOKEN_ENV}"
        if not token:
            return None
    if len(token) < 16:
        raise TokenError(f"control token from {where} is too short ({len(token)} characters, need >= 16)")
    return token


class Request:
    """One parsed HTTP request."""

    def __init__(self, method: str, path: str, query: dict[str, list[str]], headers: dict[str, str], body: bytes):
        self.method, self.path, self.query, self.headers, self.body = method, path, query, headers, body

    def json(self) -> dict:
        """The body as a JSON object ({} when empty); BadRequest otherwise."""
        if not self.body.strip():
            return {}
        if not json_depth_ok(self.body):
            raise BadRequest(f"body nests arrays/objects deeper than {MAX_JSON_DEPTH}")
        try:
            data = json.loads(self.body)
        except (ValueError, UnicodeDecodeError, RecursionError) as e:
            raise BadRequest(f"body is not valid JSON: {e}") from None
        if not isinstance(data, dict):
            raise BadRequest("body must be a JSON object")
        return data


Response = tuple[int, dict[str, str], bytes]


def json_response(status: int, obj: Any, headers: dict[str, str] | None = None) -> Response:
    body = (json.dumps(obj, indent=1, sort_keys=True, default=str) + "\n").encode()
    return status, {"Content-Type": "application/json", **(headers or {})}, body


class HttpError(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status, self.message = status, message


#: RFC 9110 token characters (method and header names)
_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_CTL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")
_TARGET = re.compile(r"/[\x21-\x7e]*")
_DIGITS = re.compile(r"[0-9]{1,10}")
#: headers that may appear once: a second copy is a smuggling or confusion attempt
_SINGLE = frozenset({"host", "content-length", "transfer-encoding", "authorization", "content-type"})
MAX_JSON_DEPTH = 32
LOOPBACK_NAMES = frozenset({"localhost", "localhost.", "127.0.0.1", "::1", "[::1]"})


def json_depth_ok(body: bytes, limit: int = MAX_JSON_DEPTH) -> bool:
    """True when no array/object in ``body`` nests deeper than ``limit`` (strings skipped), so
    json.loads cannot recurse without bound."""
    depth = 0
    in_str = esc = False
    for c in body:
        if in_str:
            if esc:
                esc = False
            elif c == 0x5C:
                esc = True
            elif c == 0x22:
                in_str = False
        elif c == 0x22:
            in_str = True
        elif c in (0x5B, 0x7B):
            depth += 1
            if depth > limit:
                return False
        elif c in (0x5D, 0x7D):
            depth -= 1
    return True


def exposure_warning(host: str) -> str | None:
    """The warning for binding an HTTP endpoint to a non-loopback address, or None."""
    import ipaddress

    try:
        loopback = ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        loopback = host in LOOPBACK_NAMES
    if loopback:
        return None
    return (f"listening on {host}, which is not a loopback address: anyone who can reach it can "
            "read the status pages (mutating calls still need the token); prefer 127.0.0.1 and a "
            "proxy or firewall in front")


class HttpServer:
    """Minimal asyncio HTTP/1.1 server: one request per connection, bounded sizes and time.

    Abuse it survives: connections that never send a request (each has ``read_timeout`` for
    its whole request, and when all ``max_connections`` slots are taken a new connection
    displaces the oldest one still waiting for its request, so idle connections cannot lock
    legitimate calls out); malformed or ambiguous framing (strict request line and header
    syntax, Content-Length only ASCII digits and only once, no obs-fold, no control
    characters, no Transfer-Encoding); DNS rebinding (the Host header must name a loopback
    address, the bound address, any IP literal when bound to a wildcard, or a name in
    ``allow_hosts``; else 421); deeply nested JSON (depth limit before parsing). A bad request
    gets its 4xx and is not logged; a handler that fails is logged with its traceback once per
    kind of failure and then only counted.
    """

    def __init__(self, host: str, port: int, handler: Callable[[Request], Awaitable[Response]],
                 name: str = "http", max_connections: int = 256, read_timeout: float = READ_TIMEOUT,
                 allow_hosts: tuple[str, ...] = ()):
        self.host, self.port, self.handler, self.name = host, port, handler, name
        self.max_connections, self.read_timeout = max_connections, read_timeout
        self.allow_hosts = frozenset(h.lower().rstrip(".") for h in allow_hosts)
        self._server: asyncio.AbstractServer | None = None
        self._tasks: set[asyncio.Task] = set()
        self._waiting: dict[asyncio.Task, float] = {}  # connections still reading their request
        self._busy = 0  # connections being answered
        self._failures: set[str] = set()
        self.evicted = 0
        self.failed = 0

    @property
    def address(self) -> tuple[str, int]:
        """(host, port) actually bound (port 0 picks a free one)."""
        assert self._server is not None, "not started"
        sock = self._server.sockets[0].getsockname()
        return sock[0], sock[1]

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, self.host, self.port, limit=MAX_HEADER)
        log.debug("%s listening on %s:%d", self.name, *self.address)
        warning = exposure_warning(self.host)
        if warning:
            log.warning("%s: %s", self.name, warning)

    async def stop(self) -> None:
        if self._server is None:
            return
        self._server.close()
        for t in list(self._tasks):
            t.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._server.wait_closed()
        self._server = None

    def _admit(self, task: asyncio.Task) -> bool:
        """Take a slot for a new connection, displacing the oldest one that has not sent its
        request yet when all are taken; False when every slot is answering a request."""
        if len(self._waiting) + self._busy >= self.max_connections:
            if not self._waiting:
                return False
            oldest = min(self._waiting, key=self._waiting.get)
            del self._waiting[oldest]
            oldest.cancel()
            self.evicted += 1
        self._waiting[task] = asyncio.get_running_loop().time()
        return True

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        self._tasks.add(task)
        busy = False
        try:
            if not self._admit(task):
                await self._write(writer, json_response(503, {"error": "too many connections"}))
                return
            try:
                req = await asyncio.wait_for(self._read(reader), self.read_timeout)
            except HttpError as e:
                await self._write(writer, json_response(e.status, {"error": e.message, "code": "http"}))
                return
            except asyncio.TimeoutError:
                await self._write(writer, json_response(408, {"error": "request not received in time"}))
                return
            except (asyncio.IncompleteReadError, ConnectionError):
                return
            if self._waiting.pop(task, None) is None:
                return  # displaced while its last bytes arrived
            busy = True
            self._busy += 1
            try:
                resp = await self.handler(req)
            except Exception as e:  # noqa: BLE001 - answer 500, log the first of each kind
                self._failed(req, e)
                resp = json_response(500, {"error": "internal error (see the server log)", "code": "internal"})
            await self._write(writer, resp, head=req.method == "HEAD")
        except (ConnectionError, asyncio.CancelledError, asyncio.TimeoutError):
            pass
        finally:
            self._waiting.pop(task, None)
            if busy:
                self._busy -= 1
            self._tasks.discard(task)
            writer.close()
            try:
                await asyncio.wait_for(writer.wait_closed(), 1.0)
            except (Exception, asyncio.CancelledError):  # noqa: BLE001
                pass

    def _failed(self, req: Request, e: Exception) -> None:
        self.failed += 1
        key = f"{req.method} {req.path}: {type(e).__name__}"
        if key in self._failures:
            if self.failed % 100 == 0:
                log.error("%s: %d handler failures so far (latest: %s %s, %s)", self.name,
                          self.failed, req.method, req.path, type(e).__name__)
            return
        if len(self._failures) < 100:
            self._failures.add(key)
        log.error("%s: handler failed for %s %s", self.name, req.method, req.path, exc_info=e)

    def _host_ok(self, value: str) -> bool:
        """DNS rebinding guard: may a request naming this Host reach us?"""
        import ipaddress

        v = value.strip().lower()
        if v.startswith("["):
            host = v[1:].partition("]")[0]
        else:
            host = v.rpartition(":")[0] if v.count(":") == 1 else v
        host = host.rstrip(".")
        if not host:
            return False
        if host in LOOPBACK_NAMES or host in self.allow_hosts or host == self.host.lower():
            return True
        try:
            ip = ipaddress.ip_address(host)
        except ValueError:
            return False
        # an IP literal cannot be rebound; a loopback one is always us, another only when bound
        # to every address (we cannot know which of ours the client used)
        return ip.is_loopback or self.host in ("0.0.0.0", "::", "")

    async def _read(self, reader: asyncio.StreamReader) -> Request:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except asyncio.LimitOverrunError:
            raise HttpError(431, f"request line and headers exceed {MAX_HEADER} bytes") from None
        except asyncio.IncompleteReadError as e:
            if not e.partial:
                raise
            raise HttpError(400, "incomplete request") from None
        lines = head[:-4].decode("latin-1").split("\r\n")
        parts = lines[0].split(" ")
        if len(parts) != 3 or not _TOKEN.fullmatch(parts[0]) or not _TARGET.fullmatch(parts[1]):
            raise HttpError(400, "malformed request line")
        method, target, version = parts
        if version not in ("HTTP/1.1", "HTTP/1.0"):
            raise HttpError(400, f"unsupported protocol {version[:20]!r}")
        headers: dict[str, str] = {}
        for line in lines[1:]:
            name, sep, value = line.partition(":")
            if not sep or not _TOKEN.fullmatch(name):
                raise HttpError(400, "malformed header line (or obsolete line folding)")
            if _CTL.search(value):
                raise HttpError(400, f"control character in header {name[:40]}")
            key = name.lower()
            if key in headers and key in _SINGLE:
                raise HttpError(400, f"duplicate {name} header")
            headers[key] = value.strip(" \t")
        if "transfer-encoding" in headers:
            raise HttpError(501, "chunked bodies are not supported; send Content-Length")
        host = headers.get("host")
        if host is None:
            if version == "HTTP/1.1":
                raise HttpError(400, "Host header required")
        elif not self._host_ok(host):
            raise HttpError(421, "Host header does not name this server (DNS rebinding guard); "
                                 "use the address it listens on, or add the name with --http-allow-host")
        body = b""
        if "content-length" in headers:
            cl = headers["content-length"]
            if not _DIGITS.fullmatch(cl):
                raise HttpError(400, "Content-Length must be ASCII digits")
            n = int(cl)
            if n > MAX_BODY:
                raise HttpError(413, f"body larger than {MAX_BODY} bytes")
            body = await reader.readexactly(n)
        parts = urlsplit(target)
        return Request(method.upper(), unquote(parts.path), parse_qs(parts.query, keep_blank_values=True),
                       headers, body)

    @staticmethod
    async def _write(writer: asyncio.StreamWriter, resp: Response, head: bool = False) -> None:
        status, headers, body = resp
        lines = [f"HTTP/1.1 {status} {_REASONS.get(status, 'Status')}"]
        headers = {**headers, "Content-Length": str(len(body)), "Connection": "close",
                   "Cache-Control": "no-store", "X-Content-Type-Options": "nosniff"}
        lines += [f"{k}: {v}" for k, v in headers.items()]
        writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + (b"" if head else body))
        await asyncio.wait_for(writer.drain(), READ_TIMEOUT)


def _metrics_response(render: Callable[[], bytes]) -> Response:
    return 200, {"Content-Type": "text/plain; version=0.0.4; charset=utf-8"}, render()


_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


def _params(req: Request, allowed: set[str]) -> dict[str, Any]:
    """Query-string and JSON-body parameters (the body wins); unknown names are an error."""
    out: dict[str, Any] = {}
    for name, values in req.query.items():
        out[name] = values[-1]
    if "force" in out:
        v = str(out["force"]).lower()
        if v not in _TRUE | _FALSE:
            raise BadRequest(f"force must be true or false, got {out['force']!r}")
        out["force"] = v in _TRUE
    out.update(req.json())
    unknown = sorted(set(out) - allowed)
    if unknown:
        raise BadRequest(f"unknown parameter(s) {', '.join(unknown)}; allowed: {', '.join(sorted(allowed))}")
    return out


class _Endpoint:
    """An HTTP endpoint served by ``self.http``: its address, start and stop."""

    http: HttpServer

    @property
    def address(self) -> tuple[str, int]:
        return self.http.address

    async def start(self) -> None:
        await self.http.start()

    async def stop(self) -> None:
        await self.http.stop()


class ControlServer(_Endpoint):
    """The control API bound to a ``Controller``. ``await start()`` / ``await stop()``."""

    def __init__(self, controller: Controller, host: str = "127.0.0.1", port: int = 9154,
                 token: str | None = None, render_metrics: Callable[[], bytes] | None = None,
                 allow_hosts: tuple[str, ...] = (),
                 propagated: Callable[[int], Awaitable[bool]] | None = None):
        self.controller = controller
        # waits until DNS answers by a given inventory generation, so that a drain is
        # acknowledged only once no worker still sends clients to the region
        self.propagated = propagated
        self.token = token
        self.render_metrics = render_metrics
        self.http = HttpServer(host, port, self.handle, name="control API", allow_hosts=allow_hosts)
        if token is None:
            log.warning("no control token configured: mutating control API calls are refused "
                        "(set --control-token-file or $%s)", TOKEN_ENV)

    def _authorize(self, req: Request) -> Response | None:
        if self.token is None:
            return json_response(403, {
                "error": "no control token is configured, so changes are refused; start the server with "
                         f"--control-token-file PATH or the environment variable {TOKEN_ENV}",
                "code": "no_token"})
        auth = req.headers.get("authorization", "")
        scheme, _, given = auth.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), self.token.encode()):
            return json_response(401, {"error": "missing or wrong bearer token", "code": "unauthorized"},
                                 {"WWW-Authenticate": 'Bearer realm="filterdns"'})
        return None

    async def handle(self, req: Request) -> Response:
        try:
            page = self._pages.get(req.path)
            if page is not None:  # the operator page and the view only it reads (read-only GETs)
                return self._only(req, "GET") or await page(req)
            return await self._route(req)
        except OpError as e:
            return json_response(e.status, e.to_json())

    async def _route(self, req: Request) -> Response:
        path, method = req.path, req.method
        c = self.controller
        if path == "/healthz":
            return self._only(req, "GET") or json_response(200, {"status": "ok"})
        if path == "/readyz":
            if bad := self._only(req, "GET"):
                return bad
            ready = bool(c.ready())
            # DNS keeps answering while the state store is away (from the last known state),
            # so readiness does not depend on it; the body says how current that state is
            store = c.store.describe()
            return json_response(200 if ready else 503, {
                "ready": ready, "state_store": {"kind": store["kind"], "up": store["up"],
                                                "stale_seconds": store["stale_seconds"]}})
        if path == "/metrics" and self.render_metrics is not None:
            return self._only(req, "GET") or _metrics_response(self.render_metrics)
        if path == "/regions":
            return self._only(req, "GET") or json_response(200, c.regions())
        if path == "/audit":
            # the audit log: this server's file, or the whole fleet's with --state etcd://...
            if bad := self._only(req, "GET"):
                return bad
            raw = (req.query.get("limit") or ["100"])[-1]
            if not raw.isascii() or not raw.isdigit() or not 1 <= int(raw) <= 10000:
                raise BadRequest(f"limit must be an integer from 1 to 10000, got {raw!r}")
            try:
                entries = await c.store.read_audit(int(raw))
            except StoreError as e:
                return json_response(503, {"error": e.message, "code": "state_store"})
            return json_response(200, {"entries": entries, "store": c.store.describe()})
        if path == "/status":
            # the raw runtime snapshot (drains, health, feeds): what `filterdns explain --live` runs on
            from filterdns.routing.inventory import dump_status
            return self._only(req, "GET") or json_response(200, dump_status(c.inventory.status))
        if path == "/reload":
            if bad := self._only(req, "POST") or self._authorize(req):
                return bad
            params = _params(req, {"actor"})
            ok, reasons = await c.reload(actor=self._actor(params))
            gen = getattr(c.get_state(), "generation", None)
            if ok:
                return json_response(200, {"ok": True, "generation": gen, "reasons": reasons})
            return json_response(422, {"ok": False, "error": "new configuration rejected; still serving "
                                       f"generation {gen}", "code": "reload_rejected", "reasons": reasons})
        m = _REGION_PATH.match(path)
        if m:
            region, what = m.groups()
            if what == "drain":
                if bad := self._only(req, "POST", "DELETE") or self._authorize(req):
                    return bad
                if method == "POST":
                    p = _params(req, {"service", "reason", "force", "actor", "for"})
                    r = await c.drain(region, p.get("service"), p.get("reason") or "", actor=self._actor(p),
                                      cause="operator", force=p.get("force", False), duration=p.get("for"))
                else:
                    p = _params(req, {"service", "reason", "actor"})
                    r = await c.undrain(region, p.get("service"), actor=self._actor(p), cause="operator",
                                  reason=p.get("reason") or "")
                await self._settle()
                return json_response(200, r.to_json())
            if bad := self._only(req, "POST", "DELETE") or self._authorize(req):
                return bad
            if method == "DELETE":
                p = _params(req, {"service", "keys", "reason", "actor"})
                r = await c.clear_feed(region, p.get("service"), p.get("keys"), actor=self._actor(p),
                                       reason=p.get("reason") or "")
                await self._settle()
                return json_response(200, r.to_json())
            p = _params(req, {"service", "values", "ttl"})
            r = await c.feed(region, p.get("service"), p.get("values"), ttl=p.get("ttl"))
            await self._settle()
            return json_response(200, r.to_json())
        return json_response(404, {"error": f"no such endpoint {path}", "code": "not_found"})

    @property
    def _pages(self) -> dict[str, Callable[[Request], Awaitable[Response]]]:
        return {"/ui": self._ui, "/ui/": self._ui, "/countries": self._countries}

    @staticmethod
    async def _ui(req: Request) -> Response:
        from filterdns.ops import ui  # here, not at the top: the CLI client imports this module

        body, headers = ui.page()
        return 200, headers, body

    async def _countries(self, req: Request) -> Response:
        """``GET /countries``: the country map of one record (``filterdns.routing.country_routes``),
        computed in a thread (a few tens of ms once per status snapshot, then cached) so the
        event loop that answers DNS is not held."""
        from filterdns.ops import ui

        c = self.controller
        raw = req.query.get("record")
        record = raw[-1].strip() if raw else None
        if record is not None and not re.fullmatch(r"[A-Za-z0-9_.*-]{1,255}", record):
            raise BadRequest("record must be a domain name")
        state, status = c.get_state(), c.inventory.status
        try:
            view = await asyncio.to_thread(ui.countries_view, state, status, record)
        except KeyError:
            known = ", ".join(r["name"] for r in ui.records_view(state)) or "none"
            return json_response(404, {"error": f"{record} is not a dynamic record (known: {known})",
                                       "code": "not_found"})
        return json_response(200, view)

    async def _settle(self) -> None:
        if self.propagated is None:
            return
        gen = self.controller.inventory.status.generation
        if not await self.propagated(gen):
            log.warning("inventory generation %d not confirmed by every worker within 2 s "
                        "(a stuck worker is restarted with the current state)", gen)

    @staticmethod
    def _actor(params: dict) -> str:
        name = params.get("actor")
        if name is None:
            return "operator"
        if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9_.@-]{1,48}", name):
            raise BadRequest("actor must be 1-48 characters of letters, digits, _ . @ -")
        return f"operator:{name}"

    @staticmethod
    def _only(req: Request, *methods: str) -> Response | None:
        if req.method in methods or (req.method == "HEAD" and "GET" in methods):
            return None
        return json_response(405, {"error": f"{req.method} not allowed on {req.path}", "code": "method"},
                             {"Allow": ", ".join(methods)})


class MetricsServer(_Endpoint):
    """``GET /metrics``, ``/healthz`` and ``/readyz`` only, for ``--metrics ADDR:PORT``: read-only,
    so it can listen where Prometheus and a kubelet's probes reach it while the control API
    (drains, reload) stays on loopback."""

    def __init__(self, host: str = "127.0.0.1", port: int = 9153, render: Callable[[], bytes] | None = None,
                 allow_hosts: tuple[str, ...] = (), ready: Callable[[], bool] | None = None):
        if render is None:
            from filterdns.ops.metrics import render_latest as render
        self.render = render
        self.ready = ready
        self.http = HttpServer(host, port, self.handle, name="metrics", allow_hosts=allow_hosts)

    async def handle(self, req: Request) -> Response:
        if req.method not in ("GET", "HEAD"):
            return json_response(405, {"error": "only GET"}, {"Allow": "GET"})
        if req.path == "/metrics":
            return _metrics_response(self.render)
        if req.path == "/healthz":
            return json_response(200, {"status": "ok"})
        if req.path == "/readyz" and self.ready is not None:
            ready = bool(self.ready())
            return json_response(200 if ready else 503, {"ready": ready})
        return json_response(404, {"error": f"no such endpoint {req.path}; try /metrics", "code": "not_found"})
