#!/usr/bin/env python3
"""The load comparison of issues 8 and 16: proxyd against nginx and HAProxy, in one run.

Run it through benches/compare.sh (which installs the tools, builds proxyd and raises the
open-files limit); see that file for the knobs. This script:

- makes a temp dir with a throwaway CA and an ECDSA P-256 server certificate for
  localhost/127.0.0.1, the static files (1 KiB, 1 MiB, a ~100 KiB JSON document) and the
  handshake shim;
- starts the backend (nginx, 1 worker, benches/compare/backend-nginx.conf) pinned to the
  load core, and keeps it for the whole run;
- for every variant, starts each front end in turn (direct = no front end, the ceiling;
  nginx; HAProxy; proxyd) pinned to the front core with its config rendered from
  benches/compare/, waits for it, warms it up, runs the load generator (pinned to the load
  core) and stops it again, so every run starts from a fresh process; for the static and
  compression variants a curl first checks what it sends (the file byte for byte, the JSON in
  the variant's coding and decoding to the original) and a front end that fails is not
  measured, named loudly and makes the script exit 1;
- records per run: requests/s, p50/p99, errors (non-2xx + socket errors), the CPU the front
  end's processes spent (utime+stime from /proc/PID/stat, all threads, nginx master+worker)
  per request, their RSS (VmRSS summed) at the end of the run, how busy that made the front
  core, and the CPU other processes on the machine took meanwhile;
- prints the tables (markdown) and writes them to target/bench/compare-<date>.md.
"""

import datetime
import gzip
import json
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
HZ = os.sysconf("SC_CLK_TCK")


def env_int(name, default):
    try:
        return int(os.environ.get(name, default))
    except ValueError:
        sys.exit(f"compare: {name} must be a number")


DURATION = env_int("DURATION", 10)
WARMUP = env_int("WARMUP", 2)
CONNS = env_int("CONNS", 64)
IDLE_CONNS = env_int("IDLE_CONNS", 10000)
H2_CLIENTS = env_int("H2_CLIENTS", 10)
H2_STREAMS = env_int("H2_STREAMS", 100)
FRONT_CPU = env_int("FRONT_CPU", 0)
LOAD_CPU = env_int("LOAD_CPU", 1)
QUIET_WAIT = env_int("QUIET_WAIT", 10)
BUSY_LIMIT = env_int("BUSY_LIMIT", 50)
BUSY_RETRIES = env_int("BUSY_RETRIES", 0)
KEEP = os.environ.get("KEEP", "0") == "1"
ALL_VARIANTS = ["keepalive", "close", "1k", "1m", "post16k", "static1k", "static1m", "https", "handshake", "h2",
                "gzip", "br", "zstd", "idle", "scaling", "instructions", "tracing"]
# Served by the front end itself from the disk (issue 17): variant -> file name.
STATIC = {"static1k": "1k", "static1m": "1m"}
# A JSON response compressed on the fly by the front end (issue 17): variant -> coding.
COMPRESS = {"gzip": "gzip", "br": "br", "zstd": "zstd"}
ALL_FRONTS = ["direct", "nginx", "haproxy", "proxyd"]
VARIANTS = os.environ.get("VARIANTS", " ".join(ALL_VARIANTS)).replace(",", " ").split()
FRONTS = os.environ.get("FRONTENDS", " ".join(ALL_FRONTS)).replace(",", " ").split()
for v in VARIANTS:
    if v not in ALL_VARIANTS:
        sys.exit(f"compare: unknown variant {v!r}; known: {' '.join(ALL_VARIANTS)}")
for f in FRONTS:
    if f not in ALL_FRONTS:
        sys.exit(f"compare: unknown front end {f!r}; known: {' '.join(ALL_FRONTS)}")
PROXYD = os.environ.get("PROXYD", os.path.join(ROOT, os.environ.get("CARGO_TARGET_DIR", "target"),
                                                "release/proxyd"))


def env_levels(name, default, lo, hi):
    try:
        levels = [int(x) for x in os.environ.get(name, default).replace(",", " ").split()]
    except ValueError:
        sys.exit(f"compare: {name} must be numbers")
    if any(not lo <= x <= hi for x in levels):
        sys.exit(f"compare: {name} must be within {lo}..{hi}")
    return levels


# nginx's levels in the gzip and br variants: every on-the-fly gzip level worth having (nginx's
# default is 1), and brotli at proxyd's quality (4) and at the module's default (6).
GZIP_LEVELS = env_levels("GZIP_LEVELS", "1 2 3 4 5 6", 1, 9)
BR_LEVELS = env_levels("BR_LEVELS", "4 6", 0, 11)
# Debian's libnginx-mod-http-brotli-filter; there is no zstd module for Debian's nginx.
BROTLI_MODULE = "/usr/lib/nginx/modules/ngx_http_brotli_filter_module.so"


def proxyd_levels():
    """proxyd's fixed levels, read from the source (src/proxy/compress.rs) so the table says
    what was built; "?" where the source says otherwise."""
    levels = {"gzip": "?", "br": "?", "zstd": "?"}
    try:
        with open(os.path.join(ROOT, "src/proxy/compress.rs")) as f:
            src = f.read()
    except OSError:
        return levels
    for coding, const in (("gzip", "GZIP_LEVEL"), ("br", "BROTLI_QUALITY"), ("zstd", "ZSTD_LEVEL")):
        m = re.search(rf"const {const}: \w+ = (\d+);", src)
        if m:
            levels[coding] = m.group(1)
    return levels

NCPU = os.cpu_count() or 1
PINNED = NCPU >= 2
START = time.monotonic()


def say(*a):
    print(*a, flush=True)


def t():
    return f"[t={time.monotonic() - START:.0f}s]"


# ------------------------------------------------------------------ processes

STARTED = []  # every Popen this script started, for the cleanup


def pin(cpu):
    return ["taskset", "-c", str(cpu)] if PINNED and cpu is not None else []


def start(name, argv, cpu=None, env=None, stdout=None):
    log = open(os.path.join(DIR, f"{name}.log"), "ab")
    p = subprocess.Popen(
        pin(cpu) + argv,
        stdout=stdout if stdout is not None else log,
        stderr=log,
        stdin=subprocess.DEVNULL,
        env=env,
    )
    STARTED.append(p)
    return p


def children(pid):
    out = []
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as f:
                s = f.read()
        except OSError:
            continue
        fields = s[s.rfind(")") + 2:].split()
        if fields[1] == str(pid):
            out.append(int(d))
    return out


def tree(pid):
    """pid and its descendants."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(children(p))
    return out


def stop(p, grace=3.0):
    if p.poll() is not None:
        return
    kids = [k for k in tree(p.pid) if k != p.pid]
    try:
        p.terminate()
        p.wait(grace)
    except subprocess.TimeoutExpired:
        p.kill()
        p.wait(5)
    for k in kids:  # e.g. an nginx worker whose master was killed
        try:
            os.kill(k, signal.SIGKILL)
        except ProcessLookupError:
            pass


def cleanup():
    for p in reversed(STARTED):
        try:
            stop(p, 2.0)
        except Exception:  # noqa: BLE001 - best effort on the way out
            pass
    if KEEP:
        say(f"work directory kept: {DIR}")
    else:
        shutil.rmtree(DIR, ignore_errors=True)


def on_signal(signum, _frame):
    raise SystemExit(128 + signum)


def free_ports(n):
    socks = []
    for _ in range(n):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        socks.append(s)
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def ticks(pids):
    total = 0
    for p in pids:
        try:
            with open(f"/proc/{p}/stat") as f:
                s = f.read()
        except OSError:
            continue
        fields = s[s.rfind(")") + 2:].split()
        total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14, 15)
    return total


def rss_kib(pids):
    total = 0
    for p in pids:
        try:
            with open(f"/proc/{p}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1])
        except OSError:
            continue
    return total


def sockets(pids):
    n = 0
    for p in pids:
        try:
            for fd in os.listdir(f"/proc/{p}/fd"):
                try:
                    if os.readlink(f"/proc/{p}/fd/{fd}").startswith("socket:"):
                        n += 1
                except OSError:
                    pass
        except OSError:
            pass
    return n


def sys_busy():
    with open("/proc/stat") as f:
        v = f.readline().split()[1:]
    # user nice system irq softirq steal
    return sum(int(v[i]) for i in (0, 1, 2, 5, 6, 7))


def child_ticks():
    tm = os.times()
    return (tm.children_user + tm.children_system) * HZ


def wait_quiet():
    """Until the rest of the machine uses under a quarter of a core (at most QUIET_WAIT s)."""
    deadline = time.monotonic() + QUIET_WAIT
    while True:
        a = sys_busy()
        time.sleep(1)
        b = sys_busy()
        if b - a <= HZ / 4 or time.monotonic() >= deadline:
            return 100 * (b - a) / HZ


def run_bounded(name, argv, limit, env=None):
    """Runs argv (pinned to the load core) to completion, killed past `limit` seconds;
    returns its output (stdout and stderr together)."""
    out = os.path.join(DIR, f"{name}.out")
    with open(out, "wb") as f:
        p = subprocess.Popen(pin(LOAD_CPU) + argv, stdout=f, stderr=subprocess.STDOUT,
                             stdin=subprocess.DEVNULL, env=env)
        STARTED.append(p)
        try:
            p.wait(limit)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
    with open(out, errors="replace") as f:
        return f.read()


def http_ok(url, cacert=None, timeout=2):
    argv = ["curl", "-fs", "-o", "/dev/null", "--max-time", str(timeout)]
    if cacert:
        argv += ["--cacert", cacert]
    if url.startswith("https://localhost:"):
        port = url.split(":")[2].split("/")[0]
        argv += ["--resolve", f"localhost:{port}:127.0.0.1"]
    return subprocess.run(argv + [url], stdin=subprocess.DEVNULL).returncode == 0


def wait_http(url, secs, cacert=None):
    deadline = time.monotonic() + secs
    while time.monotonic() < deadline:
        if http_ok(url, cacert):
            return True
        time.sleep(0.1)
    return False


def render(template, out, **vals):
    with open(os.path.join(HERE, template)) as f:
        text = f.read()
    text = re.sub(r"@@([A-Z_]+)@@", lambda m: str(vals[m.group(1)]), text)
    with open(out, "w") as f:
        f.write(text)
    return out


# ------------------------------------------------------------------ parsing

def to_ms(v):
    m = re.match(r"([\d.]+)(us|ms|s|m)$", v)
    if not m:
        return None
    x = float(m.group(1))
    return {"us": x / 1000, "ms": x, "s": x * 1000, "m": x * 60000}[m.group(2)]


def parse_wrk(text):
    r = {"requests": 0, "secs": 0.0, "rps": 0.0, "p50": None, "p99": None, "errors": 0,
         "full": 0, "resumed": 0}
    m = re.search(r"(\d+) requests in ([\d.]+)(ms|s|m)", text)
    if m:
        r["requests"] = int(m.group(1))
        r["secs"] = to_ms(m.group(2) + m.group(3)) / 1000
    m = re.search(r"Requests/sec:\s+([\d.]+)", text)
    if m:
        r["rps"] = float(m.group(1))
    for q in ("50", "99"):
        m = re.search(rf"^\s+{q}%\s+(\S+)", text, re.M)
        if m:
            r["p" + q] = to_ms(m.group(1))
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text)
    if m:
        r["errors"] += sum(int(x) for x in m.groups())
        r["socket"] = "connect %s read %s write %s timeout %s" % m.groups()
    m = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
    if m:
        r["errors"] += int(m.group(1))
        r["non2xx"] = int(m.group(1))
    m = re.search(r"tls-shim: (\d+) full handshakes, (\d+) resumed, (\d+) TLSv1.3", text)
    if m:
        r["full"], r["resumed"], r["tls13"] = (int(x) for x in m.groups())
    return r


def parse_h2load(text):
    r = {"requests": 0, "secs": 0.0, "rps": 0.0, "p50": None, "p99": None, "errors": 0}
    m = re.search(r"finished in ([\d.]+)(ms|s|m), ([\d.]+) req/s", text)
    if m:
        r["secs"] = to_ms(m.group(1) + m.group(2)) / 1000
        r["rps"] = float(m.group(3))
    m = re.search(r"requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, "
                  r"(\d+) failed, (\d+) errored, (\d+) timeout", text)
    if m:
        total, started, done, ok, failed, errored, timeout = (int(x) for x in m.groups())
        r["requests"] = ok
        r["errors"] = failed + errored + timeout
    m = re.search(r"status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx", text)
    if m:
        r["requests"] = min(r["requests"], int(m.group(1))) if r["requests"] else int(m.group(1))
        r["errors"] += int(m.group(3)) + int(m.group(4))
    m = re.search(r"time for request:\s+(\S+)\s+(\S+)\s+(\S+)", text)
    if m:
        r["mean"] = to_ms(m.group(3))
    m = re.search(r"Application protocol: (\S+)", text)
    r["proto"] = m.group(1) if m else "?"
    return r


# ------------------------------------------------------------------ setup

def make_certs():
    c = os.path.join(DIR, "certs")
    os.makedirs(c)

    def ossl(*args):
        subprocess.run(["openssl", *args], check=True, stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL)

    ossl("genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", f"{c}/ca.key")
    ossl("req", "-x509", "-new", "-key", f"{c}/ca.key", "-sha256", "-days", "2",
         "-subj", "/CN=proxyd compare.sh throwaway CA",
         "-addext", "basicConstraints=critical,CA:TRUE",
         "-addext", "keyUsage=critical,keyCertSign,cRLSign", "-out", f"{c}/ca.pem")
    ossl("genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", f"{c}/ec.key")
    with open(f"{c}/ec.ext", "w") as f:
        f.write("subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=critical,CA:FALSE\n"
                "keyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n")
    ossl("req", "-new", "-key", f"{c}/ec.key", "-subj", "/CN=localhost", "-out", f"{c}/ec.csr")
    ossl("x509", "-req", "-in", f"{c}/ec.csr", "-CA", f"{c}/ca.pem", "-CAkey", f"{c}/ca.key",
         "-CAcreateserial", "-days", "2", "-sha256", "-extfile", f"{c}/ec.ext", "-out", f"{c}/ec.pem")
    with open(f"{c}/ec-combined.pem", "w") as out:  # HAProxy wants cert and key in one file
        for part in ("ec.pem", "ec.key"):
            with open(f"{c}/{part}") as f:
                out.write(f.read())
    return c


def nginx_temp_paths(prefix):
    """*_temp_path lines for the modules this nginx has, under prefix (so nothing outside
    the temp dir is written)."""
    v = subprocess.run(["nginx", "-V"], capture_output=True, text=True).stderr
    lines = []
    for m in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"):
        if m != "client_body" and f"--without-http_{m}_module" in v:
            continue
        d = os.path.join(prefix, "tmp", m)
        os.makedirs(d, exist_ok=True)
        lines.append(f"  {m}_temp_path {d};")
    return "\n".join(lines)


# ------------------------------------------------------------------ front ends

class Front:
    """One running front end: its Popen, ports and the pids to account."""

    def __init__(self, name, proc, port, tls_port):
        self.name, self.proc, self.port, self.tls_port = name, proc, port, tls_port

    def pids(self):
        if self.proc is None:
            return []
        return tree(self.proc.pid)


def start_front(name, threads=1, pinned=True, wrap=(), wait=15, runtime="per_thread", extra=None, tag="",
                binary=None):
    """`wrap` goes before the front end's command (valgrind for the instructions variant);
    `runtime` is proxyd's runtime shape when threads > 1; `extra` fills the templates'
    per-variant placeholders (front_extra), `tag` names the rendered config."""
    port, tls_port = free_ports(2)
    cpu = FRONT_CPU if pinned else None
    wrap = list(wrap)
    extra = extra or {}
    if name == "nginx":
        d = os.path.join(DIR, "nginx")
        os.makedirs(d, exist_ok=True)
        conf = render("nginx.conf", os.path.join(d, f"nginx{tag}.conf"), DIR=DIR, PORT=port,
                      TLS_PORT=tls_port, BACKEND_PORT=BACKEND_PORT, CERT=f"{CERTS}/ec.pem",
                      KEY=f"{CERTS}/ec.key", TEMP_PATHS=nginx_temp_paths(d),
                      MODULES=extra.get("MODULES", ""), HTTP_EXTRA=extra.get("HTTP_EXTRA", ""),
                      SERVER_EXTRA=extra.get("SERVER_EXTRA", ""))
        argv = ["nginx", "-p", d + "/", "-c", conf, "-e", f"{d}/error.log"]
        if wrap:  # one process, so that the tool sees the worker's instructions
            argv += ["-g", "master_process off;"]
        p = start("nginx", wrap + argv, cpu)
    elif name == "haproxy":
        conf = render("haproxy.cfg", os.path.join(DIR, f"haproxy{tag}.cfg"), PORT=port,
                      TLS_PORT=tls_port, BACKEND_PORT=BACKEND_PORT,
                      PEM=f"{CERTS}/ec-combined.pem", MAXCONN=IDLE_CONNS + 500,
                      BACKEND_EXTRA=extra.get("BACKEND_EXTRA", ""))
        p = start("haproxy", wrap + ["haproxy", "-db", "-f", conf], cpu)
    elif name == "proxyd":
        conf = render("proxyd.yaml", os.path.join(DIR, f"proxyd-t{threads}-{runtime}{tag}.yaml"), PORT=port,
                      TLS_PORT=tls_port, BACKEND_PORT=BACKEND_PORT, CERT=f"{CERTS}/ec.pem",
                      KEY=f"{CERTS}/ec.key", THREADS=threads, RUNTIME=runtime,
                      EXTRA=extra.get("EXTRA", ""))
        p = start("proxyd", wrap + [binary or PROXYD, "-c", conf], cpu)
    else:
        raise ValueError(name)
    f = Front(name, p, port, tls_port)
    ok = wait_http(f"http://127.0.0.1:{port}/", wait) and wait_http(
        f"https://localhost:{tls_port}/", wait, cacert=f"{CERTS}/ca.pem")
    if not ok:
        stop(p)
        with open(os.path.join(DIR, f"{name}.log"), errors="replace") as lf:
            tail = lf.read()[-800:]
        raise RuntimeError(f"{name} did not answer on ports {port}/{tls_port}: {tail}")
    return f


# ------------------------------------------------------------------ runs

RESULTS = {}  # (variant, front) -> dict
NOTES = []
BUSY_ROWS = []  # runs whose every attempt had other processes above BUSY_LIMIT


def measure(variant, front, tool, url, extra=(), env=None, label=None):
    """Warm-up, then the measured run with the front end's CPU and RSS. A run during which
    other processes took more than BUSY_LIMIT % of a core is run again (after waiting for
    quiet again), up to BUSY_RETRIES times; the attempt with the least other load is kept."""
    key = (variant, label or front.name)
    best = None
    # Direct runs leave the front core idle, and other processes on the machine fill it
    # without slowing anything measured: no re-runs for them.
    retries = BUSY_RETRIES if front.name != "direct" else 0
    for attempt in range(1 + retries):
        r = measure_once(variant, front, tool, url, extra, env, key, attempt)
        if best is None or r["other"] < best["other"]:
            best = r
        if r["other"] <= BUSY_LIMIT:
            break
    RESULTS[key] = best
    if best["errors"]:
        kinds = [f"socket errors: {best['socket']}" if "socket" in best else "",
                 f"{best['non2xx']} non-2xx" if best.get("non2xx") else ""]
        kinds = "; ".join(k for k in kinds if k)
        NOTES.append(f"{key[0]}/{key[1]}: {best['errors']} errors" + (f" ({kinds})" if kinds else ""))
    if best["other"] > BUSY_LIMIT and front.name != "direct":
        BUSY_ROWS.append(f"{key[0]}/{key[1]}")
    return best


def measure_once(variant, front, tool, url, extra, env, key, attempt):
    other_before = wait_quiet()
    pids = front.pids()
    if tool == "wrk":
        argv = ["wrk", "-t1", f"-c{CONNS}", *extra, url]
        run_bounded(f"{variant}-{key[1]}-warm", argv[:3] + [f"-d{WARMUP}s"] + argv[3:],
                    WARMUP + 30, env)
        argv = ["wrk", "-t1", f"-c{CONNS}", f"-d{DURATION}s", "--latency", *extra, url]
    else:
        base = ["h2load", "-c", str(H2_CLIENTS), "-m", str(H2_STREAMS), *extra, url]
        run_bounded(f"{variant}-{key[1]}-warm", base[:1] + ["-D", str(WARMUP)] + base[1:],
                    WARMUP + 30, env)
        argv = base[:1] + ["-D", str(DURATION)] + base[1:]
    pids = front.pids() or pids
    f0 = ticks(pids)
    b0 = ticks(BACKEND_PIDS)
    c0 = child_ticks()
    s0 = sys_busy()
    w0 = time.monotonic()
    text = run_bounded(f"{variant}-{key[1]}", argv, DURATION + 60, env)
    wall = time.monotonic() - w0
    pids_end = front.pids()
    f1 = ticks(pids_end)
    rss = rss_kib(pids_end)
    b1 = ticks(BACKEND_PIDS)
    c1 = child_ticks()
    s1 = sys_busy()
    r = parse_wrk(text) if tool == "wrk" else parse_h2load(text)
    secs = r["secs"] or wall
    fd = f1 - f0
    r["cpu_s"] = fd / HZ
    r["busy"] = 100 * fd / HZ / secs if pids_end else None
    r["other"] = max(0.0, 100 * ((s1 - s0) - fd - (b1 - b0) - (c1 - c0)) / HZ / wall)
    r["other_before"] = other_before
    r["rss"] = rss / 1024 if pids_end else None
    units = r["requests"]
    if variant == "handshake":
        hs = r.get("full", 0) + r.get("resumed", 0)
        units = hs
        r["rps"] = hs / secs if secs else 0
    r["cpu_us"] = (fd / HZ * 1e6 / units) if (pids_end and units) else None
    r["attempt"] = attempt + 1
    extra_txt = ""
    if variant == "handshake":
        extra_txt = f", handshakes {r.get('full', 0)} full + {r.get('resumed', 0)} resumed"
    if tool == "h2load":
        extra_txt = f", {r['proto']}, mean {fmt(r.get('mean'), 2)} ms"
    again = f" (attempt {attempt + 1})" if attempt else ""
    say(f"  {key[1]:<12}{again} {r['requests']} requests in {secs:.1f} s = {r['rps']:.0f}/s, "
        f"p50 {fmt(r['p50'], 2)} ms, p99 {fmt(r['p99'], 2)} ms, errors {r['errors']}{extra_txt}; "
        f"CPU {fmt(r['cpu_us'], 1)} us/req, core {fmt(r['busy'], 0)}% busy, RSS {fmt(r['rss'], 1)} MiB, "
        f"other processes {r['other']:.0f}% of a core")
    if units == 0:
        say("    (no requests; tool output:)")
        say("    " + text.strip().replace("\n", "\n    "))
    if tool == "h2load" and r["proto"] != "h2":
        NOTES.append(f"{key[1]} did not speak h2 in the h2 variant ({r['proto']})")
    return r


class Direct:
    name = "direct"
    port = None
    tls_port = None

    def pids(self):
        return []


def variant_target(variant, f):
    """(tool, url, extra wrk args, env) for a variant against front end f."""
    host_http = f"http://127.0.0.1:{f.port}"
    host_https = f"https://localhost:{f.tls_port}"
    shim_env = dict(os.environ, LD_PRELOAD=SHIM)
    return {
        "keepalive": ("wrk", host_http + "/", [], None),
        "close": ("wrk", host_http + "/", ["-H", "Connection: close"], None),
        "1k": ("wrk", host_http + "/1k", [], None),
        "1m": ("wrk", host_http + "/1m", [], None),
        "post16k": ("wrk", host_http + "/post", ["-s", os.path.join(HERE, "post.lua")], None),
        "https": ("wrk", host_https + "/", [], None),
        "handshake": ("wrk", host_https + "/", ["-H", "Connection: close"], shim_env),
        "h2": ("h2load", host_https + "/", [], None),
        "static1k": ("wrk", host_http + "/static/1k", [], None),
        "static1m": ("wrk", host_http + "/static/1m", [], None),
        "gzip": ("wrk", host_http + "/data.json", ["-H", "Accept-Encoding: gzip"], None),
        "br": ("wrk", host_http + "/data.json", ["-H", "Accept-Encoding: br"], None),
        "zstd": ("wrk", host_http + "/data.json", ["-H", "Accept-Encoding: zstd"], None),
    }[variant]


DESCRIBE = {
    "keepalive": f"GET / (13-byte body), {CONNS} keepalive connections",
    "close": f"GET /, `Connection: close` (a new client connection per request), {CONNS} connections",
    "1k": "GET /1k, 1 KiB body, keepalive",
    "1m": "GET /1m, 1 MiB body, keepalive",
    "post16k": "POST /post with a 16 KiB body, keepalive",
    "https": "GET / over HTTPS (TLS 1.3, ECDSA P-256), keepalive",
    "handshake": "GET / over HTTPS with `Connection: close`: a full TLS 1.3 handshake per request "
                 "(req/s = handshakes/s, CPU per handshake)",
    "h2": f"HTTP/2 over TLS (ALPN h2): h2load -c {H2_CLIENTS} -m {H2_STREAMS}",
    "static1k": "GET /static/1k, a 1 KiB file the front end serves from the disk, keepalive",
    "static1m": "GET /static/1m, a 1 MiB file the front end serves from the disk, keepalive",
    "gzip": "GET /data.json (~100 KiB of JSON from the backend) with `Accept-Encoding: gzip`, "
            "compressed by the front end, keepalive",
    "br": "the same with `Accept-Encoding: br`",
    "zstd": "the same with `Accept-Encoding: zstd`",
}


def run_variant(variant):
    say(f"== {t()} {variant}: {DESCRIBE[variant]}")
    for name in FRONTS:
        if name == "direct":
            if variant in ("https", "handshake", "h2"):
                continue  # the backend speaks plain HTTP/1.1 only
            f = Direct()
            f.port = BACKEND_PORT
            tool, url, extra, env = variant_target(variant, f)
            measure(variant, f, tool, url, extra, env)
            continue
        try:
            f = start_front(name)
        except RuntimeError as e:
            say(f"  {name}: {e}")
            NOTES.append(f"{variant}: {name} did not start")
            continue
        try:
            tool, url, extra, env = variant_target(variant, f)
            measure(variant, f, tool, url, extra, env)
            if f.proc.poll() is not None:
                NOTES.append(f"{variant}: {name} exited during the run")
        finally:
            stop(f.proc)


# ------------------------------------------------------------------ static files, compression

CHECK_FAILED = []  # front ends that sent the wrong thing: named loudly, exit status 1
JSON_BODY = b""


def make_json(size=100 * 1024):
    """A JSON document just under `size` bytes as an API would send it (compact, as Flask's
    jsonify): records with the same keys and varied numbers, names, words, ids. Seeded, so
    every run compresses the same bytes."""
    rng = random.Random(17)
    first = ["Ada", "Alan", "Grace", "Edsger", "Barbara", "Donald", "Ken", "Dennis", "Margaret", "Linus",
             "Frances", "John", "Radia", "Leslie", "Tony", "Niklaus", "Sophie", "Guido", "Hedy", "Claude"]
    last = ["Lovelace", "Turing", "Hopper", "Dijkstra", "Liskov", "Knuth", "Thompson", "Ritchie",
            "Hamilton", "Torvalds", "Allen", "McCarthy", "Perlman", "Lamport", "Hoare", "Wirth", "Wilson",
            "van Rossum", "Lamarr", "Shannon"]
    words = ("the of and to in is was for on are with as by at from this that be it or an have not "
             "order shipped pending refund invoice customer account priority standard express warehouse "
             "north south east west blue green red large small returned delivered tracking note gift").split()
    cities = ["Lisbon", "Oslo", "Austin", "Kyoto", "Nairobi", "Lima", "Perth", "Ghent", "Quebec", "Pune"]
    records, n, last_text = [], 0, "[]"
    while True:
        f, la = rng.choice(first), rng.choice(last)
        n += 1
        records.append({
            "id": 100000 + n * rng.randint(1, 7),
            "uuid": f"{rng.getrandbits(128):032x}",
            "name": f"{f} {la}",
            "email": f"{f.lower()}.{la.lower().replace(' ', '')}{rng.randint(1, 999)}@example.com",
            "created_at": f"2026-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}T"
                          f"{rng.randint(0, 23):02d}:{rng.randint(0, 59):02d}:{rng.randint(0, 59):02d}Z",
            "status": rng.choice(["pending", "shipped", "delivered", "returned"]),
            "total": round(rng.lognormvariate(3.5, 1.2), 2),
            "items": rng.randint(1, 12),
            "score": round(rng.random(), 4),
            "active": rng.random() < 0.8,
            "tags": rng.sample(words, rng.randint(0, 4)),
            "address": {"street": f"{rng.randint(1, 9999)} {rng.choice(last)} St", "city": rng.choice(cities),
                        "zip": f"{rng.randint(0, 99999):05d}"},
            "note": " ".join(rng.choice(words) for _ in range(rng.randint(3, 18))),
        })
        text = json.dumps(records, separators=(",", ":"))
        if len(text) > size:
            return last_text.encode()
        last_text = text


def decode(coding, body):
    """The body decoded from `coding` (gzip in Python, br and zstd by their command-line tools)."""
    if coding == "gzip":
        return gzip.decompress(body)
    tool = {"br": ["brotli", "-d", "-c"], "zstd": ["zstd", "-d", "-c", "-q"]}[coding]
    if shutil.which(tool[0]) is None:
        raise RuntimeError(f"{tool[0]} is not installed (apt-get install {tool[0]})")
    p = subprocess.run(tool, input=body, capture_output=True, timeout=30)
    if p.returncode != 0:
        raise RuntimeError(f"{tool[0]} -d failed: {p.stderr.decode(errors='replace').strip()}")
    return p.stdout


def check_response(variant, f, label):
    """One GET with curl before the load. Static variants: 200 and the file byte for byte.
    Compression variants: 200, Content-Encoding of the variant's coding, and a body that
    decodes to the JSON document. Returns the body's size as sent, or None after saying
    loudly what was wrong (the run is then not measured)."""
    tool, url, extra, _env = variant_target(variant, f)
    head = os.path.join(DIR, f"check-{variant}-{label}.head")
    body = os.path.join(DIR, f"check-{variant}-{label}.body")
    argv = ["curl", "-s", "--max-time", "10", "-D", head, "-o", body]
    for i in range(0, len(extra), 2):
        argv += [extra[i], extra[i + 1]]
    problem = None
    if subprocess.run(argv + [url], stdin=subprocess.DEVNULL).returncode != 0:
        problem = "curl failed"
    else:
        with open(head, errors="replace") as fh:
            lines = fh.read().splitlines()
        status = lines[0].split()[1] if lines and len(lines[0].split()) > 1 else "?"
        headers = {}
        for line in lines[1:]:
            if ":" in line:
                k, v = line.split(":", 1)
                headers[k.strip().lower()] = v.strip()
        with open(body, "rb") as fh:
            got = fh.read()
        enc = headers.get("content-encoding", "")
        if status != "200":
            problem = f"status {status}"
        elif variant in STATIC:
            with open(os.path.join(DIR, "www", STATIC[variant]), "rb") as fh:
                want = fh.read()
            if enc:
                problem = f"Content-Encoding {enc} on a static file"
            elif got != want:
                problem = f"{len(got)} bytes, not the file's {len(want)}" if len(got) != len(want) else \
                    "bytes differ from the file's"
        else:
            coding = COMPRESS[variant]
            if enc != coding:
                problem = f"Content-Encoding {enc or '(none)'}, not {coding} ({len(got)} bytes)"
            else:
                try:
                    if decode(coding, got) != JSON_BODY:
                        problem = f"the {coding} body does not decode to the JSON document"
                except Exception as e:  # noqa: BLE001 - any decoding failure is the finding
                    problem = f"the body does not decode as {coding}: {e}"
    if problem:
        msg = f"{variant}/{label}: CHECK FAILED before the load ({url}): {problem}; not measured"
        say(f"  !!! {msg}")
        CHECK_FAILED.append(msg)
        NOTES.append(f"**{msg}**")
        return None
    return len(got)


def front_extra(variant, name, level):
    """The templates' per-variant placeholders for front end `name` (nginx.conf's MODULES,
    HTTP_EXTRA and SERVER_EXTRA, haproxy.cfg's BACKEND_EXTRA, proxyd.yaml's EXTRA)."""
    if variant in STATIC:
        if name == "nginx":
            # As nginx users serve files; open_file_cache stays off (nginx's default), so
            # nginx opens and stats the file per request, as proxyd does.
            return {"SERVER_EXTRA": "\n".join([
                "    location /static/ {",
                f"      alias {DIR}/www/;",
                "      sendfile on;",
                "      tcp_nopush on;",
                "    }"])}
        return {"EXTRA": "\n".join([
            "routes:",
            "  - path: /static/",
            "    static:",
            f'      root: "{DIR}/www"',
            "  - path: /",
            "    upstream: app"])}
    coding = COMPRESS[variant]
    if name == "nginx" and coding == "gzip":
        return {"HTTP_EXTRA": f"  gzip on;\n  gzip_comp_level {level};\n  gzip_types application/json;"}
    if name == "nginx" and coding == "br":
        return {"MODULES": f"load_module {BROTLI_MODULE};",
                "HTTP_EXTRA": f"  brotli on;\n  brotli_comp_level {level};\n  brotli_types application/json;"}
    if name == "haproxy":
        return {"BACKEND_EXTRA": "  compression algo gzip\n  compression type application/json"}
    return {"EXTRA": f"compression:\n  algorithms: [{coding}]"}


def feature_runs(variant):
    """(front end, label, level) of a static or compression variant, in the order they run.
    Static: nginx and proxyd (HAProxy serves no files; direct would be the backend serving
    them from the load core). gzip: nginx at each of GZIP_LEVELS, HAProxy (libslz, which has
    no levels), proxyd. br: nginx at each of BR_LEVELS (where Debian's brotli module is
    installed), proxyd. zstd: proxyd only (no such module for Debian's nginx)."""
    runs = []
    levels = proxyd_levels()
    for name in FRONTS:
        if name == "direct":
            continue
        if variant in STATIC:
            if name != "haproxy":
                runs.append((name, name, None))
        elif variant == "gzip":
            if name == "nginx":
                runs += [(name, f"nginx-{lv}", lv) for lv in GZIP_LEVELS]
            elif name == "haproxy":
                runs.append((name, name, "slz"))
            else:
                runs.append((name, name, levels["gzip"]))
        elif variant == "br":
            if name == "nginx":
                if os.path.exists(BROTLI_MODULE):
                    runs += [(name, f"nginx-{lv}", lv) for lv in BR_LEVELS]
                else:
                    NOTES.append(f"br: no nginx rows: {BROTLI_MODULE} is not installed "
                                 "(apt-get install libnginx-mod-http-brotli-filter)")
            elif name == "proxyd":
                runs.append((name, name, levels["br"]))
        elif name == "proxyd":
            runs.append((name, name, levels["zstd"]))
    return runs


def run_feature(variant):
    say(f"== {t()} {variant}: {DESCRIBE[variant]}")
    for name, label, level in feature_runs(variant):
        try:
            f = start_front(name, extra=front_extra(variant, name, level), tag=f"-{variant}-{label}")
        except RuntimeError as e:
            say(f"  {label}: {e}")
            NOTES.append(f"{variant}: {label} did not start")
            continue
        try:
            size = check_response(variant, f, label)
            if size is None:
                continue
            tool, url, extra, env = variant_target(variant, f)
            r = measure(variant, f, tool, url, extra, env, label=label)
            r["front"], r["level"], r["bytes"] = name, level, size
            if f.proc.poll() is not None:
                NOTES.append(f"{variant}: {label} exited during the run")
        finally:
            stop(f.proc)


SHAPES = ("per_thread", "multi_thread")
# Rounds of the two threads-2 shapes, in ABBA order (per, multi, multi, per, ...): a drift in
# the machine's load hits both alike, and the spread between a shape's runs shows the noise.
SCALING_ROUNDS = int(os.environ.get("SCALING_ROUNDS", "2"))


def scaling_runs():
    """(label, threads, runtime) of the scaling variant, in the order they run."""
    runs = [("proxyd-t1", 1, "per_thread")]
    for r in range(SCALING_ROUNDS):
        for shape in (SHAPES if r % 2 == 0 else SHAPES[::-1]):
            runs.append((f"proxyd-t2-{shape}-{r + 1}", 2, shape))
    return runs


def run_scaling():
    say(f"== {t()} scaling: proxyd keepalive (as the keepalive variant) with threads 1, and threads 2 "
        f"in both runtime shapes ({SCALING_ROUNDS} runs each, ABBA), NOT pinned (wrk and the backend "
        f"stay on core {LOAD_CPU})")
    for label, threads, runtime in scaling_runs():
        f = start_front("proxyd", threads=threads, pinned=False, runtime=runtime)
        try:
            measure("scaling", f, "wrk", f"http://127.0.0.1:{f.port}/", label=label)
        finally:
            stop(f.proc)


# The tracing variant (issue 20): proxyd with `tracing:` off, sampling 1 % and 100 % of its
# requests, exporting to a sink on the load core, beside nginx on the same keepalive load.
# PROXYD_BASELINE (a proxyd built without tracing, e.g. from the commit before it) adds its
# row, "proxyd-before": what tracing off costs against no tracing code at all. The proxyd runs
# go twice, the second round in reverse order (ABBA), and with valgrind each also gets its
# instructions per request counted (deterministic where CPU time is noisy).
BASELINE = os.environ.get("PROXYD_BASELINE")
TRACING_MODES = ([("proxyd-before", None)] if BASELINE else []) + [
    ("proxyd-off", None), ("proxyd-1%", 0.01), ("proxyd-100%", 1.0)]
TRACING_RUNS = [("nginx", None)] + TRACING_MODES
TRACING_INSTR = {}


def run_tracing():
    say(f"== {t()} tracing: keepalive load; proxyd without tracing:, and exporting spans of 1 % and "
        f"100 % of its requests over OTLP/HTTP to a sink (benches/compare/otlp_sink.py, core {LOAD_CPU})")
    (sink_port,) = free_ports(1)
    sink = start("otlp-sink", [sys.executable, os.path.join(HERE, "otlp_sink.py"), str(sink_port)], LOAD_CPU,
                 stdout=subprocess.PIPE)
    def extra_of(sample):
        if sample is None:
            return {}
        return {"EXTRA": f"tracing: {{ otlp: \"http://127.0.0.1:{sink_port}\", sample: {sample} }}"}

    def binary_of(label):
        return BASELINE if label == "proxyd-before" else None

    try:
        f = start_front("nginx", tag="-tracing-nginx")
        try:
            measure("tracing", f, "wrk", f"http://127.0.0.1:{f.port}/", label="nginx")
        finally:
            stop(f.proc)
        for rnd, modes in enumerate((TRACING_MODES, TRACING_MODES[::-1])):
            for label, sample in modes:
                f = start_front("proxyd", extra=extra_of(sample), binary=binary_of(label),
                                tag=f"-tracing-{label.replace('%', 'pct')}")
                try:
                    r = measure("tracing", f, "wrk", f"http://127.0.0.1:{f.port}/", label=f"{label}#{rnd + 1}")
                finally:
                    stop(f.proc)
        for label, _ in TRACING_MODES:
            runs = [RESULTS.get(("tracing", f"{label}#{k}")) for k in (1, 2)]
            runs = [x for x in runs if x]
            if runs:
                RESULTS[("tracing", label)] = {
                    k: (sum(x[k] for x in runs if x[k] is not None) / len(runs)
                        if all(x[k] is not None for x in runs) else None)
                    for k in ("rps", "p50", "p99", "cpu_us", "rss")
                } | {"errors": sum(x["errors"] for x in runs)}
        if shutil.which("valgrind") and shutil.which("callgrind_control"):
            for label, sample in TRACING_MODES:
                n = count_instructions("proxyd", label, extra_of(sample), binary=binary_of(label))
                if n is not None:
                    TRACING_INSTR[label] = n
        else:
            NOTES.append("tracing: valgrind is not installed: no instruction counts")
    finally:
        sink.send_signal(signal.SIGTERM)
        try:
            out, _ = sink.communicate(timeout=5)
            TRACING_SINK.append((out or b"").decode(errors="replace").strip())
        except subprocess.TimeoutExpired:
            stop(sink)


TRACING_SINK = []

IDLE = {}


def run_idle():
    say(f"== {t()} idle: {IDLE_CONNS} client connections, each after one keep-alive GET, held open")
    for name in FRONTS:
        if name == "direct":
            continue
        f = start_front(name)
        try:
            run_bounded(f"idle-{name}-warm", ["wrk", "-t1", f"-c{CONNS}", "-d1s",
                                              f"http://127.0.0.1:{f.port}/"], 30)
            time.sleep(0.5)
            pids = f.pids()
            base = rss_kib(pids)
            base_socks = sockets(pids)
            out = open(os.path.join(DIR, f"idle-{name}.out"), "w+b")
            client = start(f"idle-{name}-client",
                           [sys.executable, os.path.join(HERE, "idle_conns.py"), "127.0.0.1",
                            str(f.port), str(IDLE_CONNS), "120"], LOAD_CPU, stdout=out)
            deadline = time.monotonic() + 100
            line = ""
            while time.monotonic() < deadline and client.poll() is None:
                out.seek(0)
                line = out.read().decode(errors="replace")
                if "READY" in line:
                    break
                time.sleep(0.2)
            time.sleep(1.0)
            pids = f.pids()
            held = rss_kib(pids)
            socks = sockets(pids) - base_socks
            m = re.search(r"READY ok=(\d+) failed=(\d+) secs=([\d.]+)", line)
            ok, failed, secs = (int(m.group(1)), int(m.group(2)), m.group(3)) if m else (0, IDLE_CONNS, "-")
            stop(client)
            per = (held - base) / ok if ok else None
            IDLE[name] = {"base": base / 1024, "held": held / 1024, "per": per, "ok": ok,
                          "failed": failed, "socks": socks}
            say(f"  {name:<8} RSS {base / 1024:.1f} MiB -> {held / 1024:.1f} MiB with {ok} connections "
                f"({failed} failed, opened in {secs} s; {socks} more sockets open in the front end) = "
                f"{fmt(per, 2)} KiB per connection")
        finally:
            stop(f.proc)


INSTR = {}  # front -> instructions per request
INSTR_WARM = env_int("INSTR_WARM", 1000)
INSTR_REQUESTS = env_int("INSTR_REQUESTS", 5000)


def run_instructions():
    """User-space instructions per proxied keep-alive request, counted by callgrind: the one
    figure this shared, noisy machine cannot blur. Each front end runs under valgrind, gets
    INSTR_WARM requests (pools and caches fill), its counters are zeroed, it gets
    INSTR_REQUESTS more (h2load --h1, 16 connections), and the counters are dumped."""
    say(f"== {t()} instructions: callgrind, {INSTR_REQUESTS} keep-alive GETs after {INSTR_WARM}")
    if shutil.which("valgrind") is None or shutil.which("callgrind_control") is None:
        NOTES.append("instructions: valgrind is not installed (apt-get install valgrind)")
        return
    for name in FRONTS:
        if name == "direct":
            continue
        n = count_instructions(name, name, {})
        if n is not None:
            INSTR[name] = n


def count_instructions(name, label, extra, binary=None):
    """Instructions per request of front end `name` (run with `extra`, proxyd's `binary`)
    under callgrind, as run_instructions describes; None (and a note) when it failed."""
    # valgrind reads % in a file name as a format (%p: the pid).
    safe = label.replace("%", "pct")
    out = os.path.join(DIR, f"callgrind-{safe}.out")
    wrap = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}"]
    f = start_front(name, wrap=wrap, wait=120, extra=extra, tag=f"-instr-{safe}", binary=binary)
    try:
        url = f"http://127.0.0.1:{f.port}/"
        h2load = ["h2load", "--h1", "-c16", "-m1"]
        run_bounded(f"instr-{label}-warm", h2load + [f"-n{INSTR_WARM}", url], 300)
        pid = str(f.proc.pid)
        run_bounded(f"instr-{label}-zero", ["callgrind_control", "-z", pid], 60)
        load = run_bounded(f"instr-{label}", h2load + [f"-n{INSTR_REQUESTS}", url], 600)
        before = set(os.listdir(DIR))
        run_bounded(f"instr-{label}-dump", ["callgrind_control", "-d", pid], 60)
        dumps = sorted(x for x in set(os.listdir(DIR)) - before if x.startswith(f"callgrind-{safe}.out"))
        total = None
        for d in dumps:
            with open(os.path.join(DIR, d), errors="replace") as fh:
                for line in fh:
                    if line.startswith(("summary:", "totals:")):
                        total = int(line.split()[1])
        r = parse_h2load(load)
        done = r["requests"] if r["errors"] == 0 else None
        if total is None or not done:
            NOTES.append(f"instructions: no callgrind figure for {label} (dumps {dumps}, done {done})")
            return None
        say(f"  {label:<12} {total:,} instructions / {done} requests = {total / done:,.0f} per request")
        return total / done
    finally:
        stop(f.proc, grace=30)


# ------------------------------------------------------------------ report

def fmt(v, d=1):
    if v is None:
        return "-"
    if isinstance(v, (int, float)) and abs(v) >= 1000 and d <= 1:
        return f"{v:,.0f}"
    return f"{v:.{d}f}"


def ratio(a, b, d=2):
    if a is None or b is None or not b:
        return None
    return a / b


def report(header):
    lines = list(header)
    add = lines.append
    order = [v for v in ALL_VARIANTS if v in VARIANTS and v not in ("idle", "scaling", "instructions", "tracing")
             and v not in COMPRESS]
    if order:
        add("")
        add("| variant | front end | req/s | p50 ms | p99 ms | errors | CPU µs/req | RSS MiB | core busy % | other % |")
        add("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
        for v in order:
            for name in ALL_FRONTS:
                r = RESULTS.get((v, name))
                if not r:
                    continue
                p50 = fmt(r["p50"], 2) if r["p50"] is not None else (
                    f"(mean {fmt(r.get('mean'), 2)})" if r.get("mean") is not None else "-")
                add(f"| {v} | {name} | {fmt(r['rps'], 0)} | {p50} | {fmt(r['p99'], 2)} | {r['errors']} | "
                    f"{fmt(r['cpu_us'], 1)} | {fmt(r['rss'], 1)} | {fmt(r['busy'], 0)} | {r['other']:.0f} |")
        add("")
        add("Ratios proxyd/nginx and proxyd/HAProxy (same run). req/s: above 1 is better for proxyd; "
            "p99, CPU and RSS: below 1 is better.")
        add("")
        add("| variant | req/s ÷ nginx | req/s ÷ HAProxy | p99 ÷ nginx | p99 ÷ HAProxy | CPU ÷ nginx | CPU ÷ HAProxy | RSS ÷ nginx | RSS ÷ HAProxy |")
        add("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
        for v in order:
            p, n, h = (RESULTS.get((v, x)) for x in ("proxyd", "nginx", "haproxy"))
            if not p:
                continue
            cells = []
            for k in ("rps", "p99", "cpu_us", "rss"):
                for other in (n, h):
                    cells.append(fmt(ratio(p[k], other[k]) if other else None, 2))
            add(f"| {v} | " + " | ".join(cells) + " |")
    compress = [v for v in ALL_VARIANTS if v in VARIANTS and v in COMPRESS]
    if any(k[0] in compress for k in RESULTS):
        add("")
        add(f"On-the-fly compression of a {len(JSON_BODY):,}-byte JSON document (application/json) proxied "
            "from the backend: level (proxyd's is fixed), requests/s, CPU µs per request of the front end "
            "alone (not the backend's), the body as sent (bytes, and % of the original), and proxyd's CPU "
            "per request and body size ÷ this row's, same variant.")
        add("")
        add("| variant | front end | level | req/s | p50 ms | p99 ms | errors | CPU µs/req | bytes sent | % of original | "
            "proxyd CPU ÷ this | proxyd bytes ÷ this | core busy % | other % |")
        add("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
        for v in compress:
            rows = [(k[1], r) for k, r in RESULTS.items() if k[0] == v]
            p = RESULTS.get((v, "proxyd"))
            for label, r in rows:
                add(f"| {v} | {r['front']} | {r['level']} | {fmt(r['rps'], 0)} | {fmt(r['p50'], 2)} | "
                    f"{fmt(r['p99'], 2)} | {r['errors']} | {fmt(r['cpu_us'], 1)} | {r['bytes']:,} | "
                    f"{100 * r['bytes'] / len(JSON_BODY):.1f} | "
                    f"{fmt(ratio(p['cpu_us'], r['cpu_us']) if p else None, 2)} | "
                    f"{fmt(ratio(p['bytes'], r['bytes']) if p else None, 2)} | "
                    f"{fmt(r['busy'], 0)} | {r['other']:.0f} |")
    if INSTR:
        add("")
        add(f"User-space instructions per proxied keep-alive GET (callgrind; {INSTR_REQUESTS} requests "
            f"after {INSTR_WARM}, h2load --h1 -c16; the kernel's share is not counted).")
        add("")
        add("| front end | instructions/request | proxyd ÷ this |")
        add("| --- | ---: | ---: |")
        for name in ALL_FRONTS:
            if name in INSTR:
                add(f"| {name} | {INSTR[name]:,.0f} | {fmt(ratio(INSTR.get('proxyd'), INSTR[name]), 2)} |")
    if "scaling" in VARIANTS:
        add("")
        add(f"Scaling: proxyd, keepalive load as above, not pinned (wrk and the backend pinned to core {LOAD_CPU}; "
            f"{NCPU} cores in all, so a second proxyd thread competes with them).")
        add("")
        add("| proxyd threads, runtime, run | req/s | p50 ms | p99 ms | errors | CPU µs/req | RSS MiB | proxyd CPU % of a core |")
        add("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
        for label, th, shape in scaling_runs():
            r = RESULTS.get(("scaling", label))
            if r:
                name = "1" if th == 1 else f"2, {shape}, run {label.rsplit('-', 1)[1]}"
                add(f"| {name} | {fmt(r['rps'], 0)} | {fmt(r['p50'], 2)} | {fmt(r['p99'], 2)} | {r['errors']} | "
                    f"{fmt(r['cpu_us'], 1)} | {fmt(r['rss'], 1)} | {fmt(r['busy'], 0)} |")

        def mean(shape, field):
            vals = [RESULTS[("scaling", lb)][field] for lb, th, sh in scaling_runs()
                    if th == 2 and sh == shape and ("scaling", lb) in RESULTS
                    and RESULTS[("scaling", lb)][field] is not None]
            return (sum(vals) / len(vals), min(vals), max(vals)) if vals else None

        one = RESULTS.get(("scaling", "proxyd-t1"))
        add("")
        for shape in SHAPES:
            m, c = mean(shape, "rps"), mean(shape, "cpu_us")
            if m:
                vs1 = f"; ÷ threads 1: {m[0] / one['rps']:.2f}" if one and one["rps"] else ""
                cpu = f"; CPU µs/req mean {c[0]:.1f}" if c else ""
                add(f"- threads 2, {shape}: req/s mean {m[0]:.0f} (runs {m[1]:.0f} to {m[2]:.0f}){cpu}{vs1}")
        p, q = mean("per_thread", "rps"), mean("multi_thread", "rps")
        if p and q and q[0]:
            add(f"- per_thread ÷ multi_thread: req/s {p[0] / q[0]:.2f}")
    if "tracing" in VARIANTS:
        add("")
        add("Tracing: keepalive load as above; proxyd without `tracing:`, then sampling 1 % and 100 % of "
            "its requests (spans exported over OTLP/HTTP to a sink that answers 200); each proxyd row "
            "the mean of 2 runs (ABBA); instructions per request by callgrind (h2load --h1 -c16, "
            f"{INSTR_REQUESTS} requests after {INSTR_WARM}), exporter included.")
        add("")
        add("| front end | req/s | p50 ms | p99 ms | errors | CPU µs/req | ÷ proxyd off | ÷ nginx | RSS MiB | instructions/req | ÷ off |")
        add("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
        off = RESULTS.get(("tracing", "proxyd-off"))
        ng = RESULTS.get(("tracing", "nginx"))
        for label, _ in TRACING_RUNS:
            r = RESULTS.get(("tracing", label))
            if r:
                ins = TRACING_INSTR.get(label)
                add(f"| {label} | {fmt(r['rps'], 0)} | {fmt(r['p50'], 2)} | {fmt(r['p99'], 2)} | {r['errors']} | "
                    f"{fmt(r['cpu_us'], 1)} | {fmt(ratio(r['cpu_us'], off and off['cpu_us']), 2)} | "
                    f"{fmt(ratio(r['cpu_us'], ng and ng['cpu_us']), 2)} | {fmt(r['rss'], 1)} | "
                    f"{fmt(ins, 1)} | {fmt(ratio(ins, TRACING_INSTR.get('proxyd-off')), 3)} |")
        for s in TRACING_SINK:
            add(f"- the sink received: {s}")
    if IDLE:
        add("")
        add(f"Idle connections: {IDLE_CONNS} client connections, each after one keep-alive GET, held open; "
            "RSS of the front end before (after a 1 s warm-up with 64 connections) and with them open.")
        add("")
        add("| front end | RSS before MiB | RSS with the connections MiB | KiB per connection | connections answered | failed |")
        add("| --- | ---: | ---: | ---: | ---: | ---: |")
        for name in ALL_FRONTS:
            r = IDLE.get(name)
            if r:
                add(f"| {name} | {r['base']:.1f} | {r['held']:.1f} | {fmt(r['per'], 2)} | {r['ok']} | {r['failed']} |")
    targets = target_lines()
    if targets:
        add("")
        add("Issue 16's and 17's targets, from this run:")
        add("")
        add("| target | figure | met |")
        add("| --- | --- | --- |")
        lines.extend(targets)
    if BUSY_ROWS:
        NOTES.append(f"other processes took more than {BUSY_LIMIT} % of a core during "
                     f"{len(BUSY_ROWS)} front-end run(s) ({', '.join(BUSY_ROWS)}). Where the front end's "
                     "core was well under 100 % busy they may only have filled idle CPU, but where they "
                     "competed, req/s and latency say more about the machine than the front end; "
                     "CPU µs/req holds better")
    if NOTES:
        add("")
        for n in NOTES:
            add(f"- note: {n}")
    return lines


def target_lines():
    """Issue 16's targets, each against the better (lower CPU, higher req/s) of nginx and
    HAProxy in this run."""
    out = []

    def get(v, f, k):
        r = RESULTS.get((v, f))
        return r.get(k) if r else None

    def row(name, figure, ok):
        out.append(f"| {name} | {figure} | {'yes' if ok else '**no**'} |")

    def best(v, k, lower):
        have = [o for o in ("nginx", "haproxy") if get(v, o, k) is not None]
        if not have:
            return None
        pick = min if lower else max
        return pick(have, key=lambda o: get(v, o, k))

    label = {"nginx": "nginx", "haproxy": "HAProxy"}
    for v, bound in (("keepalive", 0.75), ("close", 0.9), ("https", 0.9)):
        b = best(v, "cpu_us", True)
        r = ratio(get(v, "proxyd", "cpu_us"), get(v, b, "cpu_us")) if b else None
        if r is not None:
            row(f"{v}: CPU/req ≤ {bound} × the better ({label[b]})", f"{r:.2f} ×", r <= bound)
    b = best("keepalive", "rps", False)
    if b and get("keepalive", "proxyd", "rps") is not None:
        r = ratio(get("keepalive", "proxyd", "rps"), get("keepalive", b, "rps"))
        row(f"keepalive: req/s ≥ 1.1 × the better ({label[b]})", f"{r:.2f} ×", r >= 1.1)
        p99, theirs = get("keepalive", "proxyd", "p99"), get("keepalive", b, "p99")
        if p99 is not None and theirs is not None:
            row(f"keepalive: p99 ≤ {label[b]}'s", f"{p99:.2f} ms vs {theirs:.2f} ms", p99 <= theirs)
    for v in STATIC:
        c, n = get(v, "proxyd", "cpu_us"), get(v, "nginx", "cpu_us")
        if c is not None and n is not None:
            row(f"{v}: CPU/req ≤ nginx's (sendfile on)", f"{c:.1f} vs {n:.1f} µs ({c / n:.2f} ×)", c <= n)
        c, n = get(v, "proxyd", "rps"), get(v, "nginx", "rps")
        if c and n:
            row(f"{v}: req/s ≥ nginx's", f"{c:,.0f} vs {n:,.0f} ({c / n:.2f} ×)", c >= n)
    rss = get("keepalive", "proxyd", "rss")
    if rss is not None:
        row(f"RSS with {CONNS} busy connections ≤ 20 MiB", f"{rss:.1f} MiB", rss <= 20)
    r = IDLE.get("proxyd")
    if r and r["per"] is not None:
        row(f"RSS with {IDLE_CONNS} idle connections ≤ 2 KiB per connection",
            f"{r['per']:.2f} KiB", r["per"] <= 2 and r["failed"] == 0)
    return out


def version(argv, pattern=r"(\S+)"):
    try:
        p = subprocess.run(argv, capture_output=True, text=True, timeout=10)
        text = p.stdout + p.stderr
        m = re.search(pattern, text)
        return m.group(1) if m else "?"
    except OSError:
        return "?"


def main():
    global DIR
    DIR = tempfile.mkdtemp(prefix="proxyd-compare.")
    os.chmod(DIR, 0o755)  # nginx workers run as nobody and read the backend's files
    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    try:
        return run()
    finally:
        cleanup()


def run():
    global CERTS, SHIM, BACKEND_PORT, BACKEND_PIDS
    date = datetime.datetime.now(datetime.timezone.utc)
    commit = subprocess.run(["git", "-C", ROOT, "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True).stdout.strip()
    dirty = subprocess.run(["git", "-C", ROOT, "diff", "--quiet", "HEAD", "--", "src", "Cargo.toml",
                            "Cargo.lock"]).returncode != 0
    versions = ", ".join([
        "nginx " + version(["nginx", "-v"], r"nginx/(\S+)"),
        "HAProxy " + version(["haproxy", "-v"], r"version (\S+)"),
        "wrk " + version(["wrk", "-v"], r"wrk (\S+)"),
        "h2load " + version(["h2load", "--version"], r"nghttp2/(\S+)"),
        version(["openssl", "version"], r"(OpenSSL \S+)"),
    ])
    if "PROXYD" in os.environ:
        what = f"proxyd {os.environ.get('PROXYD_COMMIT') or os.environ['PROXYD']}"
    else:
        what = f"proxyd {commit}{' + uncommitted changes' if dirty else ''}"
    header = [
        f"proxyd compare bench, {date:%Y-%m-%d %H:%M} UTC, {what}",
        f"machine: {NCPU} cores, Linux {os.uname().release}; {versions}",
        f"pinning: {'front end on core %d, wrk/h2load and the backend (nginx, 1 worker) on core %d' % (FRONT_CPU, LOAD_CPU) if PINNED else 'NOT pinned (1 core)'}",
        f"load: wrk -t1 -c{CONNS} -d{DURATION}s --latency after a {WARMUP} s warm-up (h2: h2load -c{H2_CLIENTS} -m{H2_STREAMS} -D{DURATION} after -D{WARMUP}); "
        f"front ends: nginx worker_processes 1 + upstream keepalive, HAProxy nbthread 1 + http-reuse always, proxyd threads: 1",
        "CPU µs/req = the front end's utime+stime (/proc/PID/stat, all its processes and threads) over the run ÷ requests; "
        f"RSS = VmRSS summed at the end of the run; other % = CPU of processes that are none of front end, backend, load generator ({1000 // HZ} ms ticks).",
    ]
    if any(v in STATIC for v in VARIANTS):
        header.append("static files: nginx `location /static/ { alias ...; sendfile on; tcp_nopush on; }` "
                      "(open_file_cache off: nginx's default), proxyd `routes[].static` (its defaults); "
                      "HAProxy serves no files, direct is not run")
    if any(v in COMPRESS for v in VARIANTS):
        lv = proxyd_levels()
        header.append(f"compression: nginx `gzip on; gzip_comp_level N; gzip_types application/json;` "
                      f"(N = {' '.join(map(str, GZIP_LEVELS))}) and Debian's brotli filter module "
                      f"(`brotli_comp_level N`, N = {' '.join(map(str, BR_LEVELS))}); HAProxy "
                      f"`compression algo gzip` (libslz: no levels); proxyd `compression: {{algorithms: [X]}}` "
                      f"(fixed levels: gzip {lv['gzip']}, brotli {lv['br']}, zstd {lv['zstd']}); wrk sends "
                      "`Accept-Encoding` naming the variant's coding only; direct is not run")
    say("\n".join(header))
    say(f"variants: {' '.join(VARIANTS)}; front ends: {' '.join(FRONTS)}; work dir {DIR}")

    CERTS = make_certs()
    SHIM = os.path.join(DIR, "shim.so")
    if "handshake" in VARIANTS:
        subprocess.run(["cc", "-shared", "-fPIC", "-O2", "-o", SHIM, os.path.join(HERE, "shim.c"), "-ldl"],
                       check=True)
    www = os.path.join(DIR, "www")
    os.makedirs(www)
    with open(os.path.join(www, "1k"), "wb") as f:
        f.write(b"x" * 1024)
    with open(os.path.join(www, "1m"), "wb") as f:
        f.write(os.urandom(1 << 20))
    global JSON_BODY
    JSON_BODY = make_json()
    with open(os.path.join(www, "data.json"), "wb") as f:
        f.write(JSON_BODY)
    for p in (www, os.path.join(www, "1k"), os.path.join(www, "1m"), os.path.join(www, "data.json")):
        os.chmod(p, 0o755 if os.path.isdir(p) else 0o644)

    (BACKEND_PORT,) = free_ports(1)
    bd = os.path.join(DIR, "backend")
    os.makedirs(bd)
    conf = render("backend-nginx.conf", os.path.join(bd, "nginx.conf"), DIR=DIR, PORT=BACKEND_PORT,
                  TEMP_PATHS=nginx_temp_paths(bd))
    backend = start("backend", ["nginx", "-p", bd + "/", "-c", conf, "-e", f"{bd}/error.log"], LOAD_CPU)
    if not wait_http(f"http://127.0.0.1:{BACKEND_PORT}/", 15):
        sys.exit("compare: the backend nginx did not start: " + open(f"{bd}/error.log").read()[-500:])
    BACKEND_PIDS = tree(backend.pid)

    for v in VARIANTS:
        if v == "idle":
            run_idle()
        elif v == "instructions":
            run_instructions()
        elif v == "scaling":
            run_scaling()
        elif v == "tracing":
            run_tracing()
        elif v in STATIC or v in COMPRESS:
            run_feature(v)
        else:
            run_variant(v)

    header.append(f"command: {os.environ.get('COMPARE_COMMAND', 'benches/compare.sh')}; "
                  f"bench time {time.monotonic() - START:.0f} s")
    lines = report(header)
    text = "\n".join(lines) + "\n"
    say("")
    say(text)
    outdir = os.path.join(ROOT, "target", "bench")
    os.makedirs(outdir, exist_ok=True)
    out = os.path.join(outdir, f"compare-{date:%Y-%m-%dT%H%M}.md")
    with open(out, "w") as f:
        f.write(text)
    say(f"written to {os.path.relpath(out, ROOT)}")
    if CHECK_FAILED:
        say("")
        for m in CHECK_FAILED:
            say(f"!!! {m}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
