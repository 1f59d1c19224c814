#!/usr/bin/env bash
# Install what the tests need, then run them all. CI (.ci/run) calls exactly this.
#   - Python packages: the project and its [test] extra, in a virtualenv at .venv
#   - dig (Debian's dnsutils) when missing: the end-to-end tests drive the server with it
# Extra arguments go to pytest (e.g. tests/run.sh -k wire).
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v dig >/dev/null 2>&1; then
  echo "tests/run.sh: installing dig (dnsutils)" >&2
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq && $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dnsutils >/dev/null
fi

PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
.venv/bin/python -m pip install -q --disable-pip-version-check --upgrade pip >/dev/null
.venv/bin/python -m pip install -q --disable-pip-version-check -e '.[test]'

exec .venv/bin/python -m pytest "$@"
