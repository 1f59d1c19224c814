"""How fast a drain reaches every instance of a fleet on etcd.

Starts a 3-member etcd cluster and 3 filterdns instances on loopback (free ports, a temp dir),
then N times (default 100): drain (or undrain) eu-west-2/wss through instance 1's control API
and poll instances 2 and 3 with DNS queries (GB client subnet) until their answers change.
Prints the median, 90th percentile and maximum of

* ack  -> answer: from the API's acknowledgement to the first changed answer (what an operator
  sees: once `filterdns drain` returns, how long until other instances answer accordingly);
* call -> answer: from sending the request (includes the etcd commit).

    python3 bench/fleet_propagation.py             # 100 changes
    python3 bench/fleet_propagation.py --count 300

Needs /usr/bin/etcd (Debian's etcd-server) and the project installed in .venv or on the path.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "tests"), str(ROOT)]

from fleet_helpers import EtcdCluster, api, start_instance  # noqa: E402
from test_ops_e2e import GB, LONDON, addrs  # noqa: E402


def london(sp) -> bool:
    r = sp.query("wss-primary.example.com.", "A", use_edns=0, options=GB, timeout=1.0)
    return bool(addrs(r) & LONDON)


def wait_change(sp, want_london: bool, out: list, t_call: float, t_ack: list, deadline: float = 10.0):
    while True:
        try:
            if london(sp) == want_london:
                now = time.monotonic()
                out.append(now)
                return
        except Exception:  # noqa: BLE001 - a lost UDP answer: ask again
            pass
        if time.monotonic() - t_call > deadline:
            out.append(None)
            return
        time.sleep(0.0005)


def pct(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--count", type=int, default=100, help="drains and undrains to time (default 100)")
    args = ap.parse_args()
    if not 1 <= args.count <= 2000:
        print("--count must be 1-2000", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="fleet-bench-") as tmp:
        base = Path(tmp)
        (base / "etcd").mkdir()
        etcd = EtcdCluster(base / "etcd", 3)
        etcd.start()
        fleet = []
        try:
            for i in range(3):
                fleet.append(start_instance(base, f"i{i + 1}", etcd.url("/bench")))
            i1, others = fleet[0], fleet[1:]
            ack_to_answer, call_to_answer, commit = [], [], []
            lost = 0
            for n in range(args.count):
                drain = n % 2 == 0
                seen: dict[str, list] = {sp.name: [] for sp in others}
                t_call = time.monotonic()
                threads = [threading.Thread(target=wait_change, args=(sp, not drain, seen[sp.name], t_call, []))
                           for sp in others]
                for t in threads:
                    t.start()
                if drain:
                    status, body = api(i1, "POST", "/regions/eu-west-2/drain",
                                       {"service": "wss", "reason": "bench", "actor": "bench"})
                else:
                    status, body = api(i1, "DELETE", "/regions/eu-west-2/drain", {"service": "wss"})
                t_ack = time.monotonic()
                if status != 200:
                    print(f"change {n}: HTTP {status} {body}", file=sys.stderr)
                    return 1
                for t in threads:
                    t.join()
                commit.append(t_ack - t_call)
                for times in seen.values():
                    if times[0] is None:
                        lost += 1
                        continue
                    ack_to_answer.append(max(0.0, times[0] - t_ack))
                    call_to_answer.append(times[0] - t_call)
            ms = lambda xs, p: f"{pct(xs, p) * 1000:7.1f}"  # noqa: E731
            print(f"fleet propagation: {args.count} changes (drain/undrain alternately) on instance 1, "
                  f"answers polled on instances 2 and 3; 3-member etcd {etcd.endpoints}")
            print(f"{'':22} {'median':>7} {'p90':>7} {'max':>7}  (ms)")
            for label, xs in (("API call (commit)", commit), ("ack -> answer", ack_to_answer),
                              ("call -> answer", call_to_answer)):
                print(f"{label:22} {ms(xs, 50)} {ms(xs, 90)} {ms(xs, 100)}")
            print(f"not seen within 10 s: {lost}")
            over = sum(1 for x in call_to_answer if x > 1.0)
            print(f"call -> answer over 1 s: {over} of {len(call_to_answer)}")
            return 0 if not lost else 1
        finally:
            for sp in fleet:
                sp.stop()
            etcd.stop()


if __name__ == "__main__":
    raise SystemExit(main())
