#!/usr/bin/env bash
# Installs a pinned Patroni (from PyPI) into a Python virtualenv that the
# `postgres` user can run, for the side-by-side benchmark and the migration
# test. Runs as root on Debian 12 / Ubuntu; safe to run again: it does nothing
# when the pinned version is already installed.
#
#   PATRONI_VENV      where the venv goes (default /var/tmp/pgwarden-patroni)
#   PATRONI_VERSION   the Patroni release (default: the pin below)
#
# The venv is built from Debian's /usr/bin/python3, not from whatever
# `python3` is first on PATH: a pyenv interpreter under /root is not
# executable by the postgres user, and the venv's bin/python is a symlink to
# the interpreter it was created with.
set -euo pipefail

PATRONI_VERSION="${PATRONI_VERSION:-4.1.5}"
PSYCOPG_VERSION="${PSYCOPG_VERSION:-3.3.9}"
VENV="${PATRONI_VENV:-/var/tmp/pgwarden-patroni}"
PYTHON=/usr/bin/python3

log() { echo "install-patroni: $*"; }

apt_install() {
    if [ "$(id -u)" -ne 0 ]; then
        echo "install-patroni: missing $*; run as root (or: sudo $0)" >&2
        exit 1
    fi
    log "installing $*"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

# 1. A system Python with venv and ensurepip (Debian splits them into python3-venv).
if [ ! -x "$PYTHON" ]; then
    apt_install python3 python3-venv
fi
if ! "$PYTHON" -c 'import venv, ensurepip' >/dev/null 2>&1; then
    apt_install python3-venv
fi

installed_version() {
    [ -x "$VENV/bin/python" ] || return 1
    "$VENV/bin/python" - <<'EOF' 2>/dev/null
import importlib.metadata as m
print(m.version("patroni"))
EOF
}

# 2. Skip everything when the pinned version is already there and usable.
if [ "$(installed_version || true)" = "$PATRONI_VERSION" ] \
    && "$VENV/bin/python" -c 'import psycopg, etcd' >/dev/null 2>&1; then
    log "patroni $PATRONI_VERSION already installed in $VENV"
else
    # A venv made from another interpreter (e.g. pyenv's under /root) is
    # unusable by postgres: rebuild it from Debian's python.
    if [ -e "$VENV/bin/python" ]; then
        target="$(readlink -f "$VENV/bin/python" || true)"
        case "$target" in
            /usr/bin/*) ;;
            *) log "removing $VENV (its python is $target)"; rm -rf "$VENV" ;;
        esac
    fi
    if [ ! -x "$VENV/bin/python" ]; then
        log "creating venv $VENV with $PYTHON ($("$PYTHON" --version 2>&1))"
        mkdir -p "$(dirname "$VENV")"
        "$PYTHON" -m venv "$VENV"
    fi
    # Let pip run without a cache that lands under /root, and quietly.
    export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
    log "installing patroni[etcd3,psycopg3]==$PATRONI_VERSION psycopg[binary]==$PSYCOPG_VERSION"
    "$VENV/bin/python" -m pip install -q --upgrade \
        "patroni[etcd3,psycopg3]==$PATRONI_VERSION" \
        "psycopg[binary]==$PSYCOPG_VERSION"
fi

# 3. Readable and executable by everyone (postgres runs it), including the
#    parent directories.
chmod -R a+rX "$VENV"
dir="$VENV"
while [ "$dir" != "/" ]; do
    chmod a+x "$dir" 2>/dev/null || true
    dir="$(dirname "$dir")"
done

# 4. Check it runs as postgres when that user exists.
if id postgres >/dev/null 2>&1 && [ "$(id -u)" -eq 0 ]; then
    runuser -u postgres -- "$VENV/bin/patroni" --version
    runuser -u postgres -- "$VENV/bin/patronictl" version >/dev/null 2>&1 || true
else
    "$VENV/bin/patroni" --version
fi
log "patroni: $VENV/bin/patroni, patronictl: $VENV/bin/patronictl"
