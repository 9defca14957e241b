#!/usr/bin/env bash
# The local demo cluster on loopback: one etcd and three pgwarden nodes
# (agent + health API + controller each), run as the `postgres` user.
#   scripts/demo.sh up      start (reusing the data of an earlier run)
#   scripts/demo.sh status  show the cluster
#   scripts/demo.sh down    stop everything (data kept in $DEMO_DIR)
#   scripts/demo.sh clean   stop and delete $DEMO_DIR
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
DEMO_DIR=${PGWARDEN_DEMO_DIR:-/tmp/pgwarden-demo}
ETCD_PORT=${PGWARDEN_DEMO_ETCD_PORT:-12379}
WRITE_PORT=${PGWARDEN_DEMO_WRITE_PORT:-5000}
READ_PORT=${PGWARDEN_DEMO_READ_PORT:-5001}
STATS_PORT=${PGWARDEN_DEMO_STATS_PORT:-7000}
NODES=(1 2 3)
rest_port() { echo $((8007 + $1)); }      # 8008, 8009, 8010
pg_port() { echo $((15431 + $1)); }       # 15432, 15433, 15434

as_postgres() {
    if [ "$(id -u)" -eq 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}

pid_alive() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

start_bg() { # name pidfile logfile command...
    local name=$1 pidfile=$2 log=$3; shift 3
    if pid_alive "$pidfile"; then echo "  $name already running (pid $(cat "$pidfile"))"; return; fi
    as_postgres bash -c 'exec "$@" >>"'"$log"'" 2>&1 </dev/null & echo $! >"'"$pidfile"'"' _ "$@"
    echo "  $name started (pid $(cat "$pidfile"), log $log)"
}

write_config() { # node
    local n=$1
    cat >"$DEMO_DIR/node$n/pgwarden.yml" <<YAML
scope: demo
namespace: /service/
name: node$n
restapi:
  listen: 127.0.0.1:$(rest_port "$n")
  connect_address: 127.0.0.1:$(rest_port "$n")
etcd3:
  hosts: 127.0.0.1:$ETCD_PORT
bootstrap:
  dcs:
    ttl: 10
    loop_wait: 1
    retry_timeout: 3
    maximum_lag_on_failover: 1048576
    postgresql:
      use_pg_rewind: true
      use_slots: true
  initdb:
    - encoding: UTF8
    - data-checksums
postgresql:
  listen: 127.0.0.1:$(pg_port "$n")
  connect_address: 127.0.0.1:$(pg_port "$n")
  data_dir: $DEMO_DIR/node$n/data
  pgpass: $DEMO_DIR/node$n/pgpass
  authentication:
    superuser: {username: postgres, password: demo-superuser}
    replication: {username: replicator, password: demo-replicator}
  parameters:
    unix_socket_directories: $DEMO_DIR/node$n
watchdog:
  mode: off
YAML
}

up() {
    local started=$SECONDS
    mkdir -p "$DEMO_DIR/bin"
    chmod 755 "$DEMO_DIR"
    for binary in pgwarden-agent pgwarden-health pgwarden-controller pgwardenctl; do
        install -m 755 "$ROOT/target/debug/$binary" "$DEMO_DIR/bin/$binary"
    done
    for n in "${NODES[@]}"; do mkdir -p "$DEMO_DIR/node$n"; done
    [ "$(id -u)" -eq 0 ] && chown -R postgres: "$DEMO_DIR"
    echo "etcd on 127.0.0.1:$ETCD_PORT"
    mkdir -p "$DEMO_DIR/etcd"
    [ "$(id -u)" -eq 0 ] && chown postgres: "$DEMO_DIR/etcd"
    start_bg etcd "$DEMO_DIR/etcd/pid" "$DEMO_DIR/etcd/etcd.log" etcd --name demo --data-dir "$DEMO_DIR/etcd/data" \
        --listen-client-urls "http://127.0.0.1:$ETCD_PORT" --advertise-client-urls "http://127.0.0.1:$ETCD_PORT" \
        --listen-peer-urls "http://127.0.0.1:$((ETCD_PORT + 1))" \
        --initial-advertise-peer-urls "http://127.0.0.1:$((ETCD_PORT + 1))" \
        --initial-cluster "demo=http://127.0.0.1:$((ETCD_PORT + 1))"
    for _ in $(seq 100); do
        ETCDCTL_API=3 etcdctl --endpoints "127.0.0.1:$ETCD_PORT" endpoint health >/dev/null 2>&1 && break
        sleep 0.1
    done
    ETCDCTL_API=3 etcdctl --endpoints "127.0.0.1:$ETCD_PORT" endpoint health >/dev/null 2>&1 \
        || { echo "etcd did not come up; see $DEMO_DIR/etcd/etcd.log" >&2; exit 1; }
    for n in "${NODES[@]}"; do
        local dir="$DEMO_DIR/node$n"
        write_config "$n"
        [ "$(id -u)" -eq 0 ] && chown postgres: "$dir/pgwarden.yml"
        echo "node$n: REST 127.0.0.1:$(rest_port "$n"), PostgreSQL 127.0.0.1:$(pg_port "$n")"
        as_postgres "$DEMO_DIR/bin/pgwarden-agent" --validate-config "$dir/pgwarden.yml" | sed 's/^/  /'
        start_bg agent "$dir/agent.pid" "$dir/agent.log" "$DEMO_DIR/bin/pgwarden-agent" "$dir/pgwarden.yml"
        start_bg health "$dir/health.pid" "$dir/health.log" "$DEMO_DIR/bin/pgwarden-health" "$dir/pgwarden.yml"
        start_bg controller "$dir/controller.pid" "$dir/controller.log" "$DEMO_DIR/bin/pgwarden-controller" "$dir/pgwarden.yml"
    done
    write_haproxy_config
    start_bg haproxy "$DEMO_DIR/haproxy.pid" "$DEMO_DIR/haproxy.log" haproxy -db -f "$DEMO_DIR/haproxy.cfg"
    echo "waiting for a primary behind HAProxy (127.0.0.1:$WRITE_PORT)..."
    for _ in $(seq 1200); do
        PGPASSWORD=demo-superuser PGCONNECT_TIMEOUT=1 psql -X -At -h 127.0.0.1 -p "$WRITE_PORT" -U postgres \
            -c 'select 1' >/dev/null 2>&1 && break
        sleep 0.1
    done
    echo "waiting for the replicas to stream..."
    for _ in $(seq 1200); do
        local streaming=0
        for n in "${NODES[@]}"; do
            [ "$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$(rest_port "$n")/replica")" = 200 ] \
                && streaming=$((streaming + 1))
        done
        [ "$streaming" -eq $((${#NODES[@]} - 1)) ] && break
        sleep 0.1
    done
    echo "up in $((SECONDS - started)) s"
    status
    cat <<TEXT

Connect (password: demo-superuser):
  writes:  psql -h 127.0.0.1 -p $WRITE_PORT -U postgres     (HAProxy -> the node answering /primary)
  reads:   psql -h 127.0.0.1 -p $READ_PORT -U postgres     (HAProxy -> nodes answering /replica)
  stats:   http://127.0.0.1:$STATS_PORT/
  health:  curl -s http://127.0.0.1:8008/cluster
  status:  http://127.0.0.1:8008/ui   (a read-only page in your browser)
  list:    $DEMO_DIR/bin/pgwardenctl -c $DEMO_DIR/node1/pgwarden.yml list
Logs: $DEMO_DIR/node*/{agent,health,controller}.log, $DEMO_DIR/node*/data.postgres.log,
      $DEMO_DIR/etcd/etcd.log, $DEMO_DIR/haproxy.log
Stop: make demo-stop (data is kept; make demo brings it back)
TEXT
}

write_haproxy_config() {
    # deploy/haproxy/haproxy-fast.cfg with loopback addresses and the demo's ports.
    awk -v w="$WRITE_PORT" -v r="$READ_PORT" -v s="$STATS_PORT" -v nodes="${NODES[*]}" '
        /^ *server / { if (!done[block]++) { n = split(nodes, ids, " ");
            for (i = 1; i <= n; i++) printf "    server node%d 127.0.0.1:%d maxconn 100 check port %d\n", ids[i], 15431 + ids[i], 8007 + ids[i] }
            next }
        /^listen / { block = $2 }
        /bind \*:5000/ { print "    bind 127.0.0.1:" w; next }
        /bind \*:5001/ { print "    bind 127.0.0.1:" r; next }
        /bind \*:7000/ { print "    bind 127.0.0.1:" s; next }
        { print }' "$ROOT/deploy/haproxy/haproxy-fast.cfg" >"$DEMO_DIR/haproxy.cfg"
    haproxy -c -q -f "$DEMO_DIR/haproxy.cfg"
}

status() {
    "$DEMO_DIR/bin/pgwardenctl" -c "$DEMO_DIR/node1/pgwarden.yml" list || true
    for n in "${NODES[@]}"; do
        printf 'node%s (REST 127.0.0.1:%s): /primary %s, /replica %s, /health %s\n' "$n" "$(rest_port "$n")" \
            "$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$(rest_port "$n")/primary")" \
            "$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$(rest_port "$n")/replica")" \
            "$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$(rest_port "$n")/health")"
    done
}

stop_pid() { # pidfile: SIGTERM, wait up to 30 s, then SIGKILL
    if pid_alive "$1"; then
        local pid
        pid=$(cat "$1")
        kill "$pid" 2>/dev/null || true
        for _ in $(seq 300); do
            # Exited (a zombie counts as exited: PID 1 may not reap here).
            [ "$(ps -o stat= -p "$pid" 2>/dev/null | cut -c1)" = "Z" ] && break
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
        kill -0 "$pid" 2>/dev/null && [ "$(ps -o stat= -p "$pid" | cut -c1)" != "Z" ] && kill -9 "$pid" 2>/dev/null
    fi
    rm -f "$1"
}

down() {
    stop_pid "$DEMO_DIR/haproxy.pid"
    # Replicas first and the leader last, so that stopping does not fail over.
    local leader order=()
    leader=$(ETCDCTL_API=3 etcdctl --endpoints "127.0.0.1:$ETCD_PORT" get --print-value-only /service/demo/leader 2>/dev/null || true)
    for n in "${NODES[@]}"; do [ "node$n" != "$leader" ] && order+=("$n"); done
    for n in "${NODES[@]}"; do [ "node$n" = "$leader" ] && order+=("$n"); done
    for n in "${order[@]}"; do
        local dir="$DEMO_DIR/node$n"
        for service in controller health agent; do stop_pid "$dir/$service.pid"; done
        if [ -f "$dir/data/postmaster.pid" ]; then
            as_postgres /usr/lib/postgresql/15/bin/pg_ctl -D "$dir/data" stop -m fast -w >/dev/null 2>&1 || true
        fi
    done
    stop_pid "$DEMO_DIR/etcd/pid"
    echo "demo stopped; data kept in $DEMO_DIR (scripts/demo.sh clean deletes it)"
}

case "${1:-up}" in
    up) up ;;
    status) status ;;
    down) down ;;
    clean) down; rm -rf "$DEMO_DIR" ;;
    *) echo "usage: $0 up|status|down|clean" >&2; exit 2 ;;
esac
