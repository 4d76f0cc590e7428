#!/usr/bin/env bash
# The origin story, side by side, in one run:
#
#   benches/origin.sh
#
# A Flask app on its development server (examples/flask_app.py: one request at a time,
# threaded=False) served five ways under the same wrk load (wrk -t2 -c32, GET /slow?ms=6, a 6 ms
# handler, after a 2 s warm-up):
#   1. the dev server alone;  2. nginx -> one dev server;  3. nginx -> gunicorn -w 4 (sync);
#   4. proxyd launching 4 dev-server workers;  5. proxyd launching 4 gunicorn -w 1.
# Then fault runs, each against nginx (in front of 4 dev servers the script starts itself and
# nginx does not supervise) and against proxyd (4 workers it supervises):
#   a. a backend SIGKILLed every 2 s under 80 % GET /slow?ms=6 + 20 % POST /echo (the script
#      restarts nginx's killed dev server after ~1 s, like a process manager; proxyd's
#      supervisor restarts its own); POSTs that reached a backend twice are counted;
#   b. clients on keep-alive connections pacing requests ~1 s apart (50 % GET, 50 % POST),
#      b1 with the stock dev server, b2 with a dev server patched to keep connections alive
#      and close them after 1 s idle (benches/origin_app.py, ORIGIN_KEEPALIVE);
#   (a is the kill run of the admission issue: failed GETs and POSTs are counted apart.)
# Then admission, nginx -> gunicorn -w 4 (sync, default backlog 2048) against proxyd launching
# 4 dev-server workers with its defaults, GET /slow?ms=6:
#   closed: wrk -t2 --timeout 30s at 64, 512 and 2048 connections (2 s warm-up, then the run);
#   open:   open-loop load (examples/open_loop.rs) at 2x and 5x capacity for the run's length,
#           capacity being the better of the two fronts' 64-connection requests/s; a request
#           unanswered after 10 s is a client time-out.
#   Each with the front end's CPU time during the run (nginx: its workers; proxyd: itself).
# Prints a table for 1-5 (req/s, p50, p99, client-visible errors) with the 4:3 ratio, a block
# per fault run (requests, status codes, socket errors), and the admission tables with the
# issue's targets met or missed.
#
# Installs what is missing (apt-get install nginx-light wrk; pip install flask gunicorn),
# builds proxyd (cargo build --release), uses only 127.0.0.1 with ports picked free at run
# time, stops every process it started by pid on exit, and takes about 5 minutes (plus the
# build).
# Knobs (environment): ORIGIN_DURATION=10 (seconds per run 1-5 and per admission run),
# ORIGIN_FAULT_DURATION=10 (seconds per fault run), ORIGIN_PARTS="main a b closed open" (what
# to run; "open" uses "closed"'s 64-connection figures when both run, else measures them),
# ORIGIN_KEEP=1 (keep the work directory with every log).
# Helpers: benches/origin.lua (wrk script: mix, pacing, status counts),
# benches/origin_app.py (the fault runs' app: flask_app.py's app + receipt log + keep-alive
# emulation), examples/open_loop.rs (open-loop client).
set -u

cd "$(dirname "$0")/.." || exit 1
ROOT=$(pwd)
DUR=${ORIGIN_DURATION:-10}
FDUR=${ORIGIN_FAULT_DURATION:-10}
WRK_ARGS=(-t2 -c32)
GET_PATH="/slow?ms=6"
LUA="$ROOT/benches/origin.lua"
PARTS=" ${ORIGIN_PARTS:-main a b closed open} "
want() { case "$PARTS" in *" $1 "*) return 0 ;; *) return 1 ;; esac; }

say() { printf '%s\n' "$*"; }
die() { printf 'origin.sh: %s\n' "$*" >&2; exit 1; }

# ---------------------------------------------------------------- what it needs
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
missing=""
command -v nginx >/dev/null 2>&1 || missing="$missing nginx-light"
command -v wrk >/dev/null 2>&1 || missing="$missing wrk"
command -v curl >/dev/null 2>&1 || missing="$missing curl"
command -v ps >/dev/null 2>&1 || missing="$missing procps"
if [ -n "$missing" ]; then
  say "installing:$missing"
  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $missing; } \
    >/dev/null || die "could not install$missing (needs root and apt-get)"
fi
PY=$(command -v python3) || die "python3 is needed"
pip_install() {
  "$PY" -m pip install -q "$@" 2>/dev/null || "$PY" -m pip install -q --break-system-packages "$@"
}
"$PY" -c 'import flask' 2>/dev/null || pip_install flask || die "could not install flask"
"$PY" -c 'import gunicorn' 2>/dev/null || pip_install gunicorn || die "could not install gunicorn"
# The interpreter itself, not a shim (pyenv): a worker's pid must be the python process.
PY=$("$PY" -c 'import sys; print(sys.executable)')

build_start=$SECONDS
if ! cargo build --release --quiet --bin proxyd --example open_loop; then
  [ -x target/release/proxyd ] || die "cargo build --release failed and there is no proxyd binary"
  say "WARNING: cargo build --release failed (the tree may be mid-edit); using the existing target/release/proxyd"
fi
OPEN_LOOP="$ROOT/target/release/examples/open_loop"
PROXYD="$ROOT/target/release/proxyd"
BUILD_SECS=$((SECONDS - build_start))
BENCH_START=$SECONDS
T() { echo "[t=$((SECONDS - BENCH_START))s]"; }

# ---------------------------------------------------------------- processes
DIR=$(mktemp -d "${TMPDIR:-/tmp}/origin.XXXXXX")
PIDS="$DIR/pids"   # every pid started
DONE="$DIR/done"   # pids known to be gone (stopped, killed, waited for)
: >"$PIDS"
: >"$DONE"
LAST_PID=""

# start NAME CMD...: in the background, output to $DIR/NAME.log (appended), pid recorded.
start() {
  local name=$1
  shift
  "$@" >>"$DIR/$name.log" 2>&1 &
  LAST_PID=$!
  echo "$LAST_PID" >>"$PIDS"
}

alive() { kill -0 "$1" 2>/dev/null; }

# stop PID [GRACE_SECONDS]: TERM, then KILL after the grace.
stop() {
  local pid=$1 grace=${2:-5} i=0
  alive "$pid" || return 0
  kill -TERM "$pid" 2>/dev/null
  while alive "$pid" && [ "$i" -lt $((grace * 10)) ]; do
    sleep 0.1
    i=$((i + 1))
  done
  alive "$pid" && kill -KILL "$pid" 2>/dev/null
  wait "$pid" 2>/dev/null
  echo "$pid" >>"$DONE"
  return 0
}

# bounded OUT CMD...: CMD in the foreground as far as the script goes (its pid recorded, so an
# interrupted run stops it too), output to OUT.
bounded() {
  local out=$1 pid
  shift
  "$@" >"$out" 2>&1 &
  pid=$!
  echo "$pid" >>"$PIDS"
  wait "$pid"
  echo "$pid" >>"$DONE"
}

cleanup() {
  trap - EXIT INT TERM
  if [ -s "$PIDS" ]; then
    # newest first: fronts before their backends
    for pid in $(tac "$PIDS"); do
      grep -qx "$pid" "$DONE" || stop "$pid" 3
    done
  fi
  if [ "${ORIGIN_KEEP:-0}" = 1 ]; then
    say "logs kept in $DIR"
  else
    rm -rf "$DIR"
  fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# free_ports N: N distinct free loopback ports.
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

# wait_http URL SECONDS: until URL answers 2xx.
wait_http() {
  local url=$1 deadline=$((SECONDS + $2))
  while [ "$SECONDS" -lt "$deadline" ]; do
    curl -fs -o /dev/null --max-time 1 "$url" && return 0
    sleep 0.1
  done
  return 1
}

# wait_pids PORT N SECONDS: until GET /pid through PORT has shown N different backend pids.
wait_pids() {
  local port=$1 want=$2 deadline=$((SECONDS + $3)) seen="" p
  while [ "$SECONDS" -lt "$deadline" ]; do
    p=$(curl -fs --max-time 2 "http://127.0.0.1:$port/pid") || p=""
    case "$p" in
      '' | *[!0-9]*) sleep 0.1 ;;
      *) case " $seen " in *" $p "*) ;; *) seen="$seen $p" ;; esac ;;
    esac
    [ "$(echo $seen | wc -w)" -ge "$want" ] && return 0
  done
  say "  WARNING: only $(echo $seen | wc -w) of $want backends answered through port $port within $3 s"
  return 1
}

# ---------------------------------------------------------------- nginx
NGINX_TEMPS="client_body proxy"
for m in fastcgi uwsgi scgi; do
  nginx -V 2>&1 | grep -q -- "--without-http_${m}_module" || NGINX_TEMPS="$NGINX_TEMPS $m"
done

# start_nginx TAG PORT BACKEND_PORT...: nginx as a typical user sets it up in front of the
# backends (round robin, upstream keepalive 16, HTTP/1.1 with Connection cleared, default
# max_fails=1 fail_timeout=10s and proxy_next_upstream error timeout). Sets NGINX_PID.
start_nginx() {
  local tag=$1 port=$2 prefix="$DIR/nginx-$1" b t
  shift 2
  mkdir -p "$prefix/tmp"
  {
    echo "daemon off;"
    echo "worker_processes auto;"
    echo "pid $prefix/nginx.pid;"
    echo "error_log $prefix/error.log error;"
    echo "events { worker_connections ${NGINX_WORKER_CONNECTIONS:-1024}; }"
    echo "http {"
    echo "  access_log off;"
    for t in $NGINX_TEMPS; do
      [ "$t" = client_body ] && echo "  client_body_temp_path $prefix/tmp/client_body;" && continue
      echo "  ${t}_temp_path $prefix/tmp/$t;"
    done
    echo "  upstream app {"
    for b in "$@"; do echo "    server 127.0.0.1:$b;"; done
    echo "    keepalive 16;"
    echo "  }"
    echo "  server {"
    echo "    listen 127.0.0.1:$port;"
    echo "    location / {"
    echo "      proxy_pass http://app;"
    echo "      proxy_http_version 1.1;"
    echo "      proxy_set_header Connection \"\";"
    echo "      proxy_set_header Host \$host;"
    echo "      proxy_set_header X-Forwarded-For \$proxy_add_x_forwarded_for;"
    echo "    }"
    echo "  }"
    echo "}"
  } >"$prefix/nginx.conf"
  start "nginx-$tag" nginx -p "$prefix/" -c "$prefix/nginx.conf" -e "$prefix/error.log"
  NGINX_PID=$LAST_PID
  NGINX_ERRLOG="$prefix/error.log"
}

# ---------------------------------------------------------------- proxyd
# start_proxyd TAG PORT ADMIN_PORT APP_SCRIPT [WORKER_KEEPALIVE] [ENV_YAML]: proxyd launching
# 4 workers of APP_SCRIPT (like config/flask.yaml, with free ports and quiet logs). Sets
# PROXYD_PID.
start_proxyd() {
  local tag=$1 port=$2 admin=$3 script=$4 keepalive=${5:-} env=${6:-}
  local conf="$DIR/proxyd-$tag.yaml"
  {
    echo "listen:"
    echo "  - addr: \"127.0.0.1:$port\""
    echo "admin:"
    echo "  addr: \"127.0.0.1:$admin\""
    echo "upstreams:"
    echo "  flask:"
    echo "    workers:"
    if [ -n "${PROXYD_COMMAND:-}" ]; then
      echo "      command: $PROXYD_COMMAND"
    else
      echo "      command: [\"$PY\", \"$script\"]"
    fi
    echo "      count: 4"
    echo "      health:"
    echo "        path: \"/healthz\""
    [ -n "$keepalive" ] && echo "      keepalive: \"$keepalive\""
    [ -n "$env" ] && echo "      env: $env"
    echo "log:"
    echo "  level: warn"
  } >"$conf"
  start "proxyd-$tag" "$PROXYD" -c "$conf"
  PROXYD_PID=$LAST_PID
  PROXYD_LOG="$DIR/proxyd-$tag.log"
}

# proxyd_victim: the oldest live worker of proxyd (lowest pid among its children).
proxyd_victim() {
  ps -o pid=,stat= --ppid "$PROXYD_PID" 2>/dev/null | awk '$2 !~ /^Z/ {print $1}' | sort -n | head -1
}

# ---------------------------------------------------------------- load and results
# run_wrk NAME PORT [VAR=VALUE...] [-- WRK_OPTIONS...]: wrk with benches/origin.lua; the RESULT
# line goes to $DIR/NAME.result. Bounded by `timeout`.
run_wrk() {
  local name=$1 port=$2 envs=() opts=()
  shift 2
  while [ $# -gt 0 ] && [ "$1" != -- ]; do envs+=("$1"); shift; done
  [ "${1:-}" = -- ] && shift
  opts=("$@")
  bounded "$DIR/$name.wrk" env ORIGIN_PATH="$GET_PATH" ORIGIN_RUN="$name" ${envs[@]+"${envs[@]}"} \
    timeout 120 wrk "${opts[@]}" -s "$LUA" "http://127.0.0.1:$port/"
  grep '^RESULT' "$DIR/$name.wrk" >"$DIR/$name.result" ||
    { echo "RESULT requests=0 failed=1" >"$DIR/$name.result"; say "  wrk failed: $(tail -3 "$DIR/$name.wrk")"; }
}

# field FILE KEY: the value of KEY=... on FILE's RESULT line (or "-").
field() {
  local v
  v=$(sed -n "s/^RESULT.* $2=\([^ ]*\).*/\1/p" "$1" | head -1)
  echo "${v:--}"
}

# num FILE KEY: an integer field, 0 when missing (a failed run).
num() {
  local v
  v=$(field "$1" "$2")
  case "$v" in '' | *[!0-9]*) echo 0 ;; *) echo "$v" ;; esac
}

# sum_statuses STATUSES LOW HIGH: how many responses had a status in [LOW, HIGH].
sum_statuses() {
  echo "$1" | tr ',' '\n' | awk -F: -v lo="$2" -v hi="$3" '$1>=lo && $1<=hi {n+=$2} END {print n+0}'
}

client_errors() { # FILE: non-2xx/3xx responses + socket errors (connect, read, write, timeout)
  local f=$1
  echo $(($(num "$f" non2xx3xx) + $(num "$f" connect) + $(num "$f" read) + $(num "$f" write) + $(num "$f" timeout)))
}

# fault_report LABEL FILE [EXTRA]: "requests" are the responses wrk got; "no answer by the end"
# the requests wrk sent that got neither a response nor a socket error before it stopped.
fault_report() {
  local f=$2 st sent lost
  st=$(field "$f" statuses)
  sent=$(($(num "$f" gets) + $(num "$f" posts)))
  lost=$((sent - $(num "$f" requests) - $(num "$f" read) - $(num "$f" write)))
  [ "$lost" -lt 0 ] && lost=0
  printf '  %-8s requests %-6s 2xx %-6s 5xx %-6s statuses %-22s socket errors: connect %s read %s write %s timeout %s\n' \
    "$1" "$(field "$f" requests)" "$(sum_statuses "$st" 200 299)" "$(sum_statuses "$st" 500 599)" \
    "$st" "$(field "$f" connect)" "$(field "$f" read)" "$(field "$f" write)" "$(field "$f" timeout)"
  printf '           sent %s, no answer by the end of the run %s\n' "$sent" "$lost"
  [ -n "${3:-}" ] && printf '           %s\n' "$3"
  return 0
}

nginx_log_counts() { # ERROR_LOG: the upstream errors nginx logged
  local f=$1
  [ -f "$f" ] || { echo "nginx error log: none"; return; }
  printf 'nginx error log: "no live upstreams" %s, "prematurely closed" %s, "Connection refused" %s, "Connection reset" %s, upstream timed out %s, "worker_connections are not enough" %s' \
    "$(grep -c 'no live upstreams' "$f")" "$(grep -c 'prematurely closed' "$f")" \
    "$(grep -c 'Connection refused' "$f")" "$(grep -c 'reset by peer' "$f")" \
    "$(grep -c 'upstream timed out' "$f")" "$(grep -c 'worker_connections are not enough' "$f")"
}

proxyd_log_counts() { # LOG: the request failures proxyd logged, by method and cause
  local kinds
  kinds=$(grep 'request failed' "$1" 2>/dev/null | sed -n 's/.*method=\([A-Z]*\).*error=\([a-z0-9-]*\).*/\1 \2/p' |
    sort | uniq -c | awk '{printf "%s%s %s %s", (NR > 1 ? ", " : ""), $2, $3, $1}')
  echo "proxyd log: request failures by method and cause: ${kinds:-none}"
}

post_report() { # RESULT_FILE RECV_LOG: GETs and POSTs sent and answered 200, POSTs received by a backend, twice
  local f=$1 recv=$2 uniq dup
  uniq=$(sort -u "$recv" 2>/dev/null | wc -l)
  dup=$(sort "$recv" 2>/dev/null | uniq -d | wc -l)
  printf 'GETs: sent %s, answered 200 %s; POSTs: sent %s, answered 200 with their body %s, reached a backend %s, reached a backend more than once %s (sent minus answered includes the requests in flight when wrk stopped)' \
    "$(field "$f" gets)" "$(field "$f" gets_ok)" "$(field "$f" posts)" "$(field "$f" posts_ok)" "$uniq" "$dup"
}

say "origin.sh: $(nginx -v 2>&1 | sed 's/^nginx version: //'), $(wrk -v 2>&1 | head -1 | awk '{print "wrk " $2}'), $("$PY" -m gunicorn --version 2>&1 | head -1), flask $("$PY" -c 'import importlib.metadata as m; print(m.version("flask"))'), proxyd $(git rev-parse --short HEAD 2>/dev/null)$(git diff --quiet HEAD -- src 2>/dev/null || echo '+local-changes'), $(nproc) cores"
say "load for runs 1-4: wrk ${WRK_ARGS[*]} -d${DUR}s GET $GET_PATH (2 s warm-up first; wrk's default 2 s time-out)"

# ================================================================ runs 1-5
if want main; then
main_run() { # NAME PORT: warm up, then measure
  bounded "$DIR/$1.warmup" timeout 30 wrk "${WRK_ARGS[@]}" -d2s "http://127.0.0.1:$2$GET_PATH"
  run_wrk "$1" "$2" -- "${WRK_ARGS[@]}" -d"${DUR}s"
}

say ""
say "== $(T) run 1: the Flask dev server alone"
read -r p1 <<<"$(free_ports 1)"
start dev1 env PORT="$p1" "$PY" "$ROOT/examples/flask_app.py"
d1=$LAST_PID
wait_http "http://127.0.0.1:$p1/healthz" 30 || say "  WARNING: the dev server did not start: $(tail -3 "$DIR/dev1.log")"
main_run run1 "$p1"
stop "$d1"

say "== $(T) run 2: nginx -> one Flask dev server"
read -r p1 p2 <<<"$(free_ports 2)"
start dev2 env PORT="$p1" "$PY" "$ROOT/examples/flask_app.py"
d1=$LAST_PID
wait_http "http://127.0.0.1:$p1/healthz" 30 || say "  WARNING: the dev server did not start"
start_nginx run2 "$p2" "$p1"
wait_pids "$p2" 1 20
main_run run2 "$p2"
RUN2_NGINX_LOG=$(nginx_log_counts "$NGINX_ERRLOG")
stop "$NGINX_PID"
stop "$d1"

say "== $(T) run 3: nginx -> gunicorn -w 4 (sync workers)"
read -r p1 p2 <<<"$(free_ports 2)"
start gunicorn sh -c 'cd "$1/examples" && exec "$2" -m gunicorn -w 4 -b "127.0.0.1:$3" flask_app:app' sh "$ROOT" "$PY" "$p1"
g=$LAST_PID
wait_http "http://127.0.0.1:$p1/healthz" 30 || say "  WARNING: gunicorn did not start: $(tail -3 "$DIR/gunicorn.log")"
start_nginx run3 "$p2" "$p1"
wait_pids "$p2" 4 20
main_run run3 "$p2"
RUN3_NGINX_LOG=$(nginx_log_counts "$NGINX_ERRLOG")
stop "$NGINX_PID"
stop "$g" 10

say "== $(T) run 4: proxyd launching 4 Flask dev-server workers"
read -r p1 a1 <<<"$(free_ports 2)"
start_proxyd run4 "$p1" "$a1" "$ROOT/examples/flask_app.py"
wait_pids "$p1" 4 30 || say "  proxyd log: $(tail -5 "$PROXYD_LOG")"
main_run run4 "$p1"
stop "$PROXYD_PID" 10

say "== $(T) run 5: proxyd launching 4 gunicorn processes (one sync worker each)"
# The same app server as run 3, so runs 3 and 5 differ only in the front end.
read -r p1 a1 <<<"$(free_ports 2)"
PROXYD_COMMAND="[\"$PY\", \"-m\", \"gunicorn\", \"-w\", \"1\", \"-b\", \"127.0.0.1:{port}\", \"--chdir\", \"$ROOT/examples\", \"flask_app:app\"]" \
  start_proxyd run5 "$p1" "$a1" ""
wait_pids "$p1" 4 30 || say "  proxyd log: $(tail -5 "$PROXYD_LOG")"
main_run run5 "$p1"
stop "$PROXYD_PID" 10

say ""
say "Runs 1-5 (errors = non-2xx/3xx responses + socket errors connect/read/write/timeout)"
printf '%-36s %9s %9s %9s %8s  %s\n' "run" "req/s" "p50 ms" "p99 ms" "errors" "detail"
for r in "run1:1 Flask dev server alone" "run2:2 nginx -> 1 dev server" "run3:3 nginx -> gunicorn -w 4" "run4:4 proxyd -> 4 dev-server workers" "run5:5 proxyd -> 4 gunicorn -w 1"; do
  f="$DIR/${r%%:*}.result"
  printf '%-36s %9s %9s %9s %8s  %s\n' "${r#*:}" "$(field "$f" rps)" "$(field "$f" p50_ms)" "$(field "$f" p99_ms)" \
    "$(client_errors "$f")" "requests $(field "$f" requests), statuses $(field "$f" statuses), connect $(field "$f" connect) read $(field "$f" read) write $(field "$f" write) timeout $(field "$f" timeout)"
done
awk -v r4="$(field "$DIR/run4.result" rps)" -v r3="$(field "$DIR/run3.result" rps)" \
  -v q4="$(field "$DIR/run4.result" p99_ms)" -v q3="$(field "$DIR/run3.result" p99_ms)" 'BEGIN {
  printf "run 4 / run 3: requests/s x%s, p99 x%s\n", (r3 > 0 ? sprintf("%.2f", r4 / r3) : "-"), (q3 > 0 ? sprintf("%.2f", q4 / q3) : "-")
}'
awk -v r5="$(field "$DIR/run5.result" rps)" -v r3="$(field "$DIR/run3.result" rps)" \
  -v q5="$(field "$DIR/run5.result" p99_ms)" -v q3="$(field "$DIR/run3.result" p99_ms)" 'BEGIN {
  printf "run 5 / run 3 (same app server, proxyd vs nginx in front): requests/s x%s, p99 x%s\n", (r3 > 0 ? sprintf("%.2f", r5 / r3) : "-"), (q3 > 0 ? sprintf("%.2f", q5 / q3) : "-")
}'
say "run 2 $RUN2_NGINX_LOG"
say "run 3 $RUN3_NGINX_LOG"
fi

# ================================================================ fault runs
# start_devs TAG N [VAR=VALUE...]: N dev servers (benches/origin_app.py) on free ports, not
# supervised by anyone; sets DEV_PORTS and DEV_PIDS (arrays) and DEV_ENV.
start_devs() {
  local tag=$1 n=$2 i
  shift 2
  DEV_ENV=("$@")
  read -r -a DEV_PORTS <<<"$(free_ports "$n")"
  DEV_PIDS=()
  for i in $(seq 0 $((n - 1))); do
    start "$tag-dev$i" env PORT="${DEV_PORTS[$i]}" ${DEV_ENV[@]+"${DEV_ENV[@]}"} "$PY" "$ROOT/benches/origin_app.py"
    DEV_PIDS[$i]=$LAST_PID
  done
  for i in $(seq 0 $((n - 1))); do
    wait_http "http://127.0.0.1:${DEV_PORTS[$i]}/healthz" 30 || say "  WARNING: dev server $i did not start"
  done
}
restart_dev() { # TAG SLOT
  start "$1-dev$2" env PORT="${DEV_PORTS[$2]}" ${DEV_ENV[@]+"${DEV_ENV[@]}"} "$PY" "$ROOT/benches/origin_app.py"
  DEV_PIDS[$2]=$LAST_PID
}
stop_devs() {
  local p
  for p in "${DEV_PIDS[@]}"; do stop "$p"; done
}

if want a || want b; then
say ""
say "Fault runs: nginx (config as in runs 2-3) in front of 4 dev servers it does not supervise,"
say "and proxyd supervising 4 dev-server workers. The fault runs' app is benches/origin_app.py:"
say "examples/flask_app.py's app plus a receipt log of request ids (and, in b2, keep-alive)."
say "nginx config (runs 2-3 and all fault runs): worker_processes auto, worker_connections 1024,"
say "access_log off, upstream round robin with keepalive 16 and the default max_fails=1"
say "fail_timeout=10s, proxy_http_version 1.1, Connection \"\", default proxy_next_upstream (error"
say "timeout; never a non-idempotent request once sent). proxyd config: like config/flask.yaml"
say "(4 workers, health /healthz) with log level warn; no admission or retry keys, so its defaults."
fi

# ---------------------------------------------------------------- a
if want a; then
say ""
say "== $(T) fault a: a backend SIGKILLed every 2 s; wrk ${WRK_ARGS[*]} -d${FDUR}s, 80 % GET $GET_PATH, 20 % POST /echo (~90-byte body, unique ?rid=)"
kills=$((FDUR / 2))
recv="$DIR/a-nginx.recv"
: >"$recv"
read -r pn <<<"$(free_ports 1)"
start_devs a-nginx 4 ORIGIN_RECV_LOG="$recv"
start_nginx a "$pn" "${DEV_PORTS[@]}"
wait_pids "$pn" 4 20
: >"$recv"
run_wrk a-nginx "$pn" ORIGIN_POST_PCT=20 -- "${WRK_ARGS[@]}" -d"${FDUR}s" &
w=$!
echo "$w" >>"$PIDS"
sleep 1
for k in $(seq 1 "$kills"); do
  slot=$(((k - 1) % 4))
  kill -KILL "${DEV_PIDS[$slot]}" 2>/dev/null
  wait "${DEV_PIDS[$slot]}" 2>/dev/null # reaped here, so bash prints no "Killed" notice
  echo "${DEV_PIDS[$slot]}" >>"$DONE"
  sleep 1
  restart_dev a-nginx "$slot" # ~1 s later, like a process manager
  sleep 1
done
wait "$w"
echo "$w" >>"$DONE"
A_NGINX_LOG=$(nginx_log_counts "$NGINX_ERRLOG")
stop "$NGINX_PID"
stop_devs

recv2="$DIR/a-proxyd.recv"
: >"$recv2"
read -r pp ap <<<"$(free_ports 2)"
start_proxyd a "$pp" "$ap" "$ROOT/benches/origin_app.py" "" "{ ORIGIN_RECV_LOG: \"$recv2\" }"
wait_pids "$pp" 4 30 || say "  proxyd log: $(tail -5 "$PROXYD_LOG")"
: >"$recv2"
run_wrk a-proxyd "$pp" ORIGIN_POST_PCT=20 -- "${WRK_ARGS[@]}" -d"${FDUR}s" &
w=$!
echo "$w" >>"$PIDS"
sleep 1
killed=0
for k in $(seq 1 "$kills"); do
  v=$(proxyd_victim)
  if [ -n "$v" ]; then
    kill -KILL "$v" 2>/dev/null && killed=$((killed + 1))
  fi
  sleep 2
done
wait "$w"
echo "$w" >>"$DONE"
A_PROXYD_LOG=$(proxyd_log_counts "$PROXYD_LOG")
stop "$PROXYD_PID" 10

fault_report nginx "$DIR/a-nginx.result" "$(post_report "$DIR/a-nginx.result" "$recv"); $kills kills, each restarted ~1 s later by the script"
say "           $A_NGINX_LOG"
fault_report proxyd "$DIR/a-proxyd.result" "$(post_report "$DIR/a-proxyd.result" "$recv2"); $killed kills, restarted by proxyd's supervisor"
say "           $A_PROXYD_LOG"
fi

# ---------------------------------------------------------------- b
if want b; then
say ""
say "== $(T) fault b: keep-alive clients pacing requests ~1 s apart (800-1200 ms); wrk -t2 -c8 -d${FDUR}s, 50 % GET $GET_PATH, 50 % POST /echo"
say "   b1: the stock dev server never keeps a connection alive (threaded=False answers HTTP/1.0 and"
say "       werkzeug sends 'Connection: close' on every response), so there is no idle keep-alive"
say "       connection to race; run anyway."
say "   b2: dev servers patched (ORIGIN_KEEPALIVE=1) to keep connections alive and close them after"
say "       1 s idle. nginx: upstream keepalive 16 with its default keepalive_timeout (60 s), as"
say "       typically set; proxyd: the workers' keepalive: \"1s\" (its pool closes idle ones at half)."
for variant in b1 b2; do
  if [ "$variant" = b2 ]; then ka_env=(ORIGIN_KEEPALIVE=1); ka_conf="1s"; ka_yaml="ORIGIN_KEEPALIVE: \"1\", "; else
    ka_env=(); ka_conf=""; ka_yaml=""; fi
  recv="$DIR/$variant-nginx.recv"
  : >"$recv"
  read -r pn <<<"$(free_ports 1)"
  start_devs "$variant-nginx" 4 ORIGIN_RECV_LOG="$recv" ${ka_env[@]+"${ka_env[@]}"}
  start_nginx "$variant" "$pn" "${DEV_PORTS[@]}"
  wait_pids "$pn" 4 20
  : >"$recv"
  run_wrk "$variant-nginx" "$pn" ORIGIN_POST_PCT=50 ORIGIN_DELAY_MS=1000 -- -t2 -c8 -d"${FDUR}s"
  B_NGINX_LOG=$(nginx_log_counts "$NGINX_ERRLOG")
  stop "$NGINX_PID"
  stop_devs

  recv2="$DIR/$variant-proxyd.recv"
  : >"$recv2"
  read -r pp ap <<<"$(free_ports 2)"
  start_proxyd "$variant" "$pp" "$ap" "$ROOT/benches/origin_app.py" "$ka_conf" "{ ${ka_yaml}ORIGIN_RECV_LOG: \"$recv2\" }"
  wait_pids "$pp" 4 30 || say "  proxyd log: $(tail -5 "$PROXYD_LOG")"
  : >"$recv2"
  run_wrk "$variant-proxyd" "$pp" ORIGIN_POST_PCT=50 ORIGIN_DELAY_MS=1000 -- -t2 -c8 -d"${FDUR}s"
  B_PROXYD_LOG=$(proxyd_log_counts "$PROXYD_LOG")
  stop "$PROXYD_PID" 10

  say "  $variant: (finished $(T))"
  fault_report nginx "$DIR/$variant-nginx.result" "p50 $(field "$DIR/$variant-nginx.result" p50_ms) ms, p99 $(field "$DIR/$variant-nginx.result" p99_ms) ms; $(post_report "$DIR/$variant-nginx.result" "$recv")"
  say "           $B_NGINX_LOG"
  fault_report proxyd "$DIR/$variant-proxyd.result" "p50 $(field "$DIR/$variant-proxyd.result" p50_ms) ms, p99 $(field "$DIR/$variant-proxyd.result" p99_ms) ms; $(post_report "$DIR/$variant-proxyd.result" "$recv2")"
  say "           $B_PROXYD_LOG"
done

fi

# ================================================================ admission
# cpu_ticks PID...: user + system clock ticks the processes used so far.
cpu_ticks() {
  local pid t=0 v
  for pid in "$@"; do
    v=$(awk '{print $14 + $15}' "/proc/$pid/stat" 2>/dev/null) || v=0
    t=$((t + ${v:-0}))
  done
  echo "$t"
}
HZ=$(getconf CLK_TCK)
front_pids() { # KIND PID: the processes that do a front's work
  case "$1" in
    nginx) ps -o pid= --ppid "$2" 2>/dev/null | tr -d ' ' ;;
    *) echo "$2" ;;
  esac
}
# start_front KIND TAG: nginx -> gunicorn -w 4, or proxyd -> 4 dev-server workers, on free ports;
# sets FRONT_PORT, FRONT_PID and BACK_PID (gunicorn's master, for nginx).
start_front() {
  local kind=$1 tag=$2 p1 p2
  read -r p1 p2 <<<"$(free_ports 2)"
  if [ "$kind" = nginx ]; then
    start "gunicorn-$tag" sh -c 'cd "$1/examples" && exec "$2" -m gunicorn -w 4 -b "127.0.0.1:$3" flask_app:app' sh "$ROOT" "$PY" "$p1"
    BACK_PID=$LAST_PID
    wait_http "http://127.0.0.1:$p1/healthz" 30 || say "  WARNING: gunicorn did not start: $(tail -3 "$DIR/gunicorn-$tag.log")"
    # Enough connections for 2048 clients and as many to gunicorn, as a user would set.
    NGINX_WORKER_CONNECTIONS=8192 start_nginx "$tag" "$p2" "$p1"
    FRONT_PID=$NGINX_PID
    FRONT_PORT=$p2
    wait_pids "$p2" 4 20
  else
    start_proxyd "$tag" "$p1" "$p2" "$ROOT/examples/flask_app.py"
    FRONT_PID=$PROXYD_PID
    BACK_PID=""
    FRONT_PORT=$p1
    wait_pids "$p1" 4 30 || say "  proxyd log: $(tail -5 "$PROXYD_LOG")"
  fi
}
stop_front() {
  stop "$FRONT_PID" 10
  [ -n "$BACK_PID" ] && stop "$BACK_PID" 10
  return 0
}
# cpu_run NAME CMD...: CMD bounded, with the front's CPU over it in $DIR/NAME.cpu (ms).
cpu_run() {
  local name=$1 before after pids
  shift
  pids=$(front_pids "$FRONT_KIND" "$FRONT_PID")
  before=$(cpu_ticks $pids)
  bounded "$DIR/$name.out" "$@"
  after=$(cpu_ticks $pids)
  echo $(((after - before) * 1000 / HZ)) >"$DIR/$name.cpu"
}
cpu_ms() { cat "$DIR/$1.cpu" 2>/dev/null || echo 0; }
ok_mark() { # CONDITION-TEXT RESULT(0/1)
  if [ "$2" = 1 ]; then echo "met"; else echo "MISSED"; fi
}

CLOSED_SIZES="64 512 2048"
if want closed || want open; then
  say ""
  say "Admission: nginx -> gunicorn -w 4 (sync workers, backlog 2048; nginx as in runs 2-3 with"
  say "worker_connections 8192) against proxyd launching 4 dev-server workers with its defaults"
  say "(no queue keys). GET $GET_PATH; front-end CPU is nginx's workers' or proxyd's own."
fi
want closed || CLOSED_SIZES="64"
if want closed || want open; then
  for c in $CLOSED_SIZES; do
    say "== $(T) closed loop: wrk -t2 -c$c --timeout 30s -d${DUR}s (after a 2 s warm-up at the same size)"
    for FRONT_KIND in nginx proxyd; do
      start_front "$FRONT_KIND" "closed$c-$FRONT_KIND"
      bounded "$DIR/closed$c-$FRONT_KIND.warmup" timeout 60 wrk -t2 -c"$c" --timeout 30s -d2s "http://127.0.0.1:$FRONT_PORT$GET_PATH"
      cpu_run "closed$c-$FRONT_KIND" env ORIGIN_PATH="$GET_PATH" ORIGIN_RUN="closed$c" \
        timeout 120 wrk -t2 -c"$c" --timeout 30s -d"${DUR}s" -s "$LUA" "http://127.0.0.1:$FRONT_PORT/"
      grep '^RESULT' "$DIR/closed$c-$FRONT_KIND.out" >"$DIR/closed$c-$FRONT_KIND.result" ||
        { echo "RESULT requests=0 failed=1" >"$DIR/closed$c-$FRONT_KIND.result"; say "  wrk failed: $(tail -3 "$DIR/closed$c-$FRONT_KIND.out")"; }
      [ "$FRONT_KIND" = nginx ] && say "  nginx: $(nginx_log_counts "$NGINX_ERRLOG")"
      [ "$FRONT_KIND" = proxyd ] && say "  proxyd: $(proxyd_log_counts "$PROXYD_LOG")"
      stop_front
    done
  done
fi

if want closed; then
  say ""
  say "Closed loop (errors = non-2xx/3xx + socket errors; CPU = the front end's, per response)"
  printf '%-6s %-8s %9s %9s %9s %8s %10s  %s\n' "conns" "front" "req/s" "p50 ms" "p99 ms" "errors" "CPU us/req" "statuses"
  for c in $CLOSED_SIZES; do
    for k in nginx proxyd; do
      f="$DIR/closed$c-$k.result"
      printf '%-6s %-8s %9s %9s %9s %8s %10s  %s\n' "$c" "$k" "$(field "$f" rps)" "$(field "$f" p50_ms)" "$(field "$f" p99_ms)" \
        "$(client_errors "$f")" "$(awk -v ms="$(cpu_ms "closed$c-$k")" -v n="$(num "$f" requests)" 'BEGIN { printf "%.0f", (n > 0 ? ms * 1000 / n : 0) }')" \
        "$(field "$f" statuses)"
    done
    n="$DIR/closed$c-nginx.result" p="$DIR/closed$c-proxyd.result"
    met=$(awk -v e="$(client_errors "$p")" -v rp="$(field "$p" rps)" -v rn="$(field "$n" rps)" -v qp="$(field "$p" p99_ms)" -v qn="$(field "$n" p99_ms)" \
      'BEGIN { print (e == 0 && rp >= rn && qp <= qn) ? 1 : 0 }')
    say "  $c: proxyd/nginx req/s x$(awk -v a="$(field "$p" rps)" -v b="$(field "$n" rps)" 'BEGIN { printf "%.2f", (b > 0 ? a / b : 0) }'), p99 x$(awk -v a="$(field "$p" p99_ms)" -v b="$(field "$n" p99_ms)" 'BEGIN { printf "%.2f", (b > 0 ? a / b : 0) }'); target (0 errors, req/s >= nginx's, p99 <= nginx's): $(ok_mark x "$met")"
  done
fi

if want open; then
  CAP=$(awk -v a="$(field "$DIR/closed64-nginx.result" rps)" -v b="$(field "$DIR/closed64-proxyd.result" rps)" 'BEGIN { printf "%.0f", (a > b ? a : b) }')
  CTIMEOUT=10
  say ""
  say "== $(T) open loop: capacity $CAP req/s (the better 64-connection figure); offered 2x and 5x for ${DUR}s; client time-out ${CTIMEOUT}s"
  for mult in 2 5; do
    rate=$((CAP * mult))
    for FRONT_KIND in nginx proxyd; do
      start_front "$FRONT_KIND" "open${mult}x-$FRONT_KIND"
      bounded "$DIR/open${mult}x-$FRONT_KIND.warmup" timeout 60 wrk -t2 -c64 -d2s "http://127.0.0.1:$FRONT_PORT$GET_PATH"
      cpu_run "open${mult}x-$FRONT_KIND" timeout $((DUR + CTIMEOUT + 60)) \
        "$OPEN_LOOP" "$FRONT_PORT" "$GET_PATH" "$rate" "$DUR" "$CTIMEOUT"
      grep '^RESULT' "$DIR/open${mult}x-$FRONT_KIND.out" >"$DIR/open${mult}x-$FRONT_KIND.result" ||
        { echo "RESULT sent=0 failed=1" >"$DIR/open${mult}x-$FRONT_KIND.result"; say "  load failed: $(tail -3 "$DIR/open${mult}x-$FRONT_KIND.out")"; }
      [ "$FRONT_KIND" = nginx ] && say "  nginx: $(nginx_log_counts "$NGINX_ERRLOG")"
      [ "$FRONT_KIND" = proxyd ] && say "  proxyd: $(proxyd_log_counts "$PROXYD_LOG")"
      stop_front
    done
  done
  say ""
  say "Open loop (200/s: the 200s over the time they took to arrive, the run or longer while a backlog drained;"
  say "p50/p99 of the 200s in ms; CPU = the front end's over the run, per response)"
  printf '%-5s %-7s %8s %8s %8s %9s %9s %7s %7s %7s %10s  %s\n' "load" "front" "offered" "200/s" "x cap" "p50 200" "p99 200" "503+RA" "t-out" "reset" "CPU us/rsp" "statuses"
  for mult in 2 5; do
    for k in nginx proxyd; do
      f="$DIR/open${mult}x-$k.result"
      printf '%-5s %-7s %8s %8s %8s %9s %9s %7s %7s %7s %10s  %s\n' "${mult}x" "$k" "$(field "$f" rps_offered)" "$(field "$f" ok_per_s)" \
        "$(awk -v a="$(field "$f" ok_per_s)" -v c="$CAP" 'BEGIN { printf "%.2f", (c > 0 ? a / c : 0) }')" \
        "$(field "$f" p50_200_ms)" "$(field "$f" p99_200_ms)" "$(field "$f" retry_after_503)" "$(field "$f" timeout)" "$(field "$f" reset)" \
        "$(awk -v ms="$(cpu_ms "open${mult}x-$k")" -v n="$(num "$f" answered)" 'BEGIN { printf "%.0f", (n > 0 ? ms * 1000 / n : 0) }')" \
        "$(field "$f" statuses)"
    done
    f="$DIR/open${mult}x-proxyd.result"
    st=$(field "$f" statuses)
    others=$(($(num "$f" answered) - $(sum_statuses "$st" 200 200) - $(num "$f" retry_after_503) + $(num "$f" timeout) + $(num "$f" reset) + $(num "$f" connect)))
    met=$(awk -v ok="$(field "$f" ok_per_s)" -v c="$CAP" -v p99="$(field "$f" p99_200_ms)" -v o="$others" \
      'BEGIN { print (ok >= 0.95 * c && p99 <= 1000 + 7 && o == 0) ? 1 : 0 }')
    say "  ${mult}x: proxyd's targets (200/s >= 95 % of capacity, 200s' p99 <= queue.target + one service time = 1007 ms, the rest 503 with Retry-After, no 502/504/reset/time-out; other outcomes: $others): $(ok_mark x "$met")"
  done
fi

say ""
say "done: ${BUILD_SECS}s building proxyd, $((SECONDS - BENCH_START))s benchmarking"
