"""`filterdns simulate`: the scenario loader, the DNS batch client, the report, and the model's
properties against real servers started on loopback (small scenarios, so this runs fast)."""

from __future__ import annotations

import csv
import json
import math
import subprocess
import sys
from collections import Counter, defaultdict
from pathlib import Path

import dns.edns
import dns.message
import dns.rrset
import pytest
import yaml

from filterdns.errors import ConfigError
from filterdns.sim import report, simulate
from filterdns.sim.backend import variant_chains
from filterdns.sim.dnsclient import parse_answer
from filterdns.sim.scenario import load_scenario

ROOT = Path(__file__).resolve().parent.parent
ZONES, CHAINS = str(ROOT / "zones"), str(ROOT / "chains")

NO_SHUFFLE = {"chains": {"wss-backup": ["up", {"shed_load": {"metric": "connections"}}, "geotarget_country",
                                        {"select_first_n": {"n": 1}}]}}


def scenario(tmp_path: Path, name: str = "s.yaml", **over) -> str:
    """A small scenario file: Irish, British and German clients; sections overridable."""
    doc = {
        "name": "base", "seed": 3, "duration": 150, "step": 0.1,
        "population": {"ramp": 15, "samples": 32, "countries": {"IE": 1500, "GB": 400, "DE": 400}},
        "resolvers": {"clients_per_resolver": 25},
        "client": {"ping_interval": 10, "ping_timeout": 3, "connect_timeout": 3},
        "regions": {"default": {"capacity": 5000, "accept_rate": 300}},
        "health": {"interval": 3, "fall": 2, "rise": 2},
        "feeds": {"enabled": False},
        "events": [{"at": 30, "fail": "eu-west-1"}],
    }
    for k, v in over.items():
        if v is None:
            doc.pop(k, None)
        elif isinstance(v, dict) and isinstance(doc.get(k), dict):
            doc[k] = {**doc[k], **v}
        else:
            doc[k] = v
    p = tmp_path / name
    p.write_text(yaml.safe_dump(doc, sort_keys=False))
    return str(p)


def run(path: str, out=None, **kw) -> list[dict]:
    return simulate(path, zones=ZONES, chains=CHAINS, out=str(out) if out else None, plots=bool(out),
                    progress=False, log=lambda m: None, **kw)


def attempts(res: dict):
    return [row for row in res["log"] if row[1] == "attempt"]


# ------------------------------------------------------------------------------ unit: the loader

BAD = [
    ("unknown-top", "bogus: 1\npopulation: {countries: {IE: 5}}\n", "s.yaml:1:1: bogus: unknown section"),
    ("no-population", "seed: 1\n", "population: missing"),
    ("bad-country", "population:\n  countries: {XX: 5}\n", "s.yaml:2:15: population.countries.XX: not an ISO"),
    ("negative-clients", "population:\n  countries: {IE: -5}\n",
     "s.yaml:2:19: population.countries.IE: must be an integer >= 0, got -5"),
    ("bad-type", "population: {countries: {IE: 5}}\nclient:\n  connect_timeout: soon\n",
     "s.yaml:3:20: client.connect_timeout: must be int/float, got 'soon'"),
    ("out-of-range", "population: {countries: {IE: 5}}\nresolvers: {ecs_source: 40}\n",
     "s.yaml:2:25: resolvers.ecs_source: must be <= 32, got 40"),
    ("unknown-option", "population: {countries: {IE: 5}}\nhealth: {intervall: 5}\n",
     "s.yaml:2:10: health.intervall: unknown option"),
    ("event-no-action", "population: {countries: {IE: 5}}\nevents:\n  - {at: 5}\n",
     "s.yaml:3:5: events[0]: needs exactly one of fail, recover, drain, undrain, feed"),
    ("event-late", "duration: 60\npopulation: {countries: {IE: 5}}\nevents:\n  - {at: 90, fail: eu-west-1}\n",
     "s.yaml:4:10: events[0].at: must be a time in [0, duration=60] s, got 90"),
    ("feed-no-values", "population: {countries: {IE: 5}}\nevents:\n  - {at: 5, feed: eu-west-1}\n",
     "events[0].values: a feed needs values"),
    ("bad-sequence", "population: {countries: {IE: 5}}\nclient: {retry_sequence: [primary, tertiary]}\n",
     "s.yaml:2:26: client.retry_sequence: must be a non-empty list of primary/backup"),
    ("variant-no-name", "population: {countries: {IE: 5}}\nvariants:\n  - {seed: 2}\n",
     "s.yaml:3:5: variants[0]: needs a name"),
    ("variant-bad-value", "population: {countries: {IE: 5}}\nvariants:\n  - {name: x, client: {retry_cap: -1}}\n",
     "s.yaml:3:35: client.retry_cap: must be >= 0, got -1"),
    ("duplicate-key", "seed: 1\nseed: 2\npopulation: {countries: {IE: 5}}\n", "s.yaml:2:1: duplicate key 'seed'"),
]


@pytest.mark.unit
@pytest.mark.parametrize("text,expected", [(t, e) for _, t, e in BAD], ids=[i for i, _, _ in BAD])
def test_bad_scenarios_name_file_line_and_option(tmp_path, text, expected):
    p = tmp_path / "s.yaml"
    p.write_text(text)
    with pytest.raises(ConfigError) as ei:
        load_scenario(str(p))
    msgs = [str(x) for x in ei.value.problems]
    assert any(expected in m for m in msgs), msgs


@pytest.mark.unit
def test_every_problem_is_listed_at_once(tmp_path):
    p = tmp_path / "s.yaml"
    p.write_text("population: {countries: {IE: 5}}\nclient: {retry_cap: -1, retry_base: x}\nhealth: {fall: 0}\n")
    with pytest.raises(ConfigError) as ei:
        load_scenario(str(p))
    assert len(ei.value.problems) == 3, ei.value.problems


@pytest.mark.unit
def test_bundled_scenario_loads_with_a_variant_and_total_scaling(tmp_path):
    sf = load_scenario(str(ROOT / "scenarios" / "dublin-fails.yaml"))
    assert [v.name for v in sf.variants][1] == "backup without shuffle"
    assert sf.base.clients >= 20000 and sf.base.duration >= 600
    assert sf.variants[1].chains_overrides["chains"]["wss-backup"][-1] == {"select_first_n": {"n": 1}}
    p = scenario(tmp_path, population={"total": 1000, "countries": {"IE": 2, "GB": 1}})
    assert load_scenario(p).base.countries == {"IE": 667, "GB": 333}


@pytest.mark.unit
@pytest.mark.parametrize("path", sorted((ROOT / "scenarios").glob("*.yaml")), ids=lambda p: p.name)
def test_every_bundled_scenario_fits_the_bundled_config(tmp_path, path):
    from filterdns.config.build import build_state
    from filterdns.sim.scenario import check_against_config

    sf = load_scenario(str(path))
    assert len(sf.variants) >= 2  # they are comparisons
    for i, sc in enumerate(sf.variants):
        chains = CHAINS
        if sc.chains_overrides:
            chains = variant_chains(CHAINS, sc.chains_overrides, str(tmp_path / str(i)))
        st = build_state(ZONES, chains)
        check_against_config(sc, st.regions, st.records)
        assert sc.clients >= 20000 and sc.duration >= 600


@pytest.mark.unit
def test_variant_chains_overrides_go_into_the_file_that_defines_them(tmp_path):
    out = variant_chains(CHAINS, {"chains": NO_SHUFFLE["chains"],
                                  "records": {"wss-primary.example.com": {"ttl": 60}}}, str(tmp_path / "c"))
    edge = yaml.safe_load(Path(out, "edge.yaml").read_text())
    assert edge["chains"]["wss-backup"][-1] == {"select_first_n": {"n": 1}}
    assert edge["chains"]["wss-primary"] == yaml.safe_load(Path(CHAINS, "edge.yaml").read_text())["chains"]["wss-primary"]
    assert edge["records"]["wss-primary.example.com"]["ttl"] == 60
    assert edge["records"]["wss-primary.example.com"]["chain"] == "wss-primary"  # merged, not replaced
    from filterdns.config.build import build_state
    st = build_state(ZONES, out)
    assert st.records["wss-primary.example.com."].ttl == 60


# ------------------------------------------------------------------------------ unit: wire and report

@pytest.mark.unit
def test_parse_answer_reads_addresses_ttl_and_ecs_scope_of_a_dnspython_message():
    q = dns.message.make_query("wss-primary.example.com", "A", use_edns=0,
                               options=[dns.edns.ECSOption("81.2.69.0", 24)])
    r = dns.message.make_response(q)
    r.answer.append(dns.rrset.from_text("wss-primary.example.com.", 20, "IN", "A", "192.0.2.161", "192.0.2.162"))
    r.use_edns(0, options=[dns.edns.ECSOption("81.2.69.0", 24, 18)])
    qid, qend, ans = parse_answer(r.to_wire())
    assert qid == q.id and ans.rcode == 0 and ans.ttl == 20 and ans.scope == 18
    assert sorted(ans.addresses) == ["192.0.2.161", "192.0.2.162"]
    r.set_rcode(dns.rcode.NXDOMAIN)
    r.answer = []
    assert parse_answer(r.to_wire())[2].rcode == 3


@pytest.mark.unit
def test_percentile_is_nearest_rank():
    assert report.percentile([], 50) is None
    assert report.percentile([5], 99) == 5
    assert report.percentile(list(range(1, 101)), 50) == 50
    assert report.percentile(list(range(1, 101)), 99) == 99


# ------------------------------------------------------------------------------ e2e: the model

@pytest.fixture(scope="module")
def dublin(tmp_path_factory):
    """Dublin fails at 30 s; as configured (shuffle) and with a backup chain without shuffle."""
    d = tmp_path_factory.mktemp("dublin")
    p = scenario(d, variants=[{"name": "no shuffle", "chains": NO_SHUFFLE}])
    runs = run(p, out=d / "out", compare=True)
    return {"path": p, "out": d / "out", "runs": runs}


@pytest.mark.e2e
def test_same_seed_same_numbers(dublin):
    again = run(dublin["path"])
    a, b = dublin["runs"][0], again[0]
    assert b["summary"]["dns"]["retransmits"] == 0  # otherwise the server saw another order
    for k in ("countries", "regions", "failure", "degraded", "control"):
        assert a["summary"][k] == b["summary"][k], k
    assert a["log"] == b["log"]
    assert a["summary"]["dns"]["queries"] == b["summary"]["dns"]["queries"] > 0


@pytest.mark.e2e
def test_a_different_seed_gives_different_numbers(tmp_path, dublin):
    other = run(scenario(tmp_path, seed=4))
    assert other[0]["log"] != dublin["runs"][0]["log"]


@pytest.mark.e2e
def test_shuffle_lowers_the_next_closest_regions_peak_attempt_rate(dublin):
    shuffle, plain = (r["summary"] for r in dublin["runs"])
    assert shuffle["failure"]["broken"] == plain["failure"]["broken"] > 1000  # the Irish clients
    s, p = shuffle["regions"]["eu-west-2"], plain["regions"]["eu-west-2"]
    assert s["peak_attempts_per_s"] < p["peak_attempts_per_s"], (s, p)
    # and the shuffled backup spreads the Irish clients: Frankfurt gets a real share
    assert shuffle["regions"]["eu-central-1"]["peak_connections"] > plain["regions"]["eu-central-1"]["peak_connections"]


@pytest.mark.e2e
def test_healthy_no_client_leaves_its_nearest_region(tmp_path):
    p = scenario(tmp_path, events=[], duration=120, client={"session": 20}, feeds={"enabled": True, "interval": 5},
                 population={"countries": {"IE": 300, "GB": 300, "DE": 300, "US": 200, "JP": 100}})
    res = run(p)[0]
    # the bundled database places US clients by state: each coast has its own nearest region
    nearest = {"IE": {"eu-west-1"}, "GB": {"eu-west-2"}, "DE": {"eu-central-1"}, "US": {"us-east-1", "us-west-2"},
               "JP": {"ap-northeast-1"}}
    rows = attempts(res)
    assert len(rows) > 1200 * 2  # everyone connected, and reconnected (sessions of 20 s on average)
    bad = [r for r in rows if r[5] != "ok" or r[4] != 0 or r[3] not in nearest[res["country_of"][r[2]]]]
    assert bad == []
    first: dict = {}
    assert [r for r in rows if first.setdefault(r[2], r[3]) != r[3]] == []  # and stays there
    assert {r[3] for r in rows if res["country_of"][r[2]] == "US"} == nearest["US"]
    assert res["summary"]["degraded"]["clients_ever"] == 0


@pytest.mark.e2e
def test_a_drained_region_gets_no_new_connections_after_the_drain_plus_ttl(tmp_path):
    ttl, at = 20, 40
    p = scenario(tmp_path, events=[{"at": at, "drain": "eu-west-2", "service": "wss", "reason": "test"}],
                 duration=120, client={"session": 15}, health={"enabled": False},
                 population={"countries": {"GB": 800, "IE": 200}})
    res = run(p)[0]
    to_lon = [r for r in attempts(res) if r[3] == "eu-west-2"]
    assert any(r[0] < at for r in to_lon)  # before: London is the British clients' region
    assert any(at <= r[0] < at + ttl for r in to_lon)  # cached answers still lead there for a TTL
    late = [r for r in to_lon if r[0] >= at + ttl]
    assert late == [], late[:5]
    assert [c["what"] for c in res["summary"]["control"]] == ["drain (test)"]
    gb_after = Counter(r[3] for r in attempts(res) if r[0] >= at + ttl and res["country_of"][r[2]] == "GB")
    assert gb_after and "eu-west-2" not in gb_after


@pytest.mark.e2e
def test_a_longer_ttl_delays_recovery(tmp_path):
    long_ttl = {"records": {"wss-primary.example.com": {"ttl": 120}, "wss-backup.example.com": {"ttl": 120}}}
    p = scenario(tmp_path, variants=[{"name": "ttl 120", "chains": long_ttl}],
                 population={"countries": {"IE": 800, "GB": 200}}, duration=200)
    short, long_ = (r["summary"]["failure"] for r in run(p, compare=True))
    assert short["broken"] == long_["broken"] == 800
    assert long_["reconnect_p50"] > short["reconnect_p50"] * 1.2, (short, long_)
    assert long_["hit_failed_again"] >= short["hit_failed_again"]


def _degraded_had_both_records_fail(res) -> tuple[int, list]:
    failed = defaultdict(set)
    wrong = []
    n = 0
    for t, kind, c, _region, rec, out in res["log"]:
        if kind == "attempt":
            if out == "ok":
                failed.pop(c, None)
            else:
                failed[c].add(rec)
        elif kind == "degraded":
            n += 1
            if failed[c] != {0, 1}:
                wrong.append((t, c, failed[c]))
    return n, wrong


@pytest.mark.e2e
def test_degraded_mode_only_when_both_wss_records_fail(tmp_path):
    client = {"degraded_after": 2, "degraded_retry": 20, "ping_interval": 5, "ping_timeout": 1}
    # the backup record never answers Dublin (a netfence no client is in), the primary does
    fence = {"regions": {"eu-west-1": {"services": {"wss": {"meta": {"ip_prefixes": ["203.0.113.0/24"]}}}}},
             "chains": {"wss-backup": ["up", "netfence_prefix", "geotarget_country", {"select_first_n": {"n": 1}}]}}
    p = scenario(tmp_path, client=client, health={"enabled": False}, duration=100,
                 population={"countries": {"IE": 400}},
                 variants=[{"name": "backup fenced off Dublin", "chains": fence},
                           {"name": "backup = primary", "chains": NO_SHUFFLE}])
    base, fenced, same = run(p, compare=True)
    assert fenced["summary"]["degraded"]["clients_ever"] == 0
    assert fenced["summary"]["failure"]["not_reconnected"] == 0
    assert {r[3] for r in attempts(fenced) if r[4] == 1} <= {"eu-west-2", "eu-central-1"}
    n, wrong = _degraded_had_both_records_fail(same)
    assert n == same["summary"]["degraded"]["clients_ever"] == 400 and wrong == []  # nowhere to go
    n, wrong = _degraded_had_both_records_fail(base)
    assert wrong == []
    assert 0 < n < 400  # shuffled: only those whose backup also drew Dublin


@pytest.mark.e2e
def test_pngs_are_written_and_not_trivial(dublin):
    import matplotlib.image

    for name in ("overview", "connected", "attempts", "reconnect"):
        p = dublin["out"] / f"{name}.png"
        assert p.stat().st_size > 20_000, name
        img = matplotlib.image.imread(str(p))
        h, w = img.shape[:2]
        assert w > 1000 and h > 200, (name, img.shape)  # two variants side by side
        colours = {tuple(px) for px in (img[::4, ::4, :3] * 16).astype(int).reshape(-1, 3)}
        assert len(colours) > 20, name  # several series in several colours, not a blank canvas
    info = dublin["runs"][0]["files"]["plots"]
    assert info["connected"]["series"] >= 2 * 3 and info["overview"]["series"] >= 2 * 7


def _from_csv(path: Path, ramp: float, regions: list[str]) -> dict:
    """The summary's numbers, recomputed from events CSV by separate, simple code."""
    rows = list(csv.DictReader(open(path, newline="")))
    att = Counter()
    per_sec = defaultdict(Counter)
    outcome = defaultdict(Counter)
    broken, ok_after = {}, []
    degraded = 0
    peak_deg = 0
    for r in rows:
        t = float(r["t"])
        if r["event"] == "attempt" and r["region"]:
            att[r["region"]] += 1
            outcome[r["region"]][r["outcome"]] += 1
            if t >= math.ceil(ramp):
                per_sec[r["region"]][int(t)] += 1
        if r["event"] == "attempt" and r["outcome"] == "ok" and r["client"] in broken:
            ok_after.append(t - broken.pop(r["client"]))
        if r["event"] == "disconnect" and r["outcome"] == "failure":
            broken[r["client"]] = t
        if r["event"] in ("degraded", "undegraded"):
            degraded += 1 if r["event"] == "degraded" else -1
            peak_deg = max(peak_deg, degraded)
    ok_after.sort()
    return {
        "attempts": {g: att[g] for g in regions}, "rejected": {g: outcome[g]["reject"] for g in regions},
        "failed": {g: outcome[g]["fail"] for g in regions},
        "peak_rate": {g: max(per_sec[g].values(), default=0) for g in regions},
        "p50": ok_after[math.ceil(len(ok_after) * 0.5) - 1] if ok_after else None,
        "reconnected": len(ok_after), "open": len(broken), "peak_degraded": peak_deg,
    }


@pytest.mark.e2e
def test_summary_matches_the_raw_event_log(dublin):
    summaries = json.loads((dublin["out"] / "summary.json").read_text())
    assert len(summaries) == 2
    for s in summaries:
        slug = "base" if s["variant"] == "base" else "no-shuffle"
        regions = list(s["regions"])
        got = _from_csv(dublin["out"] / f"events-{slug}.csv", 15, regions)
        assert got["attempts"] == {g: v["attempts"] for g, v in s["regions"].items()}
        assert got["rejected"] == {g: v["reject"] for g, v in s["regions"].items()}
        assert got["failed"] == {g: v["fail"] for g, v in s["regions"].items()}
        assert got["peak_rate"] == {g: v["peak_attempts_per_s"] for g, v in s["regions"].items()}
        assert got["reconnected"] == s["failure"]["reconnected"]
        assert got["open"] == s["failure"]["not_reconnected"]
        assert abs(got["p50"] - s["failure"]["reconnect_p50"]) < 1e-3
        assert got["peak_degraded"] == s["degraded"]["peak"]
        assert sum(v["broken"] for v in s["countries"].values()) == s["failure"]["broken"]
    assert "eu-west-2" in (dublin["out"] / "summary.txt").read_text()


# ------------------------------------------------------------------------------ e2e: the command

@pytest.mark.e2e
def test_cli_prints_the_table_and_writes_the_files(tmp_path):
    p = scenario(tmp_path, duration=60, events=[{"at": 20, "fail": "eu-west-1"}],
                 population={"countries": {"IE": 200, "GB": 100}})
    out = tmp_path / "out"
    r = subprocess.run([sys.executable, "-m", "filterdns", "simulate", p, "--zones", ZONES, "--chains", CHAINS,
                        "--out", str(out)], capture_output=True, text=True, timeout=300, cwd=str(tmp_path))
    assert r.returncode == 0, r.stderr
    assert "region" in r.stdout and "eu-west-1" in r.stdout
    assert "base:  60/60 s, 300 up, 0 degraded" in r.stderr  # the progress line
    for f in ("summary.txt", "summary.json", "events-base.csv", "overview.png"):
        assert (out / f).stat().st_size > 100, f


@pytest.mark.e2e
def test_cli_bad_scenario_exits_1_naming_file_line(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text("population: {countries: {IE: 5}}\nevents:\n  - {at: 5, fail: atlantis}\n")
    r = subprocess.run([sys.executable, "-m", "filterdns", "simulate", str(p), "--zones", ZONES, "--chains", CHAINS,
                        "--no-plots", "--quiet"], capture_output=True, text=True, timeout=120, cwd=str(tmp_path))
    assert r.returncode == 1
    assert f"{p}:3:19: event fail at 5s: no region 'atlantis'" in r.stderr, r.stderr


@pytest.mark.e2e
def test_cli_against_a_running_server(tmp_path):
    """--server/--control/--token-file: the simulation drives a server it did not start."""
    from conftest import start_server
    from filterdns.sim.backend import free_port

    tok = tmp_path / "token"
    tok.write_text("s" * 24 + "\n")
    tok.chmod(0o600)
    cport = free_port()
    srv = start_server(tmp_path, "--control", f"127.0.0.1:{cport}", "--control-token-file", str(tok))
    try:
        p = scenario(tmp_path, duration=60, events=[{"at": 20, "fail": "eu-west-1"}],
                     population={"countries": {"IE": 100, "GB": 50}})
        r = subprocess.run([sys.executable, "-m", "filterdns", "simulate", p, "--chains", CHAINS, "--zones", ZONES,
                            "--server", f"127.0.0.1:{srv.port}", "--control", f"127.0.0.1:{cport}",
                            "--token-file", str(tok), "--no-plots", "--quiet", "--json", "--out", ""],
                           capture_output=True, text=True, timeout=300, cwd=str(tmp_path))
        assert r.returncode == 0, r.stderr
        s = json.loads(r.stdout)[0]
        assert s["server"] == f"127.0.0.1:{srv.port}" and s["failure"]["broken"] == 100
        assert any(c["what"].startswith("drain") for c in s["control"])  # health drained it there
        q = srv.query("wss-primary.example.com", "A", use_edns=0,
                      options=[dns.edns.ECSOption("87.32.0.0", 24)])  # an Irish subnet
        assert "192.0.2.15" not in q.to_text()  # Dublin's addresses are out of DNS on that server
    finally:
        srv.stop()
