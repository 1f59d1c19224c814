"""CI-size run of bench/fuzz.py against a real two-worker server: every reply is checked with
dnspython (malformed query -> FORMERR or drop, never an answer) and the counts must be zero."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from conftest import ROOT

pytestmark = pytest.mark.e2e


def test_fuzz_sample_counts_are_zero():
    p = subprocess.run([sys.executable, str(ROOT / "bench" / "fuzz.py"), "--udp", "4000", "--tcp", "300",
                        "--workers", "2", "--seed", "11", "--max-seconds", "240", "--json"],
                       capture_output=True, text=True, timeout=400)
    out = json.loads(p.stdout.strip().splitlines()[-1])
    summary = {k: out[k] for k in ("crashes", "unparseable", "answers_to_malformed", "wrong_answers", "lost")}
    assert summary == dict.fromkeys(summary, 0), (summary, out["examples"], p.stderr[-2000:])
    assert out["udp_packets"] == 4000 and out["tcp_connections"] == 300
    assert out["answers_to_malformed"] == 0 and out["replies"] > 3000
    assert p.returncode == 0
