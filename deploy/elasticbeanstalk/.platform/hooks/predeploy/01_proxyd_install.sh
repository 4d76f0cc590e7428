#!/bin/sh
# Elastic Beanstalk predeploy hook, after the platform's build step installed requirements.txt:
# the whole `proxyd check`, the workers' programs included (gunicorn, flask, ...), looked up
# on the PATH the web process will have; only then is the bundle's proxyd installed as
# /usr/local/bin/proxyd, where the Procfile's `web: proxyd -c proxy.yaml` finds it. A bad
# config fails the deployment with proxyd's error (file:line:column) and installs nothing.
#
# The same script runs as a confighook (configuration deployments). See
# ../../proxyd/hook-lib.sh for PROXYD_PREFIX and the other settings.
set -eu
here="$(cd "$(dirname "$0")" && pwd)"
proxyd_hook="proxyd predeploy hook"
# shellcheck source-path=SCRIPTDIR/../../proxyd source=hook-lib.sh
. "$here/../../proxyd/hook-lib.sh"

proxyd_pick_binary
# On the Python platform the web process runs with the app's virtualenv on its PATH (the
# platform's own `web: gunicorn ...` relies on it); hooks do not, so add it for the check.
for venv_bin in "$prefix"/var/app/venv/*/bin; do
    if [ -d "$venv_bin" ]; then
        PATH="$venv_bin:$PATH"
    fi
done
export PATH
proxyd_check "stopping the deployment; the running version keeps serving"

dest_dir="$prefix/usr/local/bin"
dest="$dest_dir/proxyd"
mkdir -p "$dest_dir"
# Copy beside the target, then rename over it: a proxyd that is running keeps its old file
# (overwriting a running binary in place fails with "Text file busy").
tmp="$dest_dir/.proxyd.new.$$"
trap 'rm -f "$tmp"' EXIT
cp "$proxyd_bin" "$tmp"
chmod 0755 "$tmp"
mv -f "$tmp" "$dest"
trap - EXIT
say "installed $proxyd_version as $dest"
