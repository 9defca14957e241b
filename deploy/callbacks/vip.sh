#!/usr/bin/env bash
# A pgwarden (and Patroni) callback that keeps a virtual IP on the primary:
# clients connect to the VIP, without HAProxy. Configure it for the events
# that change the role:
#
#   postgresql:
#     callbacks:
#       on_start: /usr/local/lib/pgwarden/vip.sh
#       on_stop: /usr/local/lib/pgwarden/vip.sh
#       on_role_change: /usr/local/lib/pgwarden/vip.sh
#
# (/usr/local/lib/pgwarden/ is where `make install` puts it; the Debian
# package installs it as /usr/lib/pgwarden/vip.sh.)
#
# pgwarden calls it as `vip.sh ACTION ROLE SCOPE` (as Patroni does), as the
# postgres user. Settings, from the environment or from $VIP_CONF
# (default /etc/pgwarden/vip.conf, a shell fragment):
#
#   VIP=10.0.0.100/24     the address and prefix (required)
#   VIP_DEV=eth0          the interface (default eth0)
#   IP=/usr/sbin/ip       how to run ip(8) (default: ip from PATH)
#   ARPING=/usr/sbin/arping   optional: announce the move (gratuitous ARP)
#
# Changing addresses needs CAP_NET_ADMIN. The agent's unit sets
# NoNewPrivileges, so sudo does not work from a callback; give the unit the
# capability instead, in a drop-in (systemctl edit pgwarden-agent):
#
#   [Service]
#   AmbientCapabilities=CAP_NET_ADMIN CAP_NET_RAW
#
# Fencing still belongs to pgwarden: the VIP follows the role the agent
# reports; a node that is fenced calls on_stop, which drops the VIP.
set -euo pipefail

action=${1:?usage: vip.sh ACTION ROLE SCOPE}
role=${2:-}
conf=${VIP_CONF:-/etc/pgwarden/vip.conf}
# shellcheck source=/dev/null
[ -r "$conf" ] && . "$conf"
: "${VIP:?set VIP (address/prefix, e.g. 10.0.0.100/24) in $conf}"
VIP_DEV=${VIP_DEV:-eth0}
IP=${IP:-ip}
address=${VIP%/*}

# grep reads all of ip's output (no -q): with pipefail, an early exit would
# turn ip's SIGPIPE into "absent".
has_vip() { $IP -o addr show dev "$VIP_DEV" | grep " inet6\? $address/" >/dev/null; }

add_vip() {
    if has_vip; then
        echo "vip: $VIP already on $VIP_DEV"
        return
    fi
    if ! $IP addr add "$VIP" dev "$VIP_DEV"; then
        echo "vip: could not add $VIP on $VIP_DEV: the agent needs CAP_NET_ADMIN (see the drop-in at the top of $0) and VIP_DEV must exist" >&2
        exit 1
    fi
    echo "vip: added $VIP on $VIP_DEV ($action, $role)"
    if [ -n "${ARPING:-}" ]; then
        $ARPING -U -c 3 -I "$VIP_DEV" "$address" >/dev/null 2>&1 || echo "vip: arping failed" >&2
    fi
}

del_vip() {
    if ! has_vip; then
        return
    fi
    if ! $IP addr del "$VIP" dev "$VIP_DEV"; then
        echo "vip: could not remove $VIP from $VIP_DEV: the agent needs CAP_NET_ADMIN (see the drop-in at the top of $0)" >&2
        exit 1
    fi
    echo "vip: removed $VIP from $VIP_DEV ($action, $role)"
}

# Only a running primary holds the VIP: any other event or role removes it,
# also one left behind by a crash (a node that starts as a replica).
case "$action:$role" in
    on_stop:*) del_vip ;;
    *:primary | *:master) add_vip ;;
    *) del_vip ;;
esac
