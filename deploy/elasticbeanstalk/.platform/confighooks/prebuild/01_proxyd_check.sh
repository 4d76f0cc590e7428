#!/bin/sh
# Configuration-only deployments (an environment property changed) run confighooks, not
# hooks: the same checks, and nginx's upstream port from a PORT that may have changed.
set -eu
here="$(cd "$(dirname "$0")" && pwd)"
exec sh "$here/../../hooks/prebuild/01_proxyd_check.sh"
