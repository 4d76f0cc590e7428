#!/usr/bin/env bash
# Adaptive worker count against fixed pools, under a step load:
#
#   benches/adaptive.sh
#
# The same app (examples/app.py, one request at a time, GET /slow?ms=50: a 50 ms handler that
# sleeps, as one waiting on a database would, so that more workers than cores help) behind
# proxyd three ways, in turn:
#   fixed-2    count: 2
#   fixed-8    count: 8
#   adaptive   count: { min: 2, max: 8, scale_up_after: 500ms, scale_down_after: 5s, cooldown: 250ms }
# Each gets the same open-loop step load from benches/adaptive_load.py (a fixed request rate
# whatever the latency): low 24 req/s for 20 s (60 % of 2 workers' 40 req/s), peak 120 req/s
# for 20 s (5 x; 75 % of 8 workers' 160 req/s), low again for 20 s. Per phase: requests/s
# answered 200, p50 and p99 of those, p99 leaving out the phase's first 5 s ("settled"),
# errors (any other status, time-outs); /status sampled every second for the worker count
# and the workers' total RSS; after the load, the wait until the pool is back at its starting
# size (at most 60 s) and the RSS then. Prints markdown tables.
#
# Builds proxyd (cargo build --release), uses only 127.0.0.1 with ports picked free at run
# time, stops every process it started by pid on exit, and takes about 4 minutes (plus the
# build). Knobs (environment): ADAPTIVE_PHASE=20 (seconds per phase), ADAPTIVE_LOW=24,
# ADAPTIVE_PEAK=120 (req/s), ADAPTIVE_MS=50 (handler ms), ADAPTIVE_KEEP=1 (keep the work
# directory with every log), ADAPTIVE_PROXYD=path (bench that binary, no build),
# ADAPTIVE_COUNT (the adaptive pool's count: value).
set -u

cd "$(dirname "$0")/.." || exit 1
ROOT=$(pwd)
PHASE=${ADAPTIVE_PHASE:-20}
LOW=${ADAPTIVE_LOW:-24}
PEAK=${ADAPTIVE_PEAK:-120}
MS=${ADAPTIVE_MS:-50}
SETTLE=5
APP_PATH="/slow?ms=$MS"
ADAPTIVE_COUNT=${ADAPTIVE_COUNT:-"{ min: 2, max: 8, scale_up_after: 500ms, scale_down_after: 5s, cooldown: 250ms }"}

say() { printf '%s\n' "$*"; }
die() { printf 'adaptive.sh: %s\n' "$*" >&2; exit 1; }

ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
command -v curl >/dev/null 2>&1 || die "curl is needed"
PY=$(command -v python3) || die "python3 is needed"
# The interpreter itself, not a shim (pyenv): a worker's pid must be the python process.
PY=$("$PY" -c 'import sys; print(sys.executable)')

if [ -n "${ADAPTIVE_PROXYD:-}" ]; then
  PROXYD=$ADAPTIVE_PROXYD
else
  build_start=$SECONDS
  if ! CARGO_INCREMENTAL=0 cargo build --release --quiet --bin proxyd; then
    [ -x target/release/proxyd ] || die "cargo build --release failed and there is no proxyd binary"
    say "WARNING: cargo build --release failed; using the existing target/release/proxyd"
  fi
  PROXYD="$ROOT/target/release/proxyd"
  say "build: $((SECONDS - build_start)) s"
fi

DIR=$(mktemp -d "${TMPDIR:-/tmp}/adaptive.XXXXXX")
PIDS="$DIR/pids"
: >"$PIDS"

alive() { kill -0 "$1" 2>/dev/null; }

# stop PID [GRACE_SECONDS]: TERM, then KILL after the grace.
stop() {
  local pid=$1 grace=${2:-15} i=0
  alive "$pid" || return 0
  kill -TERM "$pid" 2>/dev/null
  while alive "$pid" && [ "$i" -lt $((grace * 10)) ]; do
    sleep 0.1
    i=$((i + 1))
  done
  alive "$pid" && kill -KILL "$pid" 2>/dev/null
  wait "$pid" 2>/dev/null
  return 0
}

cleanup() {
  trap - EXIT INT TERM
  for pid in $(tac "$PIDS"); do stop "$pid" 3; done
  if [ "${ADAPTIVE_KEEP:-0}" = 1 ]; then
    say "logs kept in $DIR"
  else
    rm -rf "$DIR"
  fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

free_ports() {
  "$PY" - "$1" <<'EOF'
import socket, sys
socks = []
for _ in range(int(sys.argv[1])):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    socks.append(s)
print(" ".join(str(s.getsockname()[1]) for s in socks))
EOF
}

# wait_workers ADMIN_PORT N SECONDS: until /status shows N workers ready.
wait_workers() {
  local admin=$1 want=$2 deadline=$((SECONDS + $3)) n
  while [ "$SECONDS" -lt "$deadline" ]; do
    n=$(curl -fs --max-time 2 "http://127.0.0.1:$admin/status" |
      "$PY" -c 'import json,sys; print(sum(w["state"] == "ready" for w in json.load(sys.stdin)["upstreams"][0]["workers"]))' 2>/dev/null) || n=0
    [ "${n:-0}" -ge "$want" ] && return 0
    sleep 0.2
  done
  return 1
}

# run NAME COUNT START_WORKERS: proxyd with workers.count COUNT under the step load.
run() {
  local name=$1 count=$2 want=$3 port admin pid
  read -r port admin <<<"$(free_ports 2)"
  cat >"$DIR/$name.yaml" <<EOF
listen:
  - addr: "127.0.0.1:$port"
admin:
  addr: "127.0.0.1:$admin"
upstreams:
  app:
    queue: { max: 5000, timeout: 30s }
    workers:
      command: ["$PY", "$ROOT/examples/app.py"]
      count: $count
      concurrency: 1
      health: { path: /healthz }
log:
  level: info
EOF
  "$PROXYD" -c "$DIR/$name.yaml" >"$DIR/$name.log" 2>&1 &
  pid=$!
  echo "$pid" >>"$PIDS"
  wait_workers "$admin" "$want" 60 || die "$name: $want workers not ready within 60 s (see $DIR/$name.log)"
  say "[$name] $want workers ready; step load: $LOW, $PEAK, $LOW req/s x ${PHASE}s"
  timeout $((PHASE * 3 + 180)) "$PY" "$ROOT/benches/adaptive_load.py" "$port" "$admin" "$APP_PATH" \
    "low:$LOW:$PHASE,peak:$PEAK:$PHASE,low-after:$LOW:$PHASE" 25 "$SETTLE" >"$DIR/$name.out" 2>&1 ||
    say "[$name] WARNING: the load generator failed: $(tail -3 "$DIR/$name.out")"
  stop "$pid"
  grep -c "scaling up:" "$DIR/$name.log" >"$DIR/$name.ups"
  grep -c "scaling down:" "$DIR/$name.log" >"$DIR/$name.downs"
}

run fixed-2 2 2
run fixed-8 8 8
run adaptive "$ADAPTIVE_COUNT" 2

field() { # field FILE PREFIX NAME [PHASE]
  grep "^$2 " "$1" | { if [ -n "${4:-}" ]; then grep " name=$4 "; else cat; fi; } |
    head -1 | tr ' ' '\n' | sed -n "s/^$3=//p"
}

say ""
say "proxyd, examples/app.py GET $APP_PATH, concurrency 1; open-loop step load $LOW / $PEAK / $LOW req/s, ${PHASE} s each ($(date -u +%Y-%m-%d), $(nproc) cores); adaptive count: $ADAPTIVE_COUNT"
say ""
say "| pool | phase (offered req/s) | req/s | p50 ms | p99 ms | p99 ms after the first ${SETTLE} s | errors | workers |"
say "| --- | --- | ---: | ---: | ---: | ---: | ---: | --- |"
for name in fixed-2 fixed-8 adaptive; do
  out="$DIR/$name.out"
  for ph in low peak low-after; do
    lo=$(field "$out" PHASE workers_min "$ph")
    hi=$(field "$out" PHASE workers_max "$ph")
    w=$lo
    [ "$lo" != "$hi" ] && w="$lo–$hi"
    say "| $name | $ph ($(field "$out" PHASE rate "$ph")) | $(field "$out" PHASE rps "$ph") | $(field "$out" PHASE p50_ms "$ph") | $(field "$out" PHASE p99_ms "$ph") | $(field "$out" PHASE p99_settled_ms "$ph") | $(field "$out" PHASE errors "$ph") | $w |"
  done
done
say ""
say "| pool | worker RSS at rest (before) | at peak | at rest (after) | back at its starting size | scaling decisions (up / down) |"
say "| --- | ---: | ---: | ---: | --- | --- |"
for name in fixed-2 fixed-8 adaptive; do
  out="$DIR/$name.out"
  back="$(field "$out" REST back_after_s) s after the load"
  [ "$name" = adaptive ] || back="(fixed)"
  say "| $name | $(field "$out" REST start_rss_mib) MiB ($(field "$out" REST start_workers)) | $(field "$out" PEAK rss_mib) MiB ($(field "$out" PEAK workers)) | $(field "$out" REST end_rss_mib) MiB ($(field "$out" REST end_workers)) | $back | $(cat "$DIR/$name.ups") / $(cat "$DIR/$name.downs") |"
done
say ""
say "Second by second (| marks a phase change): workers in the rotation (sampled from /status;"
say "after the load, until back at rest), and the p99 in ms of the requests sent in that second:"
say ""
for name in fixed-2 fixed-8 adaptive; do
  series=$(grep '^SAMPLE ' "$DIR/$name.out" | awk '
    { for (i = 1; i <= NF; i++) { split($i, kv, "="); v[kv[1]] = kv[2] }
      if (prev != "" && v["phase"] != prev) printf "| "
      printf "%s ", v["workers"]; prev = v["phase"] }')
  say "    $(printf '%-9s' "$name") workers $series"
  series=$(grep '^SECOND ' "$DIR/$name.out" | awk -v phase="$PHASE" '
    { split($2, t, "="); split($3, p, "=")
      if (t[2] > 0 && t[2] % phase == 0) printf "| "
      printf "%s ", p[2] }')
  say "    $(printf '%-9s' "") p99 ms  $series"
done
