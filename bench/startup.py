#!/usr/bin/env python3
"""Time from `filterdns serve` to its first answer, on the bundled config.

    python3 bench/startup.py [--workers 1 2] [--port 5613]

Starts the server from this checkout on 127.0.0.1:PORT, polls SOA example.com every 50 ms
until it answers (at most 20 s), prints the time, and stops the server it started.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _venv  # noqa: E402

_venv.ensure()  # plain `python3 bench/...` re-runs itself with the project's .venv when needed

import dns.message  # noqa: E402
import dns.query  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workers", nargs="+", default=["1", "2"], help="worker counts to try (default: 1 2)")
    ap.add_argument("--port", type=int, default=5613, help="loopback port (default: %(default)s)")
    args = ap.parse_args()
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    q = dns.message.make_query("example.com.", "SOA")
    with tempfile.TemporaryDirectory() as state:
        for w in args.workers:
            t0 = time.monotonic()
            p = subprocess.Popen([sys.executable, "-m", "filterdns", "serve", "--listen", f"127.0.0.1:{args.port}",
                                  "--metrics", "off", "--control", "off", "--workers", w, "--zones",
                                  str(ROOT / "zones"), "--chains", str(ROOT / "chains"), "--state-dir", state],
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
            try:
                while True:
                    if p.poll() is not None or time.monotonic() - t0 > 20:
                        print(f"workers={w}: no answer (exit status {p.poll()})")
                        return 1
                    try:
                        dns.query.udp(q, "127.0.0.1", port=args.port, timeout=0.05)
                        break
                    except Exception:  # noqa: BLE001 - not listening yet
                        pass
                print(f"workers={w}: first answer {time.monotonic() - t0:.2f} s after start")
            finally:
                p.terminate()
                p.wait(15)
    return 0


if __name__ == "__main__":
    sys.exit(main())
