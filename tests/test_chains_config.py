"""The chains/ loader: the bundled example loads, and every bad config names file:line:col."""

from __future__ import annotations

import ipaddress
import shutil
from pathlib import Path

import pytest

from filterdns.config.chains import load_chains
from filterdns.config.yamlloc import load_text
from filterdns.errors import ConfigError
from filterdns.model import AAAA, A

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parent.parent
BAD = Path(__file__).resolve().parent / "fixtures" / "chains_bad"
ORIGINS = ["example.com."]

DOC_NETS = [ipaddress.ip_network(n) for n in
            ("192.0.2.0/24", "198.51.100.0/24", "203.0.113.0/24", "2001:db8::/32")]


@pytest.fixture(scope="module")
def bundled():
    return load_chains(ROOT / "chains", ORIGINS)


def test_bundled_regions_and_records(bundled):
    assert list(bundled.regions) == [
        "us-east-1", "us-west-2", "ca-central-1", "sa-east-1", "eu-west-1", "eu-west-2",
        "eu-central-1", "ap-south-1", "ap-southeast-1", "ap-southeast-2", "ap-northeast-1"]
    assert bundled.default_region == "us-east-1"
    assert sorted(bundled.records) == sorted(f"{n}.example.com." for n in
                                             ("wss-primary", "wss-backup", "api", "edgeapi", "files", "img"))
    assert {Path(f).name for f in bundled.files} == {"regions.yaml", "edge.yaml", "latency.yaml"}


def test_bundled_addresses_are_documentation_ranges(bundled):
    for r in bundled.regions.values():
        assert set(r.services) == {"wss", "api", "files", "img"}, r.name
        for s in r.services.values():
            assert 2 <= len(s.v4) <= 3 and 2 <= len(s.v6) <= 3, (r.name, s.name)
            for a in s.v4 + s.v6:
                ip = ipaddress.ip_address(a)
                assert any(ip in n for n in DOC_NETS), a


def test_bundled_addresses_unique(bundled):
    seen = [a for r in bundled.regions.values() for s in r.services.values() for a in s.v4 + s.v6]
    assert len(seen) == len(set(seen))


@pytest.mark.parametrize("name,service,chain,steps", [
    ("wss-primary", "wss", "wss-primary", ["up", "shed_load", "geotarget_country", "select_first_n"]),
    ("wss-backup", "wss", "wss-backup",
     ["up", "shed_load", "geotarget_country", "select_first_n", "shuffle", "select_first_n"]),
    ("api", "api", "lowest-latency", ["up", "latency", "select_first_n"]),
    ("edgeapi", "api", "lowest-latency", ["up", "latency", "select_first_n"]),
    ("files", "files", "lowest-latency", ["up", "latency", "select_first_n"]),
    ("img", "img", "lowest-latency", ["up", "latency", "select_first_n"]),
])
def test_bundled_record(bundled, name, service, chain, steps):
    rec = bundled.records[f"{name}.example.com."]
    assert rec.zone == "example.com."
    assert rec.service == service and rec.chain_name == chain
    assert [s.name for s in rec.steps] == steps
    assert rec.types == frozenset({A, AAAA})
    assert 0 < rec.ttl <= 30 and rec.ecs and rec.reads_client
    assert len(rec.candidates) == 11
    assert all(len(c.v4[0]) == 4 and len(c.v6[0]) == 16 for c in rec.candidates)


def test_bundled_options_and_metadata(bundled):
    rec = bundled.records["wss-primary.example.com."]
    assert rec.steps[1].filter.options["metric"] == "connections"
    assert rec.steps[3].filter.options["n"] == 1
    r = bundled.regions["eu-west-1"]
    assert r.meta["up"] is True and r.code == "DUB" and r.country == "IE" and r.continent == "EU"
    assert r.services["wss"].meta["high_watermark"] == 8000


def _bad_cases():
    return sorted(p.name for p in BAD.glob("*.yaml"))


EXPECTED = {
    "bad_address.yaml": "region r2, service web, v4[0]: not an IP address: '198.51.100.300'",
    "bad_choice.yaml": "chain near, filter 2 (shed_load): metric must be one of loadavg, connections, requests, got 'cpu'",
    "default_region_unknown.yaml": "default_region: unknown region 'r9'",
    "disabled_not_bool.yaml": "filter 2 (geotarget_country): disabled must be true or false",
    "duplicate_key.yaml": "duplicate key 'ttl'",
    "empty_chain.yaml": "chain empty: empty chain",
    "filter_entry_shape.yaml": "chain near, filter 1: must be a filter name",
    "latency_bad_rtt.yaml": "latency table default, countries GB r2: RTT must be a number >= 0, got -1",
    "latency_unknown_region.yaml": "latency table default, countries GB: unknown region 'r3'",
    "latency_unknown_table.yaml": "chain near, filter 2 (latency): unknown latency table 'fast'",
    "meta_bad_type.yaml": "region r1, meta up: must be true or false (or 1/0), got 'yes'",
    "meta_unknown_key.yaml": "unknown key 'wieght' (did you mean 'weight'?)",
    "options_not_mapping.yaml": "filter 3 (select_first_n): options must be a mapping",
    "record_bad_fallback.yaml": "record web.example.com, fallback: must be one of all, default_region, none",
    "record_bad_ttl.yaml": "record web.example.com, ttl: must be an integer",
    "record_bad_types.yaml": "record web.example.com, types: must be A, AAAA",
    "record_no_chain.yaml": "record web.example.com: chain is required",
    "record_outside_zone.yaml": "record web.example.org: not inside a served zone",
    "record_unknown_chain.yaml": "unknown chain 'nearest' (did you mean 'near'?)",
    "record_unknown_key.yaml": "unknown key 'tll' (did you mean 'ttl'?)",
    "record_unknown_service.yaml": "no region has service 'wbe' (did you mean 'web'?)",
    "region_bad_country.yaml": "region r2, country: unknown ISO 3166-1 code 'XX'",
    "region_lat_range.yaml": "region r1, lat: must be a number in -90..90, got 151.5",
    "region_missing_country.yaml": "region r1: country is required",
    "region_no_services.yaml": "region r2, services: must be a mapping",
    "region_unknown_key.yaml": "unknown key 'contry' (did you mean 'country'?)",
    "select_first_n_zero.yaml":
        "record web.example.com, filter 4 (select_first_n): n must be an integer >= 1, got 0",
    "unknown_filter.yaml": "unknown filter 'geotarget_contry' (did you mean 'geotarget_country'?)",
    "unknown_option.yaml": "filter 2 (shed_load): unknown option 'metrc' (did you mean 'metric'?)",
    "unknown_top_key.yaml": "unknown top-level key 'chian' (did you mean 'chains'?)",
    "v6_in_v4.yaml": "v4[1]: 2001:db8::9 is not an IPv4 address",
    "watermarks_reversed.yaml": "low_watermark: 30 is above high_watermark 20",
    "yaml_syntax.yaml": "YAML syntax",
}


def test_every_fixture_has_an_expectation():
    assert set(_bad_cases()) == set(EXPECTED)


@pytest.mark.parametrize("fixture", _bad_cases())
def test_bad_config(tmp_path, fixture):
    src = BAD / fixture
    shutil.copy(src, tmp_path / fixture)
    lines = src.read_text().splitlines()
    marked = [i + 1 for i, line in enumerate(lines) if "# <- error" in line]
    assert len(marked) == 1, "fixture must mark exactly one line"
    with pytest.raises(ConfigError) as ei:
        load_chains(tmp_path, ORIGINS)
    problems = ei.value.problems
    assert len(problems) == 1, str(ei.value)
    p = problems[0]
    assert p.file.endswith(fixture)
    assert p.line == marked[0] and p.col is not None and p.col >= 1
    assert EXPECTED[fixture] in p.message
    assert str(p).startswith(f"{p.file}:{p.line}:{p.col}: ")


def test_every_problem_is_reported_at_once(tmp_path):
    (tmp_path / "a.yaml").write_text(
        "regions:\n"
        "  r1: {country: GB, services: {web: {v4: [192.0.2.1]}}, meta: {up: maybe}}\n"
        "chains:\n"
        "  c: [up, nosuch, {select_first_n: {n: 0}}]\n"
        "records:\n"
        "  web.example.com: {service: web, chain: c, ttl: x}\n"
        "  other.example.net: {service: web, chain: c}\n")
    with pytest.raises(ConfigError) as ei:
        load_chains(tmp_path, ORIGINS)
    text = str(ei.value)
    assert len(ei.value.problems) == 5, text
    for part in ("a.yaml:2:", "meta up", "a.yaml:4:", "unknown filter 'nosuch'", "n must be an integer >= 1",
                 "ttl: must be an integer", "other.example.net: not inside a served zone"):
        assert part in text


def test_items_split_over_files_and_duplicates_across_files(tmp_path):
    (tmp_path / "1.yaml").write_text("regions:\n  r1: {country: GB, services: {web: {v4: [192.0.2.1]}}}\n")
    (tmp_path / "2.yaml").write_text("chains:\n  c: [geotarget_country]\n"
                                     "records:\n  web.example.com.: {service: web, chain: c}\n")
    ch = load_chains(tmp_path, ORIGINS)
    assert "web.example.com." in ch.records and len(ch.files) == 2
    (tmp_path / "3.yaml").write_text("# again\nregions:\n  r1: {country: FR, services: {web: {v4: [192.0.2.2]}}}\n")
    with pytest.raises(ConfigError) as ei:
        load_chains(tmp_path, ORIGINS)
    assert len(ei.value.problems) == 1
    assert "3.yaml:3:3: region r1 already defined at " in str(ei.value) and "1.yaml:2:3" in str(ei.value)


def test_record_name_normalised_and_longest_zone(tmp_path):
    (tmp_path / "a.yaml").write_text(
        "regions:\n  r1: {country: GB, services: {web: {v4: [192.0.2.1]}}}\n"
        "records:\n  WWW.Sub.Example.COM: {service: web, chain: [up], types: A, ttl: 0, ecs: false}\n")
    ch = load_chains(tmp_path, ["example.com.", "sub.example.com."])
    rec = ch.records["www.sub.example.com."]
    assert rec.zone == "sub.example.com." and rec.types == frozenset({A}) and rec.ttl == 0
    assert not rec.ecs and rec.chain_name == "<WWW.Sub.Example.COM>" and not rec.reads_client


def test_disabled_filter_does_not_read_client(tmp_path):
    (tmp_path / "a.yaml").write_text(
        "regions:\n  r1: {country: GB, services: {web: {v4: [192.0.2.1]}}}\n"
        "records:\n  w.example.com: {service: web, chain: [up, {geotarget_country: {disabled: true}}]}\n")
    rec = load_chains(tmp_path, ORIGINS).records["w.example.com."]
    assert not rec.reads_client and rec.steps[1].disabled


def test_missing_directory(tmp_path):
    with pytest.raises(ConfigError) as ei:
        load_chains(tmp_path / "nope", ORIGINS)
    assert "chains directory not found" in str(ei.value)


@pytest.mark.parametrize("text,where", [
    ("a:\n  b: [1, 2]\n  c: x\n", {"a": (2, 3), "a.c": (3, 6), "a.b[1]": (2, 10)}),
    ("- {k: v}\n- 2\n", {"[0]": (1, 3), "[1]": (2, 3)}),
], ids=["mapping", "sequence"])
def test_yaml_positions(text, where):
    doc = load_text(text, "f.yaml")
    for path, (line, col) in where.items():
        if path == "a":
            loc = doc.value_loc("a")
        elif path == "a.c":
            loc = doc["a"].value_loc("c")
        elif path == "a.b[1]":
            loc = doc["a"]["b"].item_loc(1)
        elif path == "[0]":
            loc = doc[0].loc
        else:
            loc = doc.item_loc(1)
        assert (loc.file, loc.line, loc.col) == ("f.yaml", line, col), path
