#!/usr/bin/env bash
# TLS termination, proxyd vs nginx, side by side in one run:
#
#   benches/tls.sh
#
# Both front ends sit in front of the same backend (examples/hello_backend.rs, a tiny hyper
# HTTP/1.1 server on 127.0.0.1) with the same throwaway certificate, one worker each
# (nginx: worker_processes 1; proxyd: threads: 1), both pinned to core 0 (taskset -c 0); the
# load generators and the backend share core 1 (taskset -c 1). Runs, each against nginx and
# then proxyd:
#   1. HTTPS keepalive requests/s: wrk -t1 -c64 -d10s --latency over HTTP/1.1 (after a 2 s
#      warm-up): req/s, p50, p99, errors.
#   2. TLS 1.3 handshakes/s: the same wrk with "Connection: close", so every request is a new
#      TCP connection and TLS handshake:
#        a. full handshakes with the ECDSA P-256 certificate, b. the same with an RSA-2048 one
#           (certificate + CertificateVerify signature + X25519 every time),
#        c. resumed handshakes (PSK + X25519, no certificate), ECDSA listener.
#      wrk resumes the previous TLS session on every reconnect by itself (it keeps its SSL
#      objects across connections), so for a and b a tiny LD_PRELOAD shim around wrk
#      (compiled with cc into the temp dir) drops the session before each SSL_connect; the
#      shim also counts every handshake wrk completes as full or resumed, in every wrk run,
#      and handshakes/s is taken from those counts. wrk's latencies exclude the handshake.
#   3. HTTP/2 over TLS: h2load -n 20000 -c 10 -m 100 (ALPN h2, 100 streams per connection,
#      after a warm-up of 2000 requests).
# For every run, the CPU the front end spent (utime+stime from /proc/<pid>/stat of its
# processes: nginx's master and worker, proxyd's one process with all its threads; 10 ms
# ticks) before and after, divided by the requests (handshakes in run 2), and how busy that
# made the front end's core; and how much CPU other processes on the machine took meanwhile
# (each run first waits, up to TLS_QUIET_WAIT=60 s, for the machine to be quiet). Prints a
# table with both front ends and the ratio proxyd/nginx for each figure.
#
# Setup (apples to apples, each as a typical user would write it): TLS 1.2 and 1.3 on both
# (nginx ssl_protocols TLSv1.2 TLSv1.3, proxyd min_version "1.2"), default ciphers, session
# tickets and ALPN (h2, http/1.1) on both; the upstream is HTTP/1.1 over a keepalive pool of
# up to 1024 idle connections, 60 s idle time-out on both (nginx: keepalive 1024,
# proxy_http_version 1.1, Connection cleared; proxyd: pool max_idle 1024), per-connection
# request limits lifted on nginx (keepalive_requests, client and upstream: proxyd has none),
# Host, X-Forwarded-For and X-Forwarded-Proto set, no access log, error/warn logs only.
#
# Installs what is missing (apt-get install -y nginx-light wrk nghttp2-client openssl curl;
# cc, for the shim, comes with the Rust toolchain), builds proxyd and the hello_backend
# example (cargo build --release; a failed build, e.g. a tree mid-edit, is retried twice a
# minute apart, then the existing binaries are used with a warning), makes a throwaway CA and
# server certificates for localhost/127.0.0.1 with openssl in a temp dir, uses only 127.0.0.1
# with ports picked free at run time, bounds every run in time or requests, stops every
# process it started by pid on exit, and removes its temp dir.
# About 2 minutes plus the build.
# Knobs (environment): TLS_DURATION=10 (seconds per wrk run), TLS_WARMUP=2 (seconds of
# warm-up before each wrk run), TLS_H2_REQUESTS=20000, TLS_RSA=1 (0: skip the RSA-2048
# handshake run), TLS_FRONT_CPU=0, TLS_LOAD_CPU=1, TLS_KEEP=1 (keep the temp dir: configs,
# certificates, logs, raw tool outputs).
set -u

cd "$(dirname "$0")/.." || exit 1
ROOT=$(pwd)
DUR=${TLS_DURATION:-10}
WARM=${TLS_WARMUP:-2}
H2N=${TLS_H2_REQUESTS:-20000}
RSA=${TLS_RSA:-1}
FRONT_CPU=${TLS_FRONT_CPU:-0}
LOAD_CPU=${TLS_LOAD_CPU:-1}

say() { printf '%s\n' "$*"; }
die() { printf 'tls.sh: %s\n' "$*" >&2; exit 1; }

# ---------------------------------------------------------------- what it needs
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
missing=""
command -v nginx >/dev/null 2>&1 || missing="$missing nginx-light"
command -v wrk >/dev/null 2>&1 || missing="$missing wrk"
command -v h2load >/dev/null 2>&1 || missing="$missing nghttp2-client"
command -v openssl >/dev/null 2>&1 || missing="$missing openssl"
command -v curl >/dev/null 2>&1 || missing="$missing curl"
command -v taskset >/dev/null 2>&1 || missing="$missing util-linux"
command -v cc >/dev/null 2>&1 || missing="$missing gcc libc6-dev"
if [ -n "$missing" ]; then
  say "installing:$missing"
  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $missing; } \
    >/dev/null || die "could not install$missing (needs root and apt-get)"
fi

build() { cargo build --release --quiet --bin proxyd --example hello_backend; }
build_start=$SECONDS
if ! build; then
  built=0
  for _ in 1 2; do
    say "cargo build --release failed (the tree may be mid-edit); retrying in 60 s"
    sleep 60
    build && { built=1; break; }
  done
  if [ "$built" = 0 ]; then
    [ -x target/release/proxyd ] && [ -x target/release/examples/hello_backend ] ||
      die "cargo build --release failed and there are no binaries to fall back on"
    say "WARNING: cargo build --release failed 3 times; using the existing target/release binaries"
  fi
fi
PROXYD="$ROOT/target/release/proxyd"
BACKEND_BIN="$ROOT/target/release/examples/hello_backend"
BUILD_SECS=$((SECONDS - build_start))
BENCH_START=$SECONDS
T() { echo "[t=$((SECONDS - BENCH_START))s]"; }

# Pinning: front ends on one core, load generator and backend on another.
ncpu=$(nproc)
if [ "$ncpu" -ge 2 ]; then
  PIN_FRONT=(taskset -c "$FRONT_CPU")
  PIN_LOAD=(taskset -c "$LOAD_CPU")
  PINNING="front ends on core $FRONT_CPU, load generator + backend on core $LOAD_CPU"
else
  PIN_FRONT=()
  PIN_LOAD=()
  PINNING="NOT pinned (only $ncpu core)"
fi
HZ=$(getconf CLK_TCK)

# ---------------------------------------------------------------- processes
DIR=$(mktemp -d "${TMPDIR:-/tmp}/proxyd-tls.XXXXXX")
PIDS="$DIR/pids" # every pid started
DONE="$DIR/done" # pids known to be gone
: >"$PIDS"
: >"$DONE"
LAST_PID=""

# start NAME CMD...: in the background, output to $DIR/NAME.log, pid recorded.
start() {
  local name=$1
  shift
  "$@" >>"$DIR/$name.log" 2>&1 &
  LAST_PID=$!
  echo "$LAST_PID" >>"$PIDS"
}

alive() { kill -0 "$1" 2>/dev/null; }

# children_of PID: the pids whose parent is PID.
children_of() {
  local want=$1 f s
  for f in /proc/[0-9]*/stat; do
    read -r s <"$f" 2>/dev/null || continue
    s=${s##*) } # fields from 3 (state) on: the parent is field 4
    set -- $s
    [ "${2:-}" = "$want" ] && { f=${f#/proc/}; echo "${f%/stat}"; }
  done
  return 0
}

# stop PID [GRACE_SECONDS]: TERM, then KILL after the grace; then the same for any child it
# left behind (an nginx worker whose master was killed).
stop() {
  local pid=$1 grace=${2:-5} i=0 kids k
  alive "$pid" || return 0
  kids=$(children_of "$pid")
  kill -TERM "$pid" 2>/dev/null
  while alive "$pid" && [ "$i" -lt $((grace * 10)) ]; do
    sleep 0.1
    i=$((i + 1))
  done
  alive "$pid" && kill -KILL "$pid" 2>/dev/null
  wait "$pid" 2>/dev/null
  for k in $kids; do
    alive "$k" && kill -KILL "$k" 2>/dev/null
  done
  echo "$pid" >>"$DONE"
  return 0
}

# bounded SECONDS OUT CMD...: CMD in the foreground as far as the script goes (its pid
# recorded, so an interrupted run stops it too), killed past SECONDS, output to OUT.
bounded() {
  local limit=$1 out=$2 pid
  shift 2
  timeout -k 5 "$limit" "$@" >"$out" 2>&1 &
  pid=$!
  echo "$pid" >>"$PIDS"
  wait "$pid"
  echo "$pid" >>"$DONE"
}

cleanup() {
  trap - EXIT INT TERM
  if [ -s "$PIDS" ]; then
    for pid in $(tac "$PIDS"); do # newest first: front ends before the backend
      grep -qx "$pid" "$DONE" || stop "$pid" 3
    done
  fi
  if [ "${TLS_KEEP:-0}" = 1 ]; then
    say "work directory kept: $DIR"
  else
    rm -rf "$DIR"
  fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# free_ports N: N distinct free loopback ports.
free_ports() {
  if command -v python3 >/dev/null 2>&1; then
    python3 - "$1" <<'EOF'
import socket, sys
socks = []
for _ in range(int(sys.argv[1])):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    socks.append(s)
print(" ".join(str(s.getsockname()[1]) for s in socks))
EOF
  else # no python: random high ports nothing answers on
    local n=0 p out=""
    while [ "$n" -lt "$1" ]; do
      p=$((20000 + RANDOM % 12000))
      case " $out " in *" $p "*) continue ;; esac
      (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null && continue
      out="$out $p"
      n=$((n + 1))
    done
    echo $out
  fi
}

# wait_https PORT SECONDS: until https://localhost:PORT/ answers 2xx with a certificate that
# verifies against the bench CA.
wait_https() {
  local port=$1 deadline=$((SECONDS + $2))
  while [ "$SECONDS" -lt "$deadline" ]; do
    curl -fs -o /dev/null --max-time 2 --cacert "$DIR/ca.pem" \
      --resolve "localhost:$port:127.0.0.1" "https://localhost:$port/" && return 0
    sleep 0.1
  done
  return 1
}

# cpu_ticks PID: utime+stime of PID and its children (all their threads, live and exited).
cpu_ticks() {
  local total=0 p s
  for p in "$1" $(children_of "$1"); do
    s=$(cat "/proc/$p/stat" 2>/dev/null) || continue
    s=${s##*) } # fields from 3 (state) on: utime is field 14, stime 15
    set -- $s
    total=$((total + ${12} + ${13}))
  done
  echo "$total"
}

# sys_busy: busy ticks of all cores together (user nice system irq softirq steal).
sys_busy() { awk '/^cpu / {print $2 + $3 + $4 + $7 + $8 + $9; exit}' /proc/stat; }

# child_ticks VAR: sets VAR to the CPU ticks of this shell's reaped children (wrk, h2load,
# awk, ...), from the `times` builtin, which must run in this shell itself: a subshell
# (a command substitution) starts from zero.
child_ticks() {
  times >"$DIR/times"
  printf -v "$1" '%s' "$(awk -v hz="$HZ" 'NR == 2 {
    t = 0
    for (i = 1; i <= 2; i++) { split($i, a, "m"); sub(/s$/, "", a[2]); t += a[1] * 60 + a[2] }
    printf "%d\n", t * hz }' "$DIR/times")"
}

# wait_quiet: before a run, until the rest of the machine (our processes are idle then) uses
# under a quarter of a core, for at most TLS_QUIET_WAIT seconds (default 60); other load
# during a run is reported with it either way.
wait_quiet() {
  local deadline=$((SECONDS + ${TLS_QUIET_WAIT:-60})) a b waited=0
  while :; do
    a=$(sys_busy)
    sleep 1
    b=$(sys_busy)
    [ $((b - a)) -le $((HZ / 4)) ] && break
    if [ "$SECONDS" -ge "$deadline" ]; then
      say "  (the machine is still busy with other processes: $(((b - a) * 100 / HZ))% of a core; running anyway)"
      return
    fi
    waited=1
  done
  [ "$waited" = 1 ] && say "  (waited for other processes on the machine to quiet down)"
  return 0
}

# Run accounting: begin_run before the measured part, end_run after it; end_run sets
# FRONT_T (front end's ticks), OTHER_PCT (CPU of processes that are none of the front end,
# the backend or the load generator, in % of one core over SECS).
begin_run() {
  RUN_T0=$(cpu_ticks "$1")
  RUN_B0=$(cpu_ticks "$BACKEND_PID")
  child_ticks RUN_C0
  RUN_S0=$(sys_busy)
}
end_run() { # FRONT_PID SECS
  local t1 b1 c1 s1
  t1=$(cpu_ticks "$1")
  s1=$(sys_busy)
  b1=$(cpu_ticks "$BACKEND_PID")
  child_ticks c1
  FRONT_T=$((t1 - RUN_T0))
  OTHER_PCT=$(awk -v o=$(((s1 - RUN_S0) - FRONT_T - (b1 - RUN_B0) - (c1 - RUN_C0))) -v hz="$HZ" -v s="$2" \
    'BEGIN {v = (s > 0 ? 100 * o / hz / s : 0); printf "%.0f", (v < 0 ? 0 : v)}')
}

# ---------------------------------------------------------------- certificates
say "tls.sh: $(nginx -v 2>&1 | sed 's/^nginx version: //'), $(openssl version | awk '{print $1, $2}'), wrk $(wrk -v 2>&1 | head -1 | awk '{print $2}'), $(h2load --version 2>&1 | head -1 | awk '{print $2}'), proxyd $(git rev-parse --short HEAD 2>/dev/null)$(git diff --quiet HEAD -- src Cargo.toml Cargo.lock 2>/dev/null || echo '+local-changes'), $ncpu cores ($(uname -r)), build ${BUILD_SECS}s"
say "pinning: $PINNING"

C="$DIR/certs"
mkdir -p "$C"
mkcert() { # NAME KEYGEN_ARGS...: a server cert for localhost + 127.0.0.1, signed by the CA
  local name=$1 ku
  shift
  openssl genpkey "$@" -out "$C/$name.key" 2>/dev/null || return 1
  case "$name" in rsa*) ku="digitalSignature,keyEncipherment" ;; *) ku="digitalSignature" ;; esac
  printf '%s\n' "subjectAltName=DNS:localhost,IP:127.0.0.1" "basicConstraints=critical,CA:FALSE" \
    "keyUsage=critical,$ku" "extendedKeyUsage=serverAuth" >"$C/$name.ext"
  openssl req -new -key "$C/$name.key" -subj "/CN=localhost" -out "$C/$name.csr" 2>/dev/null &&
    openssl x509 -req -in "$C/$name.csr" -CA "$C/ca.pem" -CAkey "$C/ca.key" -CAcreateserial \
      -days 2 -sha256 -extfile "$C/$name.ext" -out "$C/$name.pem" 2>/dev/null
}
openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$C/ca.key" 2>/dev/null &&
  openssl req -x509 -new -key "$C/ca.key" -sha256 -days 2 -subj "/CN=proxyd tls.sh throwaway CA" \
    -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" \
    -out "$C/ca.pem" 2>/dev/null || die "openssl could not make the CA"
cp "$C/ca.pem" "$DIR/ca.pem"
mkcert ec -algorithm EC -pkeyopt ec_paramgen_curve:P-256 || die "openssl could not make the ECDSA cert"
VARIANTS="ec"
if [ "$RSA" = 1 ]; then
  mkcert rsa -algorithm RSA -pkeyopt rsa_keygen_bits:2048 || die "openssl could not make the RSA cert"
  VARIANTS="ec rsa"
fi
say "certificates: throwaway CA (ECDSA P-256) -> server certs for DNS:localhost, IP:127.0.0.1: ECDSA P-256$([ "$RSA" = 1 ] && echo ', RSA-2048')"

# ---------------------------------------------------------------- ports, backend
read -r BP NGX_EC NGX_RSA PXD_EC PXD_RSA <<<"$(free_ports 5)"
declare -A PORT=([nginx-ec]=$NGX_EC [nginx-rsa]=$NGX_RSA [proxyd-ec]=$PXD_EC [proxyd-rsa]=$PXD_RSA)

start backend "${PIN_LOAD[@]}" "$BACKEND_BIN" "127.0.0.1:$BP"
BACKEND_PID=$LAST_PID
for _ in $(seq 50); do
  curl -fs -o /dev/null --max-time 1 "http://127.0.0.1:$BP/" && break
  sleep 0.1
done
curl -fs -o /dev/null --max-time 1 "http://127.0.0.1:$BP/" || die "hello_backend did not come up ($(tail -3 "$DIR/backend.log"))"

# ---------------------------------------------------------------- nginx
NGX="$DIR/nginx"
mkdir -p "$NGX/tmp"
NGINX_VERSION=$(nginx -v 2>&1 | sed -n 's|.*nginx/\([0-9.]*\).*|\1|p')
# "http2 on;" since 1.25.1; "listen ... ssl http2" before it.
if printf '%s\n' 1.25.1 "$NGINX_VERSION" | sort -V -C; then
  NGX_LISTEN_H2=""
  NGX_H2_ON="    http2 on;"
else
  NGX_LISTEN_H2=" http2"
  NGX_H2_ON=""
fi
NGINX_TEMPS="client_body proxy"
for m in fastcgi uwsgi scgi; do
  nginx -V 2>&1 | grep -q -- "--without-http_${m}_module" || NGINX_TEMPS="$NGINX_TEMPS $m"
done
{
  echo "daemon off;"
  echo "worker_processes 1;"
  echo "pid $NGX/nginx.pid;"
  echo "error_log $NGX/error.log warn;"
  echo "events { worker_connections 8192; }"
  echo "http {"
  echo "  access_log off;"
  for t in $NGINX_TEMPS; do echo "  ${t}_temp_path $NGX/tmp/$t;"; done
  echo "  keepalive_timeout 75s;"
  echo "  keepalive_requests 1000000;"
  echo "  ssl_protocols TLSv1.2 TLSv1.3;"
  echo "  upstream backend {"
  echo "    server 127.0.0.1:$BP;"
  echo "    keepalive 1024;"
  echo "    keepalive_requests 1000000;"
  echo "    keepalive_timeout 60s;"
  echo "  }"
  for v in $VARIANTS; do
    echo "  server {"
    echo "    listen 127.0.0.1:${PORT[nginx-$v]} ssl$NGX_LISTEN_H2;"
    [ -n "$NGX_H2_ON" ] && echo "$NGX_H2_ON"
    echo "    server_name localhost;"
    echo "    ssl_certificate $C/$v.pem;"
    echo "    ssl_certificate_key $C/$v.key;"
    echo "    location / {"
    echo "      proxy_pass http://backend;"
    echo "      proxy_http_version 1.1;"
    echo "      proxy_set_header Connection \"\";"
    echo "      proxy_set_header Host \$host;"
    echo "      proxy_set_header X-Forwarded-For \$proxy_add_x_forwarded_for;"
    echo "      proxy_set_header X-Forwarded-Proto \$scheme;"
    echo "    }"
    echo "  }"
  done
  echo "}"
} >"$NGX/nginx.conf"
nginx -t -p "$NGX/" -c "$NGX/nginx.conf" -e "$NGX/error.log" >"$DIR/nginx-t.log" 2>&1 ||
  die "nginx -t failed: $(cat "$DIR/nginx-t.log")"
start nginx "${PIN_FRONT[@]}" nginx -p "$NGX/" -c "$NGX/nginx.conf" -e "$NGX/error.log"
NGINX_PID=$LAST_PID

# ---------------------------------------------------------------- proxyd
PXD_CONF="$DIR/proxyd.yaml"
{
  echo "listen:"
  for v in $VARIANTS; do
    echo "  - addr: \"127.0.0.1:${PORT[proxyd-$v]}\""
    echo "    tls:"
    echo "      certs: [{ cert: \"$C/$v.pem\", key: \"$C/$v.key\" }]"
    echo "      min_version: \"1.2\""
  done
  echo "upstreams:"
  echo "  app:"
  echo "    servers: [\"127.0.0.1:$BP\"]"
  echo "    pool: { max_idle: 1024, idle_timeout: 60s }"
  echo "threads: 1"
  echo "log:"
  echo "  level: warn"
} >"$PXD_CONF"
"$PROXYD" check -c "$PXD_CONF" >"$DIR/proxyd-check.log" 2>&1 ||
  die "proxyd check failed on the TLS config: $(cat "$DIR/proxyd-check.log")"
start proxyd "${PIN_FRONT[@]}" "$PROXYD" -c "$PXD_CONF"
PROXYD_PID=$LAST_PID

declare -A FRONT_PID=([nginx]=$NGINX_PID [proxyd]=$PROXYD_PID)
for f in nginx proxyd; do
  for v in $VARIANTS; do
    wait_https "${PORT[$f-$v]}" 15 || {
      tail -5 "$DIR/$f.log" "$NGX/error.log" 2>/dev/null
      die "$f did not answer over TLS on port ${PORT[$f-$v]}"
    }
  done
done

# What each front end negotiates with an OpenSSL 3 client (wrk and h2load use the same
# library), and whether it closes the connection on "Connection: close".
say ""
say "negotiated (openssl s_client, verified against the throwaway CA):"
for v in $VARIANTS; do
  for f in nginx proxyd; do
    sc=$(timeout 10 openssl s_client -connect "127.0.0.1:${PORT[$f-$v]}" -servername localhost \
      -CAfile "$C/ca.pem" -verify_return_error -alpn h2,http/1.1 </dev/null 2>&1 | tr -d '\0')
    printf '  %-6s %-3s %s\n' "$f" "$v" "$(printf '%s\n' "$sc" | awk '
      /^New, / {sub(/,$/, "", $2); p = $2; c = $NF} /^Peer signature type:/ {sg = $4}
      /^Server Temp Key:/ {sub(/^Server Temp Key: /, ""); k = $0} /^ALPN protocol:/ {a = $3}
      /^Verify return code:/ {sub(/^Verify return code: /, ""); vf = $0}
      END {printf "%s %s, %s signature, key exchange %s, ALPN %s, verify: %s", p, c, sg, k, (a ? a : "none"), vf}')"
  done
done
for f in nginx proxyd; do
  hdr=$(curl -s --http1.1 -D - -o /dev/null --max-time 2 --cacert "$C/ca.pem" -H "Connection: close" \
    --resolve "localhost:${PORT[$f-ec]}:127.0.0.1" "https://localhost:${PORT[$f-ec]}/" | tr -d '\r')
  if printf '%s\n' "$hdr" | grep -qi '^connection: *close'; then
    say "  $f answers \"Connection: close\" with \"Connection: close\" (one request per connection in run 2)"
  else
    say "  WARNING: $f did not answer \"Connection: close\" to a request asking for it"
  fi
done

# The handshake shim (benches/compare/shim.c, shared with compare.sh): wrk keeps its SSL
# objects across reconnects and so resumes the last session; unless TLS_SHIM_RESUME is set,
# the session is dropped before each handshake starts. Either way the handshakes wrk
# completes are counted, printed when wrk exits.
cp benches/compare/shim.c "$DIR/shim.c"
cc -shared -fPIC -O2 -o "$DIR/shim.so" "$DIR/shim.c" -ldl 2>"$DIR/shim.log" ||
  die "cc could not build the handshake shim: $(cat "$DIR/shim.log")"
SHIM=$DIR/shim.so

# ---------------------------------------------------------------- runs
# The load generators connect to "localhost" (resolved to 127.0.0.1; the listeners are on
# 127.0.0.1 only), so they send that name as SNI like a real client: wrk would otherwise send
# the IP literal, which RFC 6066 forbids (rustls ignores it with a warning per handshake).
if getent ahostsv4 localhost 2>/dev/null | grep -q '^127\.0\.0\.1'; then
  HOST=localhost
else
  HOST=127.0.0.1
  say "WARNING: localhost does not resolve to 127.0.0.1 here; the load generators use 127.0.0.1 (wrk then sends it as SNI)"
fi
declare -A R # R[front,key] = value

# wrk's summary and the shim's line -> "requests req/s p50_ms p99_ms errors seconds
# full_handshakes resumed_handshakes tls13_handshakes" (latencies like 812.00us, 1.23ms).
WRK_PARSE='
function ms(v) {
  if (v ~ /us$/) return v / 1000; if (v ~ /ms$/) return v + 0
  if (v ~ /m$/) return v * 60000; if (v ~ /s$/) return v * 1000; return v + 0 }
/requests in/ {n = $1; secs = $4; sub(/s,?$/, "", secs)}
/^tls-shim:/ {full = $2; resumed = $5; tls13 = $7}
/^Requests\/sec:/ {rps = $2}
/^ +50%/ {p50 = ms($2)}
/^ +99%/ {p99 = ms($2)}
/Socket errors:/ {gsub(/,/, ""); err += $4 + $6 + $8 + $10}
/Non-2xx or 3xx responses:/ {err += $NF}
END {printf "%s %s %.3f %.3f %d %s %d %d %d\n", n + 0, rps + 0, p50, p99, err, secs + 0, full, resumed, tls13}'

# wrk_run FRONT KEY MODE URL [WRK_ARGS...]: warm-up, then the measured run with the front
# end's CPU. MODE: resume (wrk as it is, handshakes counted) or full (sessions dropped).
wrk_run() {
  local f=$1 key=$2 mode=$3 url=$4 pid=${FRONT_PID[$1]} n rps p50 p99 err secs full resumed tls13
  local env=(env LD_PRELOAD="$SHIM") hs cpu_s
  shift 4
  [ "$mode" = resume ] && env+=(TLS_SHIM_RESUME=1)
  wait_quiet
  bounded $((WARM + 30)) "$DIR/$key-$f.warm" "${PIN_LOAD[@]}" "${env[@]}" wrk -t1 -c64 -d"${WARM}s" "$@" "$url"
  begin_run "$pid"
  bounded $((DUR + 30)) "$DIR/$key-$f.out" "${PIN_LOAD[@]}" "${env[@]}" wrk -t1 -c64 -d"${DUR}s" --latency "$@" "$url"
  read -r n rps p50 p99 err secs full resumed tls13 <<<"$(awk "$WRK_PARSE" "$DIR/$key-$f.out")"
  end_run "$pid" "$secs"
  hs=$((full + resumed))
  read -r cpu_s busy cpu_req cpu_hs hs_rate <<<"$(awk -v d="$FRONT_T" -v hz="$HZ" -v n="$n" -v s="$secs" -v hs="$hs" 'BEGIN {
    c = d / hz
    printf "%.2f %.0f %.1f %.1f %.1f\n", c, (s > 0 ? 100 * c / s : 0), (n > 0 ? c * 1e6 / n : 0), (hs > 0 ? c * 1e6 / hs : 0), (s > 0 ? hs / s : 0)}')"
  R[$f,$key.rps]=$rps R[$f,$key.p50]=$p50 R[$f,$key.p99]=$p99 R[$f,$key.err]=$err
  R[$f,$key.cpu]=$cpu_req R[$f,$key.busy]=$busy R[$f,$key.hs]=$hs_rate R[$f,$key.cpuhs]=$cpu_hs
  R[$f,$key.other]=$OTHER_PCT
  say "  $f: $n requests in $secs s = $rps/s, p50 $p50 ms, p99 $p99 ms, errors $err; TLS handshakes: $full full + $resumed resumed ($tls13 TLSv1.3) = $hs_rate/s; front-end CPU $cpu_s s (its core ${busy}% busy) = $cpu_req us per request; other processes ${OTHER_PCT}% of a core"
  [ "$n" -gt 0 ] 2>/dev/null || { say "  (wrk output:)"; sed 's/^/    /' "$DIR/$key-$f.out"; }
}

# h2_run FRONT KEY URL: h2load warm-up, then the measured run with the front end's CPU.
h2_run() {
  local f=$1 key=$2 url=$3 pid=${FRONT_PID[$1]} line rps ok err cpu_us proto tls cipher kx mean cpus busy
  wait_quiet
  bounded 60 "$DIR/$key-$f.warm" "${PIN_LOAD[@]}" h2load -n 2000 -c 10 -m 100 "$url"
  begin_run "$pid"
  bounded 120 "$DIR/$key-$f.out" "${PIN_LOAD[@]}" h2load -n "$H2N" -c 10 -m 100 "$url"
  end_run "$pid" "$(awk '/^finished in/ {t = $3; sub(/,$/, "", t); print (t ~ /ms$/) ? t / 1000 : ((t ~ /us$/) ? t / 1e6 : t + 0)}' "$DIR/$key-$f.out")"
  line=$(awk -v d="$FRONT_T" -v hz="$HZ" '
    /^finished in/ {rps = $4; t = $3; sub(/,$/, "", t)
      secs = (t ~ /ms$/) ? t / 1000 : ((t ~ /us$/) ? t / 1e6 : t + 0)}
    /^requests:/ {gsub(/,/, ""); total = $2}
    /^status codes:/ {gsub(/,/, ""); ok = $3}
    /^Application protocol:/ {proto = $3}
    /^TLS Protocol:/ {tls = $3} /^Cipher:/ {cipher = $2} /^Server Temp Key:/ {kx = $4}
    /^time for request:/ {mean = $6}
    END {printf "%s %d %d %.1f %s %s %s %s %s %.2f %.0f\n", rps + 0, ok, total - ok,
      (ok > 0 ? d * 1e6 / hz / ok : 0), (proto ? proto : "?"), (tls ? tls : "?"), (cipher ? cipher : "?"),
      (kx ? kx : "?"), (mean ? mean : "?"), d / hz, (secs > 0 ? 100 * d / hz / secs : 0)}' "$DIR/$key-$f.out")
  read -r rps ok err cpu_us proto tls cipher kx mean cpus busy <<<"$line"
  R[$f,$key.rps]=$rps R[$f,$key.err]=$err R[$f,$key.cpu]=$cpu_us R[$f,$key.busy]=$busy
  R[$f,$key.other]=$OTHER_PCT
  say "  $f: $ok of $H2N answered 2xx, $rps req/s, errors $err, mean request time $mean, $proto over $tls $cipher $kx, front-end CPU $cpus s (its core ${busy}% busy) = $cpu_us us per request; other processes ${OTHER_PCT}% of a core"
  [ "$proto" = h2 ] || say "  WARNING: $f did not speak h2 ($proto)"
  [ "$ok" -gt 0 ] 2>/dev/null || { say "  (h2load output:)"; sed 's/^/    /' "$DIR/$key-$f.out"; }
}

say ""
say "== $(T) 1. HTTPS keepalive, HTTP/1.1, ECDSA cert: wrk -t1 -c64 -d${DUR}s (after ${WARM} s warm-up)"
for f in nginx proxyd; do wrk_run "$f" ka resume "https://$HOST:${PORT[$f-ec]}/"; done

for v in $VARIANTS; do
  name=$([ "$v" = ec ] && echo "ECDSA P-256" || echo "RSA-2048")
  say "== $(T) 2$([ "$v" = ec ] && echo a || echo b). full TLS handshakes, $name cert: wrk -t1 -c64 -d${DUR}s -H \"Connection: close\", sessions dropped (after ${WARM} s warm-up)"
  for f in nginx proxyd; do wrk_run "$f" "hs-$v" full "https://$HOST:${PORT[$f-$v]}/" -H "Connection: close"; done
done
say "== $(T) 2c. resumed TLS handshakes, ECDSA cert: wrk -t1 -c64 -d${DUR}s -H \"Connection: close\", wrk resuming its last session (after ${WARM} s warm-up)"
for f in nginx proxyd; do wrk_run "$f" hs-resumed resume "https://$HOST:${PORT[$f-ec]}/" -H "Connection: close"; done

say "== $(T) 3. HTTP/2 over TLS, ECDSA cert: h2load -n $H2N -c 10 -m 100 (after 2000 requests of warm-up)"
for f in nginx proxyd; do h2_run "$f" h2 "https://$HOST:${PORT[$f-ec]}/"; done

for f in nginx proxyd; do
  alive "${FRONT_PID[$f]}" || say "WARNING: $f is no longer running ($(tail -3 "$DIR/$f.log"))"
done
if [ -s "$NGX/error.log" ]; then
  say "nginx error log: $(wc -l <"$NGX/error.log") lines, last: $(tail -1 "$NGX/error.log")"
fi
if [ -s "$DIR/proxyd.log" ]; then
  say "proxyd log: $(wc -l <"$DIR/proxyd.log") lines, last: $(tail -1 "$DIR/proxyd.log")"
fi

# ---------------------------------------------------------------- table
row() { # LABEL KEY [noratio]: one figure for both front ends and their ratio
  local label=$1 key=$2 a=${R[nginx,$2]:-} b=${R[proxyd,$2]:-}
  awk -v l="$label" -v a="$a" -v b="$b" -v nr="${3:-}" 'BEGIN {
    r = (nr == "" && a != "" && b != "" && a + 0 > 0) ? sprintf("%.2f", b / a) : "-"
    printf "| %-44s | %12s | %12s | %12s |\n", l, (a == "" ? "-" : a), (b == "" ? "-" : b), r }'
}
say ""
say "== $(T) results (front ends on 1 core each; CPU = front end's utime+stime per request)"
printf '| %-44s | %12s | %12s | %12s |\n' "figure" "nginx" "proxyd" "proxyd/nginx"
printf '| %-44s | %12s | %12s | %12s |\n' "--------------------------------------------" "-----------:" "-----------:" "-----------:"
row "1 HTTPS keepalive req/s" ka.rps
row "1   p50 ms" ka.p50
row "1   p99 ms" ka.p99
row "1   errors" ka.err
row "1   CPU us per request" ka.cpu
row "1   front-end core busy %" ka.busy noratio
row "1   other processes, % of a core" ka.other noratio
for k in hs-ec hs-rsa hs-resumed; do
  case $k in
    hs-ec) name="2a full TLS 1.3 handshakes/s, ECDSA P-256" ;;
    hs-rsa) [ "$RSA" = 1 ] || continue; name="2b full TLS 1.3 handshakes/s, RSA-2048" ;;
    hs-resumed) name="2c resumed TLS 1.3 handshakes/s, ECDSA" ;;
  esac
  row "$name" "$k.hs"
  row "2   p50 ms (request after the handshake)" "$k.p50"
  row "2   p99 ms (request after the handshake)" "$k.p99"
  row "2   errors" "$k.err"
  row "2   CPU us per handshake (+ its request)" "$k.cpuhs"
  row "2   front-end core busy %" "$k.busy" noratio
  row "2   other processes, % of a core" "$k.other" noratio
done
row "3 HTTP/2 req/s (10 conns x 100 streams)" h2.rps
row "3   errors" h2.err
row "3   CPU us per request" h2.cpu
row "3   front-end core busy %" h2.busy noratio
row "3   other processes, % of a core" h2.other noratio
say ""
say "Ratios: above 1 is better for proxyd for req/s and handshakes/s, worse for ms, errors and CPU us."
say "A front end whose core is well under 100 % busy was held back by the load generator (which"
say "shares core 1 with the backend), or by other processes on the machine (\"other processes\":"
say "CPU used during the run by anything but the front end, the backend and the load generator;"
say "req/s is only comparable when that is near 0). CPU us per request holds either way."
say "CPU is counted in ${HZ} Hz ticks ($((1000 / HZ)) ms); bench time $((SECONDS - BENCH_START)) s."
