#!/usr/bin/env bash
# Installs the Debian package that `make deb` built on this machine with
# dpkg, checks what it put where (binaries, units, pgwarden.target, vip.sh,
# the example config, man pages, completions, the state directory), runs
# each binary's --version and `systemd-analyze verify` on the installed
# units, checks that an upgrade starts nothing and keeps an edited conffile,
# that removal is refused while a service binary runs, then removes and
# purges the package and checks that nothing it owned is left and that the
# state directory is kept exactly when it holds something.
#
# Usage (as root): scripts/check-deb.sh [PACKAGE.deb]   (`make deb-check`)
# Default: the newest ${CARGO_TARGET_DIR:-target}/debian/pgwarden_*.deb.
#
# It refuses to run when a pgwarden package (or /var/lib/pgwarden) is
# already on the machine and was not left by an interrupted run of this
# script: it would replace and purge it. It may install systemd (for
# systemd-analyze) and the package's dependencies with apt-get. It never
# starts a service; where systemd runs, it enables the units only offline
# (systemctl --root=/) to check that a purge removes the links.
set -euo pipefail

cd "$(dirname "$0")/.."

package=pgwarden
state_dir=/var/lib/pgwarden
# Says that the package on this machine was installed by this script, so a
# later run may purge what an interrupted one left.
marker=/var/tmp/pgwarden-check-deb.installed
fifo=/var/tmp/pgwarden-check-deb.fifo
services=(pgwarden-agent pgwarden-health pgwarden-controller)
binaries=("${services[@]}" pgwardenctl)
units=(pgwarden-agent.service pgwarden-health.service pgwarden-controller.service pgwarden.target)
unit_dir=/usr/lib/systemd/system
example=/etc/pgwarden/pgwarden.yml.example
started=$SECONDS

say() { echo "check-deb: $*"; }
fail() {
    echo "check-deb: FAIL: $*" >&2
    exit 1
}
# The package's status as dpkg records it: installed, config-files,
# not-installed, half-configured, ...
package_status() { dpkg-query -W -f='${db:Status-Status}' "$package" 2>/dev/null || echo not-installed; }
indent() { sed 's/^/    | /'; }
mode_owner() { stat -c '%a %U:%G' "$1"; }
expect_file() { # PATH MODE OWNER
    [ -f "$1" ] || fail "$1 is missing"
    [ "$(mode_owner "$1")" = "$2 $3" ] || fail "$1 is $(mode_owner "$1"), expected $2 $3"
}
# PIDs of processes running one of the package's service binaries.
service_processes() {
    local exe target
    for exe in /proc/[0-9]*/exe; do
        target=$(readlink "$exe" 2>/dev/null) || continue
        case "${target% (deleted)}" in
        /usr/bin/pgwarden-agent | /usr/bin/pgwarden-health | /usr/bin/pgwarden-controller)
            exe=${exe#/proc/}
            echo "${exe%/exe}"
            ;;
        esac
    done
}
# Whether dpkg is configured not to install PATH (path-exclude in
# /etc/dpkg/dpkg.cfg.d, as slim container images do for man pages and docs).
dpkg_excludes() {
    local pattern excluded=1
    while read -r pattern; do
        # shellcheck disable=SC2053 # the pattern is a glob on purpose
        [[ $1 == $pattern ]] && excluded=0
    done < <(sed -n 's/^path-exclude[= ]//p' /etc/dpkg/dpkg.cfg.d/* 2>/dev/null)
    while read -r pattern; do
        # shellcheck disable=SC2053
        [[ $1 == $pattern ]] && excluded=1
    done < <(sed -n 's/^path-include[= ]//p' /etc/dpkg/dpkg.cfg.d/* 2>/dev/null)
    return "$excluded"
}
apt_install() {
    say "installing $* (apt-get)"
    DEBIAN_FRONTEND=noninteractive apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}
# Runs dpkg, shows its output indented, and fails unless it exits as expected.
run_dpkg() { # EXPECTED_EXIT(0|fail) ARGS...
    local expected=$1 rc=0 output
    shift
    output=$(dpkg "$@" 2>&1) || rc=$?
    indent <<<"$output"
    if [ "$expected" = 0 ] && [ "$rc" -ne 0 ]; then
        fail "dpkg $* exited $rc"
    elif [ "$expected" = fail ] && [ "$rc" -eq 0 ]; then
        fail "dpkg $* succeeded; it should have been refused"
    fi
    DPKG_OUTPUT=$output
}

# --- Preconditions -----------------------------------------------------------

[ "$(id -u)" -eq 0 ] || fail "run as root: it installs and removes a package with dpkg"
command -v dpkg-deb >/dev/null || fail "dpkg is missing: this check runs on Debian or Ubuntu"

deb=${1:-}
if [ -z "$deb" ]; then
    # shellcheck disable=SC2012 # names are pgwarden_<version>_<arch>.deb
    deb=$(ls -t "${CARGO_TARGET_DIR:-target}"/debian/pgwarden_*.deb 2>/dev/null | head -n 1 || true)
    [ -n "$deb" ] || fail "no ${CARGO_TARGET_DIR:-target}/debian/pgwarden_*.deb: run make deb first"
fi
[ -f "$deb" ] || fail "$deb does not exist"
[ "$(dpkg-deb -f "$deb" Package)" = "$package" ] || fail "$deb is not the $package package"
deb_version=$(dpkg-deb -f "$deb" Version)
upstream_version=${deb_version%-*}
say "checking $deb ($package $deb_version, $(dpkg-deb -f "$deb" Architecture))"

status=$(package_status)
if [ "$status" != not-installed ]; then
    if [ -e "$marker" ]; then
        say "purging the $package package an interrupted run of this script left ($status)"
        running=$(service_processes)
        [ -z "$running" ] || fail "processes run the package's binaries ($running); stop them first"
        dpkg -P "$package" >/dev/null
        rm -f "$state_dir"/check-deb-*
        rmdir "$state_dir" 2>/dev/null || true
        rm -f "$marker"
    else
        fail "a $package package is on this machine (dpkg status: $status) and this script did not install it.
It would replace it and then purge it, with its conffiles. Remove it yourself (dpkg -P $package)
or run the check on another machine."
    fi
fi
if [ -e "$state_dir" ] && [ ! -e "$marker" ]; then
    fail "$state_dir exists and this script did not make it: the package adopts it and a purge may delete it. Move it away first."
fi
etc_before=$(ls -A /etc/pgwarden 2>/dev/null || echo absent)

# The package's dependencies, by name (versions are left to dpkg, which
# refuses the install if one is too old).
IFS=',' read -r -a depends <<<"$(dpkg-deb -f "$deb" Depends)"
missing=()
for dependency in "${depends[@]}"; do
    name=$(awk '{print $1}' <<<"$dependency")
    dpkg -s "$name" >/dev/null 2>&1 || missing+=("$name")
done
[ "${#missing[@]}" -eq 0 ] || apt_install "${missing[@]}"
command -v systemd-analyze >/dev/null || apt_install systemd

cleanup() {
    local rc=$?
    if [ -n "${blocker:-}" ]; then
        kill "$blocker" 2>/dev/null || true
        wait "$blocker" 2>/dev/null || true
    fi
    rm -f "$fifo"
    if [ -e "$marker" ]; then
        if [ "$(package_status)" != not-installed ]; then
            say "cleaning up: purging $package"
            dpkg -P "$package" >/dev/null 2>&1 || say "cleaning up: dpkg -P $package failed; remove it by hand"
        fi
        rm -f "$state_dir"/check-deb-*
        rmdir "$state_dir" 2>/dev/null || true
        rm -f "$marker"
    fi
    exit "$rc"
}
trap cleanup EXIT

# What the package holds, and which of its directories were already there
# (those stay after a purge; the others must go).
mapfile -t deb_paths < <(dpkg-deb -c "$deb" | awk '{print $6}' | sed 's#^\./#/#; s#/$##' | grep -v '^/$' | grep -v '^$')
preexisting_dirs=()
for path in "${deb_paths[@]}"; do
    if [ -d "$path" ]; then
        preexisting_dirs+=("$path")
    elif [ -e "$path" ]; then
        fail "$path exists before the install: it would be overwritten"
    fi
done

# --- Install -----------------------------------------------------------------

touch "$marker"
say "dpkg -i $deb"
run_dpkg 0 -i "$deb"
[ "$(package_status)" = installed ] || fail "dpkg status after the install: $(package_status)"

# Nothing enabled or started.
if command -v systemctl >/dev/null; then
    for unit in "${units[@]}"; do
        enabled=$(systemctl --root=/ is-enabled "$unit" 2>/dev/null || true)
        [ "$enabled" = disabled ] || [ "$enabled" = static ] || fail "$unit is $enabled after the install"
        if [ -d /run/systemd/system ] && systemctl is-active --quiet "$unit"; then
            fail "$unit is running after the install"
        fi
    done
fi
[ -z "$(service_processes)" ] || fail "a pgwarden service runs after the install: $(service_processes)"
say "ok: installed; nothing enabled or started"

# --- Files ---------------------------------------------------------------------

for binary in "${binaries[@]}"; do
    expect_file "/usr/bin/$binary" 755 root:root
    version=$("/usr/bin/$binary" --version)
    [ "$version" = "$binary $upstream_version" ] || fail "/usr/bin/$binary --version says '$version', expected '$binary $upstream_version'"
    say "ok: /usr/bin/$binary --version: $version"
done

for unit in "${units[@]}"; do
    expect_file "$unit_dir/$unit" 644 root:root
    ! grep -n '/usr/local' "$unit_dir/$unit" || fail "$unit_dir/$unit names /usr/local"
    # Every absolute command the unit runs is installed and executable (an
    # Exec line may start with the prefixes -, @, +, ! and :).
    while read -r command; do
        [ -x "$command" ] || fail "$unit runs $command, which is not installed"
    done < <(sed -n 's/^Exec[A-Za-z]*=[-@+!:]*\(\/[^ ]*\).*/\1/p' "$unit_dir/$unit")
done
grep -q '^ExecStart=/usr/bin/pgwarden-agent /etc/pgwarden/pgwarden.yml$' "$unit_dir/pgwarden-agent.service" ||
    fail "pgwarden-agent.service does not start /usr/bin/pgwarden-agent /etc/pgwarden/pgwarden.yml"
say "ok: units and pgwarden.target in $unit_dir, their commands installed"

expect_file /usr/lib/pgwarden/vip.sh 755 root:root
bash -n /usr/lib/pgwarden/vip.sh || fail "/usr/lib/pgwarden/vip.sh does not parse"

expect_file "$example" 644 root:root
dpkg-query -W -f='${Conffiles}\n' "$package" | grep -q "^ $example " || fail "$example is not a conffile"
[ ! -e /etc/pgwarden/pgwarden.yml ] || [ "$etc_before" != absent ] || fail "the package installed /etc/pgwarden/pgwarden.yml"
/usr/bin/pgwarden-agent --validate-config "$example" >/dev/null || fail "the example config does not validate"
say "ok: vip.sh, the example config (a conffile, valid)"

[ -d "$state_dir" ] || fail "$state_dir was not created"
[ "$(mode_owner "$state_dir")" = "700 postgres:postgres" ] || fail "$state_dir is $(mode_owner "$state_dir")"
say "ok: $state_dir: $(mode_owner "$state_dir")"

man_dir=/usr/share/man/man1
if dpkg_excludes "$man_dir/pgwardenctl.1.gz"; then
    # This dpkg leaves man pages out: check them inside the package.
    say "dpkg excludes $man_dir here: checking the pages inside $deb"
    pages=$(mktemp -d)
    dpkg-deb -x "$deb" "$pages"
    man_dir=$pages$man_dir
fi
[ -f "$man_dir/pgwardenctl.1.gz" ] || fail "$man_dir/pgwardenctl.1.gz is missing"
n_pages=0
for page in "$man_dir"/pgwardenctl*.1.gz; do
    gzip -t "$page" || fail "$page is not valid gzip"
    n_pages=$((n_pages + 1))
done
[ -f "$man_dir/pgwardenctl-switchover.1.gz" ] || fail "no page for pgwardenctl switchover"
if command -v man >/dev/null; then
    MANWIDTH=80 man -l "$man_dir/pgwardenctl.1.gz" 2>/dev/null | grep -q 'pgwardenctl-switchover(1)' ||
        fail "man -l $man_dir/pgwardenctl.1.gz does not list the subcommands' pages"
    MANWIDTH=80 man -l "$man_dir/pgwardenctl-switchover.1.gz" 2>/dev/null | grep -q -- '--candidate' ||
        fail "man -l pgwardenctl-switchover.1.gz does not document --candidate"
    say "ok: $n_pages man pages (gzip -t, man -l)"
else
    say "ok: $n_pages man pages (gzip -t; man is not installed)"
fi

bash_completion=/usr/share/bash-completion/completions/pgwardenctl
expect_file "$bash_completion" 644 root:root
# The completion bash offers for `pgwardenctl swi<TAB>`.
offered=$(bash -c 'source "$1"
    COMP_WORDS=(pgwardenctl swi); COMP_CWORD=1; COMP_LINE="pgwardenctl swi"; COMP_POINT=${#COMP_LINE}
    _pgwardenctl pgwardenctl swi pgwardenctl
    echo "${COMPREPLY[*]}"' bash "$bash_completion")
[ "$offered" = switchover ] || fail "bash completes 'pgwardenctl swi' to '$offered', expected switchover"
zsh_completion=/usr/share/zsh/vendor-completions/_pgwardenctl
expect_file "$zsh_completion" 644 root:root
[ "$(head -n 1 "$zsh_completion")" = "#compdef pgwardenctl" ] || fail "$zsh_completion has no #compdef line"
if command -v zsh >/dev/null; then zsh -n "$zsh_completion" || fail "$zsh_completion does not parse"; fi
fish_completion=/usr/share/fish/vendor_completions.d/pgwardenctl.fish
expect_file "$fish_completion" 644 root:root
grep -q '^complete -c pgwardenctl .*switchover' "$fish_completion" || fail "$fish_completion does not complete switchover"
if command -v fish >/dev/null; then fish --no-execute "$fish_completion" || fail "$fish_completion does not parse"; fi
say "ok: completions for bash (pgwardenctl swi<TAB> gives switchover), zsh and fish"

# --- systemd-analyze verify --------------------------------------------------

# It loads each unit with everything it references. Run offline (no
# systemd as PID 1 is needed). Expected silence: the units reference only
# /usr/bin/pgwarden-*, /bin/kill and targets every systemd has
# (network-online.target, multi-user.target). Any line it prints fails the
# check; see docs/operations.md if that ever needs an exception.
unit_paths=()
for unit in "${units[@]}"; do unit_paths+=("$unit_dir/$unit"); done
verify_rc=0
verify_output=$(systemd-analyze verify "${unit_paths[@]}" 2>&1) || verify_rc=$?
if [ "$verify_rc" -ne 0 ] || [ -n "$verify_output" ]; then
    indent <<<"$verify_output"
    fail "systemd-analyze verify exited $verify_rc with the output above"
fi
say "ok: systemd-analyze verify ($(systemd-analyze --version | head -n 1)): no complaint"

# --- Upgrade: nothing started, an edited conffile and the state kept -----------

echo "# edited by check-deb.sh" >>"$example"
state_file=$state_dir/check-deb-state
install -o postgres -g postgres -m 0600 /dev/null "$state_file"
chmod 0750 "$state_dir"
say "dpkg -i $deb again (the upgrade path: prerm upgrade, postinst configure $deb_version)"
run_dpkg 0 -i "$deb"
grep -q 'upgraded from' <<<"$DPKG_OUTPUT" || fail "the upgrade did not say that running services keep the old version"
tail -n 1 "$example" | grep -q 'edited by check-deb.sh' || fail "the upgrade replaced the edited $example"
[ -f "$state_file" ] || fail "the upgrade removed $state_file"
[ "$(mode_owner "$state_dir")" = "750 postgres:postgres" ] || fail "the upgrade changed $state_dir to $(mode_owner "$state_dir")"
[ -z "$(service_processes)" ] || fail "a pgwarden service runs after the upgrade"
chmod 0700 "$state_dir"
say "ok: upgrade started nothing, kept the edited conffile and $state_dir as it was"

# --- Removal is refused while a service binary runs ------------------------------

# pgwarden-agent blocks opening a FIFO as its config until something writes:
# a service binary that runs for as long as needed, without a cluster.
rm -f "$fifo"
mkfifo "$fifo"
/usr/bin/pgwarden-agent --validate-config "$fifo" >/dev/null 2>&1 &
blocker=$!
for _ in $(seq 50); do
    [ "$(readlink "/proc/$blocker/exe" 2>/dev/null)" = /usr/bin/pgwarden-agent ] && break
    sleep 0.1
done
[ "$(readlink "/proc/$blocker/exe" 2>/dev/null)" = /usr/bin/pgwarden-agent ] || fail "could not start the blocking pgwarden-agent"
say "dpkg -r $package while /usr/bin/pgwarden-agent runs (pid $blocker): must be refused"
run_dpkg fail -r "$package"
grep -q 'pgwarden runs on this node' <<<"$DPKG_OUTPUT" || fail "the refusal does not say why"
[ "$(package_status)" = installed ] || fail "after the refused removal the package is $(package_status)"
[ -x /usr/bin/pgwarden-agent ] || fail "the refused removal deleted /usr/bin/pgwarden-agent"
echo >"$fifo"
wait "$blocker" || true
blocker=
rm -f "$fifo"
say "ok: removal refused while pgwarden-agent ran; the package stayed installed"

# --- Remove, then purge ----------------------------------------------------------

# As an operator would after installing: enable the units (offline, so
# nothing starts even where systemd runs), to check that a purge removes
# the links.
systemctl --root=/ enable "${units[@]}" >/dev/null 2>&1 || fail "systemctl --root=/ enable ${units[*]}"
links=(/etc/systemd/system/multi-user.target.wants/pgwarden.target /etc/systemd/system/pgwarden.target.wants/pgwarden-agent.service)
for link in "${links[@]}"; do [ -L "$link" ] || fail "systemctl enable made no $link"; done

say "dpkg -r $package"
run_dpkg 0 -r "$package"
[ "$(package_status)" = config-files ] || fail "after dpkg -r the package is $(package_status)"
# Everything but the conffile (and its directory) goes with dpkg -r.
for path in "${deb_paths[@]}"; do
    case " ${preexisting_dirs[*]} " in *" $path "*) continue ;; esac
    case "$path" in "$example" | /etc/pgwarden) continue ;; esac
    [ ! -e "$path" ] || fail "dpkg -r left $path"
done
[ -f "$example" ] || fail "dpkg -r removed the conffile $example"
[ -f "$state_file" ] || fail "dpkg -r removed $state_file"
say "ok: removed; $example and $state_dir kept"

say "dpkg -P $package (the state directory holds a file: it must be kept)"
run_dpkg 0 -P "$package"
[ "$(package_status)" = not-installed ] || fail "after dpkg -P the package is $(package_status)"
for link in "${links[@]}"; do [ ! -L "$link" ] || fail "the purge left $link"; done
[ ! -e /etc/systemd/system/pgwarden.target.wants ] || fail "the purge left /etc/systemd/system/pgwarden.target.wants"
[ -f "$state_file" ] || fail "the purge deleted $state_file, which the package did not make"
grep -q "kept $state_dir" <<<"$DPKG_OUTPUT" || fail "the purge did not say it kept $state_dir"
say "ok: purged; enablement links gone, the non-empty $state_dir kept"

# With an empty state directory, a purge removes it.
rm -f "$state_file"
say "dpkg -i, then dpkg -P with an empty $state_dir: it must go"
run_dpkg 0 -i "$deb"
run_dpkg 0 -P "$package"
[ ! -e "$state_dir" ] || fail "the purge left the empty $state_dir"

# Nothing the package owned is left, except directories that were there before.
for path in "${deb_paths[@]}"; do
    case " ${preexisting_dirs[*]} " in *" $path "*) continue ;; esac
    [ ! -e "$path" ] || fail "the purge left $path"
done
[ "$(ls -A /etc/pgwarden 2>/dev/null || echo absent)" = "$etc_before" ] || fail "/etc/pgwarden differs from before the check"
rm -f "$marker"
say "ok: purged; nothing of the package is left"
say "passed in $((SECONDS - started)) s"
