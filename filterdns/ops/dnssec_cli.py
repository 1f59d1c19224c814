"""`filterdns dnssec`: keys of a signed zone (keygen, import, list, ds, activate, deactivate,
remove). Keys are files in ``<keys>/<zone>/`` (see filterdns/dns/dnssec.py); a running server
uses a change after `filterdns reload` (or its file watcher)."""

from __future__ import annotations

import os
import shutil
import sys
import time
from pathlib import Path


def add_parser(sub) -> None:
    s = sub.add_parser("dnssec", help="DNSSEC keys of a zone: keygen, import, list, ds, activate, deactivate, remove",
                       description="Manage the ECDSA P-256 (algorithm 13) keys of a signed zone. A zone is signed "
                                   "when its key directory <keys>/<zone>/ holds an active KSK or CSK.")
    s.add_argument("--zones", default=os.environ.get("FILTERDNS_ZONES", "zones"), metavar="DIR",
                   help="zones directory (default: %(default)s); keys live in <zones>/keys unless --keys")
    s.add_argument("--keys", default=None, metavar="DIR",
                   help="key directory (default: $FILTERDNS_KEYS, else <zones>/keys)")
    ss = s.add_subparsers(dest="dnssec_command", metavar="ACTION", required=True)
    g = ss.add_parser("keygen", help="make a key: a CSK (default), --ksk or --zsk")
    g.add_argument("zone")
    kind = g.add_mutually_exclusive_group()
    kind.add_argument("--ksk", action="store_true", help="key-signing key (flags 257, signs the DNSKEY RRset)")
    kind.add_argument("--zsk", action="store_true", help="zone-signing key (flags 256, signs everything else)")
    g.add_argument("--publish-only", action="store_true",
                   help="publish in the DNSKEY RRset but do not sign with it yet (pre-publish rollover)")
    i = ss.add_parser("import", help="copy a BIND key pair (K<zone>.+013+<tag>.key/.private) into the key directory")
    i.add_argument("zone")
    i.add_argument("keyfile", help="the .key file; the .private beside it is copied too")
    for name, hlp in (("list", "list the keys and their state"), ("ds", "print the DS records for the parent")):
        p = ss.add_parser(name, help=hlp)
        p.add_argument("zone")
    for name, hlp in (("activate", "start signing with a key (it is published too)"),
                      ("deactivate", "stop signing with a key; it stays published"),
                      ("remove", "stop publishing a key (its files move to <zone>/removed/)")):
        p = ss.add_parser(name, help=hlp)
        p.add_argument("zone")
        p.add_argument("tag", type=int, help="key tag (see `filterdns dnssec list`)")
    s.set_defaults(func=main)


def _find(keys, tag: int):
    for k in keys:
        if k.tag == tag:
            return k
    raise ValueError(f"no key with tag {tag}")


def main(args) -> int:
    from filterdns.dns import dnssec

    keys_dir = args.keys or dnssec.keys_dir_for(args.zones)
    zone = args.zone.rstrip(".").lower() + "."
    cmd = args.dnssec_command
    try:
        if cmd == "keygen":
            flags = 256 if args.zsk else 257
            k = dnssec.keygen(keys_dir, zone, flags, active=not args.publish_only)
            print(f"{k.file}: {'ZSK' if flags == 256 else ('KSK' if args.ksk else 'CSK')} tag {k.tag}"
                  f"{' (published, not signing)' if args.publish_only else ''}")
            if flags == 257:
                print(dnssec.ds_text(zone, k))
            return 0
        if cmd == "import":
            src = args.keyfile
            k = dnssec.read_key(src)
            d = Path(keys_dir) / zone.rstrip(".")
            d.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, d / Path(src).name)
            shutil.copy2(src[:-4] + ".private", d / (Path(src).name[:-4] + ".private"))
            os.chmod(d / (Path(src).name[:-4] + ".private"), 0o600)
            print(f"imported key tag {k.tag} (flags {k.flags}) into {d}")
            return 0
        keys = dnssec.zone_keys(keys_dir, zone)
        if not keys:
            print(f"filterdns dnssec: zone {zone} has no keys in {keys_dir}", file=sys.stderr)
            return 1
        if cmd == "list":
            for k in keys:
                role = "KSK/CSK" if k.sep else "ZSK"
                state = "active" if k.active else ("published" if k.published else "unpublished")
                print(f"{k.tag:5d} {role:7s} {state:11s} {k.file}")
            return 0
        if cmd == "ds":
            for k in keys:
                if k.sep and k.published:
                    print(dnssec.ds_text(zone, k))
            return 0
        k = _find(keys, args.tag)
        now = time.time() - 1
        if cmd == "activate":
            dnssec.set_timing(k, "Inactive", None)
            dnssec.set_timing(k, "Delete", None)
            dnssec.set_timing(k, "Publish", now)
            dnssec.set_timing(k, "Activate", now)
        elif cmd == "deactivate":
            if k.sep and not any(o.active and o.sep and o.tag != k.tag for o in keys):
                raise ValueError(f"key {k.tag} is the last active KSK/CSK: the zone would go bogus")
            dnssec.set_timing(k, "Inactive", now)
        elif cmd == "remove":
            if k.active:
                raise ValueError(f"key {k.tag} still signs: `filterdns dnssec deactivate {zone} {k.tag}` first")
            d = Path(k.file).parent / "removed"
            d.mkdir(exist_ok=True)
            for f in (k.file, k.file[:-4] + ".private"):
                shutil.move(f, d / Path(f).name)
        print(f"key {k.tag}: {cmd}d; run `filterdns reload` for a running server to use it")
        return 0
    except (ValueError, OSError) as e:
        print(f"filterdns dnssec {cmd}: {e}", file=sys.stderr)
        return 1
