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

from conftest import ROOT, free_port, start_server, stop_process

pytestmark = pytest.mark.e2e

DELV = shutil.which("delv")
VERIFY = shutil.which("dnssec-verify")
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


def unbound(tmp, upstream: int, key, extra: str = ""):
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
{extra}stub-zone:
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
        stop_process(proc)
    # the same server without its key (the key directory emptied): the zone is bogus
    unsigned = start_server(tmp_path, env={"FILTERDNS_KEYS": str(tmp_path / "no-keys")})
    proc, port = unbound(tmp_path, unsigned.port, signed.key)
    try:
        q = dns.message.make_query("wss-primary.example.com.", "A", want_dnssec=True)
        r = dns.query.udp(q, "127.0.0.1", port=port, timeout=20)
        assert r.rcode() == dns.rcode.SERVFAIL, r
    finally:
        stop_process(proc)
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


# ------------------------------------------------------------------------------ delegations
#
# A signed parent (example.com) delegates three children to one child server on port 53 of a
# loopback address of its own (the glue): secure (signed, its DS in the parent), insecure
# (unsigned, no DS: the referral's NSEC proves it) and bogus (signed, but the parent's DS is of
# another key). A validating Unbound that knows only the parent follows the referrals.

CHILD_ZONE = """$ORIGIN {zone}.
$TTL 300
@    IN SOA ns.child.example.com. hostmaster.example.com. 1 3600 600 604800 30
@    IN NS  ns.child.example.com.
www  IN A   192.0.2.7
"""


def _loopback_53():
    """A random 127.x.y.z whose port 53 is free (or None: not allowed to bind it)."""
    import random

    for _ in range(20):
        addr = f"127.{random.randrange(60, 250)}.{random.randrange(1, 250)}.{random.randrange(2, 250)}"
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            s.bind((addr, 53))
            return addr
        except PermissionError:
            return None
        except OSError:
            continue
        finally:
            s.close()
    return None


@pytest.fixture(scope="module")
def delegations(tmp_path_factory):
    from filterdns.dns import dnssec

    tmp = tmp_path_factory.mktemp("delegations")
    addr = _loopback_53()
    if addr is None:
        pytest.skip("cannot bind port 53 on a loopback address (the child server's glue needs it)")
    child_keys = tmp / "child-keys"
    secure = dnssec.keygen(child_keys, "secure.example.com")
    dnssec.keygen(child_keys, "bogus.example.com")
    other = dnssec.keygen(tmp / "unused", "bogus.example.com")
    czones = tmp / "child-zones"
    czones.mkdir()
    for z in ("secure", "insecure", "bogus"):
        (czones / f"{z}.example.com.zone").write_text(CHILD_ZONE.format(zone=f"{z}.example.com"))
    (tmp / "child-chains").mkdir()
    pzones = tmp / "zones"
    pzones.mkdir()
    ds = {z: dnssec.ds_text(f"{z}.example.com", k).split(None, 1)[1] for z, k in (("secure", secure), ("bogus", other))}
    (pzones / "example.com.zone").write_text(
        (ROOT / "zones" / "example.com.zone").read_text()
        + "".join(f"{z:15s} IN NS ns.child.example.com.\n" for z in ("secure", "insecure", "bogus"))
        + f"secure          {ds['secure']}\nbogus           {ds['bogus']}\n"
        f"ns.child        IN A {addr}\n")
    pkeys = tmp / "keys"
    key = dnssec.keygen(pkeys, "example.com")
    parent = start_server(tmp, zones=pzones, env={"FILTERDNS_KEYS": str(pkeys)})
    child = None
    try:
        child = _start_child(tmp, czones, child_keys, addr)
        parent.key = key
        parent.tmp = tmp
        parent.child = child
        yield parent
    finally:
        parent.stop()
        if child is not None:
            child.stop()
    assert "Traceback" not in parent.log(), parent.log()


def _start_child(tmp, zones, keys, addr):
    import os
    import sys

    from conftest import ServerProcess

    log_path = tmp / "child.log"
    args = [sys.executable, "-m", "filterdns", "serve", "--listen", f"{addr}:53", "--zones", str(zones),
            "--chains", str(tmp / "child-chains"), "--state-dir", str(tmp / "child-state"),
            "--metrics", "off", "--control", "off", "--workers", "1"]
    env = dict(os.environ, FILTERDNS_KEYS=str(keys), PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.Popen(args, stdout=open(log_path, "wb"), stderr=subprocess.STDOUT, env=env, cwd=str(tmp))
    sp = ServerProcess(53, proc, log_path, args)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"child server exited {proc.returncode}:\n{sp.log()}")
        try:
            dns.query.udp(dns.message.make_query("secure.example.com.", "SOA"), addr, port=53, timeout=0.3)
            return sp
        except Exception:  # noqa: BLE001 - not up yet
            time.sleep(0.05)
    sp.stop()
    raise RuntimeError(f"child server did not answer:\n{sp.log()}")


@pytest.mark.skipif(DELV is None, reason="delv (bind9-dnsutils) not installed; tests/run.sh installs it")
@pytest.mark.parametrize("name,expect", [
    ("secure.example.com", "; fully validated"),  # the DS RRset, answered by the parent
    ("insecure.example.com", "; negative response, fully validated"),  # NSEC: NS, no DS
])
def test_delv_validates_ds_at_the_cut(delegations, name, expect):
    out = delv(delegations.port, delegations.key, name, "DS", delegations.tmp)
    assert expect in out, out


@pytest.mark.skipif(UNBOUND is None, reason="unbound not installed; tests/run.sh installs it")
def test_validating_unbound_follows_secure_and_insecure_referrals(delegations, tmp_path):
    proc, port = unbound(tmp_path, delegations.port, delegations.key)
    try:
        def ask(name):
            q = dns.message.make_query(name, "A", want_dnssec=True)
            return dns.query.udp(q, "127.0.0.1", port=port, timeout=30)

        r = ask("www.secure.example.com.")  # DS from the referral -> the child's DNSKEY -> AD
        assert r.rcode() == dns.rcode.NOERROR and r.answer and r.flags & dns.flags.AD, r
        r = ask("www.insecure.example.com.")  # proven insecure: an answer, without AD
        assert r.rcode() == dns.rcode.NOERROR and r.answer and not r.flags & dns.flags.AD, r
        r = ask("www.bogus.example.com.")  # the parent's DS matches no key of the child
        assert r.rcode() == dns.rcode.SERVFAIL, r
    finally:
        stop_process(proc)


# --------------------------------------------------------------------- dnssec-verify


def _export(zones, keys, zone="example.com"):
    import sys

    p = subprocess.run([sys.executable, "-m", "filterdns", "dnssec", "--zones", str(zones), "--chains",
                        str(ROOT / "chains"), "--keys", str(keys), "export", zone],
                       capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert p.returncode == 0, p.stderr
    return p.stdout


def _verify(text, tmp, *flags, zone="example.com"):
    f = tmp / f"export-{len(list(tmp.iterdir()))}.zone"
    f.write_text(text)
    p = subprocess.run([VERIFY, *flags, "-o", zone, str(f)], capture_output=True, text=True, timeout=120)
    return p.returncode, p.stdout + p.stderr


@pytest.mark.skipif(VERIFY is None, reason="dnssec-verify (bind9-utils) not installed; tests/run.sh installs it")
def test_dnssec_verify_checks_the_exported_signed_zone(tmp_path):
    """Every RRSIG the server makes for the static data (and the routed answers of an unknown
    client), the DNSKEY RRset and the delegations (a DS for secure.example.com, none for corp),
    exported and checked by BIND's dnssec-verify; a flipped signature fails it."""
    import base64

    from filterdns.dns import dnssec
    from test_dnssec import delegating_zones

    zones, _ = delegating_zones(tmp_path)
    csk = tmp_path / "csk"
    dnssec.keygen(csk, "example.com")
    text = _export(zones, csk)
    assert " IN DS " in text and "secure.example.com. 3600 IN RRSIG DS " in text
    assert "wss-primary.example.com. 20 IN RRSIG A " in text and "IN NSEC " in text
    rc, out = _verify(text, tmp_path, "-z")  # a CSK signs everything (-z: KSKs sign all)
    assert rc == 0 and "Zone fully signed" in out, out
    # KSK + ZSK: the DNSKEY RRset by the KSK, the rest by the ZSK; no -z needed
    split = tmp_path / "split"
    dnssec.keygen(split, "example.com", 257)
    dnssec.keygen(split, "example.com", 256)
    rc, out = _verify(_export(zones, split), tmp_path)
    assert rc == 0 and "ZSKs: 1 active" in out, out
    # negative control: one flipped octet in one signature
    lines = text.splitlines()
    i = next(n for n, ln in enumerate(lines) if " IN RRSIG MX " in ln)
    parts = lines[i].split()
    sig = base64.b64decode("".join(parts[parts.index("example.com.", 4) + 1:]))
    lines[i] = " ".join(parts[:parts.index("example.com.", 4) + 1]) + " " + \
        base64.b64encode(bytes([sig[0] ^ 1]) + sig[1:]).decode()
    rc, out = _verify("\n".join(lines) + "\n", tmp_path, "-z")
    assert rc != 0, out
