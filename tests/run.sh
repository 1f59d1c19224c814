#!/usr/bin/env bash
# Install what the tests need, lint, then run the tests. CI (.ci/run) calls exactly this.
#   - Python packages: the project and its [test] extra (pytest, hypothesis, ruff) in .venv
#   - dig (Debian's dnsutils) when missing: the end-to-end tests drive the server with it
#   - delv (bind9-dnsutils) and unbound when missing: the DNSSEC tests validate with them
#   - dnssec-verify (bind9-utils) when missing: it checks the signed zone's export
#   - etcd (Debian's etcd-server) when missing: the fleet tests start a 3-member cluster
#   - chromium (Debian's chromium) when missing: the operator page's tests load /ui in it headless
#   - ruff check (rules and complexity limit in pyproject.toml) before pytest: a lint error fails
# Extra arguments go to pytest (e.g. tests/run.sh -k wire; tests/run.sh -m unit, the quick loop
# of in-process tests; tests/run.sh -m e2e, the ones that start servers).
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v dig >/dev/null 2>&1; then
  echo "tests/run.sh: installing dig (dnsutils)" >&2
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq && $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dnsutils >/dev/null
fi
# the DNSSEC tests validate answers with real validators: delv (bind9-dnsutils) and unbound
if ! command -v delv >/dev/null 2>&1 || { ! command -v unbound >/dev/null 2>&1 && [ ! -x /usr/sbin/unbound ]; }; then
  echo "tests/run.sh: installing delv (bind9-dnsutils) and unbound" >&2
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq && $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
    -o DPkg::Lock::Timeout=600 bind9-dnsutils unbound >/dev/null
fi

# dnssec-verify (bind9-utils) checks the signed zone that `filterdns dnssec export` prints
if ! command -v dnssec-verify >/dev/null 2>&1; then
  echo "tests/run.sh: installing dnssec-verify (bind9-utils)" >&2
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get -o DPkg::Lock::Timeout=600 update -qq
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 install -y -qq bind9-utils >/dev/null
fi

# Debian packages the deploy kit's tests run (deploy/): prometheus (prometheus, promtool),
# unbound (unbound, unbound-checkconf), systemd (systemd-analyze), util-linux (setpriv);
# chromium for the operator page's tests
deploy_pkgs=()
command -v promtool >/dev/null 2>&1 && command -v prometheus >/dev/null 2>&1 || deploy_pkgs+=(prometheus)
command -v unbound >/dev/null 2>&1 || [ -x /usr/sbin/unbound ] || deploy_pkgs+=(unbound)
command -v systemd-analyze >/dev/null 2>&1 || deploy_pkgs+=(systemd)
command -v setpriv >/dev/null 2>&1 || deploy_pkgs+=(util-linux)
# the operator page (/ui) is tested in headless Chromium, driven over its DevTools pipe
command -v chromium >/dev/null 2>&1 || deploy_pkgs+=(chromium)
if [ ${#deploy_pkgs[@]} -gt 0 ]; then
  echo "tests/run.sh: installing ${deploy_pkgs[*]}" >&2
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get -o DPkg::Lock::Timeout=600 update -qq
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 install -y -qq \
    --no-install-recommends "${deploy_pkgs[@]}" >/dev/null
fi

if ! command -v etcd >/dev/null 2>&1; then
  echo "tests/run.sh: installing etcd (etcd-server)" >&2
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get -o DPkg::Lock::Timeout=600 update -qq
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 install -y -qq etcd-server >/dev/null
  # the package starts a system etcd on the default ports; the tests start their own
  $SUDO systemctl disable --now etcd >/dev/null 2>&1 || true
fi

PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
.venv/bin/python -m pip install -q --disable-pip-version-check --upgrade pip >/dev/null
.venv/bin/python -m pip install -q --disable-pip-version-check -e '.[test]'

.venv/bin/ruff check --quiet filterdns tests bench
exec .venv/bin/python -m pytest "$@"
