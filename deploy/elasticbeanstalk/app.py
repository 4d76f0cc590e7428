#!/usr/bin/env python3
"""A small WSGI app to try the bundle with: the standard library's one-request-at-a-time
server (wsgiref), the shape of a Flask app on its development server. Replace it with yours.

proxyd starts each worker with PORT in its environment.
  /          a greeting naming the worker's pid
  /healthz   200 ok (proxyd's health check)
"""
import os
import sys
from wsgiref.simple_server import WSGIRequestHandler, make_server


def application(environ, start_response):
    if environ.get("PATH_INFO") == "/healthz":
        body = b"ok\n"
    else:
        body = f"hello from worker pid {os.getpid()}\n".encode()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]


class Handler(WSGIRequestHandler):
    def log_message(self, fmt, *args):
        sys.stderr.write("%s\n" % (fmt % args))


if __name__ == "__main__":
    port = int(os.environ.get("PORT", "5001"))
    make_server("127.0.0.1", port, application, handler_class=Handler).serve_forever()
