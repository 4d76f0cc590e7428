#!/bin/sh
# Configuration-only deployments (the static files option changed): the same as
# hooks/prebuild/00_proxyd_staticfiles.sh, before 01_proxyd_check.sh checks the result.
set -eu
here="$(cd "$(dirname "$0")" && pwd)"
exec sh "$here/../../hooks/prebuild/00_proxyd_staticfiles.sh"
