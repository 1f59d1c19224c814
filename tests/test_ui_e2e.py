"""The operator page (/ui) in a real headless Chromium against a real filterdns.

The page loads from the control API, shows the regions x services grid, the audit log and the
world map; a drain made through the API shows up within 2 seconds of being acknowledged (the
page refreshes once a second; DEADLINE_SLACK covers a loaded machine: rendering and the fetch
can wait for a core behind other test suites); the map's colour for Great Britain is the
region DNS really answers a British ECS subnet with; the page asks for nothing but its own
origin and logs no error; a screenshot is written to pytest's tmp dir and its path printed.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request

import dns.edns
import pytest

from cdp import Browser, chromium_path
from conftest import free_port, start_server

pytestmark = pytest.mark.e2e

TOKEN = "ui-e2e-token-0123456789abcdef"
GB = [dns.edns.ECSOption("81.2.69.0", 24)]
#: the page's promise: a change shows within 2 s of its acknowledgement (1 s refresh + fetch)
SHOW_WITHIN = 2.0
#: allowance for a loaded 2-core machine (load average 10+): the browser's timer, fetch and
#: render then wait for CPU; the measured figure is printed, so a slow run is visible
DEADLINE_SLACK = 1.0


def _get(port, path, headers=None, method="GET"):
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read()


def _post(port, path, body):
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", method="POST", data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json", "Authorization": f"Bearer {TOKEN}"})
    with urllib.request.urlopen(req, timeout=30) as r:
        return r.status, json.loads(r.read())


@pytest.fixture
def ui_server(tmp_path):
    tok = tmp_path / "token"
    tok.write_text(TOKEN + "\n")
    tok.chmod(0o600)
    cport = free_port()
    sp = start_server(tmp_path, "--control", f"127.0.0.1:{cport}", "--control-token-file", str(tok))
    sp.cport = cport
    yield sp
    sp.stop()


def test_ui_and_countries_are_read_only_and_keep_the_host_guard(ui_server):
    port = ui_server.cport
    status, headers, body = _get(port, "/ui")
    assert status == 200 and headers["Content-Type"].startswith("text/html")
    assert b"<svg id=\"worldmap\"" in body and b'data-cc="GB"' in body and len(body) < 300_000
    csp = headers["Content-Security-Policy"]
    assert "default-src 'none'" in csp and "connect-src 'self'" in csp and "'sha256-" in csp
    assert "frame-ancestors 'none'" in csp and headers["X-Content-Type-Options"] == "nosniff"
    # nothing external: no http(s) URL is loaded by the page (the SVG namespace is a name, not a load)
    text = body.decode()
    assert "src=\"http" not in text and "href=\"http" not in text and "url(http" not in text
    assert _get(port, "/ui", method="HEAD")[0] == 200
    for method in ("POST", "DELETE", "PUT"):
        assert _get(port, "/ui", method=method)[0] == 405
        assert _get(port, "/countries", method=method)[0] == 405
    # DNS rebinding guard: a page on another name cannot read the operator page or its data
    assert _get(port, "/ui", headers={"Host": "evil.example"})[0] == 421
    assert _get(port, "/countries", headers={"Host": "evil.example:80"})[0] == 421
    status, _, body = _get(port, "/countries")
    data = json.loads(body)
    assert status == 200 and data["record"] == "wss-primary.example.com." and data["service"] == "wss"
    assert data["countries"]["GB"]["regions"] == ["eu-west-2"]
    assert [r["name"] for r in data["records"]][:2] == ["wss-primary.example.com.", "wss-backup.example.com."]
    status, _, body = _get(port, "/countries?record=api.example.com")
    assert status == 200 and json.loads(body)["record"] == "api.example.com."
    status, _, body = _get(port, "/countries?record=nope.example.com")
    assert status == 404 and "wss-primary.example.com." in json.loads(body)["error"]
    assert _get(port, "/countries?record=%3Cscript%3E")[0] == 400


def _addr_regions(port):
    regions = json.loads(_get(port, "/regions")[2])["regions"]
    return {a: r for r, v in regions.items() for a in v["services"].get("wss", {}).get("v4", [])}


CELL = 'document.querySelector(\'td.cell[data-region="{r}"][data-service="{s}"]\')'


def test_page_shows_a_drain_within_two_seconds(ui_server, tmp_path, capsys):
    if chromium_path() is None:
        pytest.skip("chromium is not installed (tests/run.sh installs Debian's chromium)")
    base = f"http://127.0.0.1:{ui_server.cport}"
    profile = tmp_path / "chromium-profile"
    profile.mkdir()
    with Browser(profile, start_deadline=120) as browser:
        page = browser.open(base + "/ui")
        # generous: the first load waits for Chromium's renderer on a loaded machine
        page.wait_for(CELL.format(r="eu-west-2", s="wss") + "?.dataset.reason === 'up'", time.monotonic() + 90)
        page.wait_for("document.querySelector('#worldmap [data-cc=\"GB\"]')?.getAttribute('data-region')"
                      " === 'eu-west-2'", time.monotonic() + 60)
        assert page.eval("document.querySelectorAll('td.cell').length") == 11 * 4
        assert page.eval("document.querySelectorAll('#worldmap .c[data-region]').length") > 200

        status, r = _post(ui_server.cport, "/regions/eu-west-2/drain",
                          {"reason": "LB swap INC-4711", "actor": "alice", "for": "2h"})
        acked = time.monotonic()
        assert status == 200 and r["changed"]
        shown = page.wait_for(
            f"(() => {{ const c = {CELL.format(r='eu-west-2', s='wss')};"
            " return c && c.dataset.reason === 'operator_drain' && c.textContent.includes('operator:alice')"
            " && c.textContent.includes('LB swap INC-4711') && c.textContent.includes('until') })()",
            acked + 30, interval=0.02)
        elapsed = time.monotonic() - acked
        with capsys.disabled():  # printed in every run, not only with -s
            print(f"\n[ui] drain acknowledged -> shown on the page: {elapsed:.3f} s")
        assert shown and elapsed <= SHOW_WITHIN + DEADLINE_SLACK, f"took {elapsed:.2f} s"
        # the same refresh brought the audit entry and the other services of the region
        page.wait_for("document.querySelector('#audit tbody tr')?.textContent.includes('LB swap INC-4711')",
                      time.monotonic() + 10)
        assert page.eval(CELL.format(r="eu-west-2", s="api") + ".dataset.serving") == "false"
        assert page.eval(CELL.format(r="eu-west-1", s="wss") + ".dataset.reason") == "up"

        # the map moved Great Britain off eu-west-2, to the region DNS now answers GB clients with
        gb_region = page.wait_for(
            "(() => { const r = document.querySelector('#worldmap [data-cc=\"GB\"]').getAttribute('data-region');"
            " return r !== 'eu-west-2' && r })()", time.monotonic() + 10)
        answered = {rr.address for rrset in ui_server.query("wss-primary.example.com.", "A", use_edns=0,
                                                             options=GB).answer for rr in rrset}
        by_addr = _addr_regions(ui_server.cport)
        assert {by_addr[a] for a in answered} == {gb_region}
        assert page.eval("document.querySelector('#legend [data-region=\"eu-west-2\"]').className") == "drained"

        shot = page.screenshot(tmp_path / "operator-page.png")
        with capsys.disabled():
            print(f"[ui] screenshot: {shot}")
        assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 20_000

        # it loaded nothing but its own origin, and logged no error (CSP violations are errors)
        urls = {e["params"]["request"]["url"] for e in page.events("Network.requestWillBeSent")}
        assert urls and all(u.startswith(base + "/") for u in urls), sorted(urls)
        assert not page.events("Runtime.exceptionThrown")
        errors = [e["params"]["entry"] for e in page.events("Log.entryAdded")
                  if e["params"]["entry"].get("level") == "error"]
        assert not errors, errors


def test_page_says_when_the_server_is_gone(ui_server, tmp_path):
    if chromium_path() is None:
        pytest.skip("chromium is not installed (tests/run.sh installs Debian's chromium)")
    profile = tmp_path / "chromium-profile"
    profile.mkdir()
    with Browser(profile, start_deadline=120) as browser:
        page = browser.open(f"http://127.0.0.1:{ui_server.cport}/ui")
        # one full update (grid, audit and map) first, so the page has a time to say it is from
        page.wait_for("(document.getElementById('updated')?.textContent || 'never') !== 'never'",
                      time.monotonic() + 90)
        ui_server.stop()
        text = page.wait_for("document.getElementById('error').classList.contains('on') && "
                             "document.getElementById('error').textContent", time.monotonic() + 30)
        assert text.startswith("Not current (last full update")
        # the last known state stays on screen
        assert page.eval(CELL.format(r="eu-west-2", s="wss") + ".dataset.reason") == "up"
