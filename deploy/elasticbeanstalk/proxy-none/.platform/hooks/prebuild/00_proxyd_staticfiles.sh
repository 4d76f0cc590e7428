#!/bin/sh
# Elastic Beanstalk prebuild hook of the proxy-none bundle, before 01_proxyd_check.sh checks
# proxy.yaml: with no platform nginx, proxyd serves the environment's static files option
# (aws:elasticbeanstalk:environment:proxy:staticfiles, `/static: static` by default on the
# Python platform). ../../proxyd/staticfiles.py reads it with the platform's get-config and
# writes one static route per path between proxy.yaml's `# BEGIN proxyd staticfiles` and
# `# END proxyd staticfiles` lines (replacing what is there; nothing when the option is unset).
#
# Not on EB, get-config failing, or no python3: a warning and no static routes, never a failed
# deployment. A value that leaves the application's directory (`..`, an absolute path) fails
# it, by name. The same script runs as a confighook (the option changed).
# See ../../proxyd/hook-lib.sh for PROXYD_PREFIX, PROXYD_BUNDLE and PROXYD_CONFIG.
set -eu
here="$(cd "$(dirname "$0")" && pwd)"
proxyd_hook="proxyd staticfiles hook"
# (The overlay is copied over the bundle: hook-lib.sh is the bundle's, in the repository
# four directories up from here.)
# shellcheck source-path=SCRIPTDIR/../../../../.platform/proxyd source=hook-lib.sh
. "$here/../../proxyd/hook-lib.sh"

get_config="$prefix/opt/elasticbeanstalk/bin/get-config"
if ! command -v python3 >/dev/null 2>&1; then
    printf '%s: warning: python3 is not installed: the static files option is not read, no static routes\n' \
        "$proxyd_hook" >&2
    exit 0
fi
python3 "$here/../../proxyd/staticfiles.py" --bundle "$bundle" --config "$config" \
    --get-config "$get_config" ||
    fail "the static files option cannot be served as it is (above); stopping the deployment before the build; the running version keeps serving"
