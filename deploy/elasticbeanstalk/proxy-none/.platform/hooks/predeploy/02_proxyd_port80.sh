#!/bin/sh
# Without a platform proxy, proxyd (the web process, run as user webapp) listens on port 80
# and writes the healthd access log in nginx's place. Runs after 01_proxyd_install.sh (which
# installs the binary this gives the capability to).
#
#   PROXYD_PREFIX    install root, as in 01_proxyd_install.sh (tests use a temporary one)
#   PROXYD_WEB_USER  the user the Procfile processes run as (default: webapp)
set -eu

prefix="${PROXYD_PREFIX:-}"
user="${PROXYD_WEB_USER:-webapp}"
bin="$prefix/usr/local/bin/proxyd"
logdir="$prefix/var/log/nginx/healthd"

fail() {
    printf 'proxyd port-80 hook: %s\n' "$*" >&2
    exit 1
}

[ -x "$bin" ] || fail "$bin is not installed (01_proxyd_install.sh runs first)"
command -v setcap >/dev/null 2>&1 ||
    fail "setcap is missing (package libcap on Amazon Linux): it lets proxyd bind port 80 without root"

# Port 80 without root: the capability goes with the file, so set it after every install.
setcap cap_net_bind_service=+ep "$bin" ||
    fail "cannot give $bin cap_net_bind_service"

# The health agent reads PATH.YYYY-MM-DD-HH files here; proxyd must be able to create them.
mkdir -p "$logdir"
chown "$user" "$logdir" || fail "cannot give $logdir to user $user"
chmod 0755 "$logdir"
printf 'proxyd port-80 hook: %s may bind port 80; healthd logs go to %s\n' "$bin" "$logdir"
