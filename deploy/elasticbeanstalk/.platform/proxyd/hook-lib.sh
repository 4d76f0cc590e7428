#!/bin/sh
# Shared by proxyd's platform hooks (sourced, not run): the bundle's binary for this instance,
# and `proxyd check` with its error passed on. EB runs hooks as root from the bundle's root
# (the staging directory), with the environment properties and PORT in their environment.
#
#   PROXYD_PREFIX   install under this root instead of / (tests use a temporary one)
#   PROXYD_BUNDLE   the bundle's root (default: the working directory)
#   PROXYD_CONFIG   the config to check, relative to the bundle (default: proxy.yaml)
#
# Sets: prefix bundle config; proxyd_bin and proxyd_version (after proxyd_pick_binary).
# (Variables the hooks that source this file use; proxyd_hook names the hook in messages.)
# shellcheck disable=SC2034

prefix="${PROXYD_PREFIX:-}"
bundle="${PROXYD_BUNDLE:-$(pwd)}"
config="${PROXYD_CONFIG:-proxy.yaml}"
proxyd_hook="${proxyd_hook:-proxyd hook}"

fail() {
    printf '%s: %s\n' "$proxyd_hook" "$*" >&2
    exit 1
}

say() {
    printf '%s: %s\n' "$proxyd_hook" "$*"
}

# bin/proxyd-x86_64 or bin/proxyd-aarch64 by `uname -m`, and that it runs here.
proxyd_pick_binary() {
    machine="$(uname -m)"
    case "$machine" in
        x86_64 | amd64) arch=x86_64 ;;
        aarch64 | arm64) arch=aarch64 ;;
        *) fail "no proxyd build for this instance's architecture ($machine); ship bin/proxyd-x86_64 or bin/proxyd-aarch64 and use a matching instance type" ;;
    esac
    proxyd_bin="$bundle/bin/proxyd-$arch"
    if [ ! -f "$proxyd_bin" ]; then
        fail "$proxyd_bin is missing from the bundle: this instance is $arch; build the bundle with scripts/package.sh (it builds both architectures where it can)"
    fi
    # A zip tool that dropped the execute bit should not fail the deployment.
    [ -x "$proxyd_bin" ] || chmod 0755 "$proxyd_bin"
    if ! proxyd_version="$("$proxyd_bin" --version 2>&1)"; then
        printf '%s\n' "$proxyd_version" >&2
        fail "$proxyd_bin does not run on this instance ($machine)"
    fi
    if [ ! -f "$bundle/$config" ]; then
        fail "$bundle/$config is missing: the Procfile's web process runs proxyd -c $config"
    fi
}

# `proxyd check [ARGS] -c $config` from the bundle's root, with the bundle's own binary; a bad
# config stops the deployment with proxyd's error (file:line:column) and `what` it means.
proxyd_check() { # proxyd_check WHAT [CHECK ARGS...]
    what="$1"
    shift
    if ! checked="$(cd "$bundle" && "$proxyd_bin" check "$@" -c "$config" 2>&1)"; then
        printf '%s\n' "$checked" >&2
        fail "$config is invalid (the error above names file:line:column); $what"
    fi
    say "$checked"
}
