"""The bundled config on the bundled database (no --geoip: filterdns/data/dbip-routing.mmdb,
DB-IP Lite City compacted by `filterdns geo build --level subdivision`), over a real server
with real ECS queries: each coast of the US to its region, IPv4 and IPv6; Canadian provinces
and Australian states to the nearest region (with the bundled regions, and with a region more
in each of the two countries); the answer's ECS scope is the widened one. This is what a fresh
clone serves."""

from __future__ import annotations

import shutil

import dns.edns
import dns.rdatatype
import pytest

from conftest import ROOT, start_server

from filterdns.routing.geo import DEFAULT_DB, ROUTING_DB

pytestmark = pytest.mark.e2e

US_WEST_2 = {"192.0.2.121", "192.0.2.122"}
US_EAST_1 = {"192.0.2.111", "192.0.2.112", "192.0.2.113"}
US_WEST_2_V6 = {"2001:db8:e102::1", "2001:db8:e102::2"}
US_EAST_1_V6 = {"2001:db8:e101::1", "2001:db8:e101::2", "2001:db8:e101::3"}
CA_CENTRAL_1 = {"192.0.2.131", "192.0.2.132"}
AP_SOUTHEAST_2 = {"192.0.2.201", "192.0.2.202"}
CA_WEST_1 = {"192.0.2.251"}
AP_SOUTHEAST_4 = {"192.0.2.252"}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    assert DEFAULT_DB == ROUTING_DB and ROUTING_DB.is_file(), "the package ships the routing database"
    sp = start_server(tmp_path_factory.mktemp("georouting"))
    yield sp
    sp.stop()


def ask(sp, subnet, rdtype="A", name="wss-primary.example.com."):
    addr, plen = subnet.split("/")
    r = sp.query(name, rdtype, use_edns=0, options=[dns.edns.ECSOption(addr, int(plen))], timeout=5)
    got = {rd.to_text() for rrset in r.answer for rd in rrset if rrset.rdtype == dns.rdatatype.from_text(rdtype)}
    scope = next(o.scopelen for o in r.options if isinstance(o, dns.edns.ECSOption))
    return got, scope


# (id, client subnet, qtype, expected addresses); networks as the bundled database places them
# (network, subdivision and point there): 63.245.208.0/23, 8.8.8.0/24 CA (36.0, -120.5);
# 52.0.0.0/16 VA (39.0, -77.5); 98.0.0.0/24 NY (41.0, -74.0); IPv6 2607:f8b0:4005::/48 and
# 2600:1f1c::/34 CA, 2600:1f18::/33 VA, 2001:418:6900::/40 NY
COASTS = [
    ("sacramento", "63.245.208.0/24", "A", US_WEST_2),
    ("mountain-view", "8.8.8.0/24", "A", US_WEST_2),
    ("ashburn", "52.0.0.0/24", "A", US_EAST_1),
    ("new-york", "98.0.0.0/24", "A", US_EAST_1),
    ("v6-mountain-view", "2607:f8b0:4005::/48", "AAAA", US_WEST_2_V6),   # Google, Mountain View CA
    ("v6-san-jose", "2600:1f1c::/48", "AAAA", US_WEST_2_V6),             # San Jose CA
    ("v6-ashburn", "2600:1f18::/48", "AAAA", US_EAST_1_V6),              # Ashburn VA
    ("v6-new-york", "2001:418:6900::/48", "AAAA", US_EAST_1_V6),         # New York NY
    # one region in each country: every province and state goes there
    ("vancouver-bc", "24.84.0.0/24", "A", CA_CENTRAL_1),
    ("calgary-ab", "68.144.0.0/24", "A", CA_CENTRAL_1),
    ("toronto-on", "24.76.0.0/24", "A", CA_CENTRAL_1),
    ("montreal-qc", "70.80.0.0/24", "A", CA_CENTRAL_1),
    ("halifax-ns", "24.222.0.0/24", "A", CA_CENTRAL_1),
    ("melbourne-vic", "1.120.0.0/24", "A", AP_SOUTHEAST_2),
    ("brisbane-qld", "1.128.0.0/24", "A", AP_SOUTHEAST_2),
    ("sydney-nsw", "58.160.0.0/24", "A", AP_SOUTHEAST_2),
    ("adelaide-sa", "203.206.0.0/24", "A", AP_SOUTHEAST_2),
]


@pytest.mark.parametrize("subnet,rdtype,expected", [r[1:] for r in COASTS], ids=[r[0] for r in COASTS])
def test_bundled_config_routes_to_the_nearest_region(server, subnet, rdtype, expected):
    got, scope = ask(server, subnet, rdtype)
    assert got == expected
    assert 0 < scope <= int(subnet.split("/")[1])


@pytest.mark.parametrize("subnet", ["63.245.208.0/24", "98.0.0.0/24"])
def test_latency_estimate_uses_the_client_coordinates(server, subnet):
    # api: measured RTT table per country (US: us-east-1 35 ms, us-west-2 45 ms) - both coasts
    # are in the table, so the answer is the table's; the wss records above use the coordinates
    got, _ = ask(server, subnet, name="api.example.com.")
    assert got == {"198.51.100.111", "198.51.100.112", "198.51.100.113"}


@pytest.mark.parametrize("subnet", ["24.76.0.0/24", "1.120.0.0/24", "24.84.0.0/24"])
def test_scope_is_wider_than_the_city_network(server, subnet):
    # Toronto's, Melbourne's and Vancouver's own networks are /19 to /22; their neighbours get
    # the same region, so the answer is scoped to a much wider block (a /16 or wider). Each
    # query pays a bounded part of the walk that finds it (the next ones resume it, in each
    # worker), so the first answers may carry a narrower - still true - scope
    scopes = [ask(server, subnet)[1] for _ in range(40)]
    assert min(scopes) <= 16, scopes
    assert max(scopes) <= 24


EXTRA_REGIONS = """
  ca-west-1:
    code: YYC
    country: CA
    subdivision: "AB"
    lat: 51.05
    lon: -114.07
    meta: {up: true, note: "Calgary"}
    services:
      wss:
        v4: [192.0.2.251]
        v6: [2001:db8:e1ff::1]
  ap-southeast-4:
    code: MEL
    country: AU
    subdivision: "VIC"
    lat: -37.81
    lon: 144.96
    meta: {up: true, note: "Melbourne"}
    services:
      wss:
        v4: [192.0.2.252]
        v6: [2001:db8:e1fe::1]
"""

PROVINCES = [
    ("vancouver-bc", "24.84.0.0/24", CA_WEST_1),        # same country, nearer: Calgary
    ("calgary-ab", "68.144.0.0/24", CA_WEST_1),         # same province
    ("toronto-on", "24.76.0.0/24", CA_CENTRAL_1),
    ("montreal-qc", "70.80.0.0/24", CA_CENTRAL_1),      # same province
    ("halifax-ns", "24.222.0.0/24", CA_CENTRAL_1),
    ("melbourne-vic", "1.120.0.0/24", AP_SOUTHEAST_4),  # same state
    ("adelaide-sa", "203.206.0.0/24", AP_SOUTHEAST_4),
    ("brisbane-qld", "1.128.0.0/24", AP_SOUTHEAST_2),
    ("sydney-nsw", "58.160.0.0/24", AP_SOUTHEAST_2),    # same state
]


@pytest.fixture(scope="module")
def server_more_regions(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("georouting-more")
    chains = tmp / "chains"
    shutil.copytree(ROOT / "chains", chains)
    text = (chains / "regions.yaml").read_text()
    (chains / "regions.yaml").write_text(text.replace("\nregions:\n", "\nregions:\n" + EXTRA_REGIONS.lstrip("\n"), 1))
    sp = start_server(tmp, chains=chains)
    yield sp
    sp.stop()


@pytest.mark.parametrize("subnet,expected", [r[1:] for r in PROVINCES], ids=[r[0] for r in PROVINCES])
def test_provinces_and_states_to_their_nearest_region(server_more_regions, subnet, expected):
    got, _ = ask(server_more_regions, subnet)
    assert got == expected
