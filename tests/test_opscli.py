"""Operator CLI against a real control API on loopback: output, --json, exact exit codes."""

from __future__ import annotations

import argparse
import asyncio
import json
import threading
from types import MappingProxyType, SimpleNamespace

import pytest

from filterdns.ops import client as opscli
from filterdns.ops.api import ControlServer
from filterdns.routing.inventory import Inventory, Region, Service
from filterdns.ops.controller import Controller

pytestmark = pytest.mark.e2e

TOKEN = "cli-token-0123456789abcdef"


def make_state():
    regions = {n: Region(n, services=MappingProxyType({"wss": Service("wss", v4=("192.0.2.1", "192.0.2.2"))}))
               for n in ("fra", "ams")}
    return SimpleNamespace(generation=3, regions=MappingProxyType(regions), records={})


class Server:
    """A control API in a background thread with its own event loop."""

    def __init__(self, tmp_path, reload_result=(True, [])):
        self.inventory = Inventory()
        state = make_state()

        async def reload(cause="api"):
            return reload_result

        self.controller = Controller(lambda: state, self.inventory, reload, tmp_path)
        self.loop = asyncio.new_event_loop()
        self.server = ControlServer(self.controller, "127.0.0.1", 0, token=TOKEN)
        started = threading.Event()

        def run():
            asyncio.set_event_loop(self.loop)
            self.loop.run_until_complete(self.server.start())
            started.set()
            self.loop.run_forever()

        self.thread = threading.Thread(target=run, daemon=True)
        self.thread.start()
        assert started.wait(5)
        host, port = self.server.address
        self.control = f"{host}:{port}"

    def call(self, coro):
        """Run a controller coroutine on the server's loop and wait for it."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(10)

    def close(self):
        asyncio.run_coroutine_threadsafe(self.server.stop(), self.loop).result(5)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        self.loop.close()


@pytest.fixture
def server(tmp_path):
    s = Server(tmp_path / "state")
    yield s
    s.close()


@pytest.fixture
def token_file(tmp_path):
    f = tmp_path / "token"
    f.write_text(TOKEN + "\n")
    f.chmod(0o600)
    return str(f)


def parse(argv):
    p = argparse.ArgumentParser(prog="filterdns")
    opscli.add_subparsers(p.add_subparsers(dest="command", required=True))
    return p.parse_args(argv)


def run(argv):
    args = parse(argv)
    return args.func(args)


def test_status_table(server, capsys):
    server.call(server.controller.drain("fra", "wss", reason="LB swap", actor="operator:alice"))
    server.call(server.controller.feed("ams", "wss", {"loadavg": 0.25}))
    assert run(["status", "--control", server.control]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert lines[1].split()[:7] == ["REGION", "SERVICE", "ADDRS", "HEALTH", "DNS", "LOAD", "WHY"]
    fra = next(line for line in lines if line.startswith("fra"))
    assert "drained by operator:alice" in fra and "LB swap" in fra and " NO " in fra and " 2 " in fra
    ams = next(line for line in lines if line.startswith("ams"))
    assert "loadavg=0.25" in ams and "yes" in ams


def test_status_json(server, capsys):
    assert run(["status", "--control", server.control, "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["config_generation"] == 3 and set(data["regions"]) == {"fra", "ams"}


def test_drain_refused_then_forced_then_undrain(server, token_file, capsys):
    c = ["--control", server.control, "--token-file", token_file]
    assert run(["drain", "fra", "--service", "wss", "--reason", "maint", *c]) == 0
    assert "drained region fra service wss; DNS now: wss: 1 of 2 region(s) serving" in capsys.readouterr().out
    d = server.inventory.status.drains[("fra", "wss")]
    assert d.reason == "maint" and d.actor.startswith("operator:")
    assert run(["drain", "ams", "--reason", "x", *c]) == 1
    err = capsys.readouterr().err
    assert "is the last region of wss that is serving and up" in err and "HTTP 409" in err
    assert ("ams", None) not in server.inventory.status.drains
    assert run(["drain", "ams", "--reason", "x", "--force", *c]) == 0
    assert run(["undrain", "ams", *c]) == 0
    assert "undrained region ams" in capsys.readouterr().out
    assert run(["undrain", "ams", *c, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["changed"] is False


@pytest.mark.parametrize("argv,code,message", [
    (["drain", "fra"], 2, "--reason is required"),
    (["drain", "nowhere", "--reason", "x"], 2, "unknown region 'nowhere'"),
    (["drain", "fra", "--service", "smtp", "--reason", "x"], 2, "has no service 'smtp'"),
    (["feed", "fra"], 2, "at least one of"),
    (["feed", "fra", "--up", "maybe"], 2, "--up must be true or false"),
    (["feed", "fra", "--loadavg", "-1"], 2, "loadavg must be a number >= 0"),
], ids=["no-reason", "unknown-region", "unknown-service", "feed-nothing", "feed-bad-up", "feed-negative"])
def test_usage_errors(server, token_file, capsys, argv, code, message):
    assert run([*argv, "--control", server.control, "--token-file", token_file]) == code
    assert message in capsys.readouterr().err
    assert server.inventory.status.generation == 0


def test_wrong_or_missing_token(server, tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("FILTERDNS_CONTROL_TOKEN", raising=False)
    bad = tmp_path / "bad"
    bad.write_text("not-the-token-at-all\n")
    assert run(["drain", "fra", "--reason", "x", "--control", server.control, "--token-file", str(bad)]) == 1
    assert "HTTP 401" in capsys.readouterr().err
    assert run(["drain", "fra", "--reason", "x", "--control", server.control]) == 2
    assert "no control token" in capsys.readouterr().err
    monkeypatch.setenv("FILTERDNS_CONTROL_TOKEN", TOKEN)
    assert run(["drain", "fra", "--reason", "x", "--control", server.control]) == 0
    assert server.inventory.status.drained("fra", "wss") is not None


def test_feed(server, token_file, capsys):
    assert run(["feed", "fra", "--service", "wss", "--up", "false", "--loadavg", "1.5",
                "--control", server.control, "--token-file", token_file]) == 0
    assert dict(server.inventory.status.feeds[("fra", "wss")]) == {"up": False, "loadavg": 1.5}
    assert '"loadavg": 1.5' in capsys.readouterr().out


def test_reload_ok_and_rejected(tmp_path, token_file, capsys):
    s = Server(tmp_path / "ok")
    try:
        assert run(["reload", "--control", s.control, "--token-file", token_file]) == 0
        assert "now serving generation 3" in capsys.readouterr().out
    finally:
        s.close()
    s = Server(tmp_path / "bad", reload_result=(False, ["chains/edge.yaml:4:3: bad filter", "zones/x: no SOA"]))
    try:
        assert run(["reload", "--control", s.control, "--token-file", token_file]) == 1
        err = capsys.readouterr().err
        assert "new configuration rejected" in err
        assert "  chains/edge.yaml:4:3: bad filter" in err and "  zones/x: no SOA" in err
    finally:
        s.close()


def test_unreachable_server(token_file, capsys):
    import socket
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    assert run(["status", "--control", f"127.0.0.1:{port}"]) == 1
    assert "cannot reach the control API" in capsys.readouterr().err
    assert run(["status", "--control", "nonsense"]) == 2


def test_help_text_for_every_command(capsys):
    for cmd in ("status", "drain", "undrain", "reload", "feed"):
        with pytest.raises(SystemExit) as e:
            parse([cmd, "--help"])
        assert e.value.code == 0
        assert "--control" in capsys.readouterr().out
