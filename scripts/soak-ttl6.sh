#!/usr/bin/env bash
# The ttl-6 soak (`make soak`): does pgwarden's minimum profile hold without
# spurious failovers under load? The demo's cluster on loopback with the
# release binaries and ttl 6, loop_wait 1, retry_timeout 2; etcd with every
# fsync and fdatasync delayed 20 ms (strace fault injection: a slow disk);
# stress-ng loading both cores and the disk; pgbench writing at full speed
# through HAProxy. For SOAK_SECONDS (default 1800) the leader and timeline are
# sampled every 5 s. Passes when the leader, the timeline and every agent's
# role stay as they were. Report in target/soak/.
set -euo pipefail
cd "$(dirname "$0")/.."
SECONDS_TO_RUN=${SOAK_SECONDS:-1800}
DEMO_DIR=${PGWARDEN_SOAK_DIR:-/tmp/pgwarden-soak}
OUT=target/soak
BIN=target/release
for tool in stress-ng strace pgbench; do
    command -v "$tool" >/dev/null || { [ "$(id -u)" -eq 0 ] && apt-get install -y -qq "$tool" >/dev/null; } || true
    command -v "$tool" >/dev/null || { echo "soak: $tool is required (apt-get install $tool)" >&2; exit 1; }
done
[ -x "$BIN/pgwarden-agent" ] || { echo "soak: build the release binaries first (make soak does)" >&2; exit 1; }
if curl -s -o /dev/null -m 1 http://127.0.0.1:12379/health; then
    echo "soak: something answers on the demo's etcd port 12379: stop the demo first (make demo-stop)" >&2
    exit 1
fi
rm -rf "$OUT"; mkdir -p "$OUT"

# The demo script with the soak's timings, binaries and slow etcd.
script=scripts/.demo-soak.sh
trap 'rm -f "$script"' EXIT
sed -e "s#\$ROOT/target/debug/#\$ROOT/$BIN/#" \
    -e 's/^    ttl: 10$/    ttl: 6/' -e 's/^    retry_timeout: 3$/    retry_timeout: 2/' \
    -e 's#"\$DEMO_DIR/etcd/etcd.log" etcd --name demo#"$DEMO_DIR/etcd/etcd.log" strace -f --seccomp-bpf -e trace=fdatasync,fsync -e inject=fdatasync:delay_enter=20000 -e inject=fsync:delay_enter=20000 -o /dev/null etcd --name demo#' \
    scripts/demo.sh >"$script"
chmod +x "$script"
[ "$(grep -c 'ttl: 6$\|retry_timeout: 2$\|inject=fdatasync' "$script")" -eq 3 ] \
    || { echo "soak: scripts/demo.sh changed shape; update scripts/soak-ttl6.sh" >&2; exit 1; }
stop() {
    PGWARDEN_DEMO_DIR=$DEMO_DIR "$script" down >/dev/null 2>&1 || true
    pkill -f "etcd --name demo --data-dir $DEMO_DIR" 2>/dev/null || true
}
PGWARDEN_DEMO_DIR=$DEMO_DIR "$script" clean >/dev/null 2>&1 || true
trap 'stop; rm -f "$script"' EXIT
PGWARDEN_DEMO_DIR=$DEMO_DIR timeout 300 "$script" up >"$OUT/up.log" 2>&1 || { cat "$OUT/up.log"; exit 1; }

export PGPASSWORD=demo-superuser
pgbench -h 127.0.0.1 -p 5000 -U postgres -i -s 10 postgres >"$OUT/pgbench-init.log" 2>&1 \
    || { cat "$OUT/pgbench-init.log"; exit 1; }
# Who answers /primary 200, comma-separated ("" when nobody does).
leader() {
    local answering=()
    for node in 1 2 3; do
        if [ "$(curl -s -o /dev/null -w '%{http_code}' -m 1 "http://127.0.0.1:$((8007 + node))/primary")" = 200 ]; then
            answering+=("node$node")
        fi
    done
    (IFS=,; echo "${answering[*]}")
}
timeline() {
    curl -s -m 1 http://127.0.0.1:8008/patroni | python3 -c 'import json,sys; print(json.load(sys.stdin).get("timeline"))' 2>/dev/null || echo "?"
}
roles() { cat "$DEMO_DIR"/node*/agent.log | grep -c 'role change' || true; }
start_leader=$(leader); start_timeline=$(timeline); start_roles=$(roles)
echo "soak: ${SECONDS_TO_RUN} s from $(date +%T); leader $start_leader, timeline $start_timeline"
stress-ng --cpu 2 --hdd 1 --hdd-bytes 256M --temp-path /var/tmp --timeout "${SECONDS_TO_RUN}s" --metrics-brief \
    >"$OUT/stress.log" 2>&1 &
pgbench -h 127.0.0.1 -p 5000 -U postgres -c 4 -j 2 -T "$SECONDS_TO_RUN" -n -P 60 postgres >"$OUT/pgbench.log" 2>&1 &
end=$((SECONDS + SECONDS_TO_RUN))
while [ $SECONDS -lt $end ]; do
    echo "$(date +%T) leader=$(leader) timeline=$(timeline)" >>"$OUT/samples.log"
    sleep 5
done
wait || true
end_leader=$(leader); end_timeline=$(timeline); end_roles=$(roles)
{
    echo "# ttl-6 soak, $(date -u +%F)"
    echo
    echo "- $SECONDS_TO_RUN s; ttl 6, loop_wait 1, retry_timeout 2; etcd fsync and fdatasync +20 ms; stress-ng --cpu 2 --hdd 1; pgbench -c 4 through HAProxy"
    echo "- pgwarden $(git rev-parse --short HEAD), $(nproc) cores, $(uname -r)"
    echo "- leader: $start_leader at the start, $end_leader at the end; timeline $start_timeline → $end_timeline"
    echo "- role changes in the agents' logs during the soak: $((end_roles - start_roles))"
    echo "- samples (5 s) by who answered /primary 200 (empty: nobody within 1 s):"
    awk '{print $2}' "$OUT/samples.log" | sort | uniq -c | sed 's/^/    /'
    echo "- pgbench: $(grep -E '^tps|^number of (transactions actually processed|failed)' "$OUT/pgbench.log" | tr '\n' ';')"
    echo "- stress-ng: $(grep -E 'cpu |hdd ' "$OUT/stress.log" | tail -2 | tr -s ' ' | tr '\n' ';')"
} | tee "$OUT/report.md"
# A sample where nobody answered within 1 s is reported, not a failure (the
# checks fail closed under load); any other answer than the first leader's is.
others=$(awk '{print $2}' "$OUT/samples.log" | grep -cv -e "^leader=$start_leader\$" -e '^leader=$' || true)
[ -n "$start_leader" ] && [ "$start_leader" = "$end_leader" ] && [ "$start_timeline" = "$end_timeline" ] \
    && [ "$start_roles" = "$end_roles" ] && [ "$others" -eq 0 ] \
    || { echo "soak: FAILED: the leader changed, or another node answered /primary, under load" >&2; exit 1; }
echo "soak: passed"
