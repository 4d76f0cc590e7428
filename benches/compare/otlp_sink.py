#!/usr/bin/env python3
"""A collector stand-in for the tracing variant: answers every OTLP/HTTP POST with 200 and an
empty body after reading it whole, and counts the bytes (printed when it stops). Usage:
otlp_sink.py PORT"""
import http.server
import signal
import sys

received = {"posts": 0, "bytes": 0}


class Sink(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_POST(self):
        n = int(self.headers.get("Content-Length", "0"))
        self.rfile.read(n)
        received["posts"] += 1
        received["bytes"] += n
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass


def main():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Sink)

    def done(*_):
        print(f"posts {received['posts']} bytes {received['bytes']}", flush=True)
        sys.exit(0)

    signal.signal(signal.SIGTERM, done)
    server.serve_forever()


if __name__ == "__main__":
    main()
