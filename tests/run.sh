#!/usr/bin/env bash
# Install everything the test suite needs, then run all of it.
#   bash tests/run.sh            # the whole suite
#   bash tests/run.sh -k since   # extra arguments go to pytest
# Installs, when missing: redis-server and chromium (Debian packages, via apt-get),
# and the Python package with its test extra (pytest, pytest-tornado, jsonschema, playwright).
# Never downloads a browser: the browser tests drive the Debian chromium.
set -euo pipefail
cd "$(dirname "$0")/.."

missing=()
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
if ((${#missing[@]})); then
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  echo "installing ${missing[*]} with apt-get" >&2
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

python3 -m pip install -q --disable-pip-version-check -e '.[test]'
exec python3 -m pytest "$@"
