"""DNSSEC online signing, checked in-process with dnspython's validator (dns.dnssec.validate)
against the bundled example config (static, wildcard, CNAME and routed names)."""

from __future__ import annotations

import base64
import random
import struct

import dns.dnssec
import dns.edns
import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdatatype
import dns.rrset
import pytest

from conftest import ROOT

pytestmark = pytest.mark.unit

ORIGIN = dns.name.from_text("example.com.")


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    from filterdns.dns import dnssec

    d = tmp_path_factory.mktemp("keys")
    dnssec.keygen(d, "example.com")
    return d


def _responder(keys_dir, monkeypatch, zones=ROOT / "zones"):
    from filterdns.config.build import build_state
    from filterdns.config.state import StateHolder
    from filterdns.dns.responder import Responder
    from filterdns.routing.inventory import Inventory

    monkeypatch.setenv("FILTERDNS_KEYS", str(keys_dir or "/nonexistent-filterdns-keys"))
    state = build_state(zones, ROOT / "chains")
    return Responder(StateHolder(state), Inventory(), rng=random.Random(7))


@pytest.fixture
def signed(keys, monkeypatch):
    return _responder(keys, monkeypatch)


def ask(r, name, rdtype="A", do=True, subnet=None, payload=1232, src=("127.0.0.1", 5353), limit=0):
    opts = [dns.edns.ECSOption(*subnet.split("/")[:1], int(subnet.split("/")[1]))] if subnet else []
    q = dns.message.make_query(name, rdtype, use_edns=0, want_dnssec=do, options=opts, payload=payload)
    q.id = 4242
    raw = r.respond(q.to_wire(), src, "udp", limit)
    return dns.message.from_wire(raw), raw


def dnskeys(r):
    m, _ = ask(r, "example.com.", "DNSKEY")
    rrset = m.find_rrset(m.answer, ORIGIN, dns.rdataclass.IN, dns.rdatatype.DNSKEY)
    sig = m.find_rrset(m.answer, ORIGIN, dns.rdataclass.IN, dns.rdatatype.RRSIG, dns.rdatatype.DNSKEY)
    dns.dnssec.validate(rrset, sig, {ORIGIN: rrset})
    return {ORIGIN: rrset}


def validate_section(section, keyring):
    """Every RRset but RRSIGs has a valid RRSIG; returns the number of RRsets checked."""
    n = 0
    for rrset in section:
        if rrset.rdtype == dns.rdatatype.RRSIG:
            continue
        sig = [s for s in section if s.rdtype == dns.rdatatype.RRSIG and s.name == rrset.name
               and s.covers == rrset.rdtype]
        assert sig, f"no RRSIG for {rrset.name} {dns.rdatatype.to_text(rrset.rdtype)}"
        dns.dnssec.validate(rrset, sig[0], keyring)
        n += 1
    return n


def test_key_tag_and_ds_match_dnspython(keys):
    from filterdns.dns import dnssec

    k = dnssec.zone_keys(keys, "example.com")[0]
    rd = dns.rdata.from_wire(dns.rdataclass.IN, dns.rdatatype.DNSKEY, k.rdata, 0, len(k.rdata))
    assert k.tag == dns.dnssec.key_id(rd)
    ds = dns.dnssec.make_ds(ORIGIN, rd, "SHA256")
    assert dnssec.ds_text("example.com", k).split()[-1] == ds.digest.hex().upper()
    assert dnssec.ds_text("example.com", k).split()[3:6] == [str(k.tag), "13", "2"]


def test_imports_bind_format_key_files(tmp_path):
    """The files dnssec-keygen writes (comment header, TTL, timing metadata) load as they are."""
    from cryptography.hazmat.primitives.asymmetric import ec

    from filterdns.dns import dnssec

    priv = ec.generate_private_key(ec.SECP256R1())
    n = priv.public_key().public_numbers()
    pub = n.x.to_bytes(32, "big") + n.y.to_bytes(32, "big")
    rdata = struct.pack("!HBB", 257, 3, 13) + pub
    tag = dnssec.key_tag(rdata)
    d = tmp_path / "example.com"
    d.mkdir()
    b = base64.b64encode(pub).decode()
    (d / f"Kexample.com.+013+{tag:05d}.key").write_text(
        f"; This is a key-signing key, keyid {tag}, for example.com.\n"
        "; Created: 20250101000000 (Wed Jan  1 00:00:00 2025)\n"
        "; Publish: 20250101000000 (Wed Jan  1 00:00:00 2025)\n"
        "; Activate: 20250101000000 (Wed Jan  1 00:00:00 2025)\n"
        f"example.com. 3600 IN DNSKEY 257 3 13 {b[:44]} {b[44:]}\n")
    scalar = priv.private_numbers().private_value.to_bytes(32, "big")
    (d / f"Kexample.com.+013+{tag:05d}.private").write_text(
        "Private-key-format: v1.3\nAlgorithm: 13 (ECDSAP256SHA256)\n"
        f"PrivateKey: {base64.b64encode(scalar).decode()}\n"
        "Created: 20250101000000\nPublish: 20250101000000\nActivate: 20250101000000\n")
    (k,) = dnssec.zone_keys(tmp_path, "example.com.")
    assert (k.tag, k.flags, k.active, k.published) == (tag, 257, True, True)
    (d / f"Kexample.com.+013+{tag:05d}.private").write_text(
        "Private-key-format: v1.3\nAlgorithm: 13 (ECDSAP256SHA256)\n"
        f"PrivateKey: {base64.b64encode(bytes(32 - len(scalar[:1])) + b'x').decode()}\n")
    with pytest.raises(ValueError, match="does not match"):
        dnssec.zone_keys(tmp_path, "example.com.")


@pytest.mark.parametrize("name,rdtype", [
    ("example.com.", "SOA"), ("example.com.", "NS"), ("example.com.", "MX"),
    ("ns1.example.com.", "AAAA"), ("www.example.com.", "A"), ("x.static.example.com.", "A"),
    ("_xmpp-client._tcp.example.com.", "SRV"), ("status.example.com.", "A"),
])
def test_static_answers_validate(signed, name, rdtype):
    keyring = dnskeys(signed)
    m, _ = ask(signed, name, rdtype)
    assert m.rcode() == dns.rcode.NOERROR and m.answer
    assert not m.flags & dns.flags.AD
    assert m.ednsflags & dns.flags.DO
    assert validate_section(m.answer, keyring) >= 1


@pytest.mark.parametrize("subnet", ["81.2.69.0/24", "133.242.0.0/24", "8.8.8.0/24", "2a02:c7f::/48"])
@pytest.mark.parametrize("rdtype", ["A", "AAAA"])
def test_routed_answers_validate_per_subnet_with_the_same_scope(signed, keys, monkeypatch, subnet, rdtype):
    keyring = dnskeys(signed)
    m, _ = ask(signed, "wss-primary.example.com.", rdtype, subnet=subnet)
    plain = _responder(None, monkeypatch)
    u, _ = ask(plain, "wss-primary.example.com.", rdtype, subnet=subnet, do=False)
    assert m.rcode() == dns.rcode.NOERROR and m.answer
    assert validate_section(m.answer, keyring) == 1
    scope = [o.scopelen for o in m.options if o.otype == dns.edns.ECS]
    assert scope == [o.scopelen for o in u.options if o.otype == dns.edns.ECS]
    assert {str(r) for s in m.answer if s.rdtype != dns.rdatatype.RRSIG for r in s} == \
        {str(r) for s in u.answer for r in s}


def _nsec(m):
    (nsec,) = [s for s in m.authority if s.rdtype == dns.rdatatype.NSEC]
    return nsec


def test_nxdomain_is_compact_denial(signed):
    keyring = dnskeys(signed)
    m, _ = ask(signed, "nope.example.com.", "A")
    assert m.rcode() == dns.rcode.NOERROR and not m.answer  # RFC 9824: NODATA, not NXDOMAIN
    assert validate_section(m.authority, keyring) == 2  # SOA and NSEC
    nsec = _nsec(m)
    assert nsec.name == dns.name.from_text("nope.example.com.")
    assert nsec[0].next == dns.name.from_text("\\000.nope.example.com.")
    types = {t for w, bits in nsec[0].windows for i, b in enumerate(bits) for j in range(8)
             if b & (0x80 >> j) for t in [w * 256 + i * 8 + j]}
    assert types == {dns.rdatatype.RRSIG, dns.rdatatype.NSEC, 128}


@pytest.mark.parametrize("name,rdtype,expect", [
    ("mx1.example.com.", "TXT", {"A", "RRSIG", "NSEC"}),
    ("example.com.", "A", {"SOA", "NS", "MX", "TXT", "CAA", "DNSKEY", "RRSIG", "NSEC"}),
    ("_tcp.example.com.", "A", {"RRSIG", "NSEC"}),
    ("wss-primary.example.com.", "TXT", {"A", "AAAA", "RRSIG", "NSEC"}),
])
def test_nodata_has_a_minimal_nsec(signed, name, rdtype, expect):
    keyring = dnskeys(signed)
    m, _ = ask(signed, name, rdtype)
    assert m.rcode() == dns.rcode.NOERROR and not m.answer
    assert validate_section(m.authority, keyring) == 2
    nsec = _nsec(m)
    types = {dns.rdatatype.to_text(w * 256 + i * 8 + j) for w, bits in nsec[0].windows
             for i, b in enumerate(bits) for j in range(8) if b & (0x80 >> j)}
    assert types == expect


QUERIES = [("example.com.", "SOA", None), ("www.example.com.", "A", None), ("nope.example.com.", "A", None),
           ("mx1.example.com.", "TXT", None), ("wss-primary.example.com.", "A", "81.2.69.0/24"),
           ("api.example.com.", "AAAA", "133.242.0.0/24"), ("x.static.example.com.", "A", None),
           ("example.com.", "MX", None), ("sub.nope.example.com.", "TXT", "2a02:c7f::/48")]


def test_answers_without_do_are_unchanged_byte_for_byte(keys, monkeypatch):
    signed = _responder(keys, monkeypatch)
    plain = _responder(None, monkeypatch)
    assert signed.holder.state.dnssec and not plain.holder.state.dnssec
    for edns in (True, False):
        for name, rdtype, subnet in QUERIES:
            opts = [dns.edns.ECSOption(subnet.split("/")[0], int(subnet.split("/")[1]))] if subnet and edns else []
            q = dns.message.make_query(name, rdtype, use_edns=0 if edns else False, options=opts)
            q.id = 7
            w = q.to_wire()
            for _ in range(2):  # the cold path and the cached one
                assert signed.respond(w, ("127.0.0.1", 53), "udp", 0) == plain.respond(w, ("127.0.0.1", 53), "udp", 0)


def test_routed_signatures_are_cached(signed):
    ask(signed, "wss-primary.example.com.", "A", subnet="81.2.69.0/24")
    signer = next(iter(signed.signers.values()))
    misses = signer.misses
    for _ in range(5):
        ask(signed, "wss-primary.example.com.", "A", subnet="81.2.69.0/24")
        ask(signed, "wss-primary.example.com.", "A", subnet="81.2.69.0/25")
    assert signer.misses == misses  # no new signature: the signed answer (or its RRSIG) is reused
    signed.signed.clear()  # without the rendered answers, the signature cache answers
    hits = signer.hits
    ask(signed, "wss-primary.example.com.", "A", subnet="81.2.69.0/24")
    assert signer.misses == misses and signer.hits > hits


def test_signature_window_and_resigning(signed):
    from filterdns.dns import dnssec

    ask(signed, "example.com.", "SOA")  # signers are made with the generation's first query
    signer = next(iter(signed.signers.values()))
    now = 2_000_000_000
    (sig,) = signer.sign(b"\x01a\x07example\x03com\x00", 1, 60, [b"\xc0\x00\x02\x01"], now)
    exp, inc = struct.unpack_from("!II", sig, 8)
    assert inc == now - 3600
    assert now + dnssec.VALIDITY * 0.9 <= exp <= now + dnssec.VALIDITY
    assert signer.sign(b"\x01a\x07example\x03com\x00", 1, 60, [b"\xc0\x00\x02\x01"], now + 60) == [sig]
    later = now + dnssec.VALIDITY // 4 + 1  # a cached signature is re-made long before it expires
    (again,) = signer.sign(b"\x01a\x07example\x03com\x00", 1, 60, [b"\xc0\x00\x02\x01"], later)
    assert struct.unpack_from("!I", again, 12)[0] == later - 3600


def test_truncation_counts_the_signatures(signed):
    """The apex NS RRset with its signature fits 512 octets unsigned and signed only without
    the (optional) addresses; the MX answer with signatures on MX and on the address records
    drops the additional section first; a client limit below the signed answer gets TC."""
    m, raw = ask(signed, "example.com.", "NS", payload=1232)
    full = len(raw)
    assert m.additional and len(raw) > 512
    m, raw = ask(signed, "example.com.", "NS", payload=512)
    assert len(raw) <= 512 and not m.flags & dns.flags.TC
    assert [s.rdtype for s in m.answer] == [dns.rdatatype.NS, dns.rdatatype.RRSIG]
    assert len(m.additional) < 6 and full > len(raw)
    m, raw = ask(signed, "example.com.", "DNSKEY", payload=512, limit=150)
    assert m.flags & dns.flags.TC and not m.answer and len(raw) <= 150


# ------------------------------------------------------------------------------ delegations
#
# The bundled zone delegates corp.example.com without DS (an insecure child); the test zone adds
# secure.example.com with the DS of a child key (a secure one).


def delegating_zones(tmp_path, child_key=None):
    """The bundled zones plus a secure delegation ``secure.example.com`` (NS, glue, DS)."""
    from filterdns.dns import dnssec

    if child_key is None:
        child_key = dnssec.keygen(tmp_path / "child-keys", "secure.example.com")
    d = tmp_path / "zones"
    d.mkdir(exist_ok=True)
    ds = dnssec.ds_text("secure.example.com", child_key).split(None, 1)[1]
    (d / "example.com.zone").write_text(
        (ROOT / "zones" / "example.com.zone").read_text()
        + f"secure          IN NS   ns.secure.example.com.\nsecure          3600 {ds}\n"
        "ns.secure       IN A    192.0.2.98\n")
    return d, child_key


def _types(nsec_rrset):
    return {dns.rdatatype.to_text(w * 256 + i * 8 + j) for w, bits in nsec_rrset[0].windows
            for i, b in enumerate(bits) for j in range(8) if b & (0x80 >> j)}


@pytest.fixture
def delegating(keys, monkeypatch, tmp_path):
    zones, child = delegating_zones(tmp_path)
    r = _responder(keys, monkeypatch, zones)
    r.child_key = child
    return r


def test_referral_to_an_insecure_child_proves_no_ds(delegating):
    keyring = dnskeys(delegating)
    m, _ = ask(delegating, "host.corp.example.com.", "A")
    assert m.rcode() == dns.rcode.NOERROR and not m.answer and not m.flags & dns.flags.AA
    kinds = {(str(s.name), dns.rdatatype.to_text(s.rdtype)) for s in m.authority}
    assert kinds == {("corp.example.com.", "NS"), ("corp.example.com.", "NSEC"), ("corp.example.com.", "RRSIG")}
    nsec = _nsec(m)
    assert _types(nsec) == {"NS", "RRSIG", "NSEC"}  # not DS: the child is unsigned
    sig = [s for s in m.authority if s.rdtype == dns.rdatatype.RRSIG]
    assert [s.covers for s in sig] == [dns.rdatatype.NSEC]  # NS of a delegation is never signed
    dns.dnssec.validate(nsec, sig[0], keyring)
    assert m.additional  # glue, unsigned
    assert not [s for s in m.additional if s.rdtype == dns.rdatatype.RRSIG]


def test_referral_to_a_secure_child_carries_its_signed_ds(delegating):
    keyring = dnskeys(delegating)
    m, _ = ask(delegating, "www.secure.example.com.", "A")
    assert m.rcode() == dns.rcode.NOERROR and not m.answer and not m.flags & dns.flags.AA
    assert not [s for s in m.authority if s.rdtype == dns.rdatatype.NSEC]
    ds = m.find_rrset(m.authority, dns.name.from_text("secure.example.com."), dns.rdataclass.IN, dns.rdatatype.DS)
    sig = m.find_rrset(m.authority, ds.name, dns.rdataclass.IN, dns.rdatatype.RRSIG, dns.rdatatype.DS)
    dns.dnssec.validate(ds, sig, keyring)
    k = delegating.child_key
    child = dns.rdata.from_wire(dns.rdataclass.IN, dns.rdatatype.DNSKEY, k.rdata, 0, len(k.rdata))
    assert ds[0] == dns.dnssec.make_ds("secure.example.com.", child, "SHA256")
    ns = [s for s in m.authority if s.rdtype == dns.rdatatype.NS]
    assert ns and not [s for s in m.authority if s.rdtype == dns.rdatatype.RRSIG and s.covers == dns.rdatatype.NS]


@pytest.mark.parametrize("name,positive", [("secure.example.com.", True), ("corp.example.com.", False)])
def test_ds_at_the_cut_is_answered_by_the_parent_signed(delegating, name, positive):
    keyring = dnskeys(delegating)
    m, _ = ask(delegating, name, "DS")
    assert m.rcode() == dns.rcode.NOERROR and m.flags & dns.flags.AA
    if positive:
        assert validate_section(m.answer, keyring) == 1
        assert m.answer[0].rdtype == dns.rdatatype.DS
    else:
        assert not m.answer
        assert validate_section(m.authority, keyring) == 2  # SOA and NSEC
        assert _types(_nsec(m)) == {"NS", "RRSIG", "NSEC"}


def test_referrals_without_do_are_unchanged(keys, monkeypatch, tmp_path):
    zones, _ = delegating_zones(tmp_path)
    signed = _responder(keys, monkeypatch, zones)
    plain = _responder(None, monkeypatch, zones)
    for name, rdtype in (("www.secure.example.com.", "A"), ("host.corp.example.com.", "A"),
                         ("secure.example.com.", "DS"), ("corp.example.com.", "DS")):
        q = dns.message.make_query(name, rdtype, use_edns=0)
        w = q.to_wire()
        a = signed.respond(w, ("127.0.0.1", 53), "udp", 0)
        assert a == plain.respond(w, ("127.0.0.1", 53), "udp", 0)
        m = dns.message.from_wire(a)
        assert not [s for s in m.authority if s.rdtype in (dns.rdatatype.DS, dns.rdatatype.RRSIG,
                                                          dns.rdatatype.NSEC)]


# ------------------------------------------------------------------- the fast path is a cache


def _blank_signatures(m):
    """The message with each RRSIG's times and signature replaced (ECDSA signatures are
    randomised, expirations jittered): flags, rcode, options (ECS scope) and the sections, whose
    RRsets compare as sets (a shuffling chain orders them at random)."""
    for section in (m.answer, m.authority, m.additional):
        for rrset in section:
            if rrset.rdtype == dns.rdatatype.RRSIG:
                rds = [rd.replace(expiration=0, inception=0, signature=b"\0") for rd in rrset]
                rrset.clear()
                for rd in rds:
                    rrset.add(rd)
    return m.flags, m.rcode(), m.ednsflags, m.options, m.answer, m.authority, m.additional


@pytest.mark.parametrize("name,rdtype,subnet", [
    ("wss-primary.example.com.", "A", "81.2.69.0/24"), ("wss-primary.example.com.", "AAAA", "133.242.0.0/24"),
    ("api.example.com.", "AAAA", "8.8.8.0/24"), ("api.example.com.", "A", None),
    ("wss-primary.example.com.", "TXT", None), ("www.example.com.", "A", "2a02:c7f::/48"),
])
def test_signed_fast_path_answers_as_the_core_does(keys, monkeypatch, name, rdtype, subnet):
    from filterdns.dns.responder import Responder

    fast = _responder(keys, monkeypatch)
    # a state of its own: the ECS scope walk progresses with each query from a network (a
    # bounded part per query), so each path must see the same queries from the start
    other = _responder(keys, monkeypatch)
    slow = Responder(other.holder, other.inventory, rng=random.Random(7), cache=False)
    keyring = dnskeys(fast)
    for _ in range(3):  # cold, then from the route and signed-body caches
        a, _ = ask(fast, name, rdtype, subnet=subnet)
        b, _ = ask(slow, name, rdtype, subnet=subnet)
        assert validate_section(a.answer, keyring) == validate_section(b.answer, keyring)
        assert _blank_signatures(a) == _blank_signatures(b)


# --------------------------------------------------------------------------- zones: dnssec


ZONES_CONFIG = [
    ("sign-bad-type", "zones:\n  example.com:\n    dnssec: yes-please\n",
     "c.yaml:3:13: zones example.com, dnssec: must be true, false or a mapping of options"),
    ("unknown-zone", "zones:\n  example.org:\n    dnssec: true\n",
     "c.yaml:2:3: zones example.org: not a served zone"),
    ("unknown-key", "zones:\n  example.com:\n    dnsec: true\n",
     "c.yaml:3:5: zones example.com: unknown key 'dnsec'; expected one of dnssec"),
    ("unknown-option", "zones:\n  example.com:\n    dnssec: {keys: k, lifetime: 9}\n",
     "c.yaml:3:23: zones example.com, dnssec: unknown key 'lifetime'"),
    ("validity-range", "zones:\n  example.com:\n    dnssec:\n      validity: 60\n",
     "c.yaml:4:17: zones example.com, dnssec: validity must be an integer in 86400..7.776e+06, got 60"),
    ("ttl-type", "zones:\n  example.com:\n    dnssec: {dnskey_ttl: 1h}\n",
     "c.yaml:3:26: zones example.com, dnssec: dnskey_ttl must be an integer in 60..86400, got '1h'"),
    ("not-a-mapping", "zones: [example.com]\n", "c.yaml:1:8: zones must be a mapping"),
]


@pytest.mark.parametrize("text,expect", [(t, e) for _, t, e in ZONES_CONFIG], ids=[i for i, _, _ in ZONES_CONFIG])
def test_zones_config_errors_say_where(tmp_path, monkeypatch, text, expect):
    from filterdns.config.chains import load_chains
    from filterdns.errors import ConfigError

    monkeypatch.chdir(tmp_path)
    (tmp_path / "c.yaml").write_text(text)
    with pytest.raises(ConfigError) as e:
        load_chains(".", ["example.com."])
    assert expect in str(e.value), str(e.value)


def _config_dir(tmp_path, zones_yaml: str):
    import shutil

    chains = tmp_path / "chains"
    shutil.copytree(ROOT / "chains", chains, dirs_exist_ok=True)
    (chains / "zones.yaml").write_text(zones_yaml)
    return chains


def _build(tmp_path, monkeypatch, zones_yaml, keys_env):
    from filterdns.config.build import build_state

    monkeypatch.setenv("FILTERDNS_KEYS", str(keys_env))
    return build_state(ROOT / "zones", _config_dir(tmp_path, zones_yaml))


def test_dnssec_true_without_keys_is_an_error_at_the_key(tmp_path, monkeypatch):
    from filterdns.errors import ConfigError

    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError) as e:
        _build(tmp_path, monkeypatch, "zones:\n  example.com:\n    dnssec: true\n", tmp_path / "none")
    msg = str(e.value)
    assert "chains/zones.yaml:3:5: zone example.com. is to be signed (dnssec)" in msg, msg
    assert "filterdns dnssec keygen example.com" in msg


def test_dnssec_false_leaves_a_zone_with_keys_unsigned(tmp_path, monkeypatch, keys):
    state = _build(tmp_path, monkeypatch, "zones:\n  example.com:\n    dnssec: false\n", keys)
    assert not state.dnssec
    state = _build(tmp_path, monkeypatch, "zones: {}\n", keys)  # not named: the key directory decides
    assert state.dnssec


def test_dnssec_options_key_directory_validity_and_dnskey_ttl(tmp_path, monkeypatch, keys):
    from filterdns.config.state import StateHolder
    from filterdns.dns import dnssec
    from filterdns.dns.responder import Responder
    from filterdns.routing.inventory import Inventory

    own = tmp_path / "own-keys"
    k = dnssec.keygen(tmp_path / "gen", "example.com")
    own.mkdir()
    for f in (k.file, k.file[:-4] + ".private"):
        (own / f.rsplit("/", 1)[1]).write_bytes(open(f, "rb").read())
    state = _build(tmp_path, monkeypatch, "zones:\n  example.com:\n    dnssec:\n"
                   "      keys: ../own-keys\n      validity: 172800\n      dnskey_ttl: 600\n",
                   tmp_path / "no-default-keys")
    (signing,) = state.dnssec.values()
    assert [x.tag for x in signing.keys] == [k.tag] and signing.directory == str(own)
    r = Responder(StateHolder(state), Inventory(), rng=random.Random(1))
    m, _ = ask(r, "example.com.", "DNSKEY")
    assert m.answer[0].ttl == 600
    m, _ = ask(r, "wss-primary.example.com.", "A", subnet="81.2.69.0/24")
    sig = [s for s in m.answer if s.rdtype == dns.rdatatype.RRSIG][0][0]
    assert sig.key_tag == k.tag
    assert 172800 * 0.9 - 3700 <= sig.expiration - sig.inception - 3600 <= 172800


# ------------------------------------------------------------------------------- metrics


def test_dnssec_metrics(keys, monkeypatch):
    import time

    from prometheus_client.parser import text_string_to_metric_families

    from filterdns.config.build import build_state
    from filterdns.config.state import StateHolder
    from filterdns.dns.responder import Responder
    from filterdns.ops.metrics import Metrics
    from filterdns.routing.inventory import Inventory

    monkeypatch.setenv("FILTERDNS_KEYS", str(keys))
    state = build_state(ROOT / "zones", ROOT / "chains")
    m = Metrics()
    m.bind(lambda: state, Inventory())
    r = Responder(StateHolder(state), Inventory(), m, rng=random.Random(7))
    ask(r, "example.com.", "DNSKEY")
    for subnet in ("81.2.69.0/24", "81.2.69.0/24", "133.242.0.0/24"):
        ask(r, "wss-primary.example.com.", "A", subnet=subnet)
    ask(r, "example.com.", "SOA", do=False)

    def values():
        out = {}
        for fam in text_string_to_metric_families(m.render().decode()):
            for s in fam.samples:
                out[(s.name, tuple(sorted(s.labels.items())))] = s.value
        return out

    v = values()
    z = (("zone", "example.com."),)
    assert v[("filterdns_dnssec_do_queries_total", (("transport", "udp"),))] == 4
    made = v[("filterdns_dnssec_signatures_total", z)]
    misses = v[("filterdns_dnssec_signature_cache_misses_total", z)]
    hits = v[("filterdns_dnssec_signature_cache_hits_total", z)]
    assert made == misses >= 2 and hits >= 1  # DNSKEY and one routed RRset at least; a repeat hits
    assert v[("filterdns_dnssec_keys", (("role", "ksk"), ("state", "active"), ("zone", "example.com.")))] == 1
    left = v[("filterdns_dnssec_dnskey_signature_expiry_seconds", z)]
    assert 0.9 * 7 * 86400 - 60 <= left <= 7 * 86400
    ask(r, "wss-primary.example.com.", "A", subnet="81.2.69.0/24")
    assert values()[("filterdns_dnssec_signatures_total", z)] == made  # from the cache
    # the workers' snapshots add up; the newest DNSKEY signature counts (not an exited worker's)
    from filterdns.ops.metrics import merge

    a, b = m.snapshot(), m.snapshot()
    b["dnssec"][("example.com.", "dnskey_expires")] = time.time() + 100
    merged = merge([b, a])
    assert merged["dnssec"][("example.com.", "signatures")] == 2 * made
    assert merged["dnssec"][("example.com.", "dnskey_expires")] == a["dnssec"][("example.com.", "dnskey_expires")]


def test_ds_of_a_served_child_is_answered_by_the_served_parent(tmp_path, monkeypatch):
    """Parent and child on one server: DS at the child's apex comes from the parent's side of
    the cut, signed by the parent's key; everything else at the apex from the child."""
    from filterdns.dns import dnssec

    keys = tmp_path / "keys"
    parent_key = dnssec.keygen(keys, "example.com")
    child_key = dnssec.keygen(keys, "secure.example.com")
    zones, _ = delegating_zones(tmp_path, child_key)
    (zones / "secure.example.com.zone").write_text(
        "$ORIGIN secure.example.com.\n$TTL 300\n"
        "@ IN SOA ns.secure.example.com. hostmaster.example.com. 1 3600 600 604800 30\n"
        "@ IN NS ns.secure.example.com.\nns IN A 192.0.2.98\nwww IN A 192.0.2.7\n")
    r = _responder(keys, monkeypatch, zones)
    keyring = dnskeys(r)
    for do in (True, False):
        m, _ = ask(r, "secure.example.com.", "DS", do=do)
        assert m.rcode() == dns.rcode.NOERROR and m.flags & dns.flags.AA
        ds = m.find_rrset(m.answer, dns.name.from_text("secure.example.com."), dns.rdataclass.IN, dns.rdatatype.DS)
        assert ds[0].key_tag == child_key.tag
    m, _ = ask(r, "secure.example.com.", "DS")
    assert validate_section(m.answer, keyring) == 1  # with the parent's DNSKEY
    sig = [s for s in m.answer if s.rdtype == dns.rdatatype.RRSIG][0][0]
    assert sig.signer == ORIGIN and sig.key_tag == parent_key.tag
    m, _ = ask(r, "secure.example.com.", "SOA")  # the child answers its own apex
    sig = [s for s in m.answer if s.rdtype == dns.rdatatype.RRSIG][0][0]
    assert sig.signer == dns.name.from_text("secure.example.com.") and sig.key_tag == child_key.tag
