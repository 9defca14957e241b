#!/usr/bin/env bash
# Prepares the parts of the Debian package that come from the build rather
# than straight from the source tree, in RELEASE_DIR/pgwarden-deb/ (where
# crates/cli/Cargo.toml's [package.metadata.deb] assets expect them):
#
#   man/*.1.gz       pgwardenctl's manual pages, from the built pgwardenctl
#   completions/     its bash, zsh and fish completions, from the same binary
#   systemd/         deploy/systemd's units, calling /usr/bin instead of
#                    /usr/local/bin (a package must not install to /usr/local)
#
# Usage: deploy/debian/stage.sh RELEASE_DIR (`make deb` passes target/release,
# after building the four binaries there). The pages carry the date of
# SOURCE_DATE_EPOCH, else of the last commit, so the same commit gives the
# same pages.
set -euo pipefail

release_dir=${1:?usage: stage.sh RELEASE_DIR}
repo=$(cd "$(dirname "$0")/../.." && pwd)
ctl=$release_dir/pgwardenctl
out=$release_dir/pgwarden-deb

[ -x "$ctl" ] || { echo "stage.sh: $ctl is missing: build the release binaries first (make deb)" >&2; exit 1; }

if [ -n "${SOURCE_DATE_EPOCH:-}" ]; then
    date=$(date -u -d "@$SOURCE_DATE_EPOCH" +%F)
elif ! date=$(git -C "$repo" log -1 --format=%cs 2>/dev/null); then
    date=$(date -u +%F)
fi

rm -rf "$out"
mkdir -p "$out/man" "$out/completions" "$out/systemd"

"$ctl" generate man --date "$date" "$out/man"
# -n: no name or time stamp in the gzip header (reproducible).
gzip -9n "$out"/man/*.1

"$ctl" generate completions bash > "$out/completions/pgwardenctl"
"$ctl" generate completions zsh > "$out/completions/_pgwardenctl"
"$ctl" generate completions fish > "$out/completions/pgwardenctl.fish"

for unit in "$repo"/deploy/systemd/*.service "$repo"/deploy/systemd/*.target; do
    sed 's#/usr/local/bin/#/usr/bin/#g' "$unit" > "$out/systemd/$(basename "$unit")"
done
# Any other /usr/local path in a unit would point outside the package.
if grep -n '/usr/local' "$out"/systemd/*; then
    echo "stage.sh: a unit still names /usr/local (above); teach this script its packaged path" >&2
    exit 1
fi

echo "stage.sh: $(find "$out" -type f | wc -l) files in $out"
