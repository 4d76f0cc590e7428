#!/bin/sh
# Configuration-only deployments: the same as hooks/predeploy/02_proxyd_port80.sh.
set -eu
here="$(cd "$(dirname "$0")" && pwd)"
exec sh "$here/../../hooks/predeploy/02_proxyd_port80.sh"
