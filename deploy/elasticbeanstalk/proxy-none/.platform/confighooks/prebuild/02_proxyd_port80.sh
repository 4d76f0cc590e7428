#!/bin/sh
# Configuration-only deployments: the same as hooks/prebuild/02_proxyd_port80.sh.
set -eu
here="$(cd "$(dirname "$0")" && pwd)"
exec sh "$here/../../hooks/prebuild/02_proxyd_port80.sh"
