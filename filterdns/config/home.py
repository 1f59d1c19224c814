"""The config home: where ``zones/``, ``chains/`` and the durable state are found.

One function, ``resolve()``, answers "which directories does this command read", for
``serve``, ``check``, ``explain`` and anything else that takes the config options:

1. ``--zones DIR`` / ``--chains DIR`` (or ``$FILTERDNS_ZONES`` / ``$FILTERDNS_CHAINS``) name a
   directory each, as they always did; they win over the config home.
2. ``--config-dir DIR`` (or ``$FILTERDNS_CONFIG_DIR``): ``DIR/zones`` and ``DIR/chains``, and
   the state in ``DIR/var``.
3. Otherwise the current directory when ``./zones`` exists (a checkout: ``./zones``,
   ``./chains``, ``./var``), else the installed default ``/etc/filterdns`` (``zones/`` and
   ``chains/`` there, the state in ``/var/lib/filterdns``, as the FHS wants).

``--state-dir`` (or ``$FILTERDNS_STATE_DIR``) always wins for the state. ``filterdns init DIR``
writes the bundled example config (shipped in the package, ``filterdns/example``) into a home.

``missing()`` returns the message a command prints when a directory is absent: the absolute
path, how it was chosen, and the flags (or ``init``) that fix it.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

INSTALLED_HOME = "/etc/filterdns"
INSTALLED_STATE = "/var/lib/filterdns"


@dataclass(frozen=True)
class Home:
    zones: str
    chains: str
    state_dir: str
    how: str  # how the home was chosen, for messages: "--config-dir /x", "the current directory", ...
    zones_given: str | None = None  # "--zones" / "$FILTERDNS_ZONES" when set apart from the home
    chains_given: str | None = None


def add_arguments(p, state: bool = False) -> None:
    """The config-home options of a subcommand (``--config-dir``; ``--zones``/``--chains``
    override one directory each). Defaults are None: ``resolve()`` fills them in."""
    p.add_argument("--config-dir", default=None, metavar="DIR",
                   help="config home holding zones/ and chains/ (and var/ for the state) "
                        "(default: $FILTERDNS_CONFIG_DIR, else the current directory if ./zones "
                        f"exists, else {INSTALLED_HOME}); create one with `filterdns init DIR`")
    p.add_argument("--zones", default=None, metavar="DIR",
                   help="directory of RFC 1035 zone files named <zone>.zone (default: CONFIG_DIR/zones)")
    p.add_argument("--chains", default=None, metavar="DIR",
                   help="directory of regions, chains and dynamic records in YAML (default: CONFIG_DIR/chains)")
    if state:
        p.add_argument("--state-dir", default=None, metavar="DIR",
                       help="where drains, feed values and the audit log are kept across restarts "
                            f"(default: CONFIG_DIR/var; {INSTALLED_STATE} for the installed home {INSTALLED_HOME})")


def resolve(config_dir: str | None = None, zones: str | None = None, chains: str | None = None,
            state_dir: str | None = None, env: dict | None = None, cwd: str | None = None) -> Home:
    """The directories a command uses (see the module docstring for the order)."""
    env = os.environ if env is None else env
    cwd = os.getcwd() if cwd is None else cwd
    config_dir = config_dir or env.get("FILTERDNS_CONFIG_DIR") or None
    zones_given = "--zones" if zones else ("$FILTERDNS_ZONES" if env.get("FILTERDNS_ZONES") else None)
    chains_given = "--chains" if chains else ("$FILTERDNS_CHAINS" if env.get("FILTERDNS_CHAINS") else None)
    zones = zones or env.get("FILTERDNS_ZONES") or None
    chains = chains or env.get("FILTERDNS_CHAINS") or None
    state_dir = state_dir or env.get("FILTERDNS_STATE_DIR") or None
    if config_dir is not None:
        home, how, default_state = config_dir, f"--config-dir {_abs(config_dir, cwd)}", os.path.join(config_dir, "var")
    elif os.path.isdir(os.path.join(cwd, "zones")) or (zones and chains):
        home, how, default_state = ".", f"the current directory {cwd}", "var"
    else:
        home, how, default_state = INSTALLED_HOME, f"the installed default {INSTALLED_HOME} (no ./zones in {cwd})", INSTALLED_STATE
    return Home(zones=zones or os.path.join(home, "zones"), chains=chains or os.path.join(home, "chains"),
                state_dir=state_dir or default_state, how=how,
                zones_given=zones_given, chains_given=chains_given)


def _abs(path: str, cwd: str | None = None) -> str:
    return os.path.normpath(os.path.join(cwd or os.getcwd(), path))


def missing(home: Home, cwd: str | None = None) -> str | None:
    """A message naming the absent directory (absolute), how it was chosen and what fixes it;
    None if zones and chains both exist."""
    for what, path, flag, given in (("zones", home.zones, "--zones", home.zones_given),
                                    ("chains", home.chains, "--chains", home.chains_given)):
        if not os.path.isdir(path):
            how = f"given by {given}" if given else f"config home: {home.how}"
            return (f"{what} directory {_abs(path, cwd)} does not exist ({how}); use --config-dir DIR "
                    f"for a directory holding zones/ and chains/, or {flag} DIR; "
                    f"`filterdns init DIR` writes the example config there")
    return None


def example_dir():
    """The bundled example config (zones/, chains/) shipped inside the package."""
    return resources.files("filterdns") / "example"


def init(target: str | os.PathLike, force: bool = False) -> list[Path]:
    """Write the bundled example into ``target`` (zones/, chains/). Refuses to overwrite an
    existing file unless ``force``; returns the files written. Raises FileExistsError naming
    every file that is in the way."""
    target = Path(target)
    src = example_dir()
    plan: list[tuple[object, Path]] = []
    for sub in ("zones", "chains"):
        for entry in sorted(src.joinpath(sub).iterdir(), key=lambda e: e.name):
            if entry.is_file() and not entry.name.startswith("."):
                plan.append((entry, target / sub / entry.name))
    if not plan:
        raise FileNotFoundError(f"the bundled example config is missing from the package ({src})")
    in_way = [str(dst) for _, dst in plan if dst.exists()]
    if in_way and not force:
        raise FileExistsError("already there (use --force to overwrite): " + ", ".join(in_way))
    written = []
    for entry, dst in plan:
        dst.parent.mkdir(parents=True, exist_ok=True)
        tmp = dst.with_name(f".{dst.name}.tmp")
        with resources.as_file(entry) as real:
            shutil.copyfile(real, tmp)
        os.replace(tmp, dst)
        written.append(dst)
    return written
