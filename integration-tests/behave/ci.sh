#!/usr/bin/env bash
# `make behave-ci` (part of `make test`): Patroni's acceptance scenarios at
# a fixed tag (v4.0.7, fetched from Debian's archive by
# scripts/fetch-patroni-features.sh) against pgwarden, every feature file
# but Citus's, compared with expected.tsv (the scenarios known not to pass,
# each with its reason in docs/behave.md).
#
# A scenario that fails and is not in expected.tsv fails the run, after its
# feature file has run once more (the scenarios of a feature file share
# one cluster, so the whole file is rerun); a scenario that failed and then
# passed is printed as such. Environment as run.sh's (PGWARDEN_BIN_DIR,
# BEHAVE_OUT, ...).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
out="${BEHAVE_OUT:-$root/target/behave}"

features="$("$root/scripts/fetch-patroni-features.sh")"
BEHAVE_OUT="$out" PATRONI_FEATURES="$features" "$here/run.sh"
if python3 "$here/check.py" "$here/expected.tsv" "$out/results.tsv" | tee "$out/check.txt"; then
    exit 0
fi
rerun="$(sed -n 's/^rerun: //p' "$out/check.txt")"
[ -n "$rerun" ] || exit 1
echo "behave: running once more: $rerun"
BEHAVE_OUT="$out/rerun" BEHAVE_FEATURES="$rerun" PATRONI_FEATURES="$features" "$here/run.sh"
python3 "$here/check.py" "$here/expected.tsv" "$out/results.tsv" "$out/rerun/results.tsv" | tee "$out/rerun/check.txt"
