#!/bin/sh
# Builds the Elastic Beanstalk source bundle: deploy/elasticbeanstalk/ plus proxyd as
# bin/proxyd-<arch>, zipped to target/proxyd-eb-bundle.zip. Deploy it with `eb deploy` (after
# `eb init`) or upload it as a new application version.
#
# The binaries are static musl builds (x86_64-unknown-linux-musl, aarch64-unknown-linux-musl):
# no dynamic loader, no glibc, so they run on any Linux instance whatever glibc the machine
# that built them has (Amazon Linux 2 has 2.26). x86_64 is always built; aarch64 (Graviton)
# too where a cross toolchain is installed (cargo-zigbuild, or aarch64-linux-gnu-gcc), else
# the bundle says it has none and the hook refuses aarch64 instances by name.
#
#   PROXYD_ARCHS        what to build (default: "x86_64 aarch64", aarch64 only if it can be;
#                       an architecture named here must build)
#   PROXYD_PROFILE      cargo profile (default: release; the tests use dev, minutes faster)
#   PROXYD_BIN          a proxyd already built, shipped for this machine's architecture
#                       instead of building one (a dynamically linked one gets a warning)
#   PROXYD_BIN_X86_64   ship these, built elsewhere, instead of building that architecture
#   PROXYD_BIN_AARCH64
#   PROXYD_EB_PROXY     "none": apply the proxy-none overlay (proxyd on port 80, healthd log)
#   PROXYD_BUNDLE_OUT   the zip to write (default: target/proxyd-eb-bundle.zip)
#   PROXYD_ZIP          "python3": zip with Python's zipfile even when `zip` is installed
#   CARGO_TARGET_DIR    as for cargo
#
# What the toolchain needs (ring compiles C for the target):
#   x86_64:  rustup target add x86_64-unknown-linux-musl; apt-get install musl-tools
#   aarch64: rustup target add aarch64-unknown-linux-musl; and apt-get install
#            gcc-aarch64-linux-gnu, or pip install ziglang cargo-zigbuild
set -eu

root="$(cd "$(dirname "$0")/.." && pwd)"
out="${PROXYD_BUNDLE_OUT:-$root/target/proxyd-eb-bundle.zip}"
profile="${PROXYD_PROFILE:-release}"
target_dir="${CARGO_TARGET_DIR:-$root/target}"
# Absolute, since cargo runs from the repository's root.
case "$target_dir" in /*) ;; *) target_dir="$(pwd)/$target_dir" ;; esac
export CARGO_TARGET_DIR="$target_dir"

fail() {
    printf 'package.sh: %s\n' "$*" >&2
    exit 1
}

note() {
    printf 'package.sh: %s\n' "$*" >&2
}

machine="$(uname -m)"
case "$machine" in
    x86_64 | amd64) host=x86_64 ;;
    aarch64 | arm64) host=aarch64 ;;
    *) fail "Elastic Beanstalk instances are x86_64 or aarch64, this machine is $machine" ;;
esac

# cargo's directory name for a profile.
case "$profile" in
    dev | test) profile_dir=debug ;;
    bench) profile_dir=release ;;
    *) profile_dir="$profile" ;;
esac

has_target() { # has_target TRIPLE: the Rust standard library for TRIPLE is installed
    [ -d "$(rustc --print sysroot)/lib/rustlib/$1/lib" ]
}

# How ARCH can be built here: sets `how` (native, zig or gcc), or `why` it cannot.
toolchain() { # toolchain ARCH
    how=""
    why=""
    triple="$1-unknown-linux-musl"
    if ! has_target "$triple"; then
        why="the Rust target is missing (rustup target add $triple)"
    elif [ "$1" = "$host" ]; then
        # cc-rs compiles ring's C for a *-linux-musl target with musl-gcc.
        if command -v musl-gcc >/dev/null 2>&1; then
            how=native
        else
            why="musl-gcc is missing (apt-get install musl-tools)"
        fi
    elif command -v cargo-zigbuild >/dev/null 2>&1 &&
        { command -v zig >/dev/null 2>&1 || python3 -c 'import ziglang' 2>/dev/null; }; then
        how=zig
    elif command -v "$1-linux-gnu-gcc" >/dev/null 2>&1; then
        how=gcc
    else
        why="no C cross compiler for $1 (apt-get install gcc-$1-linux-gnu, or pip install ziglang cargo-zigbuild)"
    fi
}

build() { # build ARCH: prints the binary's path
    arch="$1"
    triple="$arch-unknown-linux-musl"
    upper="$(printf '%s' "$triple" | tr 'a-z-' 'A-Z_')"
    lower="$(printf '%s' "$triple" | tr '-' '_')"
    note "building proxyd for $triple ($profile profile, $how)"
    case "$how" in
        native)
            (cd "$root" && cargo build --locked --profile "$profile" --target "$triple" \
                --bin proxyd >&2)
            ;;
        zig)
            (cd "$root" && cargo zigbuild --locked --profile "$profile" --target "$triple" \
                --bin proxyd >&2)
            ;;
        gcc)
            # The GNU cross gcc compiles ring's C and drives the link; Rust's musl target
            # brings its own C runtime and libc (self-contained), so the result is static.
            (cd "$root" && env "CC_$lower=$arch-linux-gnu-gcc" \
                "CARGO_TARGET_${upper}_LINKER=$arch-linux-gnu-gcc" \
                cargo build --locked --profile "$profile" --target "$triple" \
                --bin proxyd >&2)
            ;;
    esac
    echo "$target_dir/$triple/$profile_dir/proxyd"
}

# A binary with a program interpreter (ld.so) is dynamically linked: it needs the instance to
# have a glibc at least as new as the one it was built against.
is_dynamic() { # is_dynamic BINARY
    command -v readelf >/dev/null 2>&1 || return 1
    LC_ALL=C readelf -lW "$1" 2>/dev/null | grep -q 'program interpreter'
}

stage="$(mktemp -d)"
trap 'rm -rf "$stage"' EXIT
bundle="$stage/bundle"
mkdir -p "$bundle/bin"
# Everything but the overlay and the docs; `/.` copies the dot directories too.
cp -R "$root/deploy/elasticbeanstalk/." "$bundle/"
rm -rf "$bundle/proxy-none" "$bundle/README.md"
if [ "${PROXYD_EB_PROXY:-}" = none ]; then
    cp -R "$root/deploy/elasticbeanstalk/proxy-none/." "$bundle/"
    # No platform nginx to tune.
    rm -rf "$bundle/.platform/nginx"
fi

shipped=""
ship() { # ship BINARY ARCH
    if [ ! -f "$1" ] || [ ! -x "$1" ]; then fail "$1 is not an executable file"; fi
    if is_dynamic "$1"; then
        note "warning: $1 is dynamically linked: the instance needs a glibc at least as new as the one it was built with (leave PROXYD_BIN unset for a static build)"
    fi
    cp "$1" "$bundle/bin/proxyd-$2"
    # Line tables are for profiling at home; the symbol names stay for backtraces. The host's
    # strip may not read another architecture's file: its cross binutils' then, or as is.
    strip="strip"
    if [ "$2" != "$host" ] && command -v "$2-linux-gnu-strip" >/dev/null 2>&1; then
        strip="$2-linux-gnu-strip"
    fi
    if command -v "$strip" >/dev/null 2>&1; then
        "$strip" --strip-debug "$bundle/bin/proxyd-$2" 2>/dev/null ||
            note "could not strip $1 (shipped as is)"
    fi
    chmod 0755 "$bundle/bin/proxyd-$2"
    shipped="$shipped $2"
}

if [ -n "${PROXYD_BIN:-}" ]; then
    ship "$PROXYD_BIN" "$host"
fi
if [ -n "${PROXYD_BIN_X86_64:-}" ]; then ship "$PROXYD_BIN_X86_64" x86_64; fi
if [ -n "${PROXYD_BIN_AARCH64:-}" ]; then ship "$PROXYD_BIN_AARCH64" aarch64; fi
if [ -z "$shipped" ] || [ -n "${PROXYD_ARCHS:-}" ]; then
    asked="${PROXYD_ARCHS:-}"
    for arch in ${PROXYD_ARCHS:-x86_64 aarch64}; do
        case "$arch" in
            x86_64 | aarch64) ;;
            *) fail "PROXYD_ARCHS: $arch is not x86_64 or aarch64" ;;
        esac
        # Shipped already from PROXYD_BIN*: not built again.
        case "$shipped " in *" $arch "*) continue ;; esac
        toolchain "$arch"
        if [ -n "$why" ]; then
            # x86_64 (most instances) and anything asked for by name must build.
            if [ "$arch" = x86_64 ] || [ -n "$asked" ]; then
                fail "cannot build proxyd for $arch: $why"
            fi
            note "no $arch binary in the bundle: $why; $arch instances will refuse it"
            continue
        fi
        bin="$(build "$arch")"
        if is_dynamic "$bin"; then
            fail "$bin is dynamically linked; expected a static musl build"
        fi
        ship "$bin" "$arch"
    done
fi

# Hooks must be executable and have LF endings, or EB refuses to run them.
for hook in "$bundle"/.platform/hooks/*/* "$bundle"/.platform/confighooks/*/*; do
    [ -f "$hook" ] || continue
    chmod 0755 "$hook"
    if grep -q "$(printf '\r')" "$hook"; then fail "$hook has CRLF line endings"; fi
done

mkdir -p "$(dirname "$out")"
rm -f "$out"
case "$out" in /*) ;; *) out="$(pwd)/$out" ;; esac
if [ "${PROXYD_ZIP:-}" != python3 ] && command -v zip >/dev/null 2>&1; then
    # -X: no extra attributes (times, uid) beyond the unix permissions, which zip keeps.
    (cd "$bundle" && zip -q -r -X "$out" .)
else
    python3 - "$bundle" "$out" <<'PY'
import os, sys, zipfile
src, out = sys.argv[1], sys.argv[2]
with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as z:
    for d, dirs, files in os.walk(src):
        dirs.sort()
        for name in sorted(files):
            path = os.path.join(d, name)
            # ZipFile.write keeps the file's mode (the hooks' execute bits).
            z.write(path, os.path.relpath(path, src))
PY
fi
printf 'package.sh: wrote %s (proxyd for%s)\n' "$out" "$shipped"
