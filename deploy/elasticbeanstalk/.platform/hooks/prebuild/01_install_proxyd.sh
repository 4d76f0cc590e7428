#!/bin/sh
# Elastic Beanstalk prebuild hook: install the proxyd binary shipped in this bundle and check
# proxy.yaml, so that a bad config fails the deployment here (the running version keeps
# serving) instead of the web process crash-looping after the switch.
#
# EB runs it as root from the bundle's root (the staging directory), with the environment
# properties in its environment. The same script runs as a confighook on configuration-only
# deployments (.platform/confighooks/prebuild/), where a changed property can break the config.
#
#   PROXYD_PREFIX   install under this root instead of / (tests use a temporary one)
#   PROXYD_BUNDLE   the bundle's root (default: the working directory)
#   PROXYD_CONFIG   the config to check, relative to the bundle (default: proxy.yaml)
set -eu

prefix="${PROXYD_PREFIX:-}"
bundle="${PROXYD_BUNDLE:-$(pwd)}"
config="${PROXYD_CONFIG:-proxy.yaml}"

fail() {
    printf 'proxyd prebuild hook: %s\n' "$*" >&2
    exit 1
}

machine="$(uname -m)"
case "$machine" in
    x86_64 | amd64) arch=x86_64 ;;
    aarch64 | arm64) arch=aarch64 ;;
    *) fail "no proxyd build for this instance's architecture ($machine); ship bin/proxyd-x86_64 or bin/proxyd-aarch64 and use a matching instance type" ;;
esac

src="$bundle/bin/proxyd-$arch"
if [ ! -f "$src" ]; then
    fail "$src is missing from the bundle: this instance is $arch; build the bundle with scripts/package.sh on (or cross-compiling for) $arch"
fi
# A zip tool that dropped the execute bit should not fail the deployment.
[ -x "$src" ] || chmod 0755 "$src"
if ! version="$("$src" --version 2>&1)"; then
    printf '%s\n' "$version" >&2
    fail "$src does not run on this instance ($machine)"
fi
if [ ! -f "$bundle/$config" ]; then
    fail "$bundle/$config is missing: the Procfile's web process runs proxyd -c $config"
fi
# Checked with the bundle's own binary before anything is installed, so a bad config leaves
# the instance as it was. The check sees what the web process will: ${PORT} and the other
# environment properties.
if ! checked="$(cd "$bundle" && "$src" check -c "$config" 2>&1)"; then
    printf '%s\n' "$checked" >&2
    fail "$config is invalid (the error above names file:line:column); stopping the deployment, the running version keeps serving"
fi
printf 'proxyd prebuild hook: %s\n' "$checked"

dest_dir="$prefix/usr/local/bin"
dest="$dest_dir/proxyd"
mkdir -p "$dest_dir"
# Copy beside the target, then rename over it: a proxyd that is running keeps its old file
# (overwriting a running binary in place fails with "Text file busy").
tmp="$dest_dir/.proxyd.new.$$"
trap 'rm -f "$tmp"' EXIT
cp "$src" "$tmp"
chmod 0755 "$tmp"
mv -f "$tmp" "$dest"
trap - EXIT
printf 'proxyd prebuild hook: installed %s as %s\n' "$version" "$dest"
