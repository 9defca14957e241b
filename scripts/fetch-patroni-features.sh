#!/usr/bin/env bash
# Fetches Patroni's acceptance scenarios (the `features/` directory of
# Patroni's repository at a fixed release tag) for `make behave-ci`, and
# prints the path of that `features` directory on stdout.
#
#   scripts/fetch-patroni-features.sh
#
# The source is the release tarball of tag v4.0.7 as Debian's archive keeps
# it (`patroni_4.0.7.orig.tar.gz`, the source of trixie's patroni package):
# its tree is the tag's tree file for file, and Debian's archive is what
# every machine that runs `make setup` already reaches (GitHub is not
# reachable from CI). The tarball's SHA-256 is checked before anything in
# it is used. Nothing of Patroni's is kept in this repository.
#
# Environment:
#   PATRONI_FEATURES_DIR  where to unpack (default /var/tmp/pgwarden-patroni-v4.0.7)
#   DEBIAN_MIRROR         Debian archive base URL (default http://deb.debian.org/debian)
set -euo pipefail

version=4.0.7
sha256=2d53ecc208c99afff180954adb6f0f891e56da0fcd4e1ab84912daab5cf39a7e
dest="${PATRONI_FEATURES_DIR:-/var/tmp/pgwarden-patroni-v$version}"
mirror="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
url="$mirror/pool/main/p/patroni/patroni_$version.orig.tar.gz"

say() { echo "fetch-patroni-features: $*" >&2; }

# Unpacked and checked before: the marker holds the tarball's checksum.
if [ -f "$dest/.sha256" ] && [ "$(cat "$dest/.sha256")" = "$sha256" ] && [ -f "$dest/features/environment.py" ]; then
    echo "$dest/features"
    exit 0
fi

tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
say "downloading Patroni v$version's release tarball from $url"
if ! curl -fsSL --retry 3 --retry-delay 2 --max-time 300 -o "$tmp/patroni.tar.gz" "$url"; then
    say "cannot download $url: check that this machine reaches Debian's archive (apt uses it too) or set DEBIAN_MIRROR"
    exit 1
fi
got="$(sha256sum "$tmp/patroni.tar.gz" | cut -d' ' -f1)"
if [ "$got" != "$sha256" ]; then
    say "$url has SHA-256 $got, expected $sha256: refusing to use it"
    exit 1
fi
mkdir "$tmp/tree"
tar -xzf "$tmp/patroni.tar.gz" -C "$tmp/tree" --strip-components=1
for needed in features/environment.py postgres0.yml; do
    [ -f "$tmp/tree/$needed" ] || { say "the tarball has no $needed"; exit 1; }
done
rm -rf "$dest"
mkdir -p "$(dirname "$dest")"
mv "$tmp/tree" "$dest"
echo "$sha256" > "$dest/.sha256"
say "Patroni v$version's scenarios in $dest/features"
echo "$dest/features"
