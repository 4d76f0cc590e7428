#!/usr/bin/env python3
"""benches/adaptive.sh's step-load generator and sampler (standard library only).

Open loop: sends GET PATH to 127.0.0.1:PORT at a fixed rate per phase, whatever the latency
(a slow server does not slow the load down, as it would wrk's), phases back to back. Each
request takes an idle keep-alive connection or opens a new one; a reused connection that
fails before any response byte is retried once on a fresh one. A request is counted in the
phase it was sent in. Meanwhile it reads ADMIN's /status every second: the upstream's worker
count (workers in the rotation) and the workers' total RSS.

Usage: adaptive_load.py PORT ADMIN_PORT PATH PHASES TIMEOUT SETTLE
  PHASES   name:rate:seconds,...  e.g. low:24:20,peak:120:20,low:24:20
  TIMEOUT  seconds a request may take before it counts as a client time-out
  SETTLE   p99 "settled" leaves out each phase's first SETTLE seconds

After the load it keeps sampling until the worker count is back where it started (at most
REST_WAIT seconds, environment, default 60) and reports the resting RSS.

Prints lines that adaptive.sh parses:
  PHASE name=.. rate=.. sent=.. ok=.. rps=.. p50_ms=.. p99_ms=.. p99_settled_ms=.. errors=..
        statuses=200:n,503:n timeouts=.. other=.. workers_min=.. workers_max=..
  SAMPLE t=.. phase=.. workers=.. rss_mib=..
  SECOND t=.. p99_ms=..   (p99 of the 200s among the requests sent in that second; "-": none)
  REST start_workers=.. start_rss_mib=.. end_workers=.. end_rss_mib=.. back_after_s=..
  PEAK workers=.. rss_mib=..
"""
import asyncio
import json
import os
import sys
import time


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
        elif name == "connection":
            close = "close" in value
    if chunked:
        body = b""
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
            body += (await reader.readexactly(size + 2))[:size]
            if size == 0:
                break
    elif length is not None:
        body = await reader.readexactly(length)
    else:
        body = await reader.read()
        close = True
    return status, close, body


def percentile(values, p):
    if not values:
        return 0.0
    values = sorted(values)
    return values[min(len(values) - 1, int(len(values) * p / 100))] * 1000


async def status(admin):
    """The first upstream's (workers in rotation, total worker RSS bytes), or None."""
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", admin), 2)
        writer.write(b"GET /status HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n")
        await writer.drain()
        _, _, body = await asyncio.wait_for(read_response(reader), 5)
        writer.close()
        up = json.loads(body)["upstreams"][0]
        workers = up.get("workers") or []
        serving = [w for w in workers if w["state"] != "draining"]
        return len(serving), sum(w.get("rss_bytes") or 0 for w in workers)
    except (OSError, asyncio.TimeoutError, ValueError, KeyError, IndexError):
        return None


async def main():
    port, admin, path = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
    phases = []
    for spec in sys.argv[4].split(","):
        name, rate, seconds = spec.split(":")
        phases.append((name, float(rate), float(seconds)))
    timeout, settle = float(sys.argv[5]), float(sys.argv[6])
    rest_wait = float(os.environ.get("REST_WAIT", "60"))

    start = await status(admin)
    if start is None:
        sys.exit("adaptive_load.py: no /status from the admin")
    results = {name: {"lat": [], "settled": [], "statuses": {}, "timeouts": 0, "other": 0,
                      "sent": 0, "workers": []} for name, _, _ in phases}
    idle = []
    request = f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n".encode()
    current = {"phase": phases[0][0]}
    samples = []

    async def exchange(conn):
        reader, writer = conn
        writer.write(request)
        await writer.drain()
        return await read_response(reader)

    by_second = {}  # second of the run a request was sent in -> latencies of its 200s

    async def one(phase, settled):
        r = results[phase]
        began = time.monotonic()
        second = int(began - t0)
        holder = []

        async def attempt():
            while idle:
                holder[:] = [idle.pop()]
                try:
                    return await exchange(holder[0])
                except (OSError, asyncio.IncompleteReadError, ValueError):
                    holder.pop()[1].close()
            holder[:] = [await asyncio.open_connection("127.0.0.1", port)]
            return await exchange(holder[0])

        try:
            code, close, _ = await asyncio.wait_for(attempt(), timeout)
        except asyncio.TimeoutError:
            r["timeouts"] += 1
            close = True
        except (OSError, asyncio.IncompleteReadError, ValueError, IndexError):
            r["other"] += 1
            close = True
        else:
            r["statuses"][code] = r["statuses"].get(code, 0) + 1
            if code == 200:
                elapsed = time.monotonic() - began
                r["lat"].append(elapsed)
                by_second.setdefault(second, []).append(elapsed)
                if settled:
                    r["settled"].append(elapsed)
        if holder:
            if close:
                holder[0][1].close()
            else:
                idle.append(holder[0])

    t0 = time.monotonic()

    async def sampler(stop):
        while not stop.is_set():
            got = await status(admin)
            if got is not None:
                t = time.monotonic() - t0
                samples.append((t, current["phase"], got[0], got[1]))
                if current["phase"] in results:
                    results[current["phase"]]["workers"].append(got[0])
                print(f"SAMPLE t={t:.0f} phase={current['phase']} workers={got[0]} "
                      f"rss_mib={got[1] / 2**20:.1f}", flush=True)
            try:
                await asyncio.wait_for(stop.wait(), 1.0)
            except asyncio.TimeoutError:
                pass

    stop = asyncio.Event()
    sampling = asyncio.create_task(sampler(stop))
    tasks = []
    phase_start = t0
    for name, rate, seconds in phases:
        current["phase"] = name
        n = int(rate * seconds)
        for i in range(n):
            at = phase_start + i / rate
            delay = at - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one(name, at - phase_start >= settle)))
            results[name]["sent"] += 1
        phase_start += seconds
        delay = phase_start - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
    current["phase"] = "after"
    await asyncio.gather(*tasks)
    # Back at rest: wait for the pool to return to its starting size.
    rest_began = time.monotonic()
    while True:
        got = await status(admin)
        if got is not None and got[0] <= start[0]:
            break
        if time.monotonic() - rest_began > rest_wait:
            break
        await asyncio.sleep(0.5)
    back_after = time.monotonic() - (t0 + sum(s for _, _, s in phases))
    stop.set()
    await sampling
    end = await status(admin) or (0, 0)
    for _, writer in idle:
        writer.close()

    for name, rate, seconds in phases:
        r = results[name]
        ok = r["statuses"].get(200, 0)
        errors = r["sent"] - ok
        statuses = ",".join(f"{k}:{v}" for k, v in sorted(r["statuses"].items())) or "none"
        workers = r["workers"] or [0]
        print(
            f"PHASE name={name} rate={rate:g} sent={r['sent']} ok={ok} rps={ok / seconds:.1f} "
            f"p50_ms={percentile(r['lat'], 50):.1f} p99_ms={percentile(r['lat'], 99):.1f} "
            f"p99_settled_ms={percentile(r['settled'], 99):.1f} errors={errors} "
            f"statuses={statuses} timeouts={r['timeouts']} other={r['other']} "
            f"workers_min={min(workers)} workers_max={max(workers)}",
            flush=True,
        )
    for second in range(int(sum(s for _, _, s in phases))):
        got = by_second.get(second)
        print(f"SECOND t={second} p99_ms={percentile(got, 99):.0f}" if got else
              f"SECOND t={second} p99_ms=-")
    peak = max(samples, key=lambda s: s[3]) if samples else (0, "", 0, 0)
    print(f"PEAK workers={max((s[2] for s in samples), default=0)} rss_mib={peak[3] / 2**20:.1f}")
    print(
        f"REST start_workers={start[0]} start_rss_mib={start[1] / 2**20:.1f} "
        f"end_workers={end[0]} end_rss_mib={end[1] / 2**20:.1f} back_after_s={back_after:.0f}",
        flush=True,
    )


if __name__ == "__main__":
    asyncio.run(main())
