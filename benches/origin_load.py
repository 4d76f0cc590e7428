#!/usr/bin/env python3
"""benches/origin.sh's open-loop load generator (standard library only).

Sends GET PATH to 127.0.0.1:PORT at a fixed RATE per second for DURATION seconds, whatever the
server's latency (wrk is closed-loop: a slow server slows wrk down, so it cannot offer 3x
capacity). Each request takes an idle keep-alive connection or opens a new one; a reused
connection that fails before any byte of a response is retried once on a fresh connection, as
a browser does. A request not answered within TIMEOUT seconds counts as a client time-out.

Prints one line that origin.sh parses:
  RESULT sent=.. rps_offered=.. answered=.. statuses=200:n,503:n connect=.. read=.. timeout=..
         p50_200_ms=.. p99_200_ms=.. p50_other_ms=.. p99_other_ms=..

Usage: origin_load.py PORT PATH RATE DURATION TIMEOUT
(a PATH with "rid=X" sends rid=X-0, X-1, ...: a unique id per request for the apps' receipt logs)
"""
import asyncio
import sys
import time


class Stats:
    def __init__(self):
        self.sent = 0
        self.statuses = {}
        self.errors = {"connect": 0, "read": 0, "timeout": 0}
        self.lat_ok = []
        self.lat_other = []


async def read_response(reader):
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    length, chunked, close = None, False, lines[0].startswith("HTTP/1.0")
    for line in lines[1:]:
        if ":" not in line:
            continue
        name, value = line.split(":", 1)
        name, value = name.strip().lower(), value.strip().lower()
        if name == "content-length":
            length = int(value)
        elif name == "transfer-encoding" and "chunked" in value:
            chunked = True
        elif name == "connection" and "close" in value:
            close = True
        elif name == "connection" and "keep-alive" in value:
            close = False
    if chunked:
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
            await reader.readexactly(size + 2)
            if size == 0:
                break
    elif length is not None:
        await reader.readexactly(length)
    else:
        await reader.read()
        close = True
    return status, close


def percentile(values, p):
    if not values:
        return 0.0
    values = sorted(values)
    return values[min(len(values) - 1, int(len(values) * p / 100))] * 1000


async def main():
    port, path = int(sys.argv[1]), sys.argv[2]
    rate, duration, timeout = float(sys.argv[3]), float(sys.argv[4]), float(sys.argv[5])
    stats = Stats()
    idle = []

    async def exchange(conn, request):
        reader, writer = conn
        writer.write(request)
        await writer.drain()
        return await read_response(reader)

    class ConnectFailed(Exception):
        pass

    async def one(i):
        # "&rid=..." in PATH gets a unique suffix per request, for the apps' receipt logs
        target = f"{path}-{i}" if "rid=" in path else path
        request = f"GET {target} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n".encode()
        start = time.monotonic()
        holder = []  # the connection in use, so a time-out can close it

        async def attempt():
            while idle:
                holder[:] = [idle.pop()]
                try:
                    return await exchange(holder[0], request)
                except (OSError, asyncio.IncompleteReadError, ValueError):
                    holder.pop()[1].close()  # a stale keep-alive connection: try a fresh one
            try:
                holder[:] = [await asyncio.open_connection("127.0.0.1", port)]
            except OSError as e:
                raise ConnectFailed() from e
            return await exchange(holder[0], request)

        try:
            status, close = await asyncio.wait_for(attempt(), timeout)
        except ConnectFailed:
            stats.errors["connect"] += 1
            return
        except asyncio.TimeoutError:
            stats.errors["timeout"] += 1
            close = True
        except (OSError, asyncio.IncompleteReadError, ValueError, IndexError):
            stats.errors["read"] += 1
            close = True
        else:
            elapsed = time.monotonic() - start
            stats.statuses[status] = stats.statuses.get(status, 0) + 1
            (stats.lat_ok if status == 200 else stats.lat_other).append(elapsed)
        if holder:
            if close:
                holder[0][1].close()
            else:
                idle.append(holder[0])

    tasks = []
    t0 = time.monotonic()
    n = int(rate * duration)
    for i in range(n):
        delay = t0 + i / rate - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(i)))
        stats.sent += 1
    offered = stats.sent / max(time.monotonic() - t0, 1e-9)
    await asyncio.gather(*tasks)
    for _, writer in idle:
        writer.close()
    statuses = ",".join(f"{k}:{v}" for k, v in sorted(stats.statuses.items())) or "none"
    answered = sum(stats.statuses.values())
    e = stats.errors
    print(
        f"RESULT sent={stats.sent} rps_offered={offered:.1f} answered={answered} "
        f"statuses={statuses} connect={e['connect']} read={e['read']} timeout={e['timeout']} "
        f"p50_200_ms={percentile(stats.lat_ok, 50):.1f} p99_200_ms={percentile(stats.lat_ok, 99):.1f} "
        f"p50_other_ms={percentile(stats.lat_other, 50):.1f} "
        f"p99_other_ms={percentile(stats.lat_other, 99):.1f}",
        flush=True,
    )


if __name__ == "__main__":
    asyncio.run(main())
