"""The etcd store against an etcd that wants credentials: user/password auth and TLS with
client certificates (certificates made by openssl in a temp dir). A wrong password or an
unknown CA refuses start-up with a message that says so, never a traceback."""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
import time
import urllib.request

import pytest

from conftest import free_port
from fleet_helpers import ETCD, api, start_instance

pytestmark = pytest.mark.e2e

if not shutil.which("etcd") or not shutil.which("openssl"):
    pytest.skip("etcd or openssl not installed (tests/run.sh installs etcd-server)", allow_module_level=True)


def _post(url, body, token=None, ctx=None):
    req = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST",
                                 headers={"Content-Type": "application/json",
                                          **({"Authorization": token} if token else {})})
    with urllib.request.urlopen(req, timeout=10, context=ctx) as r:
        return json.loads(r.read())


def _start_etcd(base, *extra, scheme="http"):
    c, p = free_port(), free_port()
    logf = open(base / "etcd.log", "ab")
    proc = subprocess.Popen([ETCD, "--name", "solo", "--data-dir", str(base / "solo.etcd"),
                             "--listen-client-urls", f"{scheme}://127.0.0.1:{c}",
                             "--advertise-client-urls", f"{scheme}://127.0.0.1:{c}",
                             "--listen-peer-urls", f"http://127.0.0.1:{p}",
                             "--initial-advertise-peer-urls", f"http://127.0.0.1:{p}",
                             "--initial-cluster", f"solo=http://127.0.0.1:{p}", "--logger", "zap",
                             "--log-level", "warn", "--listen-metrics-urls", "", *extra],
                            stdout=logf, stderr=subprocess.STDOUT)
    return proc, c


def _wait(pred, timeout=30):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if pred():
                return
        except Exception:  # noqa: BLE001 - not up yet
            pass
        time.sleep(0.1)
    raise AssertionError("timed out")


def test_user_and_password(tmp_path):
    proc, port = _start_etcd(tmp_path)
    url = f"http://127.0.0.1:{port}/v3"
    try:
        _wait(lambda: _post(f"{url}/maintenance/status", {}))
        _post(f"{url}/auth/user/add", {"name": "root", "password": "rootpw"})
        _post(f"{url}/auth/role/add", {"name": "root"})
        _post(f"{url}/auth/user/grant", {"user": "root", "role": "root"})
        _post(f"{url}/auth/enable", {})
        (tmp_path / "pw.txt").write_text("rootpw\n")
        (tmp_path / "bad.txt").write_text("nope\n")
        state = f"etcd://127.0.0.1:{port}/auth"
        bad = start_instance(tmp_path, "bad", state, "--etcd-user", "root", "--etcd-password-file",
                             str(tmp_path / "bad.txt"), wait=False)
        assert bad.proc.wait(30) == 1
        assert "authentication failed" in bad.log() and "Traceback" not in bad.log(), bad.log()
        sp = start_instance(tmp_path, "good", state, "--etcd-user", "root", "--etcd-password-file",
                            str(tmp_path / "pw.txt"))
        try:
            status, body = api(sp, "POST", "/regions/eu-west-2/drain", {"service": "wss", "reason": "auth"})
            assert status == 200, body
            token = _post(f"{url}/auth/authenticate", {"name": "root", "password": "rootpw"})["token"]
            got = _post(f"{url}/kv/range", {"key": base64.b64encode(b"/auth/state").decode()}, token=token)
            doc = json.loads(base64.b64decode(got["kvs"][0]["value"]))
            assert doc["drains"][0]["region"] == "eu-west-2"
        finally:
            sp.stop()
    finally:
        proc.terminate()
        proc.wait(10)


def _openssl(*args, cwd):
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def _certs(d):
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.pem",
             "-days", "2", "-subj", "/CN=test-ca", cwd=d)
    (d / "san.cnf").write_text("subjectAltName=IP:127.0.0.1\n")
    for name in ("server", "client"):
        _openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key", "-out", f"{name}.csr",
                 "-subj", f"/CN={name}", cwd=d)
        _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
                 "-out", f"{name}.pem", "-days", "2", "-extfile", "san.cnf", cwd=d)
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "other.key", "-out", "other.pem",
             "-days", "2", "-subj", "/CN=other-ca", cwd=d)


def test_tls_with_client_certificates(tmp_path):
    certs = tmp_path / "certs"
    certs.mkdir()
    _certs(certs)
    proc, port = _start_etcd(tmp_path, "--cert-file", str(certs / "server.pem"), "--key-file",
                             str(certs / "server.key"), "--client-cert-auth", "--trusted-ca-file",
                             str(certs / "ca.pem"), scheme="https")
    try:
        import ssl
        ctx = ssl.create_default_context(cafile=str(certs / "ca.pem"))
        ctx.load_cert_chain(str(certs / "client.pem"), str(certs / "client.key"))
        _wait(lambda: _post(f"https://127.0.0.1:{port}/v3/maintenance/status", {}, ctx=ctx))
        state = f"etcds://127.0.0.1:{port}/tls"
        client = ["--etcd-cert", str(certs / "client.pem"), "--etcd-key", str(certs / "client.key")]
        wrong = start_instance(tmp_path, "wrong", state, "--etcd-ca", str(certs / "other.pem"), *client, wait=False)
        assert wrong.proc.wait(30) == 1
        assert "certificate verify failed" in wrong.log() and "Traceback" not in wrong.log(), wrong.log()
        sp = start_instance(tmp_path, "tls", state, "--etcd-ca", str(certs / "ca.pem"), *client)
        try:
            status, body = api(sp, "POST", "/regions/eu-west-2/drain", {"service": "wss", "reason": "tls"})
            assert status == 200, body
            assert api(sp, "GET", "/regions", token=None)[1]["store"]["up"] is True
        finally:
            sp.stop()
    finally:
        proc.terminate()
        proc.wait(10)
