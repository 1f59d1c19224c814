"""Zone-file (and YAML syntax) errors in our own words, at the right file:line.

One fixture per case under tests/fixtures/errors/; the line marked ``<- error`` is where the
problem must be reported, and EXPECTED is the exact message. A ``.zone`` fixture is served as
example.com beside the bundled chains/; a ``.yaml`` fixture is added to a copy of chains/.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT
from filterdns.config.build import build_state
from filterdns.errors import ConfigError

FIX = Path(__file__).resolve().parent / "fixtures" / "errors"

EXPECTED = {
    "a_octet_over_255.zone":
        "www.example.com. A 192.0.2.256: 192.0.2.256 is not an IPv4 address (four numbers 0-255, dotted)",
    "aaaa_not_ipv6.zone": "www.example.com. AAAA 2001:db8::g: 2001:db8::g is not an IPv6 address",
    "mx_preference_not_number.zone":
        "example.com. MX ten mail.example.com.: not valid MX data (expected: PREFERENCE (0-65535) HOST): "
        "expecting an integer",
    "unknown_type.zone": "www.example.com. AXFRR: 'AXFRR' is not a record type (nor a TTL or class)",
    "cname_and_other_data.zone":
        "www.example.com.: a CNAME cannot coexist with other data at the same name (A at line 8); "
        "keep the CNAME or the other records",
    "cname_after_other_data.zone":
        "www.example.com.: a CNAME cannot coexist with other data at the same name (A at line 7, "
        "TXT at line 8); keep the CNAME or the other records",
    "static_collides_with_dynamic.zone":
        "wss-primary.example.com.: static A data collides with the dynamic record wss-primary.example.com. "
        "defined at {chains}/edge.yaml:49; a dynamic record answers A/AAAA itself: remove the static "
        "records or the dynamic one",
    "origin_mismatch.zone":
        "$ORIGIN example.org. does not match the zone example.com. (named by the file name): every name "
        "after it falls outside the zone; use $ORIGIN example.com. or a name under it, or rename the file",
    "origin_mismatch_after_soa.zone":
        "$ORIGIN example.net. does not match the zone example.com. (named by the file name): every name "
        "after it falls outside the zone; use $ORIGIN example.com. or a name under it, or rename the file",
    "owner_outside_zone.zone":
        "www.example.net. is outside the zone example.com.; records must be at or below the zone's name",
    "unclosed_brace.yaml":
        "YAML syntax: this '{' is never closed: expected ',' or '}', found a value at line 5, column 5",
}


def _marked(path: Path) -> tuple[int, int | None]:
    lines = path.read_text().splitlines()
    marked = [i + 1 for i, line in enumerate(lines) if "<- error" in line]
    assert len(marked) == 1, f"{path.name} must mark exactly one line"
    col = None
    if path.suffix == ".yaml":
        col = lines[marked[0] - 1].index("{") + 1
    return marked[0], col


def _setup(tmp_path: Path, fixture: str) -> tuple[Path, Path, Path]:
    zones, chains = tmp_path / "zones", tmp_path / "chains"
    shutil.copytree(ROOT / "zones", zones)
    shutil.copytree(ROOT / "chains", chains)
    src = FIX / fixture
    target = zones / "example.com.zone" if fixture.endswith(".zone") else chains / fixture
    shutil.copy(src, target)
    return zones, chains, target


@pytest.mark.unit
def test_every_fixture_has_an_expectation():
    assert {p.name for p in FIX.iterdir()} == set(EXPECTED)


@pytest.mark.unit
@pytest.mark.parametrize("fixture", sorted(EXPECTED))
def test_error_message_and_line(tmp_path, fixture):
    zones, chains, target = _setup(tmp_path, fixture)
    line, col = _marked(FIX / fixture)
    with pytest.raises(ConfigError) as ei:
        build_state(zones, chains)
    got = [str(p) for p in ei.value.problems]
    where = f"{target}:{line}" + (f":{col}" if col else "")
    assert got == [f"{where}: {EXPECTED[fixture].replace('{chains}', str(chains))}"]


@pytest.mark.e2e
def test_check_prints_it(tmp_path):
    """`filterdns check` shows the same line, and exits 1."""
    zones, chains, target = _setup(tmp_path, "a_octet_over_255.zone")
    p = subprocess.run([sys.executable, "-m", "filterdns", "check", "--zones", str(zones), "--chains", str(chains)],
                       capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert p.returncode == 1
    assert f"{target}:7: www.example.com. A 192.0.2.256: 192.0.2.256 is not an IPv4 address" in p.stdout + p.stderr
    assert "Text input is malformed" not in p.stdout + p.stderr


@pytest.mark.unit
def test_bundled_zone_scans_clean():
    """The scanner agrees with dnspython on the bundled zone: no problem, every record seen."""
    import dns.zone
    from filterdns.dns import zonefile

    text = (ROOT / "zones" / "example.com.zone").read_text()
    sc = zonefile.scan(text, "example.com.")
    z = dns.zone.from_text(text, origin="example.com.", relativize=False)
    assert sc.problems == [] and zonefile.outside(sc, z.origin) == []
    assert len(sc.entries) == sum(len(rds) for _, rds in z.iterate_rdatasets())
    assert all(zonefile.explain_rdata(e) is None for e in sc.entries)
