"""The many-subnet mix of bench/run.py: as many distinct client subnets as asked, every one inside
a network the bench kit's test .mmdb maps (so every server routes it as that network's country),
with and without ECS, A and AAAA; the same mix every run (fixed seed)."""

from __future__ import annotations

import ipaddress
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))
import mix  # noqa: E402

from test_bench_config import KIT, policy  # noqa: E402

pytestmark = [pytest.mark.unit, pytest.mark.skipif(KIT is None, reason="the shared bench kit is not here")]


def test_distinct_subnets_inside_the_mapped_networks():
    qs = mix.many_subnet_queries(policy, 20000)
    ecs = [q for q in qs if q[2] is not None]
    assert len(ecs) == 20000 and len({q[2] for q in ecs}) == 20000  # one query per distinct subnet
    assert 900 <= len(qs) - len(ecs) <= 1100  # about 5% without ECS
    nets = mix.mapped_networks(policy)
    for _wire, cc, subnet, _name, _t in ecs:
        net = ipaddress.ip_network(subnet)
        assert net.prefixlen == (24 if net.version == 4 else 56)
        assert any(net.subnet_of(m) and c == cc for c, m in nets if m.version == net.version), subnet
    assert {q[4] for q in qs} == {"A", "AAAA"}
    assert len({q[1] for q in ecs}) == len({cc for cc, _ in policy.CLIENTS})  # every kit country
    assert qs == mix.many_subnet_queries(policy, 20000)  # fixed seed


def test_the_wire_carries_its_subnet():
    import dns.edns
    import dns.message

    for wire, _cc, subnet, name, t in mix.many_subnet_queries(policy, 300)[:300]:
        m = dns.message.from_wire(wire)
        assert str(m.question[0].name) == f"{name}.{policy.ZONE}." and dns.rdatatype.to_text(m.question[0].rdtype) == t
        ecs = [o for o in m.options if isinstance(o, dns.edns.ECSOption)]
        if subnet is None:
            assert not ecs
        else:
            assert f"{ecs[0].address}/{ecs[0].srclen}" == subnet
