#!/bin/sh
# The demo: two one-request-at-a-time app processes behind proxyd on 127.0.0.1:8080.
# Try: curl -i http://127.0.0.1:8080/   (run it twice: the two workers take turns)
#      curl http://127.0.0.1:9901/healthz
# Ctrl-C stops everything.
set -eu
cd "$(dirname "$0")/.."
cargo build --release --quiet
python3 examples/app.py 5001 &
app1=$!
python3 examples/app.py 5002 &
app2=$!
trap 'kill "$app1" "$app2" 2>/dev/null' EXIT INT TERM
./target/release/proxyd -c config/demo.yaml
