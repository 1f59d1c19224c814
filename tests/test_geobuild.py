"""`filterdns geo build`: synthetic City databases (both layouts) are compacted; adjacent equal
records merge; every lookup of the output equals the input's (country, subdivision, rounded
coordinates)."""

from __future__ import annotations

import ipaddress
import random
import subprocess
import sys

import maxminddb
import pytest
from mmdb_writer import MMDBWriter
from netaddr import IPSet

from filterdns.ops.geobuild import _round, build, ranges_to_cidrs
from filterdns.routing.geo import GeoDB
from filterdns.model import Client


# (network, GeoLite2 City record)
CITIES = {
    "sacramento": ("US", "CA", 38.5816, -121.4944),
    "davis": ("US", "CA", 38.5449, -121.7405),       # same 0.5 degree cell as Sacramento
    "new-york": ("US", "NY", 40.7128, -74.0060),
    "montreal": ("CA", "QC", 45.5019, -73.5674),
    "vancouver": ("CA", "BC", 49.2827, -123.1207),
    "melbourne": ("AU", "VIC", -37.8136, 144.9631),
    "london": ("GB", "ENG", 51.5072, -0.1276),
}
CONTINENT = {"US": "NA", "CA": "NA", "AU": "OC", "GB": "EU"}
NAMES = {"CA": "California", "NY": "New York", "QC": "Québec", "BC": "British Columbia",
         "VIC": "Victoria", "ENG": "England"}


def geolite_record(city):
    cc, sub, lat, lon = CITIES[city]
    return {"continent": {"code": CONTINENT[cc]}, "country": {"iso_code": cc},
            "subdivisions": [{"iso_code": sub, "names": {"en": NAMES[sub]}}],
            "location": {"latitude": lat, "longitude": lon, "accuracy_radius": 20},
            "city": {"names": {"en": city}}, "postal": {"code": "00000"}}


def dbip_record(city):
    cc, sub, lat, lon = CITIES[city]
    return {"city": city, "country_code": cc, "latitude": lat, "longitude": lon,
            "postcode": "", "state1": NAMES[sub], "state2": "", "timezone": ""}


def layout(seed=7):
    """A random but reproducible map: 2048 /26 networks of 10.0.0.0/15-ish space plus IPv6 /48s,
    in runs of one city (so that merging has work to do), with gaps."""
    rng = random.Random(seed)
    cities = list(CITIES)
    nets = []
    base = int(ipaddress.ip_address("11.0.0.0"))
    i = 0
    while i < 2048:
        city = rng.choice(cities)
        run = rng.randint(1, 12)
        for _ in range(run):
            if rng.random() > 0.1:  # leave some gaps
                nets.append((ipaddress.ip_network((base + i * 64, 26)), city))
            i += 1
    b6 = int(ipaddress.ip_address("2a01:100::"))
    for j in range(256):
        nets.append((ipaddress.ip_network((b6 + (j << 80), 48)), cities[(j // 5) % len(cities)]))
    return nets


def expected_blocks(nets):
    """Independent count: runs of adjacent networks with one rounded record, summarized."""
    key = {c: ("sacramento" if c == "davis" else c) for c in CITIES}
    total, run = 0, None
    for net, city in sorted(nets, key=lambda x: (x[0].version, x[0].network_address)):
        if run and run[2] == key[city] and run[1].version == net.version and \
                int(run[1].broadcast_address) + 1 == int(net.network_address):
            run[1] = net
            continue
        if run:
            total += len(list(ipaddress.summarize_address_range(run[0].network_address, run[1].broadcast_address)))
        run = [net, net, key[city]]
    total += len(list(ipaddress.summarize_address_range(run[0].network_address, run[1].broadcast_address)))
    return total


def write_source(path, nets, fmt):
    w = MMDBWriter(ip_version=6, ipv4_compatible=True, database_type="GeoLite2-City" if fmt == "geolite" else "city")
    for net, city in nets:
        w.insert_network(IPSet([str(net)]), geolite_record(city) if fmt == "geolite" else dbip_record(city))
    w.to_db_file(str(path))


@pytest.mark.unit
@pytest.mark.parametrize("fmt", ["geolite", "dbip"])
def test_build_compacts_and_keeps_every_lookup(tmp_path, fmt):
    nets = layout()
    src = tmp_path / f"{fmt}.mmdb"
    out = tmp_path / "out.mmdb"
    write_source(src, nets, fmt)
    lines = []
    st = build([str(src)], str(out), 0.5, lines.append)
    assert st["source_networks"] == len(nets)
    # merged: the fewest CIDR blocks covering each run of adjacent networks of one record
    # (Sacramento and Davis are one record on the 0.5 degree grid)
    assert st["merged_blocks"] == expected_blocks(nets) < len(nets) / 2
    assert st["records"] == len(CITIES) - 1  # Davis and Sacramento are one record now
    assert st["subdivision_unresolved"] == 0
    with maxminddb.open_database(str(out)) as r:
        assert r.metadata().database_type == "filterdns-routing-City"
        n_out = sum(1 for _ in r)
        assert n_out == st["merged_blocks"]
        for net, city in nets:
            cc, sub, lat, lon = CITIES[city]
            want = {"country_code": cc, "continent_code": CONTINENT[cc], "subdivision_code": sub,
                    "latitude": _round(lat, 0.5), "longitude": _round(lon, 0.5)}
            for addr in (net.network_address, net.broadcast_address):
                assert r.get(str(addr)) == want, (str(addr), city)
        # gaps stay gaps
        present = {n for n, _ in nets}
        gap = next(ipaddress.ip_network((int(ipaddress.ip_address("11.0.0.0")) + i * 64, 26))
                   for i in range(2048) if ipaddress.ip_network((int(ipaddress.ip_address("11.0.0.0")) + i * 64, 26))
                   not in present)
        assert r.get(str(gap.network_address)) is None
    # the server reads it: country, subdivision, rounded coordinates
    geo = GeoDB.open(str(out))
    loc = geo.locate(Client(str(nets[0][0].network_address), 4, 32, False))
    cc, sub, lat, lon = CITIES[nets[0][1]]
    assert (loc.country, loc.subdivision, loc.lat, loc.lon) == (cc, sub, _round(lat, 0.5), _round(lon, 0.5))


@pytest.mark.unit
def test_precision_changes_the_grid(tmp_path):
    src, out = tmp_path / "s.mmdb", tmp_path / "o.mmdb"
    write_source(src, [(ipaddress.ip_network("11.0.0.0/24"), "sacramento"),
                       (ipaddress.ip_network("11.0.1.0/24"), "davis")], "geolite")
    st = build([str(src)], str(out), 0.1)
    assert st["records"] == 2 and st["merged_blocks"] == 2
    with maxminddb.open_database(str(out)) as r:
        assert r.get("11.0.0.1")["latitude"] == 38.6 and r.get("11.0.1.1")["longitude"] == -121.7
    st = build([str(src)], str(out), 2.0)
    assert st["records"] == 1 and st["merged_blocks"] == 1  # 11.0.0.0/23


@pytest.mark.unit
@pytest.mark.parametrize("start,end,bits,cidrs", [
    (0, 256, 32, [(0, 24)]),
    (64, 256, 32, [(64, 26), (128, 25)]),
    (1, 4, 32, [(1, 32), (2, 31)]),
    (0, 1 << 32, 32, [(0, 0)]),
])
def test_ranges_to_cidrs(start, end, bits, cidrs):
    assert list(ranges_to_cidrs(start, end, bits)) == cidrs


@pytest.mark.e2e
def test_cli_prints_progress_and_summary(tmp_path):
    src, out = tmp_path / "s.mmdb", tmp_path / "o.mmdb"
    write_source(src, layout()[:300], "dbip")
    p = subprocess.run([sys.executable, "-m", "filterdns", "geo", "build", str(src), "-o", str(out)],
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    assert "reading networks" in p.stderr and f"writing {out}" in p.stderr
    assert f"{out}:" in p.stdout and "blocks from 300 source networks" in p.stdout
    bad = subprocess.run([sys.executable, "-m", "filterdns", "geo", "build", str(tmp_path / "nope.mmdb"),
                          "-o", str(out)], capture_output=True, text=True, timeout=60)
    assert bad.returncode == 1 and "nope.mmdb: no such file" in bad.stderr


@pytest.mark.unit
def test_subdivision_level_keeps_one_centre_per_state(tmp_path):
    nets = layout()
    src, out = tmp_path / "s.mmdb", tmp_path / "o.mmdb"
    write_source(src, nets, "dbip")
    st = build([str(src)], str(out), 0.5, level="subdivision")
    # one record per subdivision: Sacramento and Davis (both CA) are one, at their mean
    assert st["records"] == len({CITIES[c][:2] for c in CITIES})
    pts: dict = {}
    for _, city in nets:
        cc, sub, lat, lon = CITIES[city]
        pts.setdefault((cc, sub), []).append((_round(lat, 0.5), _round(lon, 0.5)))
    with maxminddb.open_database(str(out)) as r:
        for net, city in nets:
            cc, sub, _, _ = CITIES[city]
            p = pts[(cc, sub)]
            want_lat = _round(sum(x for x, _ in p) / len(p), 0.5)
            want_lon = _round(sum(y for _, y in p) / len(p), 0.5)
            got = r.get(str(net.network_address))
            assert (got["country_code"], got["subdivision_code"], got["latitude"], got["longitude"]) == \
                (cc, sub, want_lat, want_lon)
    assert st["merged_blocks"] <= build([str(src)], str(tmp_path / "c.mmdb"), 0.5)["merged_blocks"]


@pytest.mark.unit
@pytest.mark.parametrize("record_size", [24, 28, 32])
def test_tree_walk_reads_every_record_size(tmp_path, record_size, monkeypatch):
    """The builder walks the source's search tree itself: the same networks, in the same
    order, as the reader's own iteration, for each record size the format has."""
    import mmdb_writer

    orig = mmdb_writer.TreeWriter._adjust_record_size

    def forced(self):
        orig(self)
        self.record_size = record_size

    monkeypatch.setattr(mmdb_writer.TreeWriter, "_adjust_record_size", forced)
    nets = layout()
    src = tmp_path / "s.mmdb"
    write_source(src, nets, "dbip")
    with maxminddb.open_database(str(src)) as r:
        assert r.metadata().record_size == record_size
        want = [(n.version, int(n.network_address), int(n.broadcast_address) + 1, rec) for n, rec in r]
    from filterdns.ops.geobuild import _decoder, _networks
    decode = _decoder(str(src))
    got = [(fam, s, e, decode(off)) for fam, s, e, off in _networks(str(src), lambda s: None)]
    assert got == want and len(got) == len(nets)


@pytest.mark.unit
def test_overlapping_sources_first_wins(tmp_path):
    a, b, out = tmp_path / "a.mmdb", tmp_path / "b.mmdb", tmp_path / "o.mmdb"
    write_source(a, [(ipaddress.ip_network("11.0.0.0/24"), "sacramento"),
                     (ipaddress.ip_network("11.0.2.0/24"), "london")], "dbip")
    # b covers a's networks and the hole between them
    write_source(b, [(ipaddress.ip_network("11.0.0.0/22"), "melbourne"),
                     (ipaddress.ip_network("11.0.0.0/26"), "london")], "dbip")
    st = build([str(a), str(b)], str(out))
    assert st["overlaps"] >= 1
    with maxminddb.open_database(str(out)) as r:
        assert [r.get(ip)["subdivision_code"] for ip in ("11.0.0.1", "11.0.1.1", "11.0.2.1", "11.0.3.1")] == \
            ["CA", "VIC", "ENG", "VIC"]
