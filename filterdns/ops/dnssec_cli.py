"""`filterdns dnssec`: keys of a signed zone (keygen, import, list, ds, activate, deactivate,
remove) and ``export`` of the signed zone for ``dnssec-verify``. Keys are files in the zone's key
directory: ``dnssec.keys`` of its ``zones:`` config (chains/), else ``<keys>/<zone>/`` (see
filterdns/dns/dnssec.py); a running server uses a change after `filterdns reload` (or its file
watcher)."""

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
                   help="directory of the zones' key directories (default: $FILTERDNS_KEYS, else <zones>/keys); "
                        "a zone whose config (zones: {ZONE: {dnssec: {keys: DIR}}}) names its own uses that")
    s.add_argument("--chains", default=os.environ.get("FILTERDNS_CHAINS"), metavar="DIR",
                   help="chains directory, for the zones: section (default: $FILTERDNS_CHAINS, else chains/ "
                        "beside the zones directory)")
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
    for name, hlp in (("list", "list the keys and their state"), ("ds", "print the DS records for the parent"),
                      ("export", "print the signed zone as the server answers it, with an NSEC chain, "
                                 "for dnssec-verify (`dnssec-verify -o ZONE FILE`)")):
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


def _chains_dir(args) -> str:
    return args.chains or os.path.join(os.path.dirname(os.path.abspath(args.zones)), "chains")


def _zone_conf(args, zone: str):
    """The zone's ``dnssec`` config from chains/ (None when it has none or none can be read)."""
    from filterdns.config.chains import load_chains
    from filterdns.errors import ConfigError

    d = _chains_dir(args)
    if not os.path.isdir(d):
        return None
    try:
        return load_chains(d, [zone]).zones.get(zone)
    except ConfigError:
        return None  # `filterdns check` says what is wrong; the keys are still managed here


def main(args) -> int:  # noqa: C901 - one branch per action
    from filterdns.dns import dnssec

    keys_dir = args.keys or dnssec.keys_dir_for(args.zones)
    zone = args.zone.rstrip(".").lower() + "."
    cmd = args.dnssec_command
    conf = _zone_conf(args, zone)
    own = conf.keys if conf is not None and conf.keys else None
    try:
        if cmd == "export":
            return _export(args, zone)
        if cmd == "keygen":
            flags = 256 if args.zsk else 257
            k = dnssec.keygen(keys_dir, zone, flags, active=not args.publish_only, directory=own)
            print(f"{k.file}: {'ZSK' if flags == 256 else ('KSK' if args.ksk else 'CSK')} tag {k.tag}"
                  f"{' (published, not signing)' if args.publish_only else ''}")
            if flags == 257:
                print(dnssec.ds_text(zone, k))
            return 0
        if cmd == "import":
            src = args.keyfile
            k = dnssec.read_key(src)
            d = dnssec.zone_key_dir(keys_dir, zone, conf)
            d.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, d / Path(src).name)
            shutil.copy2(src[:-4] + ".private", d / (Path(src).name[:-4] + ".private"))
            os.chmod(d / (Path(src).name[:-4] + ".private"), 0o600)
            print(f"imported key tag {k.tag} (flags {k.flags}) into {d}")
            return 0
        keys = dnssec.zone_keys(keys_dir, zone, conf)
        if not keys:
            print(f"filterdns dnssec: zone {zone} has no keys in {dnssec.zone_key_dir(keys_dir, zone, conf)}",
                  file=sys.stderr)
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


def _export(args, zone: str) -> int:
    from filterdns.config.build import build_state
    from filterdns.errors import ConfigError

    if args.keys:
        os.environ["FILTERDNS_KEYS"] = args.keys
    try:
        state = build_state(args.zones, _chains_dir(args))
    except ConfigError as e:
        print(f"filterdns dnssec export: the config does not load:\n{e}", file=sys.stderr)
        return 1
    sys.stdout.write(export_zone(state, zone))
    return 0


def export_zone(state, zone_name: str, now: float | None = None) -> str:
    """The signed zone as text, the way a presigned zone would hold it, for ``dnssec-verify``.

    Every RRset is what the server answers to a DO=1 query for it (asked through the
    Responder, the one query path): each static RRset with its RRSIGs, one answer of each
    dynamic record (for a client with no location: the unknown-client answer), the DNSKEY
    RRset, the NS (unsigned) and DS (signed) of each delegation and its glue. Added only here:
    an NSEC chain over the names, signed by the same signer, because a verifier checks one;
    the server itself denies compactly (RFC 9824) and never serves that chain."""
    import dns.message
    import dns.name
    import dns.rdata
    import dns.rdataclass
    import dns.rdatatype
    import dns.rrset

    from filterdns.config.state import StateHolder
    from filterdns.dns import dnssec
    from filterdns.dns.core import _find_cut
    from filterdns.dns.responder import Responder
    from filterdns.dns.wire import name_to_text, text_to_wire
    from filterdns.routing.inventory import Inventory

    origin = text_to_wire(zone_name.rstrip(".") + ".").lower()
    zone = state.zones.zones.get(origin)
    if zone is None:
        raise ValueError(f"zone {name_to_text(origin)} is not served (no zone file)")
    if origin not in state.dnssec:
        raise ValueError(f"zone {name_to_text(origin)} is not signed (no active keys)")
    r = Responder(StateHolder(state), Inventory())
    now = dnssec.now() if now is None else now

    def ask(name: bytes, rdtype: int):
        q = dns.message.make_query(dns.name.from_wire(name, 0)[0], rdtype, want_dnssec=True, payload=4096)
        return dns.message.from_wire(r.respond(q.to_wire(), ("127.0.0.1", 53), "tcp", 65535))

    types: dict[bytes, set[int]] = {}  # name -> types held (NSEC bitmap without RRSIG/NSEC)
    out: list = []
    for key in sorted(zone.nodes):
        node = zone.nodes[key]
        cut = _find_cut(zone, key) if zone.cuts else None
        if cut is not None and cut != key:
            # below a cut: only glue, unsigned, and no NSEC
            for t in (1, 28):
                if t in node.rrsets:
                    m = ask(key, t)
                    out.extend(s for s in m.additional if s.rdtype == t and s.name.to_wire().lower() == key)
            continue
        types[key] = set(node.rrsets)
        for t in sorted(node.rrsets):
            if cut is not None and t != dnssec.DS:
                if t == 2:
                    m = ask(key, t)
                    out.extend(s for s in m.authority if s.rdtype == 2)
                continue
            out.extend(_own(ask(key, t).answer, key))
    for key, rec in sorted(state.dynamic.items()):
        if state.zones.find(key) is not zone or (zone.cuts and _find_cut(zone, key)):
            continue
        types.setdefault(key, set()).update(rec.types)
        for t in sorted(rec.types):
            out.extend(_own(ask(key, t).answer, key))
    types[origin].add(dnssec.DNSKEY)
    out.extend(_own(ask(origin, dnssec.DNSKEY).answer, origin))
    # the NSEC chain, in canonical order, signed by the zone's signer
    signer = r.signers[origin]
    names = sorted(dns.name.from_wire(k, 0)[0] for k in types)
    for i, name in enumerate(names):
        key = name.canonicalize().to_wire()
        nxt = names[(i + 1) % len(names)].canonicalize().to_wire()
        rd = nxt + dnssec.type_bitmap(types[key] | {dnssec.RRSIG, dnssec.NSEC})
        nsec = dns.rrset.RRset(name, dns.rdataclass.IN, dns.rdatatype.NSEC)
        nsec.update_ttl(zone.neg_ttl)
        nsec.add(dns.rdata.from_wire(1, dnssec.NSEC, rd, 0, len(rd)))
        sig = dns.rrset.RRset(name, dns.rdataclass.IN, dns.rdatatype.RRSIG, dns.rdatatype.NSEC)
        sig.update_ttl(zone.neg_ttl)
        for s in signer.sign(key, dnssec.NSEC, zone.neg_ttl, [rd], now):
            sig.add(dns.rdata.from_wire(1, dnssec.RRSIG, s, 0, len(s)))
        out.extend((nsec, sig))
    out.sort(key=lambda s: (s.name, s.rdtype, s.covers))
    return "".join(s.to_text() + "\n" for s in out)


def _own(section, key: bytes) -> list:
    return [s for s in section if s.name.canonicalize().to_wire() == key]
