"""Command line: serve | check | explain | init | geo build | status | drain | undrain | reload | feed | simulate."""

from __future__ import annotations

import argparse
import logging
import os
import sys

from filterdns import __version__
from filterdns.logs import FORMATS

DEFAULT_LISTEN = "127.0.0.1:8053"


def _add_config_args(p: argparse.ArgumentParser, state: bool = False) -> None:
    from filterdns.config import home
    home.add_arguments(p, state=state)  # --config-dir, --zones, --chains (and --state-dir)
    p.add_argument("--geoip", default=os.environ.get("FILTERDNS_GEOIP"), metavar="PATH",
                   help="GeoLite2/DB-IP Country or City .mmdb (default: the bundled DB-IP Lite City routing "
                        "database, one point per state or province; the country database if absent)")


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="filterdns",
        description="Authoritative DNS server that routes clients to edge regions with NS1-style filter chains.")
    ap.add_argument("--version", action="version", version=f"filterdns {__version__}")
    ap.add_argument("-v", "--verbose", action="store_true",
                    help="debug logging: reload phases, worker start, health probes")
    ap.add_argument("--log-format", choices=FORMATS, default=os.environ.get("FILTERDNS_LOG_FORMAT", "text"),
                    help="text, or json: one object per line with ts, level, logger, msg, fields "
                         "(default: %(default)s; $FILTERDNS_LOG_FORMAT)")
    sub = ap.add_subparsers(dest="command", metavar="COMMAND")

    s = sub.add_parser("serve", help="run the DNS server",
                       description="Serve the zones and dynamic records over UDP and TCP.")
    _add_config_args(s, state=True)
    # also accepted after the command (filterdns serve -v --log-format json)
    s.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    s.add_argument("--log-format", choices=FORMATS, default=argparse.SUPPRESS,
                   help="text or json log lines (see filterdns --help)")
    s.add_argument("--listen", action="append", metavar="ADDR:PORT",
                   help=f"address to answer DNS on, UDP and TCP; repeatable; IPv6 as [::1]:8053 (default: {DEFAULT_LISTEN})")
    s.add_argument("--metrics", default=os.environ.get("FILTERDNS_METRICS", "127.0.0.1:9153"), metavar="ADDR:PORT|off",
                   help="Prometheus /metrics endpoint (default: %(default)s)")
    s.add_argument("--control", default=os.environ.get("FILTERDNS_CONTROL", "127.0.0.1:9154"), metavar="ADDR:PORT|off",
                   help="control API: /healthz, /readyz, /regions, drains, feeds, reload, and the operator "
                        "page /ui (default: %(default)s)")
    s.add_argument("--control-token-file", default=os.environ.get("FILTERDNS_CONTROL_TOKEN_FILE"), metavar="PATH",
                   help="file holding the bearer token that mutating control calls need "
                        "(or set FILTERDNS_CONTROL_TOKEN); without one, mutating calls are refused")
    s.add_argument("--discard-state", action="store_true",
                   help="start even when the saved state cannot be read: move it aside and start with no drains "
                        "(without this, an unreadable state refuses start-up)")
    s.add_argument("--state", default=os.environ.get("FILTERDNS_STATE"), metavar="file|etcd://HOST:PORT[,...]/PREFIX",
                   help="where operator state lives: 'file' (state.json in --state-dir, the default) or an etcd "
                        "cluster shared by a fleet (etcds:// for TLS)")
    s.add_argument("--etcd-ca", default=os.environ.get("FILTERDNS_ETCD_CA"), metavar="PEM",
                   help="CA bundle that signed the etcd servers' certificates (implies TLS)")
    s.add_argument("--etcd-cert", default=os.environ.get("FILTERDNS_ETCD_CERT"), metavar="PEM",
                   help="client certificate for etcd (with --etcd-key)")
    s.add_argument("--etcd-key", default=os.environ.get("FILTERDNS_ETCD_KEY"), metavar="PEM",
                   help="client key for etcd")
    s.add_argument("--etcd-user", default=os.environ.get("FILTERDNS_ETCD_USER"), metavar="NAME",
                   help="etcd user (password from --etcd-password-file or $FILTERDNS_ETCD_PASSWORD)")
    s.add_argument("--etcd-password-file", default=os.environ.get("FILTERDNS_ETCD_PASSWORD_FILE"), metavar="PATH",
                   help="file holding the etcd user's password")
    s.add_argument("--health-policy", choices=["quorum", "all", "any"], default=None,
                   help="with an etcd store: a (region, service) is down when a majority (quorum, the default), "
                        "every (all) or any one (any) of the instances checking it says so")
    s.add_argument("--instance", default=os.environ.get("FILTERDNS_INSTANCE"), metavar="NAME",
                   help="this instance's name in the fleet (default: hostname:control port)")
    s.add_argument("--server-id", default=os.environ.get("FILTERDNS_SERVER_ID"), metavar="TEXT|@hostname",
                   help="this instance's identity, sent as NSID (RFC 5001, dig +nsid) and as the TXT of "
                        "CHAOS id.server and hostname.bind; @hostname = the host's name (default: none: "
                        "no NSID, CHAOS queries REFUSED)")
    s.add_argument("--max-drain-share", type=float, default=None, metavar="FRACTION",
                   help="largest share of a service's regions the health automation may drain (default: all but the last)")
    s.add_argument("--http-allow-host", action="append", default=[], metavar="NAME",
                   help="a Host name the control API and metrics endpoint accept besides loopback names and "
                        "the bound address (DNS rebinding guard), e.g. the name Prometheus scrapes (repeatable)")
    ql = s.add_argument_group("query log and dnstap (off by default; docs/observability.md)")
    ql.add_argument("--query-log", default=os.environ.get("FILTERDNS_QUERY_LOG"), metavar="PATH|-",
                    help="append a sample of the answered queries to PATH (- = stdout), one JSON object "
                         "per line: time, client, ECS subnet, name, type, rcode, region, scope, latency")
    ql.add_argument("--query-log-sample", type=float, default=0.01, metavar="FRACTION",
                    help="share of the queries written to the query log, 0 < FRACTION <= 1 "
                         "(default: %(default)s)")
    ql.add_argument("--dnstap", default=os.environ.get("FILTERDNS_DNSTAP"), metavar="PATH|unix:PATH",
                    help="write every query and response as dnstap (AUTH_QUERY, AUTH_RESPONSE) in Frame "
                         "Streams to a file, or to the Unix socket of a dnstap collector (unix:PATH or an "
                         "existing socket); with --workers N each worker writes PATH.N")
    t = s.add_argument_group("TCP limits (RFC 7766 §6.2.3; docs/limits.md)")
    t.add_argument("--tcp-max-connections", type=int, default=256, metavar="N",
                   help="concurrent TCP connections for the whole server, shared equally by the workers; "
                        "when full, a new client takes the slot of the connection that has gone longest "
                        "without completing a query, or is closed at once (default: %(default)s)")
    t.add_argument("--tcp-max-per-source", type=int, default=32, metavar="N",
                   help="concurrent TCP connections from one address (IPv6: one /64) (default: %(default)s)")
    t.add_argument("--tcp-idle-timeout", type=float, default=10.0, metavar="SECONDS",
                   help="close a TCP connection this long after its last answered query (default: %(default)s)")
    t.add_argument("--tcp-message-timeout", type=float, default=5.0, metavar="SECONDS",
                   help="a query's whole message must arrive within this time of its first byte "
                        "(default: %(default)s)")
    t.add_argument("--tcp-max-lifetime", type=float, default=120.0, metavar="SECONDS",
                   help="close any TCP connection after this long, busy or not (default: %(default)s)")
    t.add_argument("--tcp-max-unsent", type=int, default=131072, metavar="BYTES",
                   help="answers waiting for a client that does not read: stop reading its queries above "
                        "this, close it when it stays stuck for --tcp-idle-timeout (default: %(default)s)")
    r = s.add_argument_group("response rate limiting, UDP only (docs/rrl.md)")
    r.add_argument("--rrl-rate", type=float, default=0.0, metavar="N",
                   help="responses per second to one client prefix for one answer class (and name, for "
                        "positive answers); 0 = off (default: %(default)s; 20 is a common setting)")
    r.add_argument("--rrl-class-rate", action="append", default=[], metavar="CLASS=N",
                   help="a different rate for one class: response, nodata, nxdomain, referral, error "
                        "(repeatable; default: --rrl-rate)")
    r.add_argument("--rrl-slip", type=int, default=2, metavar="N",
                   help="send every Nth limited response truncated (TC) so real clients retry over TCP; "
                        "0 = drop all, 1 = truncate all (default: %(default)s)")
    r.add_argument("--rrl-window", type=float, default=15.0, metavar="SECONDS",
                   help="how long a flooding prefix stays limited after it slows down (default: %(default)s)")
    r.add_argument("--rrl-ipv4-prefix", type=int, default=24, metavar="BITS",
                   help="IPv4 prefix length of one client (default: %(default)s)")
    r.add_argument("--rrl-ipv6-prefix", type=int, default=56, metavar="BITS",
                   help="IPv6 prefix length of one client (default: %(default)s)")
    r.add_argument("--rrl-exempt", action="append", default=[], metavar="CIDR",
                   help="never limit clients in this prefix (repeatable)")
    r.add_argument("--rrl-log-only", action="store_true",
                   help="log and count what would be limited, but send every response")
    r.add_argument("--rrl-table-size", type=int, default=100_000, metavar="N",
                   help="rate-limit buckets kept for the whole server (one table all workers share); "
                        "the least recently used go first (default: %(default)s)")
    s.add_argument("--no-watch", action="store_true", help="do not reload when files under --zones/--chains change")
    s.add_argument("--no-health", action="store_true", help="do not run the configured health checks")
    s.add_argument("--seed", type=int, default=None, metavar="N",
                   help="seed the routing RNG (shuffle, shed_load) so that, with --workers 1, the same "
                        "queries in the same order get the same answers (simulations, tests)")
    s.add_argument("--workers", type=int, default=None, metavar="N",
                   help="worker processes serving the same DNS sockets, under one supervisor "
                        "that owns the control API, metrics and health checks "
                        "(default: the CPUs this process may use, counting affinity and a "
                        "container's or systemd's CPU quota)")

    c = sub.add_parser("check", help="validate zones and chains; print every problem",
                       description="Validate the configuration with the same code start-up and reload use. "
                                   "Exit 0 with a summary, or 1 listing every problem as file:line:col: reason.")
    _add_config_args(c)

    e = sub.add_parser("explain", help="show how a query is routed, filter by filter",
                       description="Run one dynamic record's chain for a client and show each filter's "
                                   "input and output, the answer and the ECS scope.")
    _add_config_args(e)
    e.add_argument("name", help="record name, e.g. wss-primary.example.com")
    e.add_argument("qtype", nargs="?", default="A", choices=["A", "AAAA", "a", "aaaa"], help="A or AAAA (default: A)")
    g = e.add_mutually_exclusive_group(required=True)
    g.add_argument("--client", metavar="IP", help="the resolver's (or client's) address")
    g.add_argument("--subnet", metavar="CIDR", help="an ECS client subnet, e.g. 81.2.69.0/24")
    e.add_argument("--live", metavar="ADDR:PORT", nargs="?", const="127.0.0.1:9154", default=None,
                   help="apply the running server's drains, health verdicts and feed values, read from "
                        "its control API (default address when given alone: %(const)s)")

    gp = sub.add_parser("geo", help="location database tools",
                        description="Build the compact location database that routing reads.")
    gsub = gp.add_subparsers(dest="geo_command", metavar="COMMAND", required=True)
    gb = gsub.add_parser("build", help="compact City databases into a routing .mmdb",
                         description="Read DB-IP Lite City (ip-location-db npm package) or GeoLite2 City "
                                     ".mmdb files and write a compact .mmdb with country, continent, "
                                     "subdivision and rounded coordinates (see filterdns/ops/geobuild.py).")
    gb.add_argument("sources", nargs="+", metavar="SOURCE", help="City .mmdb files (IPv4 and IPv6 may be separate)")
    gb.add_argument("-o", "--output", required=True, metavar="OUT.mmdb", help="file to write")
    gb.add_argument("--precision", type=float, default=0.5, metavar="DEGREES",
                    help="coordinate grid in degrees (default: %(default)s, at most ~28 km off)")
    gb.add_argument("--level", choices=("city", "subdivision"), default="city",
                    help="city: each network's own coordinates (default); subdivision: one point per "
                         "state or province, the mean of its networks (a much smaller file)")

    i = sub.add_parser("init", help="write the bundled example config into a config home",
                       description="Write the example zones/ and chains/ shipped with filterdns into DIR, "
                                   "then check them. Existing files are kept unless --force.")
    i.add_argument("dir", metavar="DIR", help="the config home to create, e.g. /etc/filterdns")
    i.add_argument("--force", action="store_true", help="overwrite files that are already there")

    from filterdns.ops import client as opscli

    opscli.add_subparsers(sub)
    from filterdns.sim.runner import add_parser as add_simulate

    add_simulate(sub)
    from filterdns.ops.dnssec_cli import add_parser as add_dnssec

    add_dnssec(sub)
    return ap


def _serve(args) -> int:
    from filterdns.app import run
    from filterdns.serve.address import parse_hostport
    from filterdns.serve.cpus import available_cpus
    from filterdns.serve.options import ServeOptions

    try:
        listen = [parse_hostport(x) for x in (args.listen or [DEFAULT_LISTEN])]
        metrics = None if args.metrics == "off" else parse_hostport(args.metrics)
        control = None if args.control == "off" else parse_hostport(args.control)
    except ValueError as e:
        print(f"filterdns serve: {e}", file=sys.stderr)
        return 2
    from filterdns.ops.store import parse_state_spec
    try:
        parse_state_spec(args.state)
    except ValueError as e:
        print(f"filterdns serve: {e}", file=sys.stderr)
        return 2
    from filterdns.dns import identity
    try:
        server_id = identity.resolve(args.server_id)
    except ValueError as e:
        print(f"filterdns serve: {e}", file=sys.stderr)
        return 2
    if not 0 < args.query_log_sample <= 1:
        print("filterdns serve: --query-log-sample must be > 0 and <= 1", file=sys.stderr)
        return 2
    if args.workers is not None and args.workers < 1:
        print("filterdns serve: --workers must be >= 1", file=sys.stderr)
        return 2
    from filterdns.dns.rrl import RrlConfig

    try:
        rrl = RrlConfig.build(args.rrl_rate, args.rrl_class_rate, args.rrl_slip, args.rrl_window,
                              args.rrl_ipv4_prefix, args.rrl_ipv6_prefix, args.rrl_exempt,
                              args.rrl_log_only, args.rrl_table_size)
    except ValueError as e:
        print(f"filterdns serve: {e}", file=sys.stderr)
        return 2
    bad = [name for name, v, lo in (
        ("--tcp-max-connections", args.tcp_max_connections, 1), ("--tcp-max-per-source", args.tcp_max_per_source, 1),
        ("--tcp-idle-timeout", args.tcp_idle_timeout, 0.1), ("--tcp-message-timeout", args.tcp_message_timeout, 0.1),
        ("--tcp-max-lifetime", args.tcp_max_lifetime, 1), ("--tcp-max-unsent", args.tcp_max_unsent, 65537))
        if not v >= lo]
    if bad:
        print(f"filterdns serve: {', '.join(bad)} too small (see --help)", file=sys.stderr)
        return 2
    public = [h for h, _ in listen if not _loopback(h)]
    if public and not rrl.enabled:
        logging.getLogger("filterdns").warning(
            "listening on %s without response rate limiting: a spoofed-source flood can use this "
            "server as an amplifier; set --rrl-rate (e.g. 20)", ", ".join(public))
    opts = ServeOptions(
        listen=listen, zones=args.zones, chains=args.chains, geoip=args.geoip, metrics=metrics,
        control=control, control_token_file=args.control_token_file, state_dir=args.state_dir,
        state=args.state, discard_state=args.discard_state, etcd_ca=args.etcd_ca, etcd_cert=args.etcd_cert,
        etcd_key=args.etcd_key, etcd_user=args.etcd_user, etcd_password_file=args.etcd_password_file,
        health_policy=args.health_policy, instance=args.instance,
        max_drain_share=args.max_drain_share, tcp_max_connections=args.tcp_max_connections,
        tcp_idle_timeout=args.tcp_idle_timeout, tcp_max_per_source=args.tcp_max_per_source,
        tcp_message_timeout=args.tcp_message_timeout, tcp_max_lifetime=args.tcp_max_lifetime,
        tcp_max_unsent=args.tcp_max_unsent, http_allow_hosts=tuple(args.http_allow_host), rrl=rrl.to_dict() if rrl.enabled else None,
        watch=not args.no_watch, health=not args.no_health,
        workers=args.workers if args.workers is not None else available_cpus(), seed=args.seed,
        log_format=args.log_format, verbose=args.verbose, server_id=server_id,
        query_log=args.query_log, query_log_sample=args.query_log_sample, dnstap=args.dnstap)
    return run(opts)


def _loopback(host: str) -> bool:
    import ipaddress

    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def _check(args) -> int:
    """``filterdns check``: the start-up build; every problem and exit 1, or a summary and exit 0."""
    from filterdns.config.build import build_state
    from filterdns.errors import ConfigError

    try:
        state = build_state(args.zones, args.chains, args.geoip)
    except ConfigError as e:
        for p in e.problems:
            print(p, file=sys.stderr)
        print(f"{len(e.problems)} problem(s) found", file=sys.stderr)
        return 1
    for w in state.warnings:  # likely mistakes that do not stop loading
        print(w, file=sys.stderr)
    print(f"ok: {state.summary}" + (f", {len(state.warnings)} warning(s)" if state.warnings else ""))
    return 0


def _explain(args) -> int:
    from filterdns.ops.explain import explain_main
    args.qtype = args.qtype.upper()
    return explain_main(args)


def _init(args) -> int:
    from filterdns.config import home
    from filterdns.config.build import build_state
    from filterdns.errors import ConfigError

    try:
        written = home.init(args.dir, force=args.force)
    except (FileExistsError, FileNotFoundError, OSError) as e:
        print(f"filterdns init: {e}", file=sys.stderr)
        return 1
    target = os.path.abspath(args.dir)
    for path in written:
        print(f"wrote {path}")
    try:
        state = build_state(os.path.join(target, "zones"), os.path.join(target, "chains"))
    except ConfigError as e:
        print(f"filterdns init: the written config does not load:\n{e}", file=sys.stderr)
        return 1
    print(f"{state.summary}; start it with: filterdns serve --config-dir {target}")
    return 0


def _resolve_home(args) -> str | None:
    """Fill in --zones/--chains/--state-dir from the config home; the error when a directory
    is missing (serve, check and explain cannot run without them)."""
    from filterdns.config import home
    h = home.resolve(args.config_dir, args.zones, args.chains, getattr(args, "state_dir", None))
    args.zones, args.chains = h.zones, h.chains
    if hasattr(args, "state_dir"):
        args.state_dir = h.state_dir
    return home.missing(h)


def main(argv=None) -> int:
    ap = build_parser()
    args = ap.parse_args(argv)
    from filterdns import logs
    logs.configure(args.log_format, args.verbose)
    if args.command is None:
        ap.print_help()
        return 2
    if hasattr(args, "config_dir"):
        if problem := _resolve_home(args):
            print(f"filterdns {args.command}: {problem}", file=sys.stderr)
            return 2
    if args.command == "init":
        return _init(args)
    if args.command == "serve":
        return _serve(args)
    if args.command == "check":
        return _check(args)
    if args.command == "explain":
        return _explain(args)
    if args.command == "geo":
        from filterdns.ops.geobuild import main as geo_main
        return geo_main(args)
    return args.func(args)


if __name__ == "__main__":
    raise SystemExit(main())
