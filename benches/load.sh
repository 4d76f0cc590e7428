#!/bin/sh
# A bounded load run: wrk (64 keepalive connections, 2 threads, DURATION seconds) against
# proxyd (config/bench.yaml) in front of a small hyper backend, all on loopback. Prints wrk's
# summary.
# Usage: benches/load.sh [DURATION_SECONDS]   (needs wrk: apt-get install wrk)
set -eu
cd "$(dirname "$0")/.."
duration=${1:-10}
command -v wrk >/dev/null || { echo "wrk is not installed (apt-get install wrk)" >&2; exit 1; }
cargo build --release --quiet --bin proxyd --example hello_backend
dir=$(mktemp -d)
backend_port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
proxy_port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
./target/release/examples/hello_backend "127.0.0.1:$backend_port" 2>"$dir/backend.log" &
backend=$!
PORT=$proxy_port BACKEND="127.0.0.1:$backend_port" \
  ./target/release/proxyd -c config/bench.yaml 2>"$dir/proxyd.log" &
proxy=$!
trap 'kill "$proxy" "$backend" 2>/dev/null; rm -rf "$dir"' EXIT INT TERM
for _ in $(seq 50); do
  curl -fs -o /dev/null "http://127.0.0.1:$proxy_port/" && break
  sleep 0.1
done
wrk -t2 -c64 -d"${duration}s" --latency "http://127.0.0.1:$proxy_port/"
