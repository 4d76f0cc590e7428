//! A small DNS responder on loopback UDP for the discovery tests: it answers A, AAAA and SRV
//! from a zone the test changes while proxyd runs (NXDOMAIN for a name it does not hold, an
//! empty answer for a type the name lacks), or answers SERVFAIL, or nothing at all (a
//! resolver that is down). It records every query with the time it came in. Messages are
//! encoded by hickory's proto crate (proxyd's resolver's own, so no second DNS codec).

use std::collections::HashMap;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hickory_resolver::proto::op::{Message, MessageType, OpCode, ResponseCode};
use hickory_resolver::proto::rr::rdata::{A, AAAA, SRV};
use hickory_resolver::proto::rr::{Name, RData, Record, RecordType};
use tokio::net::UdpSocket;

/// How the responder answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// From the zone.
    Answer,
    /// SERVFAIL to everything.
    ServFail,
    /// No answer at all (the resolver times out).
    Silent,
}

/// What one name holds.
#[derive(Debug, Clone, Default)]
pub struct Entry {
    pub a: Vec<Ipv4Addr>,
    pub aaaa: Vec<Ipv6Addr>,
    /// (priority, weight, port, target)
    pub srv: Vec<(u16, u16, u16, String)>,
    pub ttl: u32,
}

struct Zone {
    names: HashMap<String, Entry>,
    mode: Mode,
    /// (when, name, type) of every query received.
    log: Vec<(Instant, String, RecordType)>,
}

/// The responder; stops when dropped.
pub struct Dns {
    pub addr: SocketAddr,
    zone: Arc<Mutex<Zone>>,
    task: tokio::task::JoinHandle<()>,
}

/// A name as the zone keys it: lower case, without the final dot.
fn key(name: &str) -> String {
    name.trim_end_matches('.').to_ascii_lowercase()
}

impl Dns {
    pub async fn start() -> Dns {
        let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let addr = socket.local_addr().unwrap();
        let zone = Arc::new(Mutex::new(Zone {
            names: HashMap::new(),
            mode: Mode::Answer,
            log: Vec::new(),
        }));
        let z = zone.clone();
        let task = tokio::spawn(async move {
            let mut buf = vec![0u8; 4096];
            loop {
                let Ok((n, from)) = socket.recv_from(&mut buf).await else {
                    return;
                };
                let Ok(query) = Message::from_vec(&buf[..n]) else {
                    continue;
                };
                let reply = answer(&z, &query);
                if let Some(bytes) = reply.and_then(|m| m.to_vec().ok()) {
                    let _ = socket.send_to(&bytes, from).await;
                }
            }
        });
        Dns { addr, zone, task }
    }

    fn zone(&self) -> std::sync::MutexGuard<'_, Zone> {
        self.zone.lock().unwrap()
    }

    /// `name` has these IPv4 addresses (and nothing else), with `ttl`.
    pub fn set_a(&self, name: &str, ips: &[Ipv4Addr], ttl: u32) {
        self.set(
            name,
            Entry {
                a: ips.to_vec(),
                ttl,
                ..Entry::default()
            },
        );
    }

    pub fn set(&self, name: &str, entry: Entry) {
        self.zone().names.insert(key(name), entry);
    }

    /// `name` no longer exists: NXDOMAIN.
    pub fn remove(&self, name: &str) {
        self.zone().names.remove(&key(name));
    }

    pub fn set_mode(&self, mode: Mode) {
        self.zone().mode = mode;
    }

    /// When each query for `name` of `rtype` came in, oldest first.
    pub fn queries(&self, name: &str, rtype: RecordType) -> Vec<Instant> {
        let name = key(name);
        self.zone()
            .log
            .iter()
            .filter(|(_, n, t)| *n == name && *t == rtype)
            .map(|(at, _, _)| *at)
            .collect()
    }

    /// Polls until `name` was asked for `rtype` at least `n` times (panics after `limit`).
    pub async fn wait_queries(&self, name: &str, rtype: RecordType, n: usize, limit: Duration) {
        let start = Instant::now();
        while self.queries(name, rtype).len() < n {
            assert!(
                start.elapsed() < limit,
                "{name} {rtype}: {} queries after {limit:?}, expected {n}",
                self.queries(name, rtype).len()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

impl Drop for Dns {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn answer(zone: &Mutex<Zone>, query: &Message) -> Option<Message> {
    let q = query.queries().first()?.clone();
    let name = key(&q.name().to_utf8());
    let mut z = zone.lock().unwrap();
    z.log.push((Instant::now(), name.clone(), q.query_type()));
    let mut reply = Message::new();
    reply
        .set_id(query.id())
        .set_message_type(MessageType::Response)
        .set_op_code(OpCode::Query)
        .set_recursion_desired(query.recursion_desired())
        .set_recursion_available(true)
        .set_authoritative(true)
        .add_query(q.clone());
    match z.mode {
        Mode::Silent => return None,
        Mode::ServFail => {
            reply.set_response_code(ResponseCode::ServFail);
            return Some(reply);
        }
        Mode::Answer => {}
    }
    let Some(entry) = z.names.get(&name) else {
        reply.set_response_code(ResponseCode::NXDomain);
        return Some(reply);
    };
    let owner = q.name().clone();
    let rdata: Vec<RData> = match q.query_type() {
        RecordType::A => entry.a.iter().map(|ip| RData::A(A(*ip))).collect(),
        RecordType::AAAA => entry.aaaa.iter().map(|ip| RData::AAAA(AAAA(*ip))).collect(),
        RecordType::SRV => entry
            .srv
            .iter()
            .filter_map(|(p, w, port, target)| {
                let target = Name::from_ascii(format!("{}.", key(target))).ok()?;
                Some(RData::SRV(SRV::new(*p, *w, *port, target)))
            })
            .collect(),
        _ => Vec::new(),
    };
    for r in rdata {
        reply.add_answer(Record::from_rdata(owner.clone(), entry.ttl, r));
    }
    Some(reply)
}
