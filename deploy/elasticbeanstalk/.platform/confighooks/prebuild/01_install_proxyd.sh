#!/bin/sh
# Configuration-only deployments (an environment property changed) run confighooks, not
# hooks: the same install and `proxyd check`, since a new PORT or other property can make
# proxy.yaml invalid. EB runs this from the application's directory, bundle included.
set -eu
here="$(cd "$(dirname "$0")" && pwd)"
exec sh "$here/../../hooks/prebuild/01_install_proxyd.sh"
