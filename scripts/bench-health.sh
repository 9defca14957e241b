#!/usr/bin/env bash
# Health-check benchmark: latency and throughput of GET /primary on node1 of
# the demo cluster (`make demo` first), with pgwarden-health pinned to one
# core and wrk on the other. Bounded: 10 s, 16 connections, loopback only.
set -euo pipefail
cd "$(dirname "$0")/.."
DEMO_DIR=${PGWARDEN_DEMO_DIR:-/tmp/pgwarden-demo}
URL=${1:-http://127.0.0.1:8008/primary}
command -v wrk >/dev/null || { [ "$(id -u)" -eq 0 ] && apt-get install -y -qq wrk >/dev/null; }
command -v wrk >/dev/null || { echo "bench-health: wrk is required (apt-get install wrk)" >&2; exit 1; }
pid=$(cat "$DEMO_DIR/node1/health.pid" 2>/dev/null || true)
[ -n "$pid" ] && kill -0 "$pid" 2>/dev/null || { echo "bench-health: the demo is not running (make demo)" >&2; exit 1; }
code=$(curl -s -o /dev/null -w '%{http_code}' "$URL")
echo "pgwarden-health (pid $pid) on one core; $URL answers $code"
taskset -a -pc 0 "$pid" >/dev/null
trap 'taskset -a -pc 0-$(($(nproc) - 1)) "$pid" >/dev/null 2>&1 || true' EXIT
taskset -c 1 wrk -t1 -c16 -d10s --latency "$URL" | grep -E "Requests/sec|50%|99%|Latency  |requests in"
echo "memory after the run: $(ps -o rss= -p "$pid" | awk '{printf "%.1f MiB", $1/1024}')"
