#!/bin/sh
# Configuration-only deployments: the same whole check and install as a new version gets.
set -eu
here="$(cd "$(dirname "$0")" && pwd)"
exec sh "$here/../../hooks/predeploy/01_proxyd_install.sh"
