"""Robustness: generated and mutated packets never crash the responder, and a good query is
still answered afterwards. The live variant sends them to a real server over UDP and TCP."""

from __future__ import annotations

import socket
import struct

import dns.edns
import dns.message
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import ask, examples

SEEDS = [
    dns.message.make_query("test.example.", "SOA").to_wire(),
    dns.message.make_query("a.b.c.test.example.", "A", use_edns=0,
                           options=[dns.edns.ECSOption("81.2.69.0", 24)]).to_wire(),
    dns.message.make_query("x.wild.test.example.", "TXT", use_edns=0, want_dnssec=True).to_wire(),
    dns.message.make_query("www.sub.test.example.", "AAAA", use_edns=0,
                           options=[dns.edns.ECSOption("2a02:8010::", 56)]).to_wire(),
]


@st.composite
def mutated(draw):
    base = bytearray(draw(st.sampled_from(SEEDS)))
    for _ in range(draw(st.integers(1, 8))):
        op = draw(st.integers(0, 3))
        if op == 0 and base:  # flip a byte
            i = draw(st.integers(0, len(base) - 1))
            base[i] = draw(st.integers(0, 255))
        elif op == 1 and base:  # cut
            del base[draw(st.integers(0, len(base) - 1)):]
        elif op == 2:  # insert
            i = draw(st.integers(0, len(base)))
            base[i:i] = draw(st.binary(min_size=1, max_size=8))
        else:  # set a header count
            if len(base) >= 12:
                i = draw(st.sampled_from([4, 6, 8, 10]))
                base[i:i + 2] = struct.pack("!H", draw(st.integers(0, 3)))
    return bytes(base)


packets = st.one_of(st.binary(max_size=600), mutated())


GOOD = dns.message.make_query("test.example.", "SOA")


def check_packet(responder, packet) -> None:
    """The fuzz check: whatever we send is a well-formed message, a good query is answered
    afterwards, and no exception was caught on the way (``respond`` swallows them into SERVFAIL
    or a drop, so the count is what shows a parser or answer bug)."""
    before = responder.errors
    out = responder.respond(packet, ("127.0.0.1", 1), "udp", 0)
    if out is not None:
        assert len(out) <= 1232
        dns.message.from_wire(out)
    out = responder.respond(packet, ("::1", 1, 0, 0), "tcp", 65535)
    if out is not None:
        dns.message.from_wire(out)
    assert responder.errors == before, f"{responder.errors - before} unexpected exception(s) for {packet!r}"
    r, _ = ask(responder, GOOD)
    assert r.rcode() == 0 and r.answer


@pytest.mark.unit
@settings(max_examples=examples(3000), deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(packets)
def test_responder_never_raises(responder, packet):
    # the same responder (and its answer cache) sees every packet, then a good query
    check_packet(responder, packet)
    assert responder.errors == 0


@pytest.mark.unit
@pytest.mark.parametrize("where", ["parse", "answer"])
def test_the_fuzz_check_fails_on_a_broken_responder(responder, monkeypatch, where):
    """The check above can fail: a parser (or answer path) that raises on every TXT query is
    caught, although respond() turns the exception into a drop (or SERVFAIL)."""
    import filterdns.dns.responder as mod

    real = mod.wire.parse_query if where == "parse" else mod.plan

    def broken(*a):
        q = a[0]
        if (real(q) if where == "parse" else q).qtype == 16:
            raise RuntimeError("injected")
        return real(*a)

    if where == "parse":
        monkeypatch.setattr(mod.wire, "parse_query", broken)
    else:
        monkeypatch.setattr(mod, "plan", broken)
    txt = SEEDS[2]
    with pytest.raises(AssertionError, match="unexpected exception"):
        check_packet(responder, txt)
    check_packet(responder, SEEDS[0])  # the others still pass


@pytest.mark.e2e
@settings(max_examples=examples(1500), deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                    HealthCheck.function_scoped_fixture])
@given(st.lists(packets, min_size=1, max_size=4))
def test_live_server_survives_fuzz(live_server, batch):
    u = live_server["udp"]
    for p in batch:
        u.sendto(p, ("127.0.0.1", live_server["port"]))
    t = live_server["tcp"]
    try:
        t.sendall(b"".join(struct.pack("!H", len(p)) + p for p in batch if p))
    except OSError:  # the server may close a connection that sent garbage framing
        live_server["reconnect"]()



@pytest.fixture(scope="module")
def live_server(tmp_path_factory):
    from conftest import FIXTURES, start_server

    tmp = tmp_path_factory.mktemp("fuzz")
    chains = tmp / "chains"
    chains.mkdir()
    (chains / "empty.yaml").write_text("regions: {}\nrecords: {}\n")
    sp = start_server(tmp, zones=FIXTURES / "zones", chains=chains, probe="test.example.")
    u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    state = {"udp": u, "port": sp.port}

    def reconnect():
        try:
            state["tcp"].close()
        except Exception:  # noqa: BLE001
            pass
        state["tcp"] = socket.create_connection(("127.0.0.1", sp.port), timeout=2)

    state["tcp"] = socket.create_connection(("127.0.0.1", sp.port), timeout=2)
    state["reconnect"] = reconnect
    yield state
    # after all the garbage: a good query over UDP and TCP still gets its answer
    r = sp.query("test.example.", "SOA")
    assert r.rcode() == 0 and r.answer
    r = sp.query("test.example.", "SOA", tcp=True)
    assert r.rcode() == 0 and r.answer
    assert sp.proc.poll() is None
    u.close()
    state["tcp"].close()
    sp.stop()
    assert "Traceback" not in sp.log(), sp.log()


DYN_SEEDS = [
    dns.message.make_query("wss-primary.example.com.", "A", use_edns=0,
                           options=[dns.edns.ECSOption("81.2.69.0", 24)]).to_wire(),
    dns.message.make_query("wss-backup.example.com.", "AAAA", use_edns=0,
                           options=[dns.edns.ECSOption("2400:4050::", 56)]).to_wire(),
    dns.message.make_query("api.example.com.", "A").to_wire(),
]


@pytest.fixture(scope="module")
def bundled_responder():
    from conftest import ROOT
    from filterdns.config.build import build_state
    from filterdns.routing.inventory import Inventory
    from filterdns.dns.responder import Responder
    from filterdns.config.state import StateHolder

    return Responder(StateHolder(build_state(ROOT / "zones", ROOT / "chains")), Inventory())


@st.composite
def mutated_dynamic(draw):
    base = bytearray(draw(st.sampled_from(DYN_SEEDS)))
    for _ in range(draw(st.integers(1, 6))):
        i = draw(st.integers(0, len(base) - 1))
        base[i] = draw(st.integers(0, 255))
    return bytes(base)


@pytest.mark.unit
@settings(max_examples=examples(2000), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutated_dynamic())
def test_dynamic_path_never_raises(bundled_responder, packet):
    before = bundled_responder.errors
    out = bundled_responder.respond(packet, ("127.0.0.1", 1), "udp", 0)
    if out is not None:
        assert len(out) <= 1232
        dns.message.from_wire(out)
    assert bundled_responder.errors == before, f"unexpected exception for {packet!r}"
    r, _ = ask(bundled_responder, DYN_SEEDS[0])
    assert r.rcode() == 0 and {rr.address for rr in r.answer[0]} == {"192.0.2.161", "192.0.2.162"}
