#!/usr/bin/env bash
# proxyd against nginx and HAProxy, side by side in one run (issues 8, 16 and 17):
#
#   benches/compare.sh          # everything: about 13 minutes on a quiet machine, plus the
#                               # build; up to about 25 on a busy one (quiet waits)
#   VARIANTS="keepalive close" DURATION=5 benches/compare.sh
#   VARIANTS="static1k static1m gzip br zstd" DURATION=5 benches/compare.sh   # issue 17's
#   VARIANTS="tracing" DURATION=5 benches/compare.sh                # issue 20's
#
# A tiny fast backend (nginx, one worker, `return 200` with a 13-byte body, static 1 KiB and
# 1 MiB files, a ~100 KiB JSON file, a /post that discards the body) runs on the load core (1)
# with the load generator; each front end in turn runs pinned to the other core (0): direct
# (wrk straight to the backend: the ceiling), nginx (worker_processes 1, upstream
# keepalive), HAProxy (nbthread 1, http-reuse always), proxyd (threads: 1). Each front end is
# started afresh for every variant, answers a first request, is warmed up (WARMUP s of the
# same load), then gets identical load: wrk -t1 -c64 -dDURATION --latency. The configs are
# in benches/compare/.
#
# Variants (VARIANTS, space-separated; all by default):
#   keepalive   GET /, 64 keepalive connections
#   close       the same with "Connection: close": a new client connection per request
#   1k, 1m      GET of a 1 KiB and a 1 MiB body
#   post16k     POST with a 16 KiB body (benches/compare/post.lua)
#   static1k, static1m  GET of a 1 KiB and a 1 MiB file that the front end serves itself:
#               nginx `location /static/ { alias ...; sendfile on; tcp_nopush on; }`
#               (open_file_cache off, nginx's default), proxyd a `routes[].static` route;
#               nginx and proxyd only (HAProxy serves no files)
#   https       GET / over TLS 1.3 (throwaway ECDSA P-256 certificate), keepalive
#   handshake   the same with "Connection: close" and an LD_PRELOAD shim that makes wrk do a
#               full handshake on every connection: handshakes/s and CPU per handshake
#   h2          HTTP/2 over TLS (ALPN h2) with h2load -c H2_CLIENTS(10) -m H2_STREAMS(100)
#   gzip, br, zstd  GET of a ~100 KiB JSON document (seeded records: repeated keys, varied
#               numbers and strings) from the backend, compressed on the fly by the front
#               end; wrk sends `Accept-Encoding` naming the variant's coding only. gzip:
#               nginx `gzip_comp_level N` for each N in GZIP_LEVELS, HAProxy `compression
#               algo gzip` (libslz: no levels), proxyd `compression: {algorithms: [gzip]}`
#               (its level is fixed: src/proxy/compress.rs). br: nginx with Debian's brotli
#               filter module at each of BR_LEVELS, proxyd. zstd: proxyd only (Debian's nginx
#               has no zstd module). Figures add the body as sent (bytes, % of the
#               original). For static1k, static1m, gzip, br and zstd a curl first checks
#               each front end's answer (the file byte for byte; the variant's
#               Content-Encoding, decoding to the document); one that fails is named with
#               "!!!", not measured, and the script exits 1.
#   idle        IDLE_CONNS (10000) client connections, each after one keep-alive GET, held
#               open (benches/compare/idle_conns.py): front-end RSS per connection
#   scaling     proxyd with threads 1, and threads 2 in both runtime shapes (per_thread,
#               multi_thread; SCALING_ROUNDS=2 runs of each in ABBA order), not pinned,
#               keepalive load
#   instructions  each front end under valgrind's callgrind: user-space instructions per
#               proxied keep-alive GET (INSTR_REQUESTS=5000 after INSTR_WARM=1000, h2load
#               --h1 -c16), the one figure a busy machine cannot blur; needs valgrind
#   tracing     keepalive load: nginx, proxyd without `tracing:`, and proxyd exporting the
#               spans of 1 % and of 100 % of its requests over OTLP/HTTP to a sink on the
#               load core (benches/compare/otlp_sink.py): CPU µs/req of each (2 runs, ABBA),
#               ÷ tracing off; with valgrind, instructions per request of each (callgrind);
#               PROXYD_BASELINE=path adds a proxyd built without tracing ("proxyd-before")
# Figures per run: requests/s, p50/p99 (wrk --latency; h2load gives a mean only), errors
# (non-2xx + socket errors), CPU µs per request (utime+stime of the front end's processes from
# /proc over the run / requests), RSS (VmRSS of its processes at the end of the run), how busy
# that made its core, and the CPU other processes on the machine took meanwhile (each run
# first waits up to QUIET_WAIT=10 s for the machine to be quiet; runs during which they took
# more than BUSY_LIMIT=50 % of a core are named under the tables, and with BUSY_RETRIES=N
# each such front-end run is run again up to N times, keeping the quietest attempt; note that
# other processes also fill CPU the bench leaves idle, e.g. when wrk is the bottleneck). Then
# the ratios proxyd/nginx and proxyd/HAProxy, and issues 16's and 17's targets met or
# missed. The tables go to stdout and to target/bench/compare-<date>.md.
#
# Knobs (environment): DURATION=10, WARMUP=2, CONNS=64, VARIANTS, FRONTENDS="direct nginx
# haproxy proxyd", IDLE_CONNS=10000, H2_CLIENTS=10, H2_STREAMS=100, GZIP_LEVELS="1 2 3 4 5 6",
# BR_LEVELS="4 6" (proxyd's brotli quality, the module's default), FRONT_CPU=0, LOAD_CPU=1,
# QUIET_WAIT=10, BUSY_LIMIT=50, BUSY_RETRIES=0, KEEP=1 (keep the temp dir: configs, logs,
# raw tool output), PROXYD=path (a proxyd binary to use instead of building this tree, e.g.
# one built from a clean export of a commit while the working tree is mid-edit;
# PROXYD_COMMIT=name labels it in the header). The build honours CARGO_TARGET_DIR.
#
# Installs what is missing with apt-get (nginx-light, haproxy, wrk, nghttp2-client, openssl,
# curl, python3, gcc, brotli and zstd to decode the checks, and nginx's brotli module
# libnginx-mod-http-brotli-filter if the distribution has it: without it the br variant has no
# nginx rows), builds proxyd in release (a failed build, e.g. a tree mid-edit, is
# retried twice a minute apart, then the existing binary is used with a warning), uses only
# 127.0.0.1 with free ports, a temp dir, stops every process it started by pid on exit.
set -u

cd "$(dirname "$0")/.." || exit 1

say() { printf '%s\n' "$*"; }
die() { printf 'compare.sh: %s\n' "$*" >&2; exit 1; }

missing=""
command -v nginx >/dev/null 2>&1 || missing="$missing nginx-light"
command -v haproxy >/dev/null 2>&1 || missing="$missing haproxy"
command -v wrk >/dev/null 2>&1 || missing="$missing wrk"
command -v h2load >/dev/null 2>&1 || missing="$missing nghttp2-client"
command -v openssl >/dev/null 2>&1 || missing="$missing openssl"
command -v curl >/dev/null 2>&1 || missing="$missing curl"
command -v taskset >/dev/null 2>&1 || missing="$missing util-linux"
command -v python3 >/dev/null 2>&1 || missing="$missing python3"
command -v cc >/dev/null 2>&1 || missing="$missing gcc libc6-dev"
command -v brotli >/dev/null 2>&1 || missing="$missing brotli"
command -v zstd >/dev/null 2>&1 || missing="$missing zstd"
if [ -n "$missing" ]; then
  say "installing:$missing"
  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $missing; } \
    >/dev/null || die "could not install$missing (needs root and apt-get)"
fi
# nginx's brotli filter (Debian: libnginx-mod-http-brotli-filter) for the br variant's nginx
# rows; optional, as not every distribution has it.
if [ ! -e /usr/lib/nginx/modules/ngx_http_brotli_filter_module.so ]; then
  mod=libnginx-mod-http-brotli-filter
  { DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $mod ||
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $mod; }
  } >/dev/null 2>&1 || say "no nginx brotli module ($mod): the br variant will have no nginx rows"
fi

# 10,000 idle connections need that many descriptors in the front end and in the client.
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
want=$(( ${IDLE_CONNS:-10000} + 1000 ))
if [ "$(ulimit -n)" != unlimited ] && [ "$(ulimit -n)" -lt "$want" ]; then
  say "WARNING: open files limited to $(ulimit -n) (< $want): the idle variant may fail"
fi

build() { cargo build --release --quiet --bin proxyd; }
if [ -n "${PROXYD:-}" ]; then
  [ -x "$PROXYD" ] || die "PROXYD=$PROXYD is not an executable"
  say "using PROXYD=$PROXYD (not building)"
elif ! build; then
  built=0
  for _ in 1 2; do
    say "cargo build --release failed (the tree may be mid-edit); retrying in 60 s"
    sleep 60
    build && { built=1; break; }
  done
  if [ "$built" = 0 ]; then
    bin="${CARGO_TARGET_DIR:-target}/release/proxyd"
    [ -x "$bin" ] || die "cargo build --release failed and there is no binary to fall back on"
    say "WARNING: cargo build --release failed 3 times; using the existing $bin"
  fi
fi

cmd="benches/compare.sh"
for v in DURATION WARMUP CONNS VARIANTS FRONTENDS IDLE_CONNS H2_CLIENTS H2_STREAMS SCALING_ROUNDS \
  GZIP_LEVELS BR_LEVELS; do
  [ -n "${!v:-}" ] && cmd="$v=\"${!v}\" $cmd"
done
COMPARE_COMMAND=$cmd exec python3 benches/compare/compare.py
