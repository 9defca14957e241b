#!/usr/bin/env bash
# Runs Patroni's own behave acceptance scenarios (the `features/` directory of
# Patroni's repository) against pgwarden: patroni.py and patronictl.py here
# stand in for Patroni's entry scripts and start pgwarden's services and
# pgwardenctl instead (README.md beside this file, docs/behave.md).
#
#   run.sh [FEATURES_DIR]      or PATRONI_FEATURES=FEATURES_DIR run.sh
#
# FEATURES_DIR is the `features` directory of a Patroni checkout (or of
# the release tarball scripts/fetch-patroni-features.sh unpacks, which
# `make behave-ci` uses: ci.sh beside this file); its parent must hold
# Patroni's postgres0.yml, which the scenarios start from. Without it the
# run is skipped (exit 0).
#
# Environment:
#   PATRONI_FEATURES        the features directory (or the first argument)
#   BEHAVE_FEATURES         feature names to run, space-separated (default:
#                           every one but Citus and Kubernetes, whose
#                           back-ends pgwarden does not have)
#   BEHAVE_VENV             Python venv with Patroni (whose modules the steps
#                           import), behave and coverage; made or completed by
#                           scripts/install-patroni.sh and pip (default
#                           /var/tmp/pgwarden-patroni)
#   PGWARDEN_BIN_DIR        pgwarden's binaries; unset: `cargo build` them
#   BEHAVE_WORK             scratch directory, emptied first (default
#                           /var/tmp/pgwarden-behave-run)
#   BEHAVE_OUT              reports and results.tsv (default target/behave)
#   BEHAVE_FEATURE_TIMEOUT  seconds one feature file may take (default 1800)
#   BEHAVE_LOCK             a lock file held while a feature file runs, so
#                           other heavy jobs interleave between feature files
#                           (default /tmp/pgwarden-heavy.lock)
#
# Needs root (a network namespace per feature file; the scenarios run as the
# `postgres` user inside it), PostgreSQL 15, etcd and iproute2. Exit status:
# 0 when it ran (whatever the scenarios did) or was skipped, 1 when it could
# not run.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
features="${PATRONI_FEATURES:-${1:-}}"

say() { echo "behave: $*"; }

if [ -z "$features" ] || [ ! -d "$features" ]; then
    say "skipped: no features directory (clone https://github.com/patroni/patroni at tag v4.1.5 and set PATRONI_FEATURES=<clone>/features; docs/behave.md)"
    exit 0
fi
features="$(cd "$features" && pwd)"
if [ ! -f "$features/environment.py" ] || [ ! -f "$features/../postgres0.yml" ]; then
    say "$features is not Patroni's features directory (no environment.py, or no postgres0.yml beside it)" >&2
    exit 1
fi
if [ "$(id -u)" -ne 0 ]; then
    say "needs root: each feature file runs in its own network namespace, as the postgres user" >&2
    exit 1
fi
id postgres >/dev/null 2>&1 || { say "no postgres user (apt-get install postgresql-15)" >&2; exit 1; }

# BEHAVE_PG_BIN: another installation's bin directory (default: Debian's 15).
pg_bin="${BEHAVE_PG_BIN:-/usr/lib/postgresql/15/bin}"
for tool in "$pg_bin/postgres" "$(command -v etcd || true)" "$(command -v ip || true)" "$(command -v flock || true)"; do
    [ -n "$tool" ] && [ -x "$tool" ] || { say "missing PostgreSQL 15, etcd, ip or flock (make setup)" >&2; exit 1; }
done

venv="${BEHAVE_VENV:-/var/tmp/pgwarden-patroni}"
work="${BEHAVE_WORK:-/var/tmp/pgwarden-behave-run}"
out="${BEHAVE_OUT:-$root/target/behave}"
feature_timeout="${BEHAVE_FEATURE_TIMEOUT:-1800}"
lock="${BEHAVE_LOCK:-/tmp/pgwarden-heavy.lock}"
BEHAVE_VERSION=1.3.3
COVERAGE_VERSION=7.18.0

# 1. Python: Patroni (the steps import patroni.psycopg, patroni.request and
#    patroni.dcs.etcd3), behave and coverage (the scenarios start every
#    process under `python -m coverage run`).
PATRONI_VENV="$venv" "$root/scripts/install-patroni.sh"
if ! "$venv/bin/python" - "$BEHAVE_VERSION" "$COVERAGE_VERSION" <<'EOF' >/dev/null 2>&1
import importlib.metadata as m, sys
assert m.version("behave") == sys.argv[1] and m.version("coverage") == sys.argv[2]
EOF
then
    say "installing behave==$BEHAVE_VERSION coverage==$COVERAGE_VERSION into $venv"
    PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1 \
        "$venv/bin/python" -m pip install -q "behave==$BEHAVE_VERSION" "coverage==$COVERAGE_VERSION"
    chmod -R a+rX "$venv"
fi

# 2. pgwarden's binaries, copied so that a build during the run changes
#    nothing under the scenarios' feet.
if [ -z "${PGWARDEN_BIN_DIR:-}" ]; then
    (cd "$root" && ${CARGO:-cargo} build --workspace --bins)
    PGWARDEN_BIN_DIR="$root/target/debug"
fi

# 3. The scratch tree the scenarios run in: a copy of the features, Patroni's
#    postgres0.yml, and our entry scripts in place of Patroni's. Everything is
#    the postgres user's; TMPDIR keeps its sockets and pgpass files out of /tmp.
rm -rf "$work"
mkdir -p "$work/bin" "$work/tmp" "$work/home" "$out/reports"
cp -r "$features" "$work/features"
rm -rf "$work/features/output"
cp "$features/../postgres0.yml" "$work/"
cp "$here/patroni.py" "$here/patronictl.py" "$work/"
# The steps import Patroni's package (its psycopg and REST client wrappers,
# its etcd3 client); in Patroni's checkout the package directory beside
# patroni.py is found before the script, so it goes here too.
ln -s "$(cd / && "$venv/bin/python" -c 'import os, patroni; print(os.path.dirname(patroni.__file__))')" "$work/patroni"
for binary in pgwarden-agent pgwarden-health pgwarden-controller pgwardenctl; do
    cp "$PGWARDEN_BIN_DIR/$binary" "$work/bin/"
done
chown -R postgres:postgres "$work"
dir="$work"
while [ "$dir" != "/" ]; do chmod a+x "$dir" 2>/dev/null || true; dir="$(dirname "$dir")"; done

if [ -n "${BEHAVE_FEATURES:-}" ]; then
    read -r -a names <<< "$BEHAVE_FEATURES"
else
    names=()
    for file in "$work"/features/*.feature; do
        name="$(basename "$file" .feature)"
        case "$name" in
            citus|bootstrap_labels) ;;   # Citus; Kubernetes only
            *) names+=("$name") ;;
        esac
    done
fi

# Namespaces of runs that died without cleaning up (their pid is gone).
for ns in $(ip netns list 2>/dev/null | awk '/^pgwarden-behave-/ {print $1}'); do
    pid="${ns##*-}"
    if ! kill -0 "$pid" 2>/dev/null; then
        ip netns pids "$ns" 2>/dev/null | xargs -r kill -KILL 2>/dev/null || true
        ip netns del "$ns" 2>/dev/null || true
    fi
done

ns="pgwarden-behave-$$"
kill_namespace() {
    # Every process still in the namespace is ours: etcd, PostgreSQL,
    # pgwarden's services and the wrappers.
    local left
    for _ in 1 2 3 4 5 6 7 8 9 10; do
        left="$(ip netns pids "$ns" 2>/dev/null || true)"
        [ -z "$left" ] && break
        echo "$left" | xargs -r kill -KILL 2>/dev/null || true
        sleep 0.5
    done
    ip netns del "$ns" 2>/dev/null || true
}
trap kill_namespace EXIT

reports=()
commit="$(git -C "$root" rev-parse --short HEAD 2>/dev/null || echo unknown)"
say "pgwarden $commit, binaries from $PGWARDEN_BIN_DIR; features from $features; ${#names[@]} feature files"
for name in "${names[@]}"; do
    [ -f "$work/features/$name.feature" ] || { say "no feature file $name.feature" >&2; exit 1; }
    report="$out/reports/$name.json"
    rm -f "$report"
    ip netns add "$ns"
    ip -n "$ns" link set lo up
    say "$name: waiting for $lock"
    started=$(date +%s)
    status=0
    # The lock is held for one feature file only, so other heavy jobs on the
    # machine can run between feature files.
    flock -o "$lock" timeout -k 30 "$feature_timeout" \
        ip netns exec "$ns" runuser -u postgres -- env -i \
            PATH="$pg_bin:$venv/bin:/usr/local/bin:/usr/bin:/bin" \
            HOME="$work/home" TMPDIR="$work/tmp" LANG=C.UTF-8 \
            DCS=etcd3 PGWARDEN_BIN_DIR="$work/bin" \
            bash -c 'cd "$1" && exec "$2" -m behave --no-capture --format plain --outfile "$3" \
                         --format json --outfile "$4" "features/$5.feature"' \
            behave "$work" "$venv/bin/python" "$work/$name.log" "$work/$name.json" "$name" \
        || status=$?
    kill_namespace
    [ -f "$work/$name.json" ] && cp "$work/$name.json" "$report"
    [ -f "$work/$name.log" ] && cp "$work/$name.log" "$out/reports/$name.log"
    # Patroni's environment.py keeps a failed feature's logs in
    # features/output/<feature>_failed.
    if [ -d "$work/features/output" ]; then
        rm -rf "$out/output/$name"
        mkdir -p "$out/output/$name"
        cp -r "$work/features/output/." "$out/output/$name/" 2>/dev/null || true
    fi
    say "$name: behave exited with $status after $(( $(date +%s) - started )) s"
    reports+=("$report")
done

"$venv/bin/python" "$here/summarize.py" "$out/results.tsv" "${reports[@]}"
say "reports, logs and the scenarios' output in $out"
