"""A headless Chromium driven over the DevTools protocol, for the operator page's tests.

Chromium is started with ``--remote-debugging-pipe``: it reads protocol commands from fd 3 and
writes replies and events to fd 4, each message JSON ended by a NUL byte. That needs no
WebSocket client (so no new dependency) and no TCP port. Chromium is Debian's ``chromium``
(tests/run.sh installs it); it is kept off the network (``--host-resolver-rules`` resolves no
name, background services are off), so the only page it can load is the one on loopback.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

CHROMIUM_NAMES = ("chromium", "chromium-browser")


def chromium_path() -> str | None:
    for name in CHROMIUM_NAMES:
        p = shutil.which(name)
        if p:
            return p
    return None


class CDPError(Exception):
    pass


class Browser:
    """One headless Chromium; ``open(url)`` gives a ``Page``. Use as a context manager."""

    def __init__(self, profile_dir: Path, width: int = 1400, height: int = 1800, start_deadline: float = 90.0):
        exe = chromium_path()
        if exe is None:
            raise FileNotFoundError("chromium is not installed (tests/run.sh installs Debian's chromium)")
        cmd_r, cmd_w = os.pipe()  # we write commands, Chromium reads them on fd 3
        ev_r, ev_w = os.pipe()    # Chromium writes on fd 4, we read
        args = [exe, "--headless=new", "--no-sandbox", "--disable-gpu", "--remote-debugging-pipe",
                f"--user-data-dir={profile_dir}", "--no-first-run", "--no-default-browser-check",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--disable-extensions", "--disable-default-apps", "--disable-dev-shm-usage",
                "--disable-domain-reliability", "--disable-client-side-phishing-detection",
                "--no-pings", "--mute-audio", "--password-store=basic", "--use-mock-keychain",
                "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE localhost, EXCLUDE 127.0.0.1, EXCLUDE [::1]",
                f"--window-size={width},{height}", "about:blank"]

        def fds():  # in the child: the pipe ends onto fds 3 and 4 (moved high first: no clobbering)
            a, b = os.dup2(cmd_r, 100), os.dup2(ev_w, 101)
            os.dup2(a, 3)
            os.dup2(b, 4)

        self.log_path = profile_dir.parent / "chromium.log"
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=self._log, stderr=subprocess.STDOUT,
                                     preexec_fn=fds, pass_fds=(3, 4))
        os.close(cmd_r)
        os.close(ev_w)
        self._out = os.fdopen(cmd_w, "wb", buffering=0)
        self._in = os.fdopen(ev_r, "rb", buffering=0)
        self._next = 0
        self._replies: dict[int, dict] = {}
        self.events: list[dict] = []
        self._cv = threading.Condition()
        self._closed = False
        threading.Thread(target=self._reader, daemon=True).start()
        self.version = self.call("Browser.getVersion", timeout=start_deadline)

    def _reader(self) -> None:
        buf = b""
        while True:
            try:
                chunk = self._in.read(65536)
            except (OSError, ValueError):
                chunk = b""
            if not chunk:
                with self._cv:
                    self._closed = True
                    self._cv.notify_all()
                return
            buf += chunk
            while b"\0" in buf:
                msg, _, buf = buf.partition(b"\0")
                m = json.loads(msg)
                with self._cv:
                    if "id" in m:
                        self._replies[m["id"]] = m
                    else:
                        self.events.append(m)
                    self._cv.notify_all()

    def call(self, method: str, params: dict | None = None, session: str | None = None,
             timeout: float = 60.0) -> dict:
        with self._cv:
            self._next += 1
            mid = self._next
        msg: dict[str, Any] = {"id": mid, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = session
        self._out.write(json.dumps(msg).encode() + b"\0")
        deadline = time.monotonic() + timeout
        with self._cv:
            while mid not in self._replies:
                if self._closed:
                    raise CDPError(f"chromium exited; log:\n{self.log()}")
                left = deadline - time.monotonic()
                if left <= 0:
                    raise CDPError(f"{method}: no reply in {timeout} s")
                self._cv.wait(left)
            reply = self._replies.pop(mid)
        if "error" in reply:
            raise CDPError(f"{method}: {reply['error']}")
        return reply.get("result", {})

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-4000:]
        except OSError:
            return ""

    def open(self, url: str) -> "Page":
        target = self.call("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = self.call("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        page = Page(self, session)
        for domain in ("Page", "Runtime", "Network", "Log"):
            page.call(f"{domain}.enable")
        page.call("Page.navigate", {"url": url})
        return page

    def close(self) -> None:
        try:
            self.call("Browser.close", timeout=10)
        except CDPError:
            pass
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
        for f in (self._out, self._in, self._log):
            try:
                f.close()
            except OSError:
                pass

    def __enter__(self) -> "Browser":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class Page:
    """One tab, attached in flat mode (commands carry its session id)."""

    def __init__(self, browser: Browser, session: str):
        self.browser, self.session = browser, session

    def call(self, method: str, params: dict | None = None, timeout: float = 60.0) -> dict:
        return self.browser.call(method, params, session=self.session, timeout=timeout)

    def eval(self, expression: str, timeout: float = 60.0) -> Any:
        """The value of a JavaScript expression in the page (returned by value)."""
        r = self.call("Runtime.evaluate", {"expression": expression, "returnByValue": True}, timeout=timeout)
        if "exceptionDetails" in r:
            raise CDPError(f"{expression[:80]}: {r['exceptionDetails'].get('text')}")
        return r["result"].get("value")

    def wait_for(self, expression: str, deadline: float, interval: float = 0.05) -> Any:
        """Poll ``expression`` until it is truthy (its value), or fail at ``deadline`` (monotonic).
        An evaluation that throws (e.g. while the page is still navigating) counts as not yet."""
        last: Any = None
        while time.monotonic() < deadline:
            try:
                last = self.eval(expression)
            except CDPError as e:
                last = e
            else:
                if last:
                    return last
            time.sleep(interval)
        raise AssertionError(f"page never satisfied {expression!r} (last value {last!r})")

    def screenshot(self, path: Path) -> Path:
        data = self.call("Page.captureScreenshot", {"format": "png", "captureBeyondViewport": True})["data"]
        path.write_bytes(base64.b64decode(data))
        return path

    def events(self, method: str) -> list[dict]:
        return [e for e in list(self.browser.events) if e.get("method") == method
                and e.get("sessionId") == self.session]
