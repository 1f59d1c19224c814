"""`python3 bench/run.py` on a machine whose Python has none of the project's packages: the
script re-runs itself with the project's virtualenv, creating it when absent. ``python -S``
stands in for that bare Python (no site-packages: no dnspython, no PyYAML)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from conftest import ROOT


def _bare_env(**extra):
    e = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "FILTERDNS_BENCH_REEXEC")}
    e.update(extra)
    return e


@pytest.mark.e2e
def test_bare_python_uses_existing_venv():
    assert sys.prefix != sys.base_prefix, "the tests run inside the project's virtualenv"
    p = subprocess.run([sys.executable, "-S", "bench/run.py", "--help"], cwd=ROOT, capture_output=True,
                       text=True, timeout=120, env=_bare_env(FILTERDNS_VENV=sys.prefix))
    assert p.returncode == 0, p.stderr
    assert p.stdout.startswith("usage: run.py")
    assert f"running with {sys.prefix}/bin/python" in p.stderr


@pytest.mark.e2e
def test_bare_python_creates_the_venv(tmp_path):
    venv = tmp_path / "venv"
    p = subprocess.run([sys.executable, "-S", str(ROOT / "bench/startup.py"), "--help"], cwd=tmp_path,
                       capture_output=True, text=True, timeout=1500, env=_bare_env(FILTERDNS_VENV=str(venv)))
    assert p.returncode == 0, p.stderr[-3000:]
    assert "creating the project's virtualenv" in p.stderr
    assert (venv / "bin" / "python").exists()
    assert p.stdout.startswith("usage: startup.py")
    # the new virtualenv has the project: its Python imports filterdns and dnspython
    ok = subprocess.run([str(venv / "bin" / "python"), "-c", "import dns.message, filterdns.cli"],
                        capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert ok.returncode == 0, ok.stderr
