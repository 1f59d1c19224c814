"""HTTP control API (and the metrics endpoint) on loopback, with asyncio and no framework.

Endpoints (JSON in and out; errors are ``{"error": "...", "code": "..."}`` with a 4xx status)::

    GET    /healthz                       200 {"status": "ok"} while the process runs
    GET    /readyz                        200 when config is loaded and listeners open, else 503
    GET    /regions                       regions x services: addresses, meta, health, drains, feeds,
                                          the state store (up, staleness) and the fleet's instances
    GET    /audit?limit=N                 the audit log (fleet-wide with an etcd store), oldest first
    POST   /regions/{region}/drain        body or query: service, reason, force, actor
    DELETE /regions/{region}/drain        body or query: service, reason, actor
    POST   /regions/{region}/feed         {"service": optional, "values": {"up": bool, "connections": n,
                                           "requests": n, "loadavg": n}}
    POST   /reload                        200 {"ok": true, ...}; 422 {"ok": false, "reasons": [...]}
    GET    /metrics                       Prometheus text exposition

Every mutating call (POST, DELETE) needs ``Authorization: Bearer <token>``. The token comes from
``--control-token-file PATH`` or the environment variable ``FILTERDNS_CONTROL_TOKEN``
(``load_token``). With none configured, mutating calls get 403 and a message saying how to
configure one; a missing or wrong token gets 401. Tokens are compared with
``hmac.compare_digest``.

Status codes: 400 bad JSON/value, 401 token, 403 no token configured, 404 unknown path, region
or service, 405 method, 409 refused by the drain safety rule, 411/413/431 request framing and
size limits, 422 reload rejected, 501 chunked bodies, 503 the change could not be made durable
or the state store is unreachable (nothing was changed).

The server is small on purpose: HTTP/1.1 request line, headers (at most 16 KiB), a
``Content-Length`` body (at most 64 KiB), a timeout for reading each request, at most
``max_connections`` connections at once, one request per connection (``Connection: close``).
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
            500: "Internal Server Error", 501: "Not Implemented", 503: "Service Unavailable"}
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
        try:
            data = json.loads(self.body)
        except (ValueError, UnicodeDecodeError) as e:
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


class HttpServer:
    """Minimal asyncio HTTP/1.1 server: one request per connection, bounded sizes and time."""

    def __init__(self, host: str, port: int, handler: Callable[[Request], Awaitable[Response]],
                 name: str = "http", max_connections: int = 64, read_timeout: float = READ_TIMEOUT):
        self.host, self.port, self.handler, self.name = host, port, handler, name
        self.max_connections, self.read_timeout = max_connections, read_timeout
        self._server: asyncio.AbstractServer | None = None
        self._active = 0
        self._tasks: set[asyncio.Task] = set()

    @property
    def address(self) -> tuple[str, int]:
        """(host, port) actually bound (port 0 picks a free one)."""
        assert self._server is not None, "not started"
        sock = self._server.sockets[0].getsockname()
        return sock[0], sock[1]

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, self.host, self.port, limit=MAX_HEADER)
        log.info("%s listening on %s:%d", self.name, *self.address)

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

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)
        self._active += 1
        try:
            if self._active > self.max_connections:
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
            try:
                resp = await self.handler(req)
            except Exception:
                log.exception("%s: handler failed for %s %s", self.name, req.method, req.path)
                resp = json_response(500, {"error": "internal error (see the server log)", "code": "internal"})
            await self._write(writer, resp, head=req.method == "HEAD")
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            self._active -= 1
            if task is not None:
                self._tasks.discard(task)
            writer.close()
            try:
                await asyncio.wait_for(writer.wait_closed(), 1.0)
            except (Exception, asyncio.CancelledError):
                pass

    async def _read(self, reader: asyncio.StreamReader) -> Request:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except asyncio.LimitOverrunError:
            raise HttpError(431, f"request line and headers exceed {MAX_HEADER} bytes") from None
        except asyncio.IncompleteReadError as e:
            if not e.partial:
                raise
            raise HttpError(400, "incomplete request") from None
        try:
            lines = head.decode("latin-1").split("\r\n")
            method, target, version = lines[0].split(" ")
        except ValueError:
            raise HttpError(400, "malformed request line") from None
        if not version.startswith("HTTP/1."):
            raise HttpError(400, f"unsupported protocol {version!r}")
        headers: dict[str, str] = {}
        for line in lines[1:]:
            if not line:
                continue
            name, sep, value = line.partition(":")
            if not sep or not name or name != name.strip():
                raise HttpError(400, "malformed header line")
            headers[name.lower()] = value.strip()
        if "transfer-encoding" in headers:
            raise HttpError(501, "chunked bodies are not supported; send Content-Length")
        body = b""
        if "content-length" in headers:
            cl = headers["content-length"]
            if not cl.isdigit():
                raise HttpError(400, "bad Content-Length")
            n = int(cl)
            if n > MAX_BODY:
                raise HttpError(413, f"body larger than {MAX_BODY} bytes")
            body = await reader.readexactly(n)
        elif method in ("POST", "PUT", "PATCH"):
            pass  # an empty body is fine for our POSTs
        parts = urlsplit(target)
        return Request(method.upper(), unquote(parts.path), parse_qs(parts.query, keep_blank_values=True),
                       headers, body)

    @staticmethod
    async def _write(writer: asyncio.StreamWriter, resp: Response, head: bool = False) -> None:
        status, headers, body = resp
        lines = [f"HTTP/1.1 {status} {_REASONS.get(status, 'Status')}"]
        headers = {**headers, "Content-Length": str(len(body)), "Connection": "close",
                   "Cache-Control": "no-store"}
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
                 token: str | None = None, render_metrics: Callable[[], bytes] | None = None):
        self.controller = controller
        self.token = token
        self.render_metrics = render_metrics
        self.http = HttpServer(host, port, self.handle, name="control API")
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
            return json_response(200 if ready else 503, {"ready": ready})
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
                    p = _params(req, {"service", "reason", "force", "actor"})
                    r = await c.drain(region, p.get("service"), p.get("reason") or "", actor=self._actor(p),
                                cause="operator", force=p.get("force", False))
                else:
                    p = _params(req, {"service", "reason", "actor"})
                    r = await c.undrain(region, p.get("service"), actor=self._actor(p), cause="operator",
                                  reason=p.get("reason") or "")
                return json_response(200, r.to_json())
            if bad := self._only(req, "POST") or self._authorize(req):
                return bad
            p = _params(req, {"service", "values"})
            r = await c.feed(region, p.get("service"), p.get("values"))
            return json_response(200, r.to_json())
        return json_response(404, {"error": f"no such endpoint {path}", "code": "not_found"})

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
    """``GET /metrics`` (and ``/healthz``) only, for ``--metrics ADDR:PORT``."""

    def __init__(self, host: str = "127.0.0.1", port: int = 9153, render: Callable[[], bytes] | None = None):
        if render is None:
            from filterdns.ops.metrics import render_latest as render
        self.render = render
        self.http = HttpServer(host, port, self.handle, name="metrics")

    async def handle(self, req: Request) -> Response:
        if req.method not in ("GET", "HEAD"):
            return json_response(405, {"error": "only GET"}, {"Allow": "GET"})
        if req.path == "/metrics":
            return _metrics_response(self.render)
        if req.path == "/healthz":
            return json_response(200, {"status": "ok"})
        return json_response(404, {"error": f"no such endpoint {req.path}; try /metrics", "code": "not_found"})
