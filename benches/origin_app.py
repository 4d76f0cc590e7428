#!/usr/bin/env python3
"""benches/origin.sh's fault-run app: examples/flask_app.py's Flask app, unchanged, on the same
development server (one request at a time, threaded=False), with two bench-only additions
switched on by the environment:

  ORIGIN_RECV_LOG=FILE   every request carrying ?rid=ID appends "ID" to FILE when it is
                         received (before the handler runs), so a POST that reached a backend
                         twice can be counted (sort FILE | uniq -d).
  ORIGIN_KEEPALIVE=SECS  speak HTTP/1.1 with keep-alive and close a connection that stays idle
                         SECS seconds. The stock dev server never keeps a connection alive: with
                         threaded=False it answers HTTP/1.0, and werkzeug sends "Connection:
                         close" on every response in any mode. So without this there is no
                         keep-alive at all (and so no keep-alive race).

PORT comes from the environment, as for examples/flask_app.py.
"""
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "examples"))

from flask import request  # noqa: E402
from flask_app import app  # noqa: E402

recv_log = os.environ.get("ORIGIN_RECV_LOG")
if recv_log:
    fd = os.open(recv_log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

    @app.before_request
    def _receipt():
        rid = request.args.get("rid")
        if rid:
            os.write(fd, f"{rid}\n".encode())


options = {}
keepalive = os.environ.get("ORIGIN_KEEPALIVE")
if keepalive:
    from werkzeug.serving import WSGIRequestHandler

    class KeepAliveHandler(WSGIRequestHandler):
        # Set on the class itself, so werkzeug keeps it (it only upgrades to HTTP/1.1 by itself
        # for threaded or forking servers). StreamRequestHandler applies `timeout` to the
        # socket: an idle connection is closed after that many seconds.
        protocol_version = "HTTP/1.1"
        timeout = float(keepalive)
        # Headers and body go out in two writes; without TCP_NODELAY the second waits for the
        # peer's delayed ACK (~40 ms) on a kept-alive connection.
        disable_nagle_algorithm = True

        def send_header(self, keyword, value):
            # werkzeug adds "Connection: close" to every response; drop it unless the client
            # asked to close (parse_request has then set close_connection already). The app's
            # handlers read every request body they get, so the next request line is clean.
            if keyword.lower() == "connection" and value.lower() == "close":
                if not self.close_connection:
                    return
            super().send_header(keyword, value)

    options["request_handler"] = KeepAliveHandler

    # After every response werkzeug drains whatever the client sent next (10 ms of select)
    # before closing: with keep-alive that would swallow the next request on the connection.
    # The app's handlers read every body they get, so nothing needs draining: turn it off.
    import werkzeug.serving

    class _NoDrain:
        EVENT_READ = 1

        class DefaultSelector:
            def register(self, *args, **kwargs):
                pass

            def select(self, timeout=None):
                return []

            def close(self):
                pass

    werkzeug.serving.selectors = _NoDrain

if __name__ == "__main__":
    app.run(host="127.0.0.1", port=int(os.environ.get("PORT", "5000")), threaded=False, **options)
