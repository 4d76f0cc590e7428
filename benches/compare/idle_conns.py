#!/usr/bin/env python3
"""Opens N client connections to HOST:PORT, sends one keep-alive GET on each and reads its
response, then holds them all open and idle.

    idle_conns.py HOST PORT N HOLD_SECONDS

Prints "READY ok=<connections that got a 2xx> failed=<the others> secs=<time to open>" once
every connection is answered (or failed), then sleeps HOLD_SECONDS (or until killed) and
exits, closing them. Used by compare.py for the memory-per-idle-connection figure.
"""
import asyncio
import resource
import sys
import time


async def one(host, port, sem, held):
    async with sem:
        try:
            r, w = await asyncio.wait_for(asyncio.open_connection(host, port), 10)
            w.write(f"GET / HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
            await w.drain()
            head = await asyncio.wait_for(r.readuntil(b"\r\n\r\n"), 10)
            status = int(head.split(b" ", 2)[1])
            length = 0
            for line in head.split(b"\r\n")[1:]:
                k, _, v = line.partition(b":")
                if k.strip().lower() == b"content-length":
                    length = int(v.strip())
            if length:
                await asyncio.wait_for(r.readexactly(length), 10)
            held.append((r, w))
            return 200 <= status < 300
        except (OSError, asyncio.TimeoutError, asyncio.IncompleteReadError, ValueError, IndexError):
            return False


async def main():
    host, port, n, hold = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    held = []
    sem = asyncio.Semaphore(256)
    t0 = time.monotonic()
    results = await asyncio.gather(*(one(host, port, sem, held) for _ in range(n)))
    ok = sum(results)
    print(f"READY ok={ok} failed={n - ok} secs={time.monotonic() - t0:.1f}", flush=True)
    await asyncio.sleep(hold)


asyncio.run(main())
