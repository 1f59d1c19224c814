"""DNSSEC end to end with real validators: delv (BIND) against filterdns with the zone's trust
anchor, and a validating Unbound in front of filterdns (AD=1; SERVFAIL without the key)."""

from __future__ import annotations

import shutil
import socket
import subprocess
import threading
import time

import dns.dnssec
import dns.edns
import dns.flags
import dns.message
import dns.query
import dns.rcode
import dns.rdatatype
import pytest

from conftest import ROOT, free_port, start_server

pytestmark = pytest.mark.e2e

DELV = shutil.which("delv")
UNBOUND = shutil.which("unbound") or ("/usr/sbin/unbound" if shutil.which("/usr/sbin/unbound") else None)


@pytest.fixture(scope="module")
def signed(tmp_path_factory):
    from filterdns.dns import dnssec

    tmp = tmp_path_factory.mktemp("dnssec")
    keys = tmp / "keys"
    key = dnssec.keygen(keys, "example.com")
    sp = start_server(tmp, env={"FILTERDNS_KEYS": str(keys)})
    sp.key = key
    sp.tmp = tmp
    yield sp
    sp.stop()
    assert "Traceback" not in sp.log(), sp.log()


def _anchor(key) -> str:
    import base64

    return f'"{base64.b64encode(key.rdata[4:]).decode()}"'


def delv(port, key, name, rdtype, tmp):
    anchors = tmp / "anchors.conf"
    anchors.write_text(f"trust-anchors {{ example.com. static-key 257 3 13 {_anchor(key)}; }};\n")
    p = subprocess.run([DELV, "@127.0.0.1", "-p", str(port), "-a", str(anchors), "+root=example.com",
                        name, rdtype], capture_output=True, text=True, timeout=60)
    return p.stdout + p.stderr


@pytest.mark.skipif(DELV is None, reason="delv (bind9-dnsutils) not installed; tests/run.sh installs it")
@pytest.mark.parametrize("name,rdtype,expect", [
    ("example.com", "SOA", "; fully validated"),
    ("www.example.com", "A", "; fully validated"),  # CNAME to a routed name
    ("wss-primary.example.com", "A", "; fully validated"),
    ("api.example.com", "AAAA", "; fully validated"),
    ("x.static.example.com", "A", "; fully validated"),  # wildcard
    ("nope.example.com", "A", "; negative response, fully validated"),  # NXDOMAIN, compact
    ("mx1.example.com", "TXT", "; negative response, fully validated"),  # NODATA
    ("_tcp.example.com", "A", "; negative response, fully validated"),  # empty non-terminal
])
def test_delv_validates(signed, name, rdtype, expect):
    out = delv(signed.port, signed.key, name, rdtype, signed.tmp)
    assert expect in out, out


class TamperProxy:
    """A UDP relay that flips one octet of every RRSIG signature in the responses."""

    def __init__(self, upstream: int):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.upstream = upstream
        self.stop = False
        self.tampered = 0
        self.t = threading.Thread(target=self.run, daemon=True)
        self.t.start()

    def run(self):
        while not self.stop:
            try:
                data, src = self.sock.recvfrom(65535)
            except socket.timeout:
                continue
            up = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            up.settimeout(5)
            try:
                up.sendto(data, ("127.0.0.1", self.upstream))
                resp = dns.message.from_wire(up.recv(65535))
            except Exception:  # noqa: BLE001 - the client retries
                continue
            finally:
                up.close()
            for section in (resp.answer, resp.authority):
                for rrset in section:
                    if rrset.rdtype == dns.rdatatype.RRSIG:
                        rds = [rd.replace(signature=bytes([rd.signature[0] ^ 1]) + rd.signature[1:]) for rd in rrset]
                        rrset.clear()
                        for rd in rds:
                            rrset.add(rd)
                        self.tampered += 1
            self.sock.sendto(resp.to_wire(), src)

    def close(self):
        self.stop = True
        self.t.join(5)
        self.sock.close()


@pytest.mark.skipif(DELV is None, reason="delv (bind9-dnsutils) not installed; tests/run.sh installs it")
@pytest.mark.parametrize("name,rdtype", [("wss-primary.example.com", "A"), ("nope.example.com", "A")])
def test_delv_rejects_a_tampered_signature(signed, name, rdtype):
    proxy = TamperProxy(signed.port)
    try:
        out = delv(proxy.port, signed.key, name, rdtype, signed.tmp)
    finally:
        proxy.close()
    assert proxy.tampered
    assert "fully validated" not in out, out
    assert "resolution failed" in out or "no valid" in out or "failed" in out, out


@pytest.mark.skipif(DELV is None, reason="delv (bind9-dnsutils) not installed; tests/run.sh installs it")
def test_delv_rejects_a_wrong_trust_anchor(signed, tmp_path):
    from filterdns.dns import dnssec

    other = dnssec.keygen(tmp_path / "k", "example.com")
    out = delv(signed.port, other, "wss-primary.example.com", "A", tmp_path)
    assert "fully validated" not in out, out


def unbound(tmp, upstream: int, key):
    port = free_port()
    conf = tmp / f"unbound-{port}.conf"
    conf.write_text(f"""server:
    interface: 127.0.0.1
    port: {port}
    do-daemonize: no
    use-syslog: no
    logfile: "{tmp}/unbound-{port}.log"
    username: ""
    chroot: ""
    directory: "{tmp}"
    pidfile: ""
    do-not-query-localhost: no
    do-ip6: no
    module-config: "validator iterator"
    trust-anchor: "example.com. DNSKEY 257 3 13 {_anchor(key).strip('"')}"
    access-control: 127.0.0.0/8 allow
    val-log-level: 2
    verbosity: 1
    num-threads: 1
    so-reuseport: no
stub-zone:
    name: "example.com"
    stub-addr: 127.0.0.1@{upstream}
remote-control:
    control-enable: no
""")
    proc = subprocess.Popen([UNBOUND, "-d", "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"unbound exited: {(tmp / f'unbound-{port}.log').read_text(errors='replace')}")
        try:
            dns.query.udp(dns.message.make_query("localhost.", "A"), "127.0.0.1", port=port, timeout=0.5)
            break
        except Exception:  # noqa: BLE001 - not up yet
            time.sleep(0.1)
    return proc, port


def _stop(proc):
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)


@pytest.mark.skipif(UNBOUND is None, reason="unbound not installed; tests/run.sh installs it")
def test_validating_unbound_sets_ad_and_servfails_without_the_key(signed, tmp_path):
    proc, port = unbound(tmp_path, signed.port, signed.key)
    try:
        for name, rdtype in (("wss-primary.example.com.", "A"), ("api.example.com.", "AAAA"),
                             ("www.example.com.", "A"), ("example.com.", "MX")):
            q = dns.message.make_query(name, rdtype, want_dnssec=True)
            r = dns.query.udp(q, "127.0.0.1", port=port, timeout=20)
            assert r.rcode() == dns.rcode.NOERROR and r.answer, r
            assert r.flags & dns.flags.AD, f"{name} {rdtype}: no AD\n{r}"
        q = dns.message.make_query("nope.example.com.", "A", want_dnssec=True)
        r = dns.query.udp(q, "127.0.0.1", port=port, timeout=20)
        assert r.flags & dns.flags.AD and not r.answer
    finally:
        _stop(proc)
    # the same server without its key (the key directory emptied): the zone is bogus
    unsigned = start_server(tmp_path, env={"FILTERDNS_KEYS": str(tmp_path / "no-keys")})
    proc, port = unbound(tmp_path, unsigned.port, signed.key)
    try:
        q = dns.message.make_query("wss-primary.example.com.", "A", want_dnssec=True)
        r = dns.query.udp(q, "127.0.0.1", port=port, timeout=20)
        assert r.rcode() == dns.rcode.SERVFAIL, r
    finally:
        _stop(proc)
        unsigned.stop()


def test_dnssec_cli_keygen_ds_and_rollover(tmp_path):
    """The README's rollover steps, command by command, against the key directory."""
    import sys

    def run(*a):
        p = subprocess.run([sys.executable, "-m", "filterdns", "dnssec", "--keys", str(tmp_path), *a],
                           capture_output=True, text=True, cwd=ROOT, timeout=60)
        return p.returncode, p.stdout + p.stderr

    rc, out = run("keygen", "example.com", "--ksk")
    assert rc == 0 and " IN DS " in out, out
    ksk1 = int(out.split("tag ")[1].split()[0])
    rc, out = run("keygen", "example.com", "--zsk")
    zsk1 = int(out.split("tag ")[1].split()[0])
    rc, out = run("ds", "example.com")
    assert rc == 0 and out.count(" IN DS ") == 1 and f"DS {ksk1} 13 2 " in out
    # ZSK pre-publish: new ZSK published only, then activated, old one retired, then removed
    rc, out = run("keygen", "example.com", "--zsk", "--publish-only")
    zsk2 = int(out.split("tag ")[1].split()[0])
    rc, out = run("list", "example.com")
    assert f"{zsk2} ZSK     published" in out and f"{zsk1} ZSK     active" in out, out
    assert run("activate", "example.com", str(zsk2))[0] == 0
    assert run("deactivate", "example.com", str(zsk1))[0] == 0
    rc, out = run("remove", "example.com", str(zsk2))
    assert rc == 1 and "still signs" in out
    assert run("remove", "example.com", str(zsk1))[0] == 0
    rc, out = run("list", "example.com")
    assert str(zsk1) not in out and f"{zsk2} ZSK     active" in out
    # KSK double signature: a second KSK signs the DNSKEY RRset beside the first; both DS
    rc, out = run("keygen", "example.com", "--ksk")
    ksk2 = int(out.split("tag ")[1].split()[0])
    rc, out = run("ds", "example.com")
    assert out.count(" IN DS ") == 2
    assert run("deactivate", "example.com", str(ksk1))[0] == 0
    rc, out = run("deactivate", "example.com", str(ksk2))
    assert rc == 1 and "last active" in out
    assert run("remove", "example.com", str(ksk1))[0] == 0
    rc, out = run("ds", "example.com")
    assert out.count(" IN DS ") == 1 and f"DS {ksk2} " in out
