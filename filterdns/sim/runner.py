"""Run a scenario (and its variants) against real servers; write the table, the log and the plots.

``simulate(path, ...)`` is the Python API behind ``filterdns simulate``:

1. load the scenario (``scenario.load_scenario``; errors name file:line:col);
2. load the server's configuration with the server's own loader (``build_state``) to learn the
   regions, their addresses and the records, and check the scenario's names against it;
3. build the population once (countries, real /24s from the geo database, resolvers);
4. for each variant: start a fresh ``filterdns serve`` on loopback (the variant's chains
   overrides go into a temporary copy of the chains directory), run the model against it,
   stop it; or use ``server=`` (an already running server) for a single variant. Variants run
   at once in forked processes (``jobs``, default one per variant up to the CPU count); each
   run is independent, so the numbers do not depend on ``jobs``;
5. summarize each run from its event log; write ``summary.txt``, ``summary.json``,
   ``events-<variant>.csv`` and the PNGs (``plots.write_plots``) under ``out``.

It returns the runs: ``[{"summary": {...}, "series": {...}, "reconnect": [...], "log": [...]}]``.
"""

from __future__ import annotations

import json
import os
import random
import re
import sys
import tempfile
import time
from pathlib import Path

from filterdns.errors import ConfigError, Problem
from filterdns.sim import backend, report
from filterdns.sim.dnsclient import Batch
from filterdns.sim.model import PROGRESS_FIELDS, Model, progress_line, progress_values, stderr_line
from filterdns.sim.population import build_population
from filterdns.sim.scenario import Scenario, check_against_config, load_scenario


def _config(zones: str, chains: str, geoip: str | None):
    from filterdns.config.build import build_state

    return build_state(zones, chains, geoip)


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "-", name).strip("-").lower() or "variant"


def simulate(path: str, *, zones: str = "zones", chains: str = "chains", geoip: str | None = None,
             server: tuple[str, int] | None = None, control: tuple[str, int] | None = None,
             token: str | None = None, compare: bool = False, variant: str | None = None,
             out: str | None = "sim-out", plots: bool = True, progress: bool = True,
             log=None, jobs: int | None = None) -> list[dict]:
    """Run the scenario at ``path``; see the module docstring. Raises ``ConfigError``."""
    say = log or (lambda m: print(m, file=sys.stderr))
    sf = load_scenario(path)
    if variant is not None:
        chosen = [v for v in sf.variants if v.name == variant]
        if not chosen:
            raise ConfigError([Problem(sf.path, None, None, f"no variant named {variant!r} (have: "
                                       f"{', '.join(v.name for v in sf.variants)})")])
    elif compare:
        chosen = list(sf.variants)
        if len(chosen) < 2:
            raise ConfigError([Problem(sf.path, None, None, "--compare needs variants: in the scenario "
                                       "(a list of named overrides)")])
    else:
        chosen = [sf.base]
    if server is not None and any(v.chains_overrides for v in chosen):
        raise ConfigError([Problem(sf.path, None, None, "a variant with chains overrides needs its own server; "
                                   "drop --server to let simulate start one")])
    if server is not None and len(chosen) > 1:
        raise ConfigError([Problem(sf.path, None, None, "--server runs one variant (its state would carry "
                                   "over); drop --server for --compare")])
    base_state = _config(zones, chains, geoip)
    tmp = tempfile.mkdtemp(prefix="filterdns-sim-chains-")
    pops: dict = {}
    try:
        prepared = []
        for sc in chosen:
            vchains = chains
            state = base_state
            if sc.chains_overrides:
                vchains = backend.variant_chains(chains, sc.chains_overrides, os.path.join(tmp, _slug(sc.name)))
                try:
                    state = _config(zones, vchains, geoip)
                except ConfigError as e:
                    raise ConfigError([Problem(sf.path, None, None, f"variant {sc.name!r}: its chains overrides "
                                               f"make an invalid config: {p}") for p in e.problems]) from None
            check_against_config(sc, state.regions, state.records)
            key = (sc.seed, tuple(sorted(sc.countries.items())), sc.population["samples"],
                   sc.resolvers["clients_per_resolver"])
            if key not in pops:
                t0 = time.monotonic()
                pops[key] = build_population(sc, state.geo, random.Random(f"{sc.seed}:population"))
                say(f"population: {len(pops[key]):,} clients in {len(sc.countries)} countries, "
                    f"{len(pops[key].resolver_country):,} resolvers ({time.monotonic() - t0:.1f} s)")
            prepared.append((sc, pops[key], state, vchains))
        jobs = jobs or min(len(prepared), os.cpu_count() or 1)
        if server is not None or jobs <= 1 or len(prepared) == 1:
            runs = []
            for sc, pop, state, vchains in prepared:
                values = [0.0] * PROGRESS_FIELDS
                runs.append(_run_one(sc, pop, state, zones, vchains, geoip, server, control, token,
                                     _printer([sc.name], values, 0) if progress else None))
                if progress and sys.stderr.isatty():
                    sys.stderr.write("\n")
        else:
            runs = _parallel(prepared, zones, geoip, jobs, progress)
    finally:
        import shutil
        shutil.rmtree(tmp, ignore_errors=True)
    if out:
        written = write_outputs(runs, out, sf.path, plots)
        for r in runs:
            r["files"] = written
    return runs


def _printer(names: list[str], values, slot: int):
    """A Model progress callback that prints one line for the run(s) to stderr."""
    t0 = time.monotonic()

    def cb(model, t, wall):
        values[slot * PROGRESS_FIELDS:(slot + 1) * PROGRESS_FIELDS] = progress_values(model, t)
        stderr_line(progress_line(names, values, time.monotonic() - t0), final=t >= model.sc.duration)
    return cb


_SHARED = None  # progress values of parallel runs (a multiprocessing.Array inherited by fork)
_PREPARED = None  # what the forked children run (inherited by fork: the geo reader cannot be pickled)


def _child(i: int) -> dict:
    prepared, zones, geoip = _PREPARED
    sc, pop, state, vchains = prepared[i]

    def cb(model, t, wall):
        _SHARED[i * PROGRESS_FIELDS:(i + 1) * PROGRESS_FIELDS] = progress_values(model, t)
    res = _run_one(sc, pop, state, zones, vchains, geoip, None, None, None, cb)
    res.pop("scenario")
    return res


def _parallel(prepared, zones, geoip, jobs: int, progress: bool) -> list[dict]:
    """Run the variants in forked processes at once (each with its own server): on a machine
    with more than one core the comparison takes about as long as one variant."""
    import multiprocessing
    from concurrent.futures import FIRST_EXCEPTION, ProcessPoolExecutor, wait

    global _SHARED, _PREPARED
    ctx = multiprocessing.get_context("fork")
    _SHARED = ctx.Array("d", PROGRESS_FIELDS * len(prepared), lock=False)
    _PREPARED = (prepared, zones, geoip)
    names = [p[0].name for p in prepared]
    t0 = time.monotonic()
    with ProcessPoolExecutor(max_workers=jobs, mp_context=ctx) as ex:
        futs = [ex.submit(_child, i) for i in range(len(prepared))]
        while True:
            done, pending = wait(futs, timeout=0.25, return_when=FIRST_EXCEPTION)
            if progress:
                stderr_line(progress_line(names, list(_SHARED), time.monotonic() - t0), final=not pending)
            if not pending or any(f.exception() for f in done):
                break
        runs = []
        for (sc, *_), f in zip(prepared, futs, strict=True):
            res = f.result()  # re-raises a child's error
            res["scenario"] = sc
            runs.append(res)
    _PREPARED = None
    if progress and sys.stderr.isatty():
        sys.stderr.write("\n")
    return runs


def _run_one(sc: Scenario, pop, state, zones, chains, geoip, server, control, token, progress) -> dict:
    regions = [r for r, reg in state.regions.items() if sc.service in reg.services]
    addr = {}
    for r in regions:
        for a in state.regions[r].services[sc.service].v4:
            addr[a] = r
    health = {}
    for spec in state.health:
        if spec.service == sc.service:
            health[spec.region] = (spec.interval, spec.fall, spec.rise)
    srv = None
    if server is None:
        srv = backend.start_server(zones, chains, geoip, seed=sc.seed)
        dns_addr, ctl = srv.dns, srv.control
    else:
        dns_addr = server
        ctl = backend.Control(control[0], control[1], token) if control else None
    needs_control = bool(sc.health["enabled"] or sc.feeds["enabled"]
                         or any(e.action in ("drain", "undrain", "feed") for e in sc.events))
    if needs_control and ctl is None:
        raise ConfigError([Problem(sc.file, None, None, "this scenario drains or feeds the server (health, feeds "
                                   "or drain events): give --control ADDR:PORT and a token, or let simulate "
                                   "start the server")])
    dns = Batch(dns_addr, source_prefix=sc.resolvers["ecs_source"])
    wall0 = time.monotonic()
    try:
        model = Model(sc, pop, regions, addr, dns, ctl, health, progress=progress)
        model.run()
    finally:
        dns.close()
        if srv is not None:
            srv.stop()
    wall = time.monotonic() - wall0
    extra = {
        "dns": {"lookups": model.lookups, "cache_hits": model.cache_hits, "queries": model.queries,
                "cache_hit_pct": round(100.0 * model.cache_hits / model.lookups, 2) if model.lookups else 0.0,
                "retransmits": dns.retransmits, "timeouts": dns.timeouts,
                "unknown_answers": model.unknown_answers, "server_seconds": round(dns.seconds, 3)},
        "control_calls": ctl.calls if ctl else 0, "control_errors": model.control_errors,
        "wall_seconds": round(wall, 2), "server": "started" if server is None else f"{dns_addr[0]}:{dns_addr[1]}",
    }
    res = report.analyze(model.log, pop.country, regions, sc, extra)
    res["log"] = model.log
    res["country_of"] = pop.country
    res["scenario"] = sc
    return res


def write_outputs(runs: list[dict], out: str, scenario_path: str, plots: bool = True) -> dict:
    os.makedirs(out, exist_ok=True)
    summaries = [r["summary"] for r in runs]
    text = report.format_table(summaries)
    Path(out, "summary.txt").write_text(text + "\n", encoding="utf-8")
    with open(Path(out, "summary.json"), "w", encoding="utf-8") as f:
        json.dump(summaries if len(summaries) > 1 else summaries[0], f, indent=1, sort_keys=False)
    files = {}
    for r in runs:
        p = str(Path(out, f"events-{_slug(r['summary']['variant'])}.csv"))
        report.write_events(p, r["log"], r["country_of"])
        files[r["summary"]["variant"]] = p
    written = {"summary": str(Path(out, "summary.txt")), "events": files}
    if plots:
        from filterdns.sim.plots import write_plots
        title = f"{Path(scenario_path).name}: {summaries[0]['clients']:,} clients, " \
                f"{summaries[0]['duration']:g} simulated s"
        written["plots"] = write_plots(runs, out, title)
    return written


def simulate_main(args) -> int:
    """``filterdns simulate``: exit 0 done, 1 bad scenario/config or server failure, 2 usage."""
    from filterdns.ops.api import load_token
    from filterdns.serve.address import parse_hostport

    try:
        server = parse_hostport(args.server) if args.server else None
        control = parse_hostport(args.control, names=True) if args.control else None
    except ValueError as e:
        print(f"filterdns simulate: {e}", file=sys.stderr)
        return 2
    if args.compare and args.variant:
        print("filterdns simulate: --compare and --variant are exclusive", file=sys.stderr)
        return 2
    token = None
    if control is not None:
        try:
            token = load_token(args.token_file)
        except Exception as e:  # noqa: BLE001 - any unreadable token file is a usage error
            print(f"filterdns simulate: {e}", file=sys.stderr)
            return 2
    if not args.no_plots:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            print("filterdns simulate: plots need matplotlib (pip install 'filterdns[sim]'), "
                  "or pass --no-plots", file=sys.stderr)
            return 2
    t0 = time.monotonic()
    try:
        runs = simulate(args.scenario, zones=args.zones, chains=args.chains, geoip=args.geoip, server=server,
                        control=control, token=token, compare=args.compare, variant=args.variant, out=args.out,
                        plots=not args.no_plots, progress=not args.quiet, jobs=args.jobs)
    except ConfigError as e:
        for p in e.problems:
            print(p, file=sys.stderr)
        print(f"{len(e.problems)} problem(s) found", file=sys.stderr)
        return 1
    except (RuntimeError, OSError) as e:
        print(f"filterdns simulate: {e}", file=sys.stderr)
        return 1
    summaries = [r["summary"] for r in runs]
    if args.json:
        print(json.dumps(summaries, indent=1))
    else:
        print(report.format_table(summaries))
        if args.out:
            names = ["summary.txt", "summary.json"] + [f"events-{_slug(s['variant'])}.csv" for s in summaries]
            if not args.no_plots:
                names += ["overview.png", "connected.png", "attempts.png", "reconnect.png"]
            print(f"wrote {', '.join(names)} in {args.out}/ ({time.monotonic() - t0:.1f} s)")
    return 0


def add_parser(sub) -> None:
    s = sub.add_parser("simulate", help="simulate clients through a region failure, against a real server",
                       description="Run a time-compressed, seeded client simulation (scenario YAML) whose DNS "
                                   "answers come from a real filterdns: print a summary table, write the event "
                                   "log and PNG plots.")
    s.add_argument("scenario", help="scenario file, e.g. scenarios/dublin-fails.yaml")
    s.add_argument("--zones", default=os.environ.get("FILTERDNS_ZONES", "zones"), metavar="DIR",
                   help="zone files of the server to start (default: %(default)s)")
    s.add_argument("--chains", default=os.environ.get("FILTERDNS_CHAINS", "chains"), metavar="DIR",
                   help="chains of the server to start; also maps answers to regions (default: %(default)s)")
    s.add_argument("--geoip", default=os.environ.get("FILTERDNS_GEOIP"), metavar="PATH",
                   help="geo database (default: the embedded DB-IP Lite country database)")
    s.add_argument("--server", metavar="ADDR:PORT", help="use this running server instead of starting one "
                   "(its --chains must be given, to map answers to regions)")
    s.add_argument("--control", metavar="ADDR:PORT", help="with --server: its control API, for drains and feeds")
    s.add_argument("--token-file", metavar="PATH", help="with --control: the control token "
                   "(or $FILTERDNS_CONTROL_TOKEN)")
    s.add_argument("--compare", action="store_true", help="run the base and every variant of the scenario, "
                   "side by side")
    s.add_argument("--variant", metavar="NAME", help="run only this variant")
    s.add_argument("--jobs", type=int, default=None, metavar="N",
                   help="variants run at once, each with its own server (default: one per variant, at most "
                        "the number of CPUs)")
    s.add_argument("--out", default="sim-out", metavar="DIR",
                   help="where summary.txt/json, events-*.csv and the PNGs go (default: %(default)s)")
    s.add_argument("--no-plots", action="store_true", help="do not draw (no matplotlib needed)")
    s.add_argument("--quiet", action="store_true", help="no progress line")
    s.add_argument("--json", action="store_true", help="print the summary as JSON")
    s.set_defaults(func=simulate_main)
