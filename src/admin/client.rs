//! `proxyd status`: fetches `/status` from a running proxyd's admin listener (a plain
//! HTTP/1.1 request over std's TcpStream: no runtime, no client library) and prints its
//! upstreams, backends and workers as tables, passenger-status style.

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream};
use std::time::Duration;

use serde_json::Value;

use crate::config::{addr::parse_listen, Config};

const TIMEOUT: Duration = Duration::from_secs(5);

/// Where to reach the admin of the proxyd that runs `cfg`, and its token.
pub fn target(cfg: &Config) -> Result<(SocketAddr, Option<String>), String> {
    let admin = cfg
        .admin
        .as_ref()
        .ok_or("the config has no admin: section, so there is no admin API to ask")?;
    let mut addr = parse_listen(&admin.addr.value).map_err(|e| format!("admin.addr: {e}"))?;
    if addr.port() == 0 {
        return Err(format!(
            "admin.addr {addr} has port 0 (a port picked at start): give it a fixed port"
        ));
    }
    // Bound to every address: ask over loopback.
    if addr.ip().is_unspecified() {
        addr.set_ip(match addr.ip() {
            IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::LOCALHOST),
            IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::LOCALHOST),
        });
    }
    Ok((addr, admin.token.as_ref().map(|t| t.value.clone())))
}

/// GET /status: the parsed report, or why it could not be had.
pub fn fetch(addr: SocketAddr, token: Option<&str>) -> Result<Value, String> {
    let (status, body) = exchange(addr, token, "GET", "/status", TIMEOUT)?;
    if status != 200 {
        return Err(format!(
            "{addr} answered {status}: {}",
            String::from_utf8_lossy(&body).trim()
        ));
    }
    serde_json::from_slice(&body)
        .map_err(|e| format!("{addr}/status is not the JSON expected: {e}"))
}

/// POST `path` (with the token, when there is one), waiting up to `patience` for the answer:
/// its body on a 2xx, else an error with the body.
pub fn post(
    addr: SocketAddr,
    token: Option<&str>,
    path: &str,
    patience: Duration,
) -> Result<String, String> {
    let (status, body) = exchange(addr, token, "POST", path, patience)?;
    let body = String::from_utf8_lossy(&body).into_owned();
    if (200..300).contains(&status) {
        Ok(body)
    } else {
        Err(format!("{addr} answered {status}: {}", body.trim()))
    }
}

/// One request on a new connection: the status code and the (de-chunked) body.
fn exchange(
    addr: SocketAddr,
    token: Option<&str>,
    method: &str,
    path: &str,
    patience: Duration,
) -> Result<(u16, Vec<u8>), String> {
    let not_running = |e: std::io::Error| {
        format!("cannot reach the admin API at {addr} ({e}): is proxyd running with this config?")
    };
    let mut stream = TcpStream::connect_timeout(&addr, TIMEOUT).map_err(not_running)?;
    let _ = stream.set_read_timeout(Some(patience));
    let _ = stream.set_write_timeout(Some(TIMEOUT));
    let auth = token.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
    let length = if method == "POST" {
        "Content-Length: 0\r\n"
    } else {
        ""
    };
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\n{auth}{length}Accept: application/json\r\nConnection: close\r\n\r\n"
    );
    stream.write_all(req.as_bytes()).map_err(not_running)?;
    let mut raw = Vec::new();
    stream
        .read_to_end(&mut raw)
        .map_err(|e| format!("reading the answer from {addr}: {e}"))?;
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| format!("{addr} did not answer HTTP"))?;
    let head = String::from_utf8_lossy(&raw[..split]);
    let body = &raw[split + 4..];
    let status = head
        .lines()
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|c| c.parse::<u16>().ok())
        .ok_or_else(|| format!("{addr} did not answer HTTP"))?;
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(body).ok_or_else(|| format!("{addr} sent a malformed chunked body"))?
    } else {
        body.to_vec()
    };
    Ok((status, body))
}

fn dechunk(mut b: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let eol = b.windows(2).position(|w| w == b"\r\n")?;
        let size_text = std::str::from_utf8(&b[..eol]).ok()?;
        let size = usize::from_str_radix(size_text.split(';').next()?.trim(), 16).ok()?;
        b = &b[eol + 2..];
        if size == 0 {
            return Some(out);
        }
        out.extend_from_slice(b.get(..size)?);
        b = b.get(size + 2..)?;
    }
}

/// The report as text: a header, then per upstream its figures, backends and workers.
pub fn render(s: &Value) -> String {
    let mut out = String::new();
    let listeners: Vec<String> = list(&s["listeners"])
        .iter()
        .map(|l| {
            let tls = if l["tls"].as_bool() == Some(true) {
                "tls"
            } else {
                "http"
            };
            format!("{} ({tls})", txt(&l["addr"]))
        })
        .collect();
    out += &format!(
        "proxyd {}   pid {}   up {}{}\nListeners: {}\n",
        txt(&s["version"]),
        txt(&s["pid"]),
        duration(s["uptime_seconds"].as_f64().unwrap_or(0.0)),
        if s["draining"].as_bool() == Some(true) {
            "   DRAINING"
        } else {
            ""
        },
        listeners.join(", ")
    );
    for u in list(&s["upstreams"]) {
        out += &format!("\n----------- Upstream: {} -----------\n", txt(&u["name"]));
        let concurrency = match u["concurrency"].as_u64() {
            Some(n) => format!("{n} per backend"),
            None => "unlimited".into(),
        };
        out += &format!(
            "Balance   : {}   Concurrency: {concurrency}\n",
            txt(&u["balance"])
        );
        out += &format!(
            "Requests  : {}   In flight: {}   Queue: {}   Ready backends: {}/{}\n",
            txt(&u["requests"]),
            txt(&u["in_flight"]),
            txt(&u["queue_depth"]),
            txt(&u["ready_backends"]),
            list(&u["backends"]).len()
        );
        let nonzero = |v: &Value, skip: &str| -> String {
            let parts: Vec<String> = v
                .as_object()
                .map(|m| {
                    m.iter()
                        .filter(|(k, n)| *k != skip && n.as_u64().unwrap_or(0) > 0)
                        .map(|(k, n)| format!("{k}={n}"))
                        .collect()
                })
                .unwrap_or_default();
            if parts.is_empty() {
                "none".into()
            } else {
                parts.join(" ")
            }
        };
        if let Some(rate) = u["queue_drain_rate"].as_f64() {
            out += &format!(
                "Admission : drains {rate:.1}/s, queue drains in ~{:.0} ms{}\n",
                u["queue_expected_wait_ms"].as_f64().unwrap_or(0.0),
                if u["queue_overloaded"].as_bool() == Some(true) {
                    "   OVERLOADED (admitting within queue.target)"
                } else {
                    ""
                }
            );
        }
        out += &format!("Events    : {}\n", nonzero(&u["counters"], "requests"));
        if !u["workers"].is_null() {
            out += &format!("Restarts  : {}\n", nonzero(&u["restarts"], ""));
        }
        let c = &u["worker_count"];
        if c["adaptive"].as_bool() == Some(true) {
            out += &format!(
                "Workers   : {} running, {} wanted (min {}, max {})   scaled up {}, down {}\n",
                txt(&c["current"]),
                txt(&c["desired"]),
                txt(&c["min"]),
                txt(&c["max"]),
                txt(&c["scaled_up"]),
                txt(&c["scaled_down"])
            );
            if let Some(why) = c["held_back"].as_str() {
                out += &format!("Held back : {why}\n");
            }
            if let Some(d) = c["last_decision"].as_object() {
                out += &format!(
                    "Last scale: {} to {}: {}\n",
                    d.get("direction").map_or("-".into(), txt),
                    d.get("workers").map_or("-".into(), txt),
                    d.get("reason").map_or("-".into(), txt)
                );
            }
        }
        if let Some(f) = u["failure"].as_str() {
            out += &format!("FAILING   : {}\n", f.lines().next().unwrap_or_default());
        }
        if let Some(h) = u["health"].as_object() {
            out += &format!(
                "Health    : {} every {} ms, time-out {} ms; in after {} passes, out after {} failures\n",
                h.get("path")
                    .and_then(Value::as_str)
                    .map_or("connect".into(), |p| format!("GET {p}")),
                ms(h.get("interval_ms")),
                ms(h.get("timeout_ms")),
                h.get("healthy").map_or("-".into(), txt),
                h.get("unhealthy").map_or("-".into(), txt),
            );
        }
        for n in list(&u["names"]) {
            out += &format!(
                "NAME      : {} {} ({} backends){}\n",
                txt(&n["name"]),
                txt(&n["state"]),
                txt(&n["backends"]),
                n["error"]
                    .as_str()
                    .map_or(String::new(), |e| format!(": {e}"))
            );
        }
        let checked = u["health"].is_object();
        let backends: Vec<Vec<String>> = list(&u["backends"])
            .iter()
            .map(|b| {
                let mut row = vec![
                    match b["source"].as_str() {
                        Some(name) => format!("{} ({name})", txt(&b["address"])),
                        None => txt(&b["address"]),
                    },
                    txt(&b["state"]),
                    format!(
                        "{}/{}",
                        txt(&b["in_flight"]),
                        b["limit"].as_u64().map_or("-".into(), |n| n.to_string())
                    ),
                    txt(&b["served"]),
                    format!("{:.1}", b["ewma_ms"].as_f64().unwrap_or(0.0)),
                    txt(&b["weight"]),
                    if b["ejected"].as_bool() == Some(true) {
                        "yes".into()
                    } else {
                        "no".into()
                    },
                ];
                if checked {
                    row.push(health(&b["health"]));
                }
                row
            })
            .collect();
        out += "\n";
        let mut head = vec![
            "BACKEND",
            "STATE",
            "IN-FLIGHT",
            "SERVED",
            "EWMA ms",
            "WEIGHT",
            "EJECTED",
        ];
        if checked {
            head.push("HEALTH");
        }
        out += &table(&head, &backends);
        if let Some(workers) = u["workers"].as_array() {
            let rows: Vec<Vec<String>> = workers
                .iter()
                .map(|w| {
                    vec![
                        txt(&w["slot"]),
                        txt(&w["id"]),
                        txt(&w["pid"]),
                        w["port"]
                            .as_u64()
                            .map_or_else(|| txt(&w["address"]), |p| p.to_string()),
                        txt(&w["state"]),
                        duration(w["uptime_seconds"].as_f64().unwrap_or(0.0)),
                        txt(&w["requests"]),
                        w["rss_bytes"].as_u64().map_or("-".into(), bytes),
                    ]
                })
                .collect();
            out += "\n";
            out += &table(
                &[
                    "SLOT", "WORKER", "PID", "PORT", "STATE", "UPTIME", "REQUESTS", "RSS",
                ],
                &rows,
            );
        }
    }
    out
}

/// Milliseconds as written (`500`, `0.5`).
fn ms(v: Option<&Value>) -> String {
    v.and_then(Value::as_f64)
        .map_or("-".into(), |n| format!("{n}"))
}

/// A backend's health checks in a cell: the verdict, the run, why the last one failed.
fn health(h: &Value) -> String {
    if !h.is_object() {
        return "-".into();
    }
    let mut cell = txt(&h["state"]);
    match (h["passes"].as_u64(), h["failures"].as_u64()) {
        (_, Some(n)) if n > 0 => cell += &format!(" ({n} failed)"),
        (Some(n), _) if n > 0 => cell += &format!(" ({n} passed)"),
        _ => {}
    }
    if let Some(why) = h["last"]["detail"].as_str() {
        cell += &format!(": {why}");
    }
    cell
}

fn list(v: &Value) -> &[Value] {
    v.as_array().map_or(&[], Vec::as_slice)
}

/// A value as plain text: strings without quotes, null as "-".
fn txt(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => "-".into(),
        other => other.to_string(),
    }
}

fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for r in rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let line = |cells: Vec<&str>| -> String {
        let padded: Vec<String> = cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        format!("  {}\n", padded.join("  ").trim_end())
    };
    let mut out = line(header.to_vec());
    for r in rows {
        out += &line(r.iter().map(String::as_str).collect());
    }
    if rows.is_empty() {
        out += "  (none)\n";
    }
    out
}

fn duration(secs: f64) -> String {
    let s = secs.max(0.0) as u64;
    match (s / 86400, s / 3600 % 24, s / 60 % 60, s % 60) {
        (0, 0, 0, s) => format!("{s}s"),
        (0, 0, m, s) => format!("{m}m {s}s"),
        (0, h, m, _) => format!("{h}h {m}m"),
        (d, h, _, _) => format!("{d}d {h}h"),
    }
}

fn bytes(n: u64) -> String {
    match n {
        n if n >= 1 << 30 => format!("{:.1} GiB", n as f64 / f64::from(1u32 << 30)),
        n if n >= 1 << 20 => format!("{:.1} MiB", n as f64 / f64::from(1u32 << 20)),
        n => format!("{:.1} KiB", n as f64 / 1024.0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_health_checks() {
        let s: Value = serde_json::from_str(
            r#"{
            "version": "0.1.0", "pid": 7, "uptime_seconds": 5.0, "draining": false,
            "listeners": [],
            "upstreams": [{"name": "api", "balance": "least_outstanding", "concurrency": null,
                "queue_depth": 0, "in_flight": 0, "requests": 0, "ready_backends": 1,
                "counters": {}, "failure": null, "restarts": {}, "workers": null,
                "health": {"path": "/health", "interval_ms": 500.0, "timeout_ms": 200.0,
                    "healthy": 2, "unhealthy": 3},
                "backends": [
                    {"address": "127.0.0.1:4000", "state": "ready", "in_flight": 0,
                     "limit": null, "served": 0, "ewma_ms": 0.0, "weight": 1, "ejected": false,
                     "health": {"state": "healthy", "passes": 4, "failures": 0,
                        "checks": {"pass": 4, "fail": 0, "timeout": 0}, "last": null}},
                    {"address": "127.0.0.1:4001", "state": "unhealthy", "in_flight": 0,
                     "limit": null, "served": 0, "ewma_ms": 0.0, "weight": 1, "ejected": false,
                     "health": {"state": "unhealthy", "passes": 0, "failures": 3,
                        "checks": {"pass": 0, "fail": 3, "timeout": 0},
                        "last": {"result": "fail", "detail": "/health answered 500",
                            "at": 1.0, "duration_ms": 0.4}}}]}]
        }"#,
        )
        .unwrap();
        let out = render(&s);
        for want in [
            "Health    : GET /health every 500 ms, time-out 200 ms; in after 2 passes, out after 3 failures",
            "HEALTH",
            "healthy (4 passed)",
            "unhealthy (3 failed): /health answered 500",
        ] {
            assert!(out.contains(want), "{want:?} missing from\n{out}");
        }
    }

    #[test]
    fn renders_workers_and_dechunks() {
        let s: Value = serde_json::json!({
            "version": "0.1.0", "pid": 7, "uptime_seconds": 3725.0, "draining": false,
            "listeners": [{"addr": "127.0.0.1:8080", "tls": false}],
            "upstreams": [{"name": "app", "balance": "least_outstanding", "concurrency": 1,
                "queue_depth": 0, "in_flight": 0, "requests": 5, "ready_backends": 1,
                "counters": {"requests": 5, "queued": 2}, "failure": null, "restarts": {},
                "backends": [{"address": "127.0.0.1:4000", "state": "ready", "in_flight": 0,
                    "limit": 1, "served": 5, "ewma_ms": 1.25, "weight": 1, "ejected": false}],
                "health": null,
                "workers": [{"slot": 0, "id": 1, "pid": 4242, "port": 4000, "state": "ready",
                    "uptime_seconds": 61.0, "requests": 5, "rss_bytes": 10485760}],
                "worker_count": {"adaptive": true, "min": 1, "max": 4, "current": 1, "desired": 2,
                    "scaled_up": 3, "scaled_down": 2, "held_back": "at max (4 workers)",
                    "last_decision": {"direction": "up", "at": 1.0, "workers": 2,
                        "reason": "requests queued for 2000 ms without a break"}}}]
        });
        let out = render(&s);
        for want in [
            "up 1h 2m",
            "Upstream: app",
            "4242",
            "10.0 MiB",
            "1m 1s",
            "queued=2",
            "1.2",
            "Workers   : 1 running, 2 wanted (min 1, max 4)   scaled up 3, down 2",
            "Held back : at max (4 workers)",
            "Last scale: up to 2: requests queued for 2000 ms without a break",
        ] {
            assert!(out.contains(want), "{want:?} missing from\n{out}");
        }
        assert_eq!(
            dechunk(b"3\r\nabc\r\n2;x=y\r\nde\r\n0\r\n\r\n").unwrap(),
            b"abcde"
        );
        assert!(dechunk(b"zz\r\n").is_none());
    }
}
