"""The bench's generated filterdns config answers exactly as the shared kit's policy.py says.

bench/run.py writes zones/ and chains/ from policy.py; here that config is loaded with the same
build_state start-up uses and every (client subnet, name, type) of the kit's query blob, plus a
client without ECS, goes through the Responder. The geo database is a stand-in that puts each
policy subnet in its policy country (the kit's .mmdb does the same, but needs PyPI mmdb-writer),
so a failure here is the config or the chain, never the database.
"""

from __future__ import annotations

import importlib.util
import ipaddress
from pathlib import Path

import dns.edns
import dns.message
import dns.rdatatype
import pytest

from conftest import ask

ROOT = Path(__file__).resolve().parent.parent


def _load_run():
    spec = importlib.util.spec_from_file_location("bench_run", ROOT / "bench" / "run.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


run = _load_run()
KIT = run.find_kit()
pytestmark = [pytest.mark.unit,
              pytest.mark.skipif(KIT is None, reason="the shared bench kit (../shared/bench) is not here")]
policy = run.load_policy(KIT) if KIT is not None else None


class PolicyGeo:
    """Stands in for GeoDB: a policy.py client subnet -> its country, anything else unknown."""

    description = path = "policy.py stand-in"

    def __init__(self, clients):
        self.nets = [(ipaddress.ip_network(s), cc) for cc, s in clients]

    def locate(self, client):
        from filterdns.routing.geo import COUNTRIES, UNKNOWN, Location

        addr = ipaddress.ip_address(client.address)
        for net, cc in self.nets:
            if addr.version == net.version and addr in net:
                c = COUNTRIES.get(cc)
                return Location(cc, None, c.continent if c else None, c.lat if c else None,
                                 c.lon if c else None, net.prefixlen)
        return UNKNOWN

    lookup = locate

    def node_memo(self):
        return None

    def widest(self, family, loc, mine, decision, nodes, budget):
        """No widening: the stand-in's networks are the policy's subnets, nothing around them."""
        return loc.prefix_len, None


def _rows():
    if policy is None:
        return []
    rows = []
    for cc, subnet in policy.CLIENTS:
        for name in policy.NAMES:
            for t in ("A", "AAAA"):
                region = policy.COUNTRY_REGION.get(cc, policy.DEFAULT_REGION)
                want = policy.addresses(region, name)[0 if t == "A" else 1]
                rows.append(pytest.param(subnet, name, t, want, id=f"{cc}-{subnet}-{name}-{t}"))
    for t in ("A", "AAAA"):
        want = policy.addresses(policy.DEFAULT_REGION, "wss-primary")[0 if t == "A" else 1]
        rows.append(pytest.param(None, "wss-primary", t, want, id=f"no-ecs-127.0.0.1-wss-primary-{t}"))
    return rows


@pytest.fixture(scope="module")
def responder(tmp_path_factory):
    from filterdns.config.build import build_state
    from filterdns.routing.inventory import Inventory
    from filterdns.dns.responder import Responder
    from filterdns.config.state import StateHolder

    zones, chains = run.write_config(policy, tmp_path_factory.mktemp("bench"))
    state = build_state(zones, chains, geo=PolicyGeo(policy.CLIENTS))
    return Responder(StateHolder(state), Inventory())


@pytest.mark.parametrize("subnet,name,qtype,want", _rows())
def test_answers_follow_policy(responder, subnet, name, qtype, want):
    options = []
    if subnet is not None:
        net = ipaddress.ip_network(subnet)
        options = [dns.edns.ECSOption(str(net.network_address), net.prefixlen)]
    q = dns.message.make_query(f"{name}.{policy.ZONE}", qtype, use_edns=0, options=options)
    r, _ = ask(responder, q)
    got = sorted(rd.address for rrset in r.answer for rd in rrset
                 if rrset.rdtype == dns.rdatatype.from_text(qtype))
    assert got == [want]
    assert {rrset.ttl for rrset in r.answer} == {policy.TTL}


def test_every_region_and_fence_comes_from_policy():
    doc = run.chains_doc(policy)
    assert list(doc["regions"]) == list(policy.REGIONS)
    fenced = sorted(cc for r in doc["regions"].values() for cc in r["meta"].get("country", []))
    assert fenced == sorted(policy.COUNTRY_REGION)
    assert doc["default_region"] == policy.DEFAULT_REGION
