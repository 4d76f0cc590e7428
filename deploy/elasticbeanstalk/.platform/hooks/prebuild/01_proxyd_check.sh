#!/bin/sh
# Elastic Beanstalk prebuild hook, before the platform's build step (which installs
# requirements.txt into the app's virtualenv): what can be checked before it, so that a bad
# bundle fails the deployment before anything on the instance changes.
#
# - the bundle's proxyd runs on this instance (bin/proxyd-<arch>);
# - proxy.yaml is valid, except that the workers' programs (gunicorn, ...) are not looked up:
#   the build step has not installed them yet (predeploy/01_proxyd_install.sh does that check);
# - the platform nginx's upstream (.platform/nginx/conf.d/proxyd.conf) gets the port proxyd
#   listens on, from PORT as proxy.yaml's listener does: nginx cannot read the environment,
#   and EB copies .platform/nginx into place after this hook.
#
# The same script runs as a confighook (configuration deployments), where a changed PORT or
# other property can break the config. See ../../proxyd/hook-lib.sh for PROXYD_PREFIX etc.
set -eu
here="$(cd "$(dirname "$0")" && pwd)"
proxyd_hook="proxyd prebuild hook"
# shellcheck source-path=SCRIPTDIR/../../proxyd source=hook-lib.sh
. "$here/../../proxyd/hook-lib.sh"

proxyd_pick_binary
# The check sees what the web process will: ${PORT} and the other environment properties.
proxyd_check "stopping the deployment before the build; the running version keeps serving" \
    --skip-programs

# nginx -> proxyd: proxy.yaml listens on 127.0.0.1:${PORT:-8000}. (No nginx file: the
# proxy-none overlay, where the load balancer talks to proxyd itself.)
nginx_conf="$bundle/.platform/nginx/conf.d/proxyd.conf"
if [ -f "$nginx_conf" ]; then
    port="${PORT:-8000}"
    case "$port" in
        '' | *[!0-9]* | ??????*) fail "PORT=$port is not a port number (nginx forwards to proxy.yaml's listener on it)" ;;
    esac
    if [ "$port" -lt 1 ] || [ "$port" -gt 65535 ]; then
        fail "PORT=$port is not a port number from 1 to 65535 (nginx forwards to proxy.yaml's listener on it)"
    fi
    # The upstream's one `server 127.0.0.1:N;` line: exactly one, or the file is not ours.
    pattern='^[[:space:]]*server 127\.0\.0\.1:[0-9][0-9]*;'
    count="$(grep -c "$pattern" "$nginx_conf" || true)"
    [ "$count" = 1 ] ||
        fail "$nginx_conf: expected one 'server 127.0.0.1:PORT;' line in the proxyd upstream, found $count"
    tmp="$nginx_conf.new.$$"
    trap 'rm -f "$tmp"' EXIT
    sed "s/$pattern/    server 127.0.0.1:$port;/" "$nginx_conf" >"$tmp"
    mv -f "$tmp" "$nginx_conf"
    trap - EXIT
    say "nginx's upstream is proxyd on 127.0.0.1:$port (PORT)"
fi
