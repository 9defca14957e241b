#!/usr/bin/env bash
# Checks the monitoring assets in deploy/monitoring/: the alert rules with
# `promtool check rules`, their unit tests with `promtool test rules`, and
# the Grafana dashboard with check_dashboard.py (JSON, grid, targets,
# variables, and every metric name in the dashboard, the rules and the
# tests is one pgwarden exports); the dashboard's queries then go through
# promtool's PromQL parser too. Prints one line per check and stops with a
# non-zero exit at the first failure, showing the tool's output.
#
#     deploy/monitoring/check.sh               # exported names read from crates/health-api/src
#     deploy/monitoring/check.sh scrape.txt    # ... from a real scrape or a list of names:
#                                              # curl -s http://node1:8008/metrics > scrape.txt
#
# `make test` and `make monitoring-check` run it; promtool comes with
# Debian's `prometheus` package (scripts/install-deps.sh installs it).
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
metrics=${1:-}
if [ -n "$metrics" ]; then
    [ -f "$metrics" ] || { echo "FAILED: $metrics: no such file (a /metrics scrape or a list of names)" >&2; exit 1; }
    metrics=$(realpath "$metrics")
fi
cd "$repo"
work=$(mktemp -d "${TMPDIR:-/tmp}/check-monitoring.XXXXXX")
trap 'rm -rf "$work"' EXIT

ok() { printf 'ok: %s (%s)\n' "$1" "$2"; }
# fail FILE WHAT [OUTPUT]
fail() {
    printf 'FAILED: %s (%s)\n' "$1" "$2" >&2
    if [ -n "${3:-}" ]; then printf '%s\n' "$3" | sed 's/^/    /' >&2; fi
    exit 1
}

rules=deploy/monitoring/pgwarden-alerts.yml
tests=deploy/monitoring/pgwarden-alerts.test.yml
dashboard=deploy/monitoring/pgwarden-dashboard.json

command -v promtool >/dev/null ||
    fail "$rules" "promtool is not installed; scripts/install-deps.sh installs it (Debian package prometheus)"
command -v python3 >/dev/null || fail "$dashboard" "python3 is not installed"

if ! out=$(promtool check rules "$rules" 2>&1); then
    fail "$rules" "promtool check rules" "$out"
fi
ok "$rules" "promtool check rules: $(grep -o '[0-9]* rules found' <<<"$out")"

# promtool reads rule_files relative to the test file's directory.
if ! out=$(cd deploy/monitoring && promtool test rules "$(basename "$tests")" 2>&1); then
    fail "$tests" "promtool test rules" "$out"
fi
ok "$tests" "promtool test rules: passed"

args=(--promql-rules "$work/dashboard-queries.yml")
if [ -n "$metrics" ]; then args+=(--metrics "$metrics"); else args+=(--source crates/health-api/src); fi
if ! out=$(python3 deploy/monitoring/check_dashboard.py "${args[@]}" "$dashboard" "$rules" "$tests" 2>&1); then
    fail deploy/monitoring "check_dashboard.py" "$out"
fi
printf '%s\n' "$out"

if ! out=$(promtool check rules "$work/dashboard-queries.yml" 2>&1); then
    fail "$dashboard" "promtool's PromQL parser on the dashboard's queries" "$out"
fi
ok "$dashboard" "promtool parses its $(grep -o '[0-9]* rules found' <<<"$out" | cut -d' ' -f1) queries"
