"""deploy/compose/unbound/unbound.conf in front of a real filterdns: /usr/sbin/unbound with the
shipped file (only its addresses rewritten to loopback and free ports) forwards the client's
subnet in ECS, so `dig @unbound +subnet=...` gets the region filterdns routes that subnet to."""

from __future__ import annotations

import re
import shutil
import subprocess
import time

import dns.edns
import dns.message
import dns.query
import pytest

from conftest import ROOT, free_port, start_server, stop_process

pytestmark = pytest.mark.e2e

CONF = ROOT / "deploy" / "compose" / "unbound" / "unbound.conf"
UNBOUND = shutil.which("unbound") or "/usr/sbin/unbound"


def _wss(region):
    from filterdns.config.build import build_state
    st = build_state(ROOT / "zones", ROOT / "chains")
    svc = st.regions[region].services["wss"]
    return set(svc.v4), set(svc.v6)


def loopback_conf(text: str, uport: int, fport: int, workdir) -> str:
    """The shipped config with the compose addresses replaced by loopback ones; nothing else."""
    subs = [
        (r"interface: 0\.0\.0\.0@53", f"interface: 127.0.0.1@{uport}"),
        (r"send-client-subnet: 172\.28\.53\.10", "send-client-subnet: 127.0.0.1"),
        (r"stub-addr: 172\.28\.53\.10@8053", f"stub-addr: 127.0.0.1@{fport}"),
        (r'directory: "/etc/unbound"', f'directory: "{workdir}"'),
    ]
    for pat, repl in subs:
        text, n = re.subn(pat, repl, text)
        assert n == 1, f"{pat} not found exactly once in {CONF}"
    # unbound never queries 127.0.0.1 unless told to: only this test needs that
    return text.replace("server:\n", "server:\n    do-not-query-localhost: no\n", 1)


@pytest.fixture
def resolver(tmp_path):
    if not shutil.which(UNBOUND) and not (ROOT / UNBOUND).exists():
        pytest.fail("unbound is not installed (tests/run.sh installs Debian's unbound)")
    fd = start_server(tmp_path)
    uport = free_port()
    conf = tmp_path / "unbound.conf"
    conf.write_text(loopback_conf(CONF.read_text(), uport, fd.port, tmp_path))
    check = subprocess.run(["unbound-checkconf", str(conf)], capture_output=True, text=True, timeout=30)
    assert check.returncode == 0, check.stdout + check.stderr
    log = open(tmp_path / "unbound.log", "wb")
    proc = subprocess.Popen([UNBOUND, "-d", "-c", str(conf)], stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 30
        while True:
            assert proc.poll() is None, (tmp_path / "unbound.log").read_text()
            try:
                r = dns.query.udp(dns.message.make_query("example.com.", "SOA"), "127.0.0.1", port=uport, timeout=1)
                if r.answer:
                    break
            except Exception:  # noqa: BLE001 - not up yet
                pass
            assert time.monotonic() < deadline, (tmp_path / "unbound.log").read_text()
            time.sleep(0.2)
        yield uport
    finally:
        stop_process(proc)
        fd.stop()


def _ask(port, name, rdtype, subnet, prefix):
    q = dns.message.make_query(name, rdtype, use_edns=0, options=[dns.edns.ECSOption(subnet, prefix)])
    r = dns.query.udp(q, "127.0.0.1", port=port, timeout=5)
    addrs = {rr.address for rrset in r.answer for rr in rrset if hasattr(rr, "address")}
    ecs = [o for o in r.options if isinstance(o, dns.edns.ECSOption)]
    return r, addrs, ecs


def test_dig_through_unbound_routes_by_client_subnet(resolver):
    gb_v4, _ = _wss("eu-west-2")
    jp_v4, jp_v6 = _wss("ap-northeast-1")
    # dig, as an operator would
    out = subprocess.run(["dig", "@127.0.0.1", "-p", str(resolver), "wss-primary.example.com", "A",
                          "+subnet=81.2.69.0/24", "+short", "+tries=2", "+time=5"],
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    assert set(out.stdout.split()) == gb_v4
    # a JP client, through the same Unbound (its subnet cache keeps the GB answer apart)
    r, addrs, ecs = _ask(resolver, "wss-primary.example.com.", "A", "133.242.0.0", 24)
    assert addrs == jp_v4 and r.rcode() == 0
    assert ecs and ecs[0].scopelen > 0, "Unbound passes filterdns' ECS scope back"
    _, addrs6, _ = _ask(resolver, "wss-primary.example.com.", "AAAA", "133.242.0.0", 24)
    assert addrs6 == jp_v6
    # and the GB answer again, from Unbound's cache, still GB
    _, addrs, _ = _ask(resolver, "wss-primary.example.com.", "A", "81.2.69.0", 24)
    assert addrs == gb_v4
