#!/usr/bin/env python3
"""The demo app: one request at a time, like Flask's development server.

Usage: app.py PORT  (or PORT in the environment). Answers:
  /          a greeting naming this process
  /slow?ms=N sleeps N ms first (to see queueing and time-outs)
  /echo      echoes a POST body
  /healthz   200 ok
Python's standard library only, so the demo needs nothing installed.
"""
import os
import sys
import time
from http.server import BaseHTTPRequestHandler, HTTPServer
from urllib.parse import parse_qs, urlparse


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def _send(self, status, body, ctype="text/plain; charset=utf-8"):
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def do_GET(self):
        url = urlparse(self.path)
        if url.path == "/healthz":
            return self._send(200, b"ok\n")
        if url.path == "/slow":
            ms = int(parse_qs(url.query).get("ms", ["100"])[0])
            time.sleep(ms / 1000)
        who = f"hello from pid {os.getpid()} on port {self.server.server_port}\n"
        self._send(200, who.encode())

    do_HEAD = do_GET

    def do_POST(self):
        length = int(self.headers.get("Content-Length", "0"))
        self._send(200, self.rfile.read(length), "application/octet-stream")

    def log_message(self, fmt, *args):
        sys.stderr.write("app[%d] %s\n" % (self.server.server_port, fmt % args))


def main():
    port = int(sys.argv[1] if len(sys.argv) > 1 else os.environ.get("PORT", "5001"))
    HTTPServer(("127.0.0.1", port), Handler).serve_forever()


if __name__ == "__main__":
    main()
