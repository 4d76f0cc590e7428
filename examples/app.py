#!/usr/bin/env python3
"""The demo app: a WSGI app on the standard library's one-request-at-a-time server (wsgiref),
the shape of a Flask app on its development server. Nothing to install.

proxyd starts it with PORT (or SOCKET, for a unix socket) in the environment; it listens on
127.0.0.1, or on APP_HOST when set (0.0.0.0 in a container other containers reach). Paths:
  /           a greeting naming this process
  /pid        this worker's process id
  /healthz    200 ok (500 once /sick was called)
  /sick       this worker's health check fails from now on; answers its pid
  /slow?ms=N  sleeps N ms first (to see queueing and time-outs); with &until=FILE it returns
              as soon as FILE exists, N ms at most (tests hold requests and release them)
  /crash      the process dies mid-request, as a crashing app would
  /echo       (POST) echoes the body
  /half?bytes=N  N bytes in two halves, each sent as soon as it is made; with die=FILE (or
              stall=FILE) the first worker to claim FILE dies (or hangs for a minute) after
              the first half, as a worker killed or stuck mid-response would; the others send
              it all
Any path with receipt=FILE appends "PATH?QUERY" to FILE when the request arrives (tests count
which requests reached a worker, and how often).
"""
import os
import socket
import socketserver
import sys
import time
from urllib.parse import parse_qs
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server


SICK = False


def claim(path):
    """True for the first process to ask for PATH: it creates the file."""
    try:
        os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
        return True
    except FileExistsError:
        return False


def halves(size, fate):
    yield b"a" * (size // 2)
    if fate == "die":
        os._exit(1)
    if fate == "stall":
        time.sleep(60)
    yield b"b" * (size - size // 2)


def app(environ, start_response):
    global SICK
    path = environ.get("PATH_INFO", "/")
    query = parse_qs(environ.get("QUERY_STRING", ""))
    receipt = query.get("receipt", [""])[0]
    if receipt:
        with open(receipt, "a") as f:
            f.write(f"{path}?{environ.get('QUERY_STRING', '')}\n")
    status = "200 OK"
    if path == "/half":
        environ["wsgi.input"].read(int(environ.get("CONTENT_LENGTH") or 0))
        size = int(query.get("bytes", ["1000"])[0])
        fate = None
        for kind in ("die", "stall"):
            target = query.get(kind, [""])[0]
            if target and claim(target):
                fate = kind
        start_response(status, [("Content-Type", "text/plain"), ("Content-Length", str(size))])
        return halves(size, fate)
    if path == "/healthz":
        status, body = ("500 Internal Server Error", b"sick\n") if SICK else (status, b"ok\n")
    elif path == "/sick":
        SICK = True
        body = str(os.getpid()).encode()
    elif path == "/pid":
        body = str(os.getpid()).encode()
    elif path == "/crash":
        sys.stderr.write("crashing on purpose\n")
        sys.stderr.flush()
        os._exit(1)
    elif path == "/echo":
        length = int(environ.get("CONTENT_LENGTH") or 0)
        body = environ["wsgi.input"].read(length)
    else:
        if path == "/slow":
            seconds = int(query.get("ms", ["100"])[0]) / 1000
            until = query.get("until", [""])[0]
            if until:
                deadline = time.monotonic() + seconds
                while not os.path.exists(until) and time.monotonic() < deadline:
                    time.sleep(0.005)
            else:
                time.sleep(seconds)
        body = f"hello from pid {os.getpid()}\n".encode()
    start_response(status, [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]


class Handler(WSGIRequestHandler):
    def setup(self):
        if not isinstance(self.client_address, tuple):  # a unix socket peer has no address
            self.client_address = ("local", 0)
        super().setup()

    def log_message(self, fmt, *args):
        sys.stderr.write("%s\n" % (fmt % args))


class UnixWSGIServer(WSGIServer):
    address_family = socket.AF_UNIX

    def server_bind(self):
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = "localhost", 0
        self.setup_environ()


def main():
    sock = os.environ.get("SOCKET")
    if sock:
        server = UnixWSGIServer(sock, Handler)
        server.set_app(app)
    else:
        port = int(sys.argv[1] if len(sys.argv) > 1 else os.environ.get("PORT", "5001"))
        host = os.environ.get("APP_HOST", "127.0.0.1")
        server = make_server(host, port, app, handler_class=Handler)
    server.serve_forever()


if __name__ == "__main__":
    main()
