#!/usr/bin/env bash
# Installs what pgwarden's build, tests and demo need on Debian/Ubuntu:
# PostgreSQL 15, etcd, HAProxy, protoc and promtool. Safe to run again: it
# does nothing when everything is already there.
set -euo pipefail

# curl and procps: the demo's checks and the tests' process listing; wrk and
# util-linux (taskset): the health-check benchmark; python3-venv: Patroni for
# the migration test and the side-by-side benchmark; libprotobuf-dev: the
# well-known .proto files (google/protobuf/descriptor.proto) etcd-client's
# build script compiles against, only a "Recommends" of protobuf-compiler and
# so missing with --no-install-recommends; shellcheck: the callback scripts;
# prometheus: its promtool checks and unit-tests the alert rules in
# deploy/monitoring/ (the server it also installs is not wanted: see below);
# chromium and chromium-driver: the status page's test loads /ui in a real
# headless browser; iproute2 (ip, tc) and nftables: the chaos run's network
# namespaces, partitions, packet loss and slow links (make chaos); pgbackrest:
# the backup tests (replicas restored from a repository, a point-in-time bootstrap).
# dnsmasq-base: a DNS server for the etcd SRV discovery test (only the binary;
# the package starts no service).
packages=(postgresql-15 pgbackrest etcd-server etcd-client haproxy protobuf-compiler libprotobuf-dev shellcheck curl procps keepalived wrk util-linux python3-venv prometheus chromium chromium-driver iproute2 nftables dnsmasq-base)
missing=()
for package in "${packages[@]}"; do
    dpkg -s "$package" >/dev/null 2>&1 || missing+=("$package")
done
if [ "${#missing[@]}" -gt 0 ]; then
    if [ "$(id -u)" -ne 0 ]; then
        echo "install-deps: missing ${missing[*]}; run as root (or: sudo $0)" >&2
        exit 1
    fi
    echo "install-deps: installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    # The package enables and starts a Prometheus server (port 9090) where
    # systemd runs; only promtool is wanted. A server that was there before
    # is left alone: this runs only when the package was just installed.
    if [[ " ${missing[*]} " == *" prometheus "* ]] && [ -d /run/systemd/system ]; then
        systemctl disable --now prometheus.service >/dev/null 2>&1 || true
    fi
fi
command -v cargo >/dev/null || { echo "install-deps: cargo (Rust stable) is required" >&2; exit 1; }
echo "install-deps: postgresql-15, etcd, haproxy, protoc, promtool, chromium and nftables are installed"
# Patroni from PyPI (pinned) in a virtual environment the postgres user can
# run: the migration test starts a Patroni cluster and moves it to pgwarden.
# PGWARDEN_SKIP_PATRONI=1 leaves it to the caller (`make bench` installs it
# while it builds).
if [ "${PGWARDEN_SKIP_PATRONI:-0}" != 1 ]; then
    "$(dirname "$0")/install-patroni.sh"
fi
