#!/bin/sh
# Cross-checks a sample of the request-smuggling catalogue (tests/smuggling.rs) against nginx
# and HAProxy: each raw HTTP/1.1 request goes through proxyd, nginx and HAProxy, each in front
# of its own recording backend, and a table shows per case what the client got (statuses,
# whether the connection closed) and what the backend received.
#
#   scripts/crosscheck.sh             build proxyd (debug) and run every case
#   PROXYD_BIN=path scripts/...       use this proxyd binary instead of building one
#   scripts/crosscheck.sh clte nul    only the cases whose name contains one of the words
#
# Needs python3, nginx and haproxy (Debian: apt-get install nginx haproxy). Everything listens
# on free loopback ports; configs and logs go to a temp dir that is removed on exit (kept with
# KEEP=1). Cells read "<client> / <backend>":
#   client   the statuses answered, in order ("400", "200,400"), then "closed" when the front
#            end closed the connection, "open" when it was still open after the wait
#   backend  "-" for nothing; "N x METHOD TARGET [host=..] [cl=..|chunked] [body=..]" for N
#            well-formed requests; "BAD(reason)" for bytes a strict parser refuses;
#            "cut(...)" for a request the connection ended in the middle of
set -eu

root="$(cd "$(dirname "$0")/.." && pwd)"
for tool in python3 nginx haproxy; do
    command -v "$tool" >/dev/null || {
        echo "crosscheck.sh: $tool is needed (Debian: apt-get install nginx haproxy python3)" >&2
        exit 1
    }
done
if [ -z "${PROXYD_BIN:-}" ]; then
    (cd "$root" && cargo build --quiet --bin proxyd)
    PROXYD_BIN="$root/target/debug/proxyd"
fi
export PROXYD_BIN

exec python3 - "$@" <<'PY'
import os, shutil, signal, socket, subprocess, sys, tempfile, threading, time

PROXYD = os.path.abspath(os.environ["PROXYD_BIN"])
KEEP = os.environ.get("KEEP") == "1"
only = sys.argv[1:]

# ---------------------------------------------------------------------------- the cases
SMUGGLED = b"GET /smuggled HTTP/1.1\r\nHost: a\r\n\r\n"
CHUNKED_HIDING = b"0\r\n\r\n" + SMUGGLED
TE_CL_BODY = b"%x\r\n" % len(SMUGGLED) + SMUGGLED + b"\r\n0\r\n\r\n"
ABC = b"3\r\nabc\r\n0\r\n\r\n"

def post(headers, body):
    return b"POST /p HTTP/1.1\r\nHost: a\r\n" + headers + b"\r\n" + body

def get(target, host=b"a"):
    return b"GET " + target + b" HTTP/1.1\r\nHost: " + host + b"\r\n\r\n"

CASES = [
    ("CL.TE, CL first", post(b"Content-Length: %d\r\nTransfer-Encoding: chunked\r\n" % len(CHUNKED_HIDING), CHUNKED_HIDING)),
    ("TE.CL, TE first", post(b"Transfer-Encoding: chunked\r\nContent-Length: 4\r\n", TE_CL_BODY)),
    ("TE.TE chunked + identity", post(b"Transfer-Encoding: chunked\r\nTransfer-Encoding: identity\r\n", ABC)),
    ("TE: chunked, chunked", post(b"Transfer-Encoding: chunked, chunked\r\n", ABC)),
    ("TE: gzip, chunked", post(b"Transfer-Encoding: gzip, chunked\r\n", ABC)),
    ("TE: xchunked", post(b"Transfer-Encoding: xchunked\r\n", ABC)),
    ("TE: chunked;x", post(b"Transfer-Encoding: chunked;x\r\n", ABC)),
    ("TE: \\x0bchunked", post(b"Transfer-Encoding: \x0bchunked\r\n", ABC)),
    ("TE: Chunked (case)", post(b"Transfer-Encoding: Chunked\r\n", ABC)),
    ("TE: chunked, trailing tab", post(b"Transfer-Encoding: chunked\t\r\n", ABC)),
    ("Transfer-Encoding : chunked", post(b"Transfer-Encoding : chunked\r\n", ABC)),
    ("Transfer_Encoding: chunked", post(b"Transfer_Encoding: chunked\r\n", ABC)),
    ("TE on HTTP/1.0", b"POST /p HTTP/1.0\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n" + ABC),
    ("CL twice, same", post(b"Content-Length: 5\r\nContent-Length: 5\r\n", b"hello")),
    ("CL twice, different", post(b"Content-Length: 5\r\nContent-Length: 6\r\n", b"hello!")),
    ("CL +5", post(b"Content-Length: +5\r\n", b"hello")),
    ("CL 0x5", post(b"Content-Length: 0x5\r\n", b"hello")),
    ("CL 5, 5", post(b"Content-Length: 5, 5\r\n", b"hello")),
    ("CL 005", post(b"Content-Length: 005\r\n", b"hello")),
    ("CL past i64", post(b"Content-Length: 9223372036854775808\r\n", b"hello")),
    ("empty chunk size", post(b"Transfer-Encoding: chunked\r\n", b"\r\nabc\r\n0\r\n\r\n")),
    ("chunk size overflow", post(b"Transfer-Encoding: chunked\r\n", b"10000000000000000\r\nabc\r\n0\r\n\r\n")),
    ("chunk extension 20 KB", post(b"Transfer-Encoding: chunked\r\n", b"3;" + b"x" * 20000 + b"\r\nabc\r\n0\r\n\r\n")),
    ("chunk lines ending in bare LF", post(b"Transfer-Encoding: chunked\r\n", b"3\nabc\n0\n\n")),
    ("Content-Length in trailer", post(b"Transfer-Encoding: chunked\r\n", b"3\r\nabc\r\n0\r\nContent-Length: 50\r\n\r\n")),
    ("bare LF line endings", b"GET /lf HTTP/1.1\nHost: a\n\n"),
    ("bare CR in a header value", b"GET / HTTP/1.1\r\nHost: a\r\nX-A: b\rc\r\n\r\n"),
    ("NUL in a header value", b"GET / HTTP/1.1\r\nHost: a\r\nX-A: b\x00c\r\n\r\n"),
    ("obs-fold", b"GET / HTTP/1.1\r\nHost: a\r\nX-A: b\r\n c\r\n\r\n"),
    ("space in a header name", b"GET / HTTP/1.1\r\nHost: a\r\nX A: b\r\n\r\n"),
    ("X_Forwarded_For (underscore)", b"GET / HTTP/1.1\r\nHost: a\r\nX_Forwarded_For: 6.6.6.6\r\n\r\n"),
    ("two Hosts", b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n"),
    ("Host port 99999", get(b"/", b"a:99999")),
    ("absolute-form, other Host", get(b"http://b.example/x", b"a.example")),
    ("absolute-form, query, no path", get(b"http://b.example?q=1", b"a.example")),
    ("absolute-form ftp://", get(b"ftp://b.example/x", b"a.example")),
    ("authority-form on GET", get(b"b.example:80", b"b.example")),
    ("CONNECT", b"CONNECT b.example:443 HTTP/1.1\r\nHost: b.example:443\r\n\r\n"),
    ("asterisk-form on GET", get(b"*")),
    ("OPTIONS *", b"OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n"),
    ("fragment in the target", get(b"/x#frag")),
    ("backslash in the target", get(b"/x\\y")),
    ("HTTP/0.9", b"GET /\r\n\r\n"),
    ("HTTP/1.2", b"GET / HTTP/1.2\r\nHost: a\r\n\r\n"),
    ("HTTP/1.0 keep-alive, body no length", b"POST /p HTTP/1.0\r\nHost: a\r\nConnection: keep-alive\r\n\r\nhello=world"),
    ("Upgrade: h2c", b"GET / HTTP/1.1\r\nHost: a\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQAAP__\r\n\r\n"),
    ("pipelined CL.TE after a GET", get(b"/first") + post(b"Content-Length: 5\r\nTransfer-Encoding: chunked\r\n", b"0\r\n\r\n")),
]
if only:
    CASES = [c for c in CASES if any(w.lower() in c[0].lower() for w in only)]

# ---------------------------------------------------------------------------- the backend
def strict_parse(buf):
    """One request at the start of buf: ('ok', summary, used), ('partial',), ('bad', why)."""
    end = buf.find(b"\r\n\r\n")
    if end < 0:
        if b"\n\n" in buf:
            return ("bad", "bare LF")
        return ("partial",)
    head = buf[:end]
    if b"\n" in head.replace(b"\r\n", b"") or b"\r" in head.replace(b"\r\n", b""):
        return ("bad", "bare CR/LF")
    lines = head.split(b"\r\n")
    parts = lines[0].split(b" ")
    if len(parts) != 3 or parts[2] not in (b"HTTP/1.1", b"HTTP/1.0"):
        return ("bad", "request line %r" % lines[0][:40])
    method, target = parts[0], parts[1]
    headers = []
    for l in lines[1:]:
        if l[:1] in (b" ", b"\t"):
            return ("bad", "obs-fold")
        name, sep, value = l.partition(b":")
        if not sep or not name or any(c in b" \t\0" for c in name):
            return ("bad", "header line %r" % l[:40])
        headers.append((name.lower(), value.strip(b" \t")))
    cl = [v for n, v in headers if n == b"content-length"]
    te = [v for n, v in headers if n == b"transfer-encoding"]
    hosts = [v for n, v in headers if n == b"host"]
    if len(cl) > 1 or len(te) > 1 or (cl and te):
        return ("bad", "%d CL, %d TE" % (len(cl), len(te)))
    if len(hosts) != 1:
        return ("bad", "%d Host" % len(hosts))
    note = []
    if not target.startswith(b"/") and not (target == b"*" and method == b"OPTIONS"):
        note.append("not-origin-form")
    pos = end + 4
    if te:
        if te[0].lower() != b"chunked":
            return ("bad", "TE %r" % te[0])
        body = b""
        while True:
            le = buf.find(b"\r\n", pos)
            if le < 0:
                return ("partial",)
            size = buf[pos:le].split(b";")[0]
            try:
                n = int(size, 16)
            except ValueError:
                return ("bad", "chunk size %r" % size[:20])
            pos = le + 2
            if n == 0:
                while True:
                    le = buf.find(b"\r\n", pos)
                    if le < 0:
                        return ("partial",)
                    line = buf[pos:le]
                    pos = le + 2
                    if not line:
                        break
                    if line.split(b":")[0].strip().lower() in (b"content-length", b"transfer-encoding", b"host"):
                        return ("bad", "framing header in trailer")
                    note.append("trailer=" + line.split(b":")[0].decode("latin-1"))
                break
            if len(buf) < pos + n + 2:
                return ("partial",)
            body += buf[pos:pos + n]
            if buf[pos + n:pos + n + 2] != b"\r\n":
                return ("bad", "chunk data")
            pos += n + 2
        framing = "chunked"
    elif cl:
        if not cl[0].isdigit():
            return ("bad", "CL %r" % cl[0])
        n = int(cl[0])
        if len(buf) < pos + n:
            return ("partial",)
        body = buf[pos:pos + n]
        pos += n
        framing = "cl=%d" % n
    else:
        body, framing = b"", ""
    host = hosts[0].decode("latin-1")
    summary = "%s %s" % (method.decode("latin-1"), target.decode("latin-1"))
    if host != "a":
        summary += " host=" + host
    if framing:
        summary += " " + framing
    if body and body != b"hello" and body != b"abc":
        summary += " body=%r" % body[:24]
    for n, _ in headers:
        if n in (b"upgrade", b"x_forwarded_for", b"transfer_encoding"):
            note.append(n.decode())
    if note:
        summary += " [" + ",".join(note) + "]"
    return ("ok", summary, pos)

class Backend:
    def __init__(self):
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        self.events = []
        self.lock = threading.Lock()
        threading.Thread(target=self.accept, daemon=True).start()

    def accept(self):
        while True:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self.serve, args=(c,), daemon=True).start()

    def record(self, e):
        with self.lock:
            self.events.append(e)

    def serve(self, c):
        buf = b""
        while True:
            while True:
                r = strict_parse(buf)
                if r[0] == "ok":
                    self.record(r[1])
                    buf = buf[r[2]:]
                    try:
                        c.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                    except OSError:
                        return
                    continue
                if r[0] == "bad":
                    self.record("BAD(%s)" % r[1])
                    try:
                        c.sendall(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                    except OSError:
                        pass
                    c.close()
                    return
                break
            try:
                d = c.recv(65536)
            except OSError:
                d = b""
            if not d:
                if buf:
                    self.record("cut(%r)" % buf[:30])
                c.close()
                return
            buf += d

    def take(self):
        with self.lock:
            e, self.events = self.events, []
        return e

# ---------------------------------------------------------------------------- the front ends
def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p

def wait_port(port, proc, name):
    deadline = time.time() + 20
    while time.time() < deadline:
        if proc.poll() is not None:
            sys.exit("crosscheck.sh: %s exited early (code %s)" % (name, proc.returncode))
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.05)
    sys.exit("crosscheck.sh: %s is not listening on %d" % (name, port))

tmp = tempfile.mkdtemp(prefix="crosscheck.")
procs = []

def start(name, argv, port):
    log = open(os.path.join(tmp, name + ".log"), "wb")
    p = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, cwd=tmp, start_new_session=True)
    procs.append(p)
    wait_port(port, p, name)

def stop_all():
    for p in procs:
        try:
            os.killpg(p.pid, signal.SIGTERM)
        except OSError:
            pass
    for p in procs:
        try:
            p.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
    if KEEP:
        print("kept:", tmp)
    else:
        shutil.rmtree(tmp, ignore_errors=True)

fronts = {}
try:
    b = Backend(); port = free_port()
    open(os.path.join(tmp, "proxyd.yaml"), "w").write(
        'listen:\n  - addr: "127.0.0.1:%d"\nupstreams:\n  app:\n    servers: ["127.0.0.1:%d"]\n' % (port, b.port))
    start("proxyd", [PROXYD, "-c", os.path.join(tmp, "proxyd.yaml")], port)
    fronts["proxyd"] = (port, b)

    b = Backend(); port = free_port()
    for d in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"):
        os.makedirs(os.path.join(tmp, "nginx", d), exist_ok=True)
    open(os.path.join(tmp, "nginx.conf"), "w").write("""
daemon off;
worker_processes 1;
pid %(t)s/nginx.pid;
error_log %(t)s/nginx-error.log info;
events { worker_connections 256; }
http {
    access_log off;
    client_body_temp_path %(t)s/nginx/client_body;
    proxy_temp_path %(t)s/nginx/proxy;
    fastcgi_temp_path %(t)s/nginx/fastcgi;
    uwsgi_temp_path %(t)s/nginx/uwsgi;
    scgi_temp_path %(t)s/nginx/scgi;
    upstream app { server 127.0.0.1:%(b)d; keepalive 8; }
    server {
        listen 127.0.0.1:%(p)d;
        location / {
            proxy_pass http://app;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host $host;
        }
    }
}
""" % {"t": tmp, "b": b.port, "p": port})
    start("nginx", ["nginx", "-p", tmp, "-c", os.path.join(tmp, "nginx.conf")], port)
    fronts["nginx"] = (port, b)

    b = Backend(); port = free_port()
    open(os.path.join(tmp, "haproxy.cfg"), "w").write("""
global
    log stderr format short local0 info
defaults
    mode http
    log global
    option httplog
    timeout connect 5s
    timeout client 10s
    timeout server 10s
    timeout http-request 5s
frontend fe
    bind 127.0.0.1:%(p)d
    default_backend be
backend be
    server s1 127.0.0.1:%(b)d
""" % {"b": b.port, "p": port})
    start("haproxy", ["haproxy", "-db", "-f", os.path.join(tmp, "haproxy.cfg")], port)
    fronts["haproxy"] = (port, b)

    # ------------------------------------------------------------------------ one exchange
    def responses(buf):
        """Statuses of the complete responses at the start of buf (CL, chunked or none)."""
        out = []
        while True:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                return out
            head = buf[:end].split(b"\r\n")
            try:
                status = int(head[0].split(b" ")[1])
            except (IndexError, ValueError):
                return out
            hdrs = {}
            for l in head[1:]:
                n, _, v = l.partition(b":")
                hdrs[n.strip().lower()] = v.strip()
            pos = end + 4
            if 100 <= status < 200:
                buf = buf[pos:]
                continue
            if b"content-length" in hdrs:
                n = int(hdrs[b"content-length"])
                if len(buf) < pos + n:
                    return out
                pos += n
            elif hdrs.get(b"transfer-encoding", b"").lower() == b"chunked":
                while True:
                    le = buf.find(b"\r\n", pos)
                    if le < 0:
                        return out
                    n = int(buf[pos:le].split(b";")[0], 16)
                    pos = le + 2 + n + 2
                    if n == 0:
                        break
                if len(buf) < pos:
                    return out
            out.append(status)
            buf = buf[pos:]

    def exchange(port, data):
        s = socket.create_connection(("127.0.0.1", port))
        s.settimeout(3)
        try:
            s.sendall(data)
        except OSError:
            pass
        buf, shut, state = b"", False, "open"
        while True:
            if not shut and responses(buf):
                # A complete answer: say we are done, and see what else comes before the close.
                try:
                    s.shutdown(socket.SHUT_WR)
                except OSError:
                    pass
                shut = True
            try:
                d = s.recv(65536)
            except socket.timeout:
                break
            except OSError:
                state = "reset"
                break
            if not d:
                state = "closed"
                break
            buf += d
        s.close()
        st = responses(buf)
        if state == "reset" and st:
            # Our half-close crossing the front end's close: the answer was complete.
            state = "closed"
        return (",".join(map(str, st)) or "-") + " " + state

    # ------------------------------------------------------------------------ the table
    names = list(fronts)
    rows = []
    for what, data in CASES:
        row = [what]
        for n in names:
            port, backend = fronts[n]
            backend.take()
            client = exchange(port, data)
            time.sleep(0.2)
            got = backend.take()
            if not got:
                seen = "-"
            elif len(set(got)) == 1:
                seen = "%d x %s" % (len(got), got[0]) if len(got) > 1 else got[0]
            else:
                seen = "; ".join(got)
            row.append("%s / %s" % (client, seen))
        rows.append(row)
    widths = [max(len(r[i]) for r in rows + [["case"] + names]) for i in range(len(names) + 1)]
    line = lambda cells: "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths)) + " |"
    print(line(["case"] + names))
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for r in rows:
        print(line(r))
    print("\nversions: nginx %s; %s" % (
        subprocess.run(["nginx", "-v"], capture_output=True, text=True).stderr.strip().split("/")[-1],
        subprocess.run(["haproxy", "-v"], capture_output=True, text=True).stdout.split("\n")[0]))
finally:
    stop_all()
PY
