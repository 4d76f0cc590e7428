//! Servers from DNS: a `servers:` host name, or an upstream's `srv:` name, looked up at start
//! and again when its answer's TTL runs out (within `discovery.min_refresh` and
//! `max_refresh`). Every address is a backend; a new one joins the upstream (fresh: slow
//! start), a vanished one leaves it at once (no new request, not even a retry; in-flight
//! requests finish on it, its idle connections close).
//!
//! One task per name, holding only a `Weak` to its upstream: it ends when the upstream goes
//! (a reload replaced it). What an answer means:
//!
//! - addresses: they are the name's backends now;
//! - NXDOMAIN or no records: the name has no backends (Envoy's STRICT_DNS; the upstream may
//!   have none left, and its requests wait in the queue for the name to come back);
//! - a resolver failure (time-out, SERVFAIL, REFUSED, no server reachable): the last good
//!   addresses stay; the lookup is retried from `min_refresh`, doubling up to `max_refresh`.
//!
//! A name that does not resolve yet is the same: no backends, a warning, retried.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use hickory_resolver::config::{
    NameServerConfig, NameServerConfigGroup, ResolveHosts, ResolverConfig, ResolverOpts,
};
use hickory_resolver::name_server::TokioConnectionProvider;
use hickory_resolver::proto::op::ResponseCode;
use hickory_resolver::proto::rr::{RData, RecordType};
use hickory_resolver::proto::xfer::Protocol;
use hickory_resolver::proto::ProtoErrorKind;
use hickory_resolver::{ResolveError, TokioResolver};
use tokio::sync::watch;

use super::backend::{Backend, BackendState};
use super::stats::Stats;
use super::Upstream;
use crate::config::{self, addr::parse_nameserver, BackendAddr, Family, NamedServer, SrvName};

/// Where an upstream's servers come from besides fixed addresses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// A `servers:` entry with a host name, and its weight.
    Host(NamedServer, u32),
    /// The upstream's `srv:` name.
    Srv(SrvName),
}

impl Target {
    /// The name as logs and /status show it: `dns app.internal` or `srv _http._tcp.app`.
    pub fn describe(&self) -> String {
        match self {
            Target::Host(n, _) => format!("dns {}", n.host),
            Target::Srv(s) => format!("srv {}", s.name),
        }
    }

    /// The server as written, `host:port`, the Host of its health checks (an SRV target's
    /// own name is not kept: the address stands in).
    fn written(&self) -> Option<String> {
        match self {
            Target::Host(n, _) => Some(format!("{}:{}", n.host, n.port)),
            Target::Srv(_) => None,
        }
    }

    fn name(&self) -> &str {
        match self {
            Target::Host(n, _) => &n.host,
            Target::Srv(s) => &s.name,
        }
    }
}

/// One name of an upstream and what its last lookup found.
pub struct Source {
    pub target: Target,
    /// The name, shared with its backends (`Backend::source`).
    pub name: Arc<str>,
    status: Mutex<SourceStatus>,
}

/// What /status shows of a name.
#[derive(Debug, Clone, Default)]
pub struct SourceStatus {
    /// "pending" (not looked up yet), "ok", "empty" (NXDOMAIN or no records) or "failing"
    /// (the resolver failed; the last good addresses are kept).
    pub state: &'static str,
    /// Why it is empty or failing.
    pub error: Option<String>,
    /// Its backends now.
    pub backends: usize,
}

impl Source {
    pub fn status(&self) -> SourceStatus {
        self.status
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn set_status(&self, s: SourceStatus) {
        *self.status.lock().unwrap_or_else(|p| p.into_inner()) = s;
    }
}

/// An upstream's names, and the signal its tasks end on.
pub struct Names {
    pub sources: Vec<Arc<Source>>,
    started: AtomicBool,
    /// Dropped with the upstream: its tasks stop waiting and end.
    alive: watch::Sender<()>,
}

impl Names {
    pub fn new(targets: Vec<Target>) -> Names {
        Names {
            sources: targets
                .into_iter()
                .map(|target| {
                    Arc::new(Source {
                        name: target.name().into(),
                        target,
                        status: Mutex::new(SourceStatus {
                            state: "pending",
                            ..SourceStatus::default()
                        }),
                    })
                })
                .collect(),
            started: AtomicBool::new(false),
            alive: watch::channel(()).0,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.sources.is_empty()
    }

    /// Their tasks run.
    pub fn started(&self) -> bool {
        self.started.load(Ordering::Acquire)
    }
}

/// A resolver with the refresh bounds of `discovery:`.
pub struct Resolver {
    dns: TokioResolver,
    min_refresh: Duration,
    max_refresh: Duration,
    family: Family,
}

impl Resolver {
    /// From `resolver:` (name servers; else /etc/resolv.conf, whose reading can fail) and
    /// `discovery:`.
    pub fn new(cfg: &config::Config) -> Result<Resolver, String> {
        let (conf, mut opts) = if cfg.resolver.nameservers.is_empty() {
            hickory_resolver::system_conf::read_system_conf().map_err(|e| {
                format!(
                    "cannot read the system's resolver configuration (/etc/resolv.conf): {e}; set resolver.nameservers"
                )
            })?
        } else {
            let mut group = NameServerConfigGroup::new();
            for ns in &cfg.resolver.nameservers {
                let addr = parse_nameserver(&ns.value)?;
                // TCP for answers too large for a datagram.
                group.push(NameServerConfig::new(addr, Protocol::Udp));
                group.push(NameServerConfig::new(addr, Protocol::Tcp));
            }
            (
                ResolverConfig::from_parts(None, vec![], group),
                ResolverOpts::default(),
            )
        };
        if let Some(t) = &cfg.resolver.timeout {
            opts.timeout = t.value.0;
        }
        // Lookups are timed here by their TTL: a cache would answer a `max_refresh` lookup
        // from memory instead of asking again.
        opts.cache_size = 0;
        // /etc/hosts first, as the C library does.
        opts.use_hosts_file = ResolveHosts::Always;
        let dns = TokioResolver::builder_with_config(conf, TokioConnectionProvider::default())
            .with_options(opts)
            .build();
        Ok(Resolver {
            dns,
            min_refresh: cfg.discovery.min_refresh(),
            max_refresh: cfg.discovery.max_refresh(),
            family: cfg.discovery.family,
        })
    }

    fn types(&self) -> &'static [RecordType] {
        match self.family {
            Family::Any => &[RecordType::A, RecordType::AAAA],
            Family::Ipv4 => &[RecordType::A],
            Family::Ipv6 => &[RecordType::AAAA],
        }
    }

    /// One record type of `name`.
    async fn ask(&self, name: &str, rtype: RecordType) -> Answer<RData> {
        match self.dns.lookup(name, rtype).await {
            Ok(lookup) => {
                let mut ttl = u32::MAX;
                let mut found = Vec::new();
                for r in lookup.records() {
                    ttl = ttl.min(r.ttl());
                    if r.record_type() == rtype {
                        found.push(r.data().clone());
                    }
                }
                if found.is_empty() {
                    Answer::Empty("no records".into())
                } else {
                    Answer::Records(found, ttl)
                }
            }
            Err(e) => classify(&e),
        }
    }
}

/// What one query found.
enum Answer<T> {
    Records(Vec<T>, u32),
    /// NXDOMAIN or no records of that type: the name has none.
    Empty(String),
    /// The resolver failed: nothing is known.
    Failed(String),
}

fn classify<T>(e: &ResolveError) -> Answer<T> {
    if let Some(ProtoErrorKind::NoRecordsFound { response_code, .. }) = e.proto().map(|p| p.kind())
    {
        match *response_code {
            ResponseCode::NXDomain => return Answer::Empty("NXDOMAIN".into()),
            ResponseCode::NoError => return Answer::Empty("no records".into()),
            other => return Answer::Failed(format!("{other}")),
        }
    }
    Answer::Failed(e.to_string())
}

/// One lookup of a source: what it found, how long that holds, what went wrong.
#[derive(Default)]
struct Lookup {
    /// The shortest TTL among the records used.
    ttl: Option<u32>,
    /// Some query failed (its last good records were used instead).
    failed: Option<String>,
    /// Some query found nothing.
    empty: Option<String>,
}

impl Lookup {
    fn ttl(&mut self, ttl: u32) {
        self.ttl = Some(self.ttl.map_or(ttl, |t| t.min(ttl)));
    }
}

/// The last good records of each query, used while the resolver fails.
#[derive(Default)]
struct Memory {
    ips: HashMap<(String, RecordType), Vec<IpAddr>>,
    srv: Option<Vec<Srv>>,
}

#[derive(Clone)]
struct Srv {
    priority: u16,
    weight: u16,
    port: u16,
    target: String,
}

impl Resolver {
    /// The addresses of `name` of the families in use.
    async fn ips(&self, name: &str, memory: &mut Memory, found: &mut Lookup) -> Vec<IpAddr> {
        let mut ips = Vec::new();
        for &rtype in self.types() {
            let key = (name.to_string(), rtype);
            match self.ask(name, rtype).await {
                Answer::Records(records, ttl) => {
                    found.ttl(ttl);
                    let list: Vec<IpAddr> = records
                        .iter()
                        .filter_map(|r| match r {
                            RData::A(a) => Some(IpAddr::V4(a.0)),
                            RData::AAAA(a) => Some(IpAddr::V6(a.0)),
                            _ => None,
                        })
                        .collect();
                    ips.extend(&list);
                    memory.ips.insert(key, list);
                }
                Answer::Empty(why) => {
                    memory.ips.remove(&key);
                    found.empty.get_or_insert(format!("{name} {rtype}: {why}"));
                }
                Answer::Failed(e) => {
                    found.failed.get_or_insert(format!("{name} {rtype}: {e}"));
                    ips.extend(memory.ips.get(&key).into_iter().flatten());
                }
            }
        }
        ips
    }

    /// The backends `target` names now: (address, weight).
    async fn resolve(
        &self,
        target: &Target,
        memory: &mut Memory,
        found: &mut Lookup,
    ) -> Vec<(BackendAddr, u32)> {
        let mut out: Vec<(BackendAddr, u32)> = Vec::new();
        fn push(out: &mut Vec<(BackendAddr, u32)>, addr: BackendAddr, weight: u32) {
            if !out.iter().any(|(a, _)| *a == addr) {
                out.push((addr, weight));
            }
        }
        match target {
            Target::Host(named, weight) => {
                for ip in self.ips(&named.host, memory, found).await {
                    push(&mut out, named.at(ip), *weight);
                }
            }
            Target::Srv(srv) => {
                let records = match self.ask(&srv.name, RecordType::SRV).await {
                    Answer::Records(records, ttl) => {
                        found.ttl(ttl);
                        let list: Vec<Srv> = records
                            .iter()
                            .filter_map(|r| match r {
                                RData::SRV(s) => Some(Srv {
                                    priority: s.priority(),
                                    weight: s.weight(),
                                    port: s.port(),
                                    target: s.target().to_utf8(),
                                }),
                                _ => None,
                            })
                            // "." says the service is not available there (RFC 2782).
                            .filter(|s| s.target != ".")
                            .collect();
                        memory.srv = Some(list.clone());
                        list
                    }
                    Answer::Empty(why) => {
                        memory.srv = None;
                        found.empty = Some(format!("{} SRV: {why}", srv.name));
                        Vec::new()
                    }
                    Answer::Failed(e) => {
                        found.failed = Some(format!("{} SRV: {e}", srv.name));
                        memory.srv.clone().unwrap_or_default()
                    }
                };
                // The lowest priority whose targets have addresses; the others are not used.
                let mut priorities: Vec<u16> = records.iter().map(|r| r.priority).collect();
                priorities.sort_unstable();
                priorities.dedup();
                for p in priorities {
                    for r in records.iter().filter(|r| r.priority == p) {
                        let host = r.target.trim_end_matches('.').to_string();
                        let named = NamedServer {
                            host,
                            port: r.port,
                            tls: srv.tls,
                        };
                        // Weight 0 is the smallest share RFC 2782 knows: proxyd's is 1.
                        let weight = u32::from(r.weight.max(1));
                        for ip in self.ips(&r.target, memory, found).await {
                            push(&mut out, named.at(ip), weight);
                        }
                    }
                    if !out.is_empty() {
                        break;
                    }
                }
            }
        }
        out
    }
}

/// Starts looking up `up`'s names (once: a reload that keeps the upstream keeps its tasks).
pub fn start(up: &Arc<Upstream>, resolver: &Arc<Resolver>) {
    if up.names.is_empty() || up.names.started.swap(true, Ordering::AcqRel) {
        return;
    }
    for source in &up.names.sources {
        let task = Task {
            upstream: Arc::downgrade(up),
            source: source.clone(),
            resolver: resolver.clone(),
            alive: up.names.alive.subscribe(),
            current: Vec::new(),
            memory: Memory::default(),
            answered: false,
            failures: 0,
        };
        tokio::spawn(task.run());
    }
}

/// A backend from a name, as the task knows it.
struct Member {
    addr: BackendAddr,
    weight: u32,
    /// The upstream's list holds it; this task only needs it to remove it.
    backend: Weak<Backend>,
}

struct Task {
    upstream: Weak<Upstream>,
    source: Arc<Source>,
    resolver: Arc<Resolver>,
    alive: watch::Receiver<()>,
    current: Vec<Member>,
    memory: Memory,
    /// An answer was applied already: later backends are new (slow start).
    answered: bool,
    /// Lookups in a row that failed or found nothing (the backoff).
    failures: u32,
}

impl Task {
    async fn run(mut self) {
        loop {
            let mut found = Lookup::default();
            let lookup = self
                .resolver
                .resolve(&self.source.target, &mut self.memory, &mut found);
            let wanted = tokio::select! {
                w = lookup => w,
                _ = self.alive.changed() => return,
            };
            let Some(up) = self.upstream.upgrade() else {
                return;
            };
            let next = self.apply(&up, wanted, &found);
            drop(up);
            tokio::select! {
                _ = tokio::time::sleep(next) => {}
                _ = self.alive.changed() => return,
            }
        }
    }

    /// Puts `wanted` in force on `up` and says when to look again.
    fn apply(
        &mut self,
        up: &Upstream,
        wanted: Vec<(BackendAddr, u32)>,
        found: &Lookup,
    ) -> Duration {
        let source = &self.source;
        let what = source.target.describe();
        let name = &up.name;
        let before = source.status();
        let (state, error) = match (&found.failed, &found.empty) {
            (Some(e), _) => ("failing", Some(e.clone())),
            (None, Some(e)) if wanted.is_empty() => ("empty", Some(e.clone())),
            _ => ("ok", None),
        };
        match state {
            "failing" => Stats::add(&up.stats.dns_failed),
            "empty" => Stats::add(&up.stats.dns_empty),
            _ => Stats::add(&up.stats.dns_ok),
        }
        // Said once per change of state, not per retry.
        if state != before.state {
            let e = error.as_deref().unwrap_or_default();
            match state {
                "failing" if wanted.is_empty() => {
                    tracing::warn!("upstream {name}: {what} cannot be looked up yet ({e}): no backend from it; retrying")
                }
                "failing" => tracing::warn!(
                    "upstream {name}: looking up {what} failed ({e}); its last {} addresses stay",
                    wanted.len()
                ),
                "empty" if before.state == "pending" => tracing::warn!(
                    "upstream {name}: {what} does not resolve yet ({e}): no backend from it; retrying"
                ),
                "empty" => tracing::warn!(
                    "upstream {name}: {what} resolves to nothing now ({e}): its backends leave"
                ),
                _ if before.state != "pending" => {
                    tracing::info!("upstream {name}: {what} resolves again")
                }
                _ => {}
            }
        }
        // Joins first: when every address changes, the upstream is never left without one.
        let fresh = self.answered;
        for (addr, weight) in &wanted {
            if self
                .current
                .iter()
                .any(|m| m.addr == *addr && m.weight == *weight)
            {
                continue;
            }
            // Made as every `servers:` backend is: with `health:` it joins once its first
            // check passes.
            let host = source.target.written();
            let b = up.server_backend(
                addr.clone(),
                *weight,
                fresh,
                Some(source.name.clone()),
                host.as_deref(),
            );
            tracing::info!("upstream {name}: {} joined ({what})", b.label);
            up.add(b.clone());
            Stats::add(&up.stats.backends_joined);
            self.current.push(Member {
                addr: addr.clone(),
                weight: *weight,
                backend: Arc::downgrade(&b),
            });
        }
        self.current.retain(|m| {
            let keep = wanted.iter().any(|(a, w)| m.addr == *a && m.weight == *w);
            if !keep {
                if let Some(b) = m.backend.upgrade() {
                    tracing::info!("upstream {name}: {} left ({what})", b.label);
                    leave(up, &b);
                    Stats::add(&up.stats.backends_left);
                }
            }
            keep
        });
        self.answered |= !wanted.is_empty();
        source.set_status(SourceStatus {
            state,
            error,
            backends: self.current.len(),
        });
        let (min, max) = (self.resolver.min_refresh, self.resolver.max_refresh);
        if state == "ok" {
            self.failures = 0;
            let ttl = Duration::from_secs(u64::from(found.ttl.unwrap_or(0)));
            ttl.clamp(min, max)
        } else {
            // A name that failed or is missing is asked for again soon, then less often.
            let backoff = min.saturating_mul(1 << self.failures.min(16));
            self.failures = self.failures.saturating_add(1);
            backoff.min(max)
        }
    }
}

/// Takes `b` out of `up` for good: no new request picks it (it is draining before it leaves
/// the list, so a request that loaded the list a moment ago skips it too), and its idle
/// connections close before it is seen gone; requests in flight on it finish.
fn leave(up: &Upstream, b: &Arc<Backend>) {
    b.set_state(BackendState::Draining);
    b.pool.close();
    up.remove(b);
}
