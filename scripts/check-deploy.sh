#!/usr/bin/env bash
# Checks every example in deploy/ with the tool that reads it in production:
# haproxy -c on the HAProxy configs, systemd-analyze verify on the systemd
# units, keepalived -t on keepalived.conf, and for the YAML files (etcd and
# node configs) a parse plus the checks the tools themselves do not offer
# offline, and the callback scripts (bash -n, shellcheck). Prints one line
# per checked file and stops with a non-zero exit at the first failure,
# showing the tool's output.
#
#     scripts/check-deploy.sh
#     PGWARDEN_BIN_DIR=target/debug scripts/check-deploy.sh
#
# With PGWARDEN_BIN_DIR, the units are verified against the real pgwarden
# binaries from that directory (and the options their command lines use
# must appear in the binary's --help), and every node config goes through
# `pgwarden-agent --validate-config`. Without it, stub executables stand in
# for the binaries and the node configs are checked against
# crates/config/keys.tsv only; the output says so.
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo"
work=$(mktemp -d "${TMPDIR:-/tmp}/check-deploy.XXXXXX")
trap 'rm -rf "$work"' EXIT

ok() { printf 'ok: %s (%s)\n' "$1" "$2"; }
skipped() { printf 'skipped: %s\n' "$1"; }
# fail FILE WHAT [OUTPUT]
fail() {
    printf 'FAILED: %s (%s)\n' "$1" "$2" >&2
    if [ -n "${3:-}" ]; then printf '%s\n' "$3" | sed 's/^/    /' >&2; fi
    exit 1
}
require_tool() {
    command -v "$1" >/dev/null || fail "$2" "$1 is not installed; scripts/install-deps.sh installs it"
}
require_file() {
    [ -f "$1" ] || fail "$1" "missing"
}

bin_dir=${PGWARDEN_BIN_DIR:-}
if [ -n "$bin_dir" ]; then
    bin_dir=$(cd "$bin_dir" && pwd) || fail "PGWARDEN_BIN_DIR=$PGWARDEN_BIN_DIR" "not a directory"
fi

# --- HAProxy ---
# -dW turns warnings into errors: a config that HAProxy accepts with a warning
# (a missing timeout, an ignored keyword) is not an example to copy.
haproxy_configs=(deploy/haproxy/*.cfg)
require_tool haproxy "${haproxy_configs[0]}"
for f in "${haproxy_configs[@]}"; do
    require_file "$f"
    if ! out=$(haproxy -c -dW -f "$f" 2>&1); then
        fail "$f" "haproxy -c -dW" "$out"
    fi
    ok "$f" "haproxy -c -dW: valid, no warnings"
done

# --- systemd units ---
# systemd-analyze verify refuses a unit whose Exec*= command does not exist,
# and with --root it looks for that command inside the root. So the units go
# into a scratch root (with a copy of the host's own units, which provide
# network-online.target, multi-user.target and the default dependencies),
# next to the commands they run: the pgwarden binaries from PGWARDEN_BIN_DIR
# (hard-linked or copied: a symlink to an absolute path would be resolved
# inside the root) or stubs, and stubs for the other commands once the host
# shows they exist where the units expect them (/bin/kill, /usr/bin/etcd).
# verify exits 0 on an unknown key or a bad value ("ignoring"), so any output
# counts as a failure.
units=(deploy/systemd/*.service deploy/systemd/*.target deploy/etcd/*.service)
require_tool systemd-analyze "${units[0]}"
root=$work/root
mkdir -p "$root/etc/systemd/system" "$root/usr/lib/systemd" "$root/usr/bin" "$root/usr/sbin"
for d in /usr/lib/systemd/system /lib/systemd/system; do
    if [ -d "$d" ]; then
        cp -a "$d" "$root/usr/lib/systemd/system"
        break
    fi
done
[ -d "$root/usr/lib/systemd/system" ] || fail "${units[0]}" "no system unit directory on this host"
ln -s usr/bin "$root/bin"
ln -s usr/sbin "$root/sbin"
ln -s usr/lib "$root/lib"
for u in "${units[@]}"; do
    require_file "$u"
    cp "$u" "$root/etc/systemd/system/"
done

# Each unit's commands: the first word of every Exec*= line, without the
# prefixes systemd allows (-, @, :, +, !).
exec_lines() { sed -n 's/^Exec[A-Za-z]*=[-@:+!]*//p' "$1"; }
binaries_note="stub pgwarden binaries: PGWARDEN_BIN_DIR not set"
[ -n "$bin_dir" ] && binaries_note="pgwarden binaries from $bin_dir, options checked"
for u in "${units[@]}"; do
    while read -r cmd args; do
        target=$root$cmd
        [ -e "$target" ] && continue
        mkdir -p "$(dirname "$target")"
        case $(basename "$cmd") in
        pgwarden-* | pgwardenctl)
            if [ -n "$bin_dir" ]; then
                real=$bin_dir/$(basename "$cmd")
                [ -x "$real" ] || fail "$u" "$real does not exist; build it first"
                ln "$real" "$target" 2>/dev/null || cp "$real" "$target"
            else
                printf '#!/bin/sh\nexit 0\n' >"$target"
                chmod +x "$target"
            fi
            ;;
        *)
            [ -x "$cmd" ] || fail "$u" "$cmd is not an executable on this host"
            printf '#!/bin/sh\nexit 0\n' >"$target"
            chmod +x "$target"
            ;;
        esac
    done < <(exec_lines "$u")
done
for u in "${units[@]}"; do
    name=$(basename "$u")
    rc=0
    out=$(systemd-analyze verify --root="$root" --man=no "$root/etc/systemd/system/$name" 2>&1) || rc=$?
    if [ "$rc" -ne 0 ] || [ -n "$out" ]; then
        fail "$u" "systemd-analyze verify, exit $rc" "$out"
    fi
    # The real binaries must know every option the unit passes them (the
    # option names are only known to the binary, not to systemd).
    if [ -n "$bin_dir" ]; then
        while read -r cmd args; do
            case $(basename "$cmd") in pgwarden-* | pgwardenctl) ;; *) continue ;; esac
            help=$("$bin_dir/$(basename "$cmd")" --help 2>&1) || fail "$u" "$cmd --help failed" "$help"
            for arg in $args; do
                case $arg in
                --*)
                    grep -q -E -e "(^|[^[:alnum:]-])${arg%%=*}([^[:alnum:]-]|\$)" <<<"$help" ||
                        fail "$u" "$(basename "$cmd") has no option ${arg%%=*} (not in its --help)"
                    ;;
                esac
            done
        done < <(exec_lines "$u")
    fi
    case $name in
    pgwarden*) ok "$u" "systemd-analyze verify; $binaries_note" ;;
    *) ok "$u" "systemd-analyze verify" ;;
    esac
done

# --- keepalived ---
# keepalived -t exits 0 on a missing file and prints problems without always
# failing, so the file must exist and any output counts as a failure. It also
# refuses an interface this host does not have: if eth0 (the example's) is
# missing, the check runs on a copy naming a local multicast interface.
f=deploy/keepalived/keepalived.conf
require_file "$f"
if ! command -v keepalived >/dev/null; then
    skipped "keepalived not installed ($f)"
else
    conf=$f
    note="keepalived -t"
    missing=""
    # shellcheck disable=SC2013 # interface names are single words
    for iface in $(sed -n -e 's/^[[:space:]]*interface[[:space:]]\+\([^[:space:]]\+\).*/\1/p' \
        -e 's/^[[:space:]]*[0-9][^#]*[[:space:]]dev[[:space:]]\+\([^[:space:]]\+\).*/\1/p' "$f" | sort -u); do
        [ -e "/sys/class/net/$iface" ] || missing="$missing $iface"
    done
    if [ -n "$missing" ]; then
        local_iface=""
        for dev in /sys/class/net/*; do
            flags=$(cat "$dev/flags" 2>/dev/null || echo 0)
            # IFF_MULTICAST: VRRP advertisements are multicast by default.
            if [ "$(basename "$dev")" != lo ] && (((flags & 0x1000) != 0)); then
                local_iface=$(basename "$dev")
                break
            fi
        done
        if [ -z "$local_iface" ]; then
            skipped "$f: no multicast interface on this host to stand in for${missing}"
            conf=""
        else
            conf=$work/keepalived.conf
            sed_args=()
            for iface in $missing; do sed_args+=(-e "s/\b$iface\b/$local_iface/g"); done
            sed "${sed_args[@]}" "$f" >"$conf"
            note="keepalived -t on a copy: interface$missing, not on this host, replaced by $local_iface"
        fi
    fi
    if [ -n "$conf" ]; then
        rc=0
        out=$(keepalived -t -f "$conf" 2>&1) || rc=$?
        if [ "$rc" -ne 0 ] || [ -n "$out" ]; then
            fail "$f" "keepalived -t, exit $rc" "$out"
        fi
        ok "$f" "$note"
    fi
fi

# --- YAML: etcd and node configs ---
etcd_configs=(deploy/etcd/*.conf.yml)
node_configs=(deploy/pgwarden.yml deploy/nodes/*.yml)
for f in "${etcd_configs[@]}" "${node_configs[@]}"; do require_file "$f"; done

# etcd 3.4 ignores unknown keys in --config-file silently, and starting it is
# no check here (it would bind and call the 10.0.0.x peers). Its binary holds
# the name of every key it reads as a struct tag, so a misspelt key is caught
# by comparing against those.
etcd_keys=$work/etcd-keys
if command -v etcd >/dev/null; then
    grep -a -o 'json:"[a-z0-9-]*"' "$(command -v etcd)" | sed 's/^json:"\(.*\)"$/\1/' | sort -u >"$etcd_keys"
fi

if ! python3 -c 'import yaml' 2>/dev/null; then
    for f in "${etcd_configs[@]}" "${node_configs[@]}"; do
        skipped "$f: python3 with the yaml module is not available to parse it"
    done
else
    python3 - "$etcd_keys" crates/config/keys.tsv "${etcd_configs[*]}" "${node_configs[*]}" <<'PY' || exit 1
import re
import sys

import yaml

etcd_keys_file, keys_tsv, etcd_files, node_files = sys.argv[1:5]
etcd_files, node_files = etcd_files.split(), node_files.split()


def fail(path, what):
    print(f"FAILED: {path} ({what})", file=sys.stderr)
    sys.exit(1)


def load(path):
    try:
        with open(path) as f:
            doc = yaml.safe_load(f)
    except yaml.YAMLError as e:
        fail(path, f"YAML: {e}")
    if not isinstance(doc, dict):
        fail(path, "not a YAML mapping")
    return doc


# etcd: known keys, etcd's own timing rule, and the three members agreeing.
try:
    with open(etcd_keys_file) as f:
        etcd_keys = set(f.read().split())
except FileNotFoundError:
    etcd_keys = None
etcd_docs = {path: load(path) for path in etcd_files}
clusters = {}
for path, doc in etcd_docs.items():
    if etcd_keys is not None:
        unknown = sorted(k for k in doc if k not in etcd_keys)
        if unknown:
            fail(path, f"keys the installed etcd does not read: {', '.join(unknown)}")
    heartbeat, election = doc.get("heartbeat-interval", 100), doc.get("election-timeout", 1000)
    if election < 5 * heartbeat:
        fail(path, f"election-timeout {election} is under 5 x heartbeat-interval {heartbeat}; etcd refuses it")
    members = dict(m.split("=", 1) for m in doc["initial-cluster"].split(","))
    if members.get(doc["name"]) != doc["initial-advertise-peer-urls"]:
        fail(path, f"initial-cluster does not list {doc['name']}={doc['initial-advertise-peer-urls']}")
    if doc["initial-advertise-peer-urls"] not in doc["listen-peer-urls"].split(","):
        fail(path, "initial-advertise-peer-urls is not among listen-peer-urls")
    clusters[path] = (doc["initial-cluster"], doc.get("initial-cluster-token"))
if len(set(clusters.values())) > 1:
    fail(" ".join(etcd_files), "initial-cluster or initial-cluster-token differ between members")
if len({doc["name"] for doc in etcd_docs.values()}) != len(etcd_docs):
    fail(" ".join(etcd_files), "two members share a name")
for path in etcd_files:
    how = "keys checked against the installed etcd" if etcd_keys is not None else "etcd not installed: keys unchecked"
    print(f"ok: {path} (YAML; initial-cluster and timings consistent; {how})")

# Node configs: every key known to pgwarden (crates/config/keys.tsv) and
# implemented, since the loader rejects unknown keys and ignores unsupported
# ones; `pgwarden-agent --validate-config` below is the real check when the
# binaries are there.
rows = []
with open(keys_tsv) as f:
    next(f)
    for line in f:
        path, kind, _default, status = line.rstrip("\n").split("\t")[:4]
        rows.append((path.split("."), kind, status))


def matches(pattern, path):
    if pattern and pattern[-1] == "**":
        return len(path) >= len(pattern) and matches(pattern[:-1], path[: len(pattern) - 1])
    return len(pattern) == len(path) and all(p in ("*", s) for p, s in zip(pattern, path))


def lookup(path):
    found = [r for r in rows if matches(r[0], path)]
    # The most specific row wins: fewest wildcards.
    return min(found, key=lambda r: sum(p in ("*", "**") for p in r[0]), default=None)


def walk(path, node, where):
    for key, value in node.items():
        full = path + [str(key)]
        row = lookup(full)
        if row is None:
            fail(where, f"{'.'.join(full)}: not a key in crates/config/keys.tsv")
        if row[2] != "implemented":
            fail(where, f"{'.'.join(full)}: {row[2]} in crates/config/keys.tsv")
        if row[1] == "section" and isinstance(value, dict):
            walk(full, value, where)


node_docs = {path: load(path) for path in node_files}
for path, doc in node_docs.items():
    walk([], doc, path)

# The three sample nodes of deploy/nodes/ form one cluster: shared settings
# equal, identities distinct, and the addresses the other examples use.
nodes = {p: d for p, d in node_docs.items() if p.startswith("deploy/nodes/")}
shared = lambda d: (d.get("scope"), d.get("namespace"), d.get("etcd3"), d.get("bootstrap"))
if len({repr(shared(d)) for d in nodes.values()}) > 1:
    fail(" ".join(nodes), "scope, namespace, etcd3 or bootstrap differ between nodes")
for key in ("name", "restapi.connect_address", "postgresql.connect_address"):
    values = []
    for d in nodes.values():
        v = d
        for part in key.split("."):
            v = v[part]
        values.append(v)
    if len(set(values)) != len(values):
        fail(" ".join(nodes), f"two nodes share {key}")

# Configured pg_hba lines replace pgwarden's defaults (postgresql.pg_hba, else
# bootstrap.dcs.postgresql.pg_hba, else bootstrap.pg_hba), and the agent
# connects over the Unix socket as the superuser: without a `local` line for
# it, it cannot even finish a bootstrap.
for path, d in nodes.items():
    pg, boot = d.get("postgresql", {}), d.get("bootstrap", {})
    hba = pg.get("pg_hba") or boot.get("dcs", {}).get("postgresql", {}).get("pg_hba") or boot.get("pg_hba")
    superuser = pg["authentication"]["superuser"]["username"]
    if hba and not any(
        len(w) >= 4 and w[0] == "local" and w[1] in ("all", "postgres") and (w[2] == "all" or superuser in w[2].split(","))
        for w in (line.split() for line in hba)
    ):
        fail(path, f"no pg_hba `local` line lets the superuser {superuser} in over the socket, as the agent connects")

etcd_clients = sorted(
    url.removeprefix("http://") for d in etcd_docs.values() for url in d["advertise-client-urls"].split(",")
)
for path, d in nodes.items():
    hosts = d["etcd3"]["hosts"]
    hosts = hosts.split(",") if isinstance(hosts, str) else hosts
    if sorted(hosts) != etcd_clients:
        fail(path, f"etcd3.hosts {hosts} are not the etcd members' advertise-client-urls {etcd_clients}")

# Every HAProxy example under deploy/haproxy/ routes to these nodes: one
# server per node, named after it, on its PostgreSQL address, checked on its
# REST port.
import glob

for cfg in sorted(glob.glob("deploy/haproxy/*.cfg")):
    with open(cfg) as f:
        servers = re.findall(r"^\s*server\s+(\S+)\s+(\S+)\s.*\bcheck port (\d+)", f.read(), re.M)
    expected = sorted(
        (d["name"], d["postgresql"]["connect_address"], d["restapi"]["connect_address"].rsplit(":", 1)[1])
        for d in nodes.values()
    )
    for backend in (servers[: len(expected)], servers[len(expected) :]):
        if sorted(backend) != expected:
            fail(cfg, f"servers {sorted(backend)} do not match the nodes of deploy/nodes/ {expected}")

for path in node_files:
    extra = "; consistent with deploy/etcd and deploy/haproxy; pg_hba admits the agent" if path in nodes else ""
    print(f"ok: {path} (YAML; every key implemented in crates/config/keys.tsv{extra})")
PY
fi

# The loader itself, when the binaries are there.
if [ -n "$bin_dir" ]; then
    agent=$bin_dir/pgwarden-agent
    [ -x "$agent" ] || fail "${node_configs[0]}" "$agent does not exist; build it first"
    for f in "${node_configs[@]}"; do
        rc=0
        out=$("$agent" --validate-config "$f" 2>&1) || rc=$?
        if [ "$rc" -ne 0 ] || grep -qi '^ *warning' <<<"$out"; then
            fail "$f" "pgwarden-agent --validate-config, exit $rc" "$out"
        fi
        ok "$f" "pgwarden-agent --validate-config: valid, no warnings"
    done
else
    skipped "pgwarden-agent --validate-config on the node configs: PGWARDEN_BIN_DIR not set"
fi

# --- Callbacks ---
# Shell syntax, and shellcheck when it is installed (its absence is said).
# integration-tests/tests/callbacks.rs runs vip.sh against a real address.
for f in deploy/callbacks/*.sh; do
    [ -x "$f" ] || fail "$f" "not executable (pgwarden runs callbacks directly)"
    out=$(bash -n "$f" 2>&1) || fail "$f" "bash -n" "$out"
    if command -v shellcheck >/dev/null; then
        out=$(shellcheck "$f" 2>&1) || fail "$f" "shellcheck" "$out"
        ok "$f" "bash -n, shellcheck: clean"
    else
        ok "$f" "bash -n (shellcheck not installed)"
    fi
done
