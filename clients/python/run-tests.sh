#!/usr/bin/env bash
# Tests of the Python client against a real fanoutd.
#
#   bash clients/python/run-tests.sh [pytest args…]
#
# Creates the venv .build/python-venv (if missing), installs pytest from PyPI
# and this package (pip install clients/python), builds libfanout if needed
# (make -C clients/c), then runs pytest with FANOUTD (default: the debug
# fanoutd in .build/debug). Any failure, including not being able to install
# pytest, stops the script with a non-zero status.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
venv="${FANOUT_PYTHON_VENV:-$repo/.build/python-venv}"
python="${PYTHON:-python3}"
export FANOUTD="${FANOUTD:-$repo/.build/debug/fanoutd}"

fail() { echo "clients/python: $*" >&2; exit 1; }

if [ ! -x "$venv/bin/python" ]; then
    echo "== creating $venv"
    mkdir -p "$(dirname "$venv")"
    "$python" -m venv "$venv" || fail "cannot create a venv with $python (on Debian: apt-get install python3-venv)"
fi
pip=("$venv/bin/python" -m pip --disable-pip-version-check)

echo "== pip install pytest"
"${pip[@]}" install --quiet pytest || fail "cannot install pytest from PyPI (no network, or no proxy?)"
"$venv/bin/python" -c 'import pytest' || fail "pytest is not importable in $venv after installing it"

echo "== make -C clients/c"
make -C "$repo/clients/c" || fail "cannot build libfanout (make -C clients/c)"
[ -e "$repo/clients/c/libfanout.so.1" ] || fail "make -C clients/c did not produce libfanout.so.1"

echo "== pip install clients/python"
rm -rf "$here/build"  # setuptools reuses build/lib: no stale modules in the wheel
"${pip[@]}" install --quiet --force-reinstall --no-deps "$here" || fail "cannot install clients/python"

[ -x "$FANOUTD" ] || fail "no fanoutd at $FANOUTD: run 'swift build' (or set FANOUTD)"

echo "== pytest (FANOUTD=$FANOUTD)"
# From the tests directory, so that `import fanout` is the installed package, not the source tree.
cd "$here/tests"
exec "$venv/bin/python" -m pytest -p no:cacheprovider "$@" .
