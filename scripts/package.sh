#!/bin/sh
# Builds the Elastic Beanstalk source bundle: deploy/elasticbeanstalk/ plus the release
# binary as bin/proxyd-<arch>, zipped to target/proxyd-eb-bundle.zip. Deploy it with
# `eb deploy` (after `eb init`) or upload it as a new application version.
#
#   PROXYD_BIN          a proxyd already built for this machine (skips `cargo build --release`)
#   PROXYD_BIN_X86_64   also ship these, built elsewhere or cross-compiled, so that one
#   PROXYD_BIN_AARCH64  bundle runs on both kinds of instance
#   PROXYD_EB_PROXY     "none": apply the proxy-none overlay (proxyd on port 80, healthd log)
#   PROXYD_BUNDLE_OUT   the zip to write (default: target/proxyd-eb-bundle.zip)
#   PROXYD_ZIP          "python3": zip with Python's zipfile even when `zip` is installed
set -eu

root="$(cd "$(dirname "$0")/.." && pwd)"
out="${PROXYD_BUNDLE_OUT:-$root/target/proxyd-eb-bundle.zip}"

fail() {
    printf 'package.sh: %s\n' "$*" >&2
    exit 1
}

machine="$(uname -m)"
case "$machine" in
    x86_64 | amd64) arch=x86_64 ;;
    aarch64 | arm64) arch=aarch64 ;;
    *) fail "Elastic Beanstalk instances are x86_64 or aarch64, this machine is $machine" ;;
esac

if [ -n "${PROXYD_BIN:-}" ]; then
    bin="$PROXYD_BIN"
else
    (cd "$root" && cargo build --release --locked --bin proxyd)
    bin="$root/target/release/proxyd"
fi
[ -x "$bin" ] || fail "$bin is not an executable file"

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

ship() { # ship BINARY ARCH
    cp "$1" "$bundle/bin/proxyd-$2"
    # Line tables are for profiling at home; the symbol names stay for backtraces.
    if command -v strip >/dev/null 2>&1; then
        strip --strip-debug "$bundle/bin/proxyd-$2" 2>/dev/null ||
            printf 'package.sh: could not strip %s (shipped as is)\n' "$1" >&2
    fi
    chmod 0755 "$bundle/bin/proxyd-$2"
}
ship "$bin" "$arch"
if [ -n "${PROXYD_BIN_X86_64:-}" ]; then ship "$PROXYD_BIN_X86_64" x86_64; fi
if [ -n "${PROXYD_BIN_AARCH64:-}" ]; then ship "$PROXYD_BIN_AARCH64" aarch64; fi

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
printf 'package.sh: wrote %s (proxyd for %s)\n' "$out" "$arch"
