"""Let ``python3 bench/<script>.py`` run on a fresh machine, with the system's plain Python.

The bench scripts need the project's dependencies (dnspython, PyYAML, ...). ``ensure()``, called
before any third-party import, checks that they import; if not, it re-runs the script with the
project's virtualenv Python (``.venv`` at the top of the checkout, or ``$FILTERDNS_VENV``),
creating that virtualenv first (``python3 -m venv`` + ``pip install -e .``, as
``tests/run.sh`` does) when it does not exist yet. Only the standard library is used here.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
NEEDED = ("dns", "yaml", "prometheus_client", "maxminddb")
_MARK = "FILTERDNS_BENCH_REEXEC"


def _missing() -> list[str]:
    out = []
    for mod in NEEDED:
        try:
            __import__(mod)
        except ImportError:
            out.append(mod)
    return out


def _say(msg: str) -> None:
    print(f"[bench] {msg}", file=sys.stderr, flush=True)


def ensure() -> None:
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))  # `import filterdns` from the checkout
    missing = _missing()
    if not missing:
        return
    venv = Path(os.environ.get("FILTERDNS_VENV") or REPO / ".venv")
    python = venv / "bin" / "python"
    if os.environ.get(_MARK):
        sys.exit(f"bench: {', '.join(missing)} still missing with {sys.executable}; "
                 f"reinstall with: {python} -m pip install -e {REPO}")
    if not python.exists():
        _say(f"{', '.join(missing)} not importable by {sys.executable}: creating the project's "
             f"virtualenv {venv} (once)")
        try:
            subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
            subprocess.run([str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check",
                            "-e", str(REPO)], check=True, timeout=1200)
        except (subprocess.CalledProcessError, subprocess.TimeoutExpired, OSError) as e:
            sys.exit(f"bench: could not create {venv}: {e}. On Debian, `apt-get install python3-venv` "
                     f"gives Python its venv module; or run tests/run.sh, which creates it too")
    else:
        _say(f"{', '.join(missing)} not importable by {sys.executable}: running with {python}")
    os.environ[_MARK] = "1"
    os.execv(str(python), [str(python), *sys.argv])
