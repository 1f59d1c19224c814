"""Start-up messages say what is wrong and where: a listen address in use names the address
and whether UDP or TCP; an IPv6 address that is not available names the address; a zones or
chains directory that cannot be read is reported as such (not as "no zone files")."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile

import pytest

from conftest import ROOT, free_port

pytestmark = pytest.mark.e2e

ENV = dict(os.environ, PYTHONPATH=str(ROOT))


def serve(tmp_path, *listen):
    args = [sys.executable, "-m", "filterdns", "serve", "--zones", str(ROOT / "zones"),
            "--chains", str(ROOT / "chains"), "--metrics", "off", "--control", "off",
            "--workers", "1", "--no-watch", "--state-dir", str(tmp_path / "st")]
    for x in listen:
        args += ["--listen", x]
    return subprocess.run(args, capture_output=True, text=True, timeout=60, env=ENV, cwd=tmp_path)


def test_udp_port_in_use_names_address_and_udp(tmp_path):
    port = free_port()
    taken = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    taken.bind(("127.0.0.1", port))
    try:
        out = serve(tmp_path, f"127.0.0.1:{port}")
    finally:
        taken.close()
    assert out.returncode == 1
    assert f"cannot listen on 127.0.0.1:{port} (UDP): address already in use" in out.stderr, out.stderr
    assert "Traceback" not in out.stderr


def test_tcp_port_in_use_names_address_and_tcp(tmp_path):
    port = free_port()
    taken = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    taken.bind(("127.0.0.1", port))
    taken.listen(1)
    try:
        out = serve(tmp_path, f"127.0.0.1:{port}")
    finally:
        taken.close()
    assert out.returncode == 1
    assert f"cannot listen on 127.0.0.1:{port} (TCP): address already in use" in out.stderr, out.stderr


def test_second_listen_address_in_use_is_the_one_named(tmp_path):
    ok, busy = free_port(), free_port()
    taken = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    taken.bind(("127.0.0.1", busy))
    try:
        out = serve(tmp_path, f"127.0.0.1:{ok}", f"127.0.0.1:{busy}")
    finally:
        taken.close()
    assert out.returncode == 1
    assert f"127.0.0.1:{busy} (UDP)" in out.stderr and f"127.0.0.1:{ok} (" not in out.stderr, out.stderr


def test_unavailable_ipv6_address_is_named(tmp_path):
    port = free_port()
    out = serve(tmp_path, f"[2001:db8::53]:{port}")  # documentation prefix: on no interface here
    assert out.returncode == 1
    assert f"cannot listen on [2001:db8::53]:{port} (UDP): address not available" in out.stderr, out.stderr
    assert "Traceback" not in out.stderr


def _check_without_privileges(zones: str, chains: str) -> tuple[int, str]:
    """``filterdns check`` where directory permissions apply. Root ignores them, so as root a
    forked child drops to nobody (the interpreter under /root cannot be run by nobody, hence
    a fork of this already-loaded process rather than a new one)."""
    argv = ["check", "--zones", zones, "--chains", chains]
    if os.geteuid() != 0:
        out = subprocess.run([sys.executable, "-m", "filterdns", *argv], capture_output=True,
                             text=True, timeout=60, env=ENV)
        return out.returncode, out.stderr
    from filterdns import cli
    from filterdns.config.build import build_state

    # import everything the child needs, now (nobody cannot read the interpreter's library):
    # the config stack and every subcommand's modules, which building the parser imports
    build_state(ROOT / "zones", ROOT / "chains")
    cli.build_parser()
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        sys.stderr = err = open(w, "w", closefd=False)
        try:
            os.setgroups([])
            os.setgid(65534)
            os.setuid(65534)
            code = cli.main(argv)
        except BaseException as e:  # noqa: BLE001
            print(f"child failed: {e!r}", file=err)
            code = 99
        err.flush()
        os._exit(code)
    os.close(w)
    with os.fdopen(r, "rb") as f:
        err = f.read().decode(errors="replace")
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status), err


@pytest.mark.parametrize("which", ["zones", "chains"])
def test_unreadable_config_directory_is_reported_as_unreadable(which):
    top = tempfile.mkdtemp(prefix="filterdns-perm-")
    try:
        os.chmod(top, 0o755)
        zones, chains = os.path.join(top, "zones"), os.path.join(top, "chains")
        shutil.copytree(ROOT / "zones", zones)
        shutil.copytree(ROOT / "chains", chains)
        for d in (top, zones, chains):
            for p in [d, *(os.path.join(d, n) for n in os.listdir(d))]:
                os.chmod(p, 0o755 if os.path.isdir(p) else 0o644)
        bad = zones if which == "zones" else chains
        os.chmod(bad, 0)
        code, err = _check_without_privileges(zones, chains)
        assert code == 1, err
        assert f"{bad}: {which} directory cannot be read: Permission denied" in err, err
        assert "no zone files" not in err and "Traceback" not in err
    finally:
        os.chmod(os.path.join(top, which), 0o755)
        shutil.rmtree(top)
