//! Addresses as written in the config: listeners and upstream servers.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;

/// Where a backend listens.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum BackendAddr {
    Tcp(SocketAddr),
    Unix(PathBuf),
    /// `https://host:port`: TLS over TCP; `host` (as written, without brackets) is the name
    /// sent as SNI and verified against the certificate.
    Tls {
        addr: SocketAddr,
        host: String,
    },
}

impl BackendAddr {
    /// The backend as a `Host` header value (when the client's Host is not passed on).
    pub fn host_header(&self) -> String {
        match self {
            BackendAddr::Tls { addr, host } if host.contains(':') => {
                format!("[{host}]:{}", addr.port())
            }
            BackendAddr::Tls { addr, host } => format!("{host}:{}", addr.port()),
            other => other.to_string(),
        }
    }
}

impl fmt::Display for BackendAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BackendAddr::Tcp(a) => write!(f, "{a}"),
            BackendAddr::Unix(p) => write!(f, "unix:{}", p.display()),
            BackendAddr::Tls { .. } => write!(f, "https://{}", self.host_header()),
        }
    }
}

/// A `servers:` entry's address: a fixed one, or a host name looked up at start and again as
/// its TTL says (`upstream::discovery`). The config only keeps the name: it is pure data.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ServerAddr {
    Fixed(BackendAddr),
    Name(NamedServer),
}

impl ServerAddr {
    /// Reached over TLS (`https://`).
    pub fn is_tls(&self) -> bool {
        match self {
            ServerAddr::Fixed(a) => matches!(a, BackendAddr::Tls { .. }),
            ServerAddr::Name(n) => n.tls,
        }
    }
}

/// `host:port` or `https://host:port` with a host name: every address it resolves to is a
/// backend on `port`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct NamedServer {
    pub host: String,
    pub port: u16,
    pub tls: bool,
}

impl NamedServer {
    /// The backend at `ip`, one of this name's addresses; TLS keeps the name for SNI and Host.
    pub fn at(&self, ip: IpAddr) -> BackendAddr {
        let addr = SocketAddr::new(ip, self.port);
        if self.tls {
            BackendAddr::Tls {
                addr,
                host: self.host.clone(),
            }
        } else {
            BackendAddr::Tcp(addr)
        }
    }
}

impl fmt::Display for NamedServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let scheme = if self.tls { "https://" } else { "" };
        write!(f, "{scheme}{}:{}", self.host, self.port)
    }
}

/// An upstream's `srv:` name: its targets (with their ports and weights) are backends;
/// `https://` in front reaches them over TLS with the target's name as SNI.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SrvName {
    pub name: String,
    pub tls: bool,
}

/// `_service._proto.name` (or any DNS name), optionally after `http://` or `https://`.
pub fn parse_srv(s: &str) -> Result<SrvName, String> {
    let s = s.trim();
    let (tls, name) = match s.strip_prefix("https://") {
        Some(rest) => (true, rest),
        None => (false, s.strip_prefix("http://").unwrap_or(s)),
    };
    let name = name.trim_end_matches('/');
    host_name(name).map_err(|m| format!("{s:?}: {m}"))?;
    Ok(SrvName {
        name: name.to_string(),
        tls,
    })
}

/// `host:port`, `[v6]:port`, `http://host:port`, `https://host:port`, or `unix:/path`. A host
/// name is kept as a name (nothing is resolved here); `localhost` is 127.0.0.1, as for
/// listeners.
pub fn parse_server(s: &str) -> Result<ServerAddr, String> {
    let s = s.trim();
    if let Some(path) = s.strip_prefix("unix:") {
        if path.is_empty() {
            return Err("unix: needs a socket path, e.g. \"unix:/run/app.sock\"".into());
        }
        return Ok(ServerAddr::Fixed(BackendAddr::Unix(PathBuf::from(path))));
    }
    let (tls, hostport) = match s.strip_prefix("https://") {
        Some(rest) => (true, rest),
        None => (false, s.strip_prefix("http://").unwrap_or(s)),
    };
    let hostport = hostport.trim_end_matches('/');
    if hostport.contains('/') {
        return Err(format!("{s:?}: a server is host:port, without a path"));
    }
    let fixed = |addr: SocketAddr, host: String| {
        ServerAddr::Fixed(if tls {
            BackendAddr::Tls { addr, host }
        } else {
            BackendAddr::Tcp(addr)
        })
    };
    if let Ok(a) = hostport.parse::<SocketAddr>() {
        return Ok(fixed(a, a.ip().to_string()));
    }
    let (host, port) = split_port(hostport)?;
    if host.trim_end_matches('.').eq_ignore_ascii_case("localhost") {
        let addr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port);
        return Ok(fixed(addr, "localhost".to_string()));
    }
    host_name(host).map_err(|m| format!("{s:?}: {m}"))?;
    Ok(ServerAddr::Name(NamedServer {
        host: host.to_string(),
        port,
        tls,
    }))
}

/// A DNS name as a resolver takes it: labels of letters, digits, `-` and `_` (SRV's
/// `_http._tcp`), 63 bytes each, 253 in all, a final dot allowed; not all digits at the end
/// (a mistyped IP address).
fn host_name(name: &str) -> Result<(), String> {
    let bare = name.strip_suffix('.').unwrap_or(name);
    let bad = || format!("{name:?} is not an IP address or a host name");
    if bare.is_empty() || bare.len() > 253 {
        return Err(bad());
    }
    for label in bare.split('.') {
        let ok = !label.is_empty()
            && label.len() <= 63
            && !label.starts_with('-')
            && !label.ends_with('-')
            && label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if !ok {
            return Err(bad());
        }
    }
    if bare
        .rsplit('.')
        .next()
        .is_some_and(|l| l.bytes().all(|b| b.is_ascii_digit()))
    {
        return Err(bad());
    }
    Ok(())
}

/// A `servers:` entry: an address, optionally followed by `weight=N` (nginx's form).
pub fn parse_server_entry(s: &str) -> Result<(ServerAddr, u32), String> {
    let mut parts = s.split_whitespace();
    let addr = parse_server(parts.next().unwrap_or(""))?;
    let mut weight = 1;
    for opt in parts {
        match opt.split_once('=') {
            Some(("weight", n)) => {
                weight = n
                    .parse::<u32>()
                    .ok()
                    .filter(|w| *w >= 1)
                    .ok_or_else(|| format!("{s:?}: weight must be a whole number from 1"))?;
            }
            _ => return Err(format!("{s:?}: unknown option {opt:?} (expected weight=N)")),
        }
    }
    Ok((addr, weight))
}

/// A `servers:` entry's `host:port` as written, without scheme, trailing slash or options
/// (`"https://app.internal:8443/ weight=2"` is `app.internal:8443`): the Host its health
/// checks send. `localhost` for a unix socket.
pub fn written_host(entry: &str) -> String {
    let addr = entry.split_whitespace().next().unwrap_or("");
    if addr.starts_with("unix:") {
        return "localhost".into();
    }
    let hostport = addr
        .strip_prefix("https://")
        .or_else(|| addr.strip_prefix("http://"))
        .unwrap_or(addr);
    hostport.trim_end_matches('/').to_string()
}

/// `resolver.nameservers`: `ip` (port 53) or `ip:port`, `[v6]:port`.
pub fn parse_nameserver(s: &str) -> Result<SocketAddr, String> {
    let s = s.trim();
    if let Ok(a) = s.parse::<SocketAddr>() {
        return Ok(a);
    }
    if let Ok(ip) = s.parse::<IpAddr>() {
        return Ok(SocketAddr::new(ip, 53));
    }
    Err(format!(
        "{s:?} is not a name server address; expected an IP address, optionally with a port (\"10.0.0.2\", \"127.0.0.1:5353\")"
    ))
}

/// `ip:port`, `[v6]:port`, `localhost:port`, `*:port` or a bare port (all interfaces).
pub fn parse_listen(s: &str) -> Result<SocketAddr, String> {
    let s = s.trim();
    if let Ok(a) = s.parse::<SocketAddr>() {
        return Ok(a);
    }
    if let Ok(port) = s.parse::<u16>() {
        return Ok(SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), port));
    }
    let (host, port) = split_port(s)?;
    match host {
        "*" | "" => Ok(SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), port)),
        "localhost" => Ok(SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port)),
        _ => Err(format!(
            "{s:?} is not a listen address; expected ip:port such as \"127.0.0.1:8080\" or \"[::]:8080\""
        )),
    }
}

fn split_port(s: &str) -> Result<(&str, u16), String> {
    let (host, port) = s
        .rsplit_once(':')
        .ok_or_else(|| format!("{s:?} has no port; expected host:port"))?;
    let port = port
        .parse::<u16>()
        .map_err(|_| format!("{s:?}: port {port:?} is not a number from 0 to 65535"))?;
    Ok((host, port))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixed(s: &str) -> BackendAddr {
        match parse_server(s).unwrap() {
            ServerAddr::Fixed(a) => a,
            other => panic!("{s}: {other:?}"),
        }
    }

    #[test]
    fn servers() {
        assert_eq!(
            fixed("127.0.0.1:5001"),
            BackendAddr::Tcp("127.0.0.1:5001".parse().unwrap())
        );
        assert_eq!(
            fixed("http://[::1]:80/"),
            BackendAddr::Tcp("[::1]:80".parse().unwrap())
        );
        assert_eq!(
            fixed("unix:/run/app.sock"),
            BackendAddr::Unix("/run/app.sock".into())
        );
        assert_eq!(
            fixed("localhost:9"),
            BackendAddr::Tcp("127.0.0.1:9".parse().unwrap())
        );
        assert!(parse_server("127.0.0.1").is_err());
        assert!(parse_server("127.0.0.1:99999").is_err());
        assert!(parse_server("unix:").is_err());
        assert!(parse_server("http://a:1/x").is_err());
        let tls = fixed("https://localhost:8443/");
        assert!(matches!(&tls, BackendAddr::Tls { host, .. } if host == "localhost"));
        assert_eq!(tls.to_string(), "https://localhost:8443");
        assert_eq!(tls.host_header(), "localhost:8443");
        let v6 = fixed("https://[::1]:443");
        assert!(matches!(&v6, BackendAddr::Tls { host, .. } if host == "::1"));
        assert_eq!(v6.host_header(), "[::1]:443");
        assert!(parse_server("https://localhost").is_err(), "port required");
        assert!(parse_server("https://a:1/x").is_err());
        assert_eq!(parse_server_entry("127.0.0.1:1 weight=3").unwrap().1, 3);
        assert_eq!(parse_server_entry("127.0.0.1:1").unwrap().1, 1);
        assert!(parse_server_entry("127.0.0.1:1 weight=0").is_err());
        assert!(parse_server_entry("127.0.0.1:1 backup").is_err());
        for (entry, host) in [
            ("127.0.0.1:5001", "127.0.0.1:5001"),
            ("https://app.internal:8443/ weight=2", "app.internal:8443"),
            ("http://[::1]:80", "[::1]:80"),
            ("unix:/run/app.sock", "localhost"),
        ] {
            assert_eq!(written_host(entry), host);
        }
    }

    #[test]
    fn names_stay_names() {
        let name = |s: &str| match parse_server(s) {
            Ok(ServerAddr::Name(n)) => n,
            other => panic!("{s}: {other:?}"),
        };
        let n = name("app.internal:8000");
        assert_eq!(
            (n.host.as_str(), n.port, n.tls),
            ("app.internal", 8000, false)
        );
        assert_eq!(
            n.at("10.0.0.5".parse().unwrap()),
            BackendAddr::Tcp("10.0.0.5:8000".parse().unwrap())
        );
        let t = name("https://api.example.com:443/");
        assert!(t.tls);
        assert_eq!(t.to_string(), "https://api.example.com:443");
        assert!(matches!(
            t.at("10.0.0.6".parse().unwrap()),
            BackendAddr::Tls { host, .. } if host == "api.example.com"
        ));
        assert_eq!(name("web_1:80").host, "web_1", "docker's names");
        assert_eq!(
            name("app.svc.cluster.local.:80").host,
            "app.svc.cluster.local."
        );
        for bad in [
            "a..b:1",
            "-a:1",
            "a b:1",
            "1.2.3:80",
            "256.1.1.1:80",
            "127.000.000.001:80",
            "\u{e9}t\u{e9}.fr:80",
        ] {
            let e = parse_server(bad).unwrap_err();
            assert!(e.contains("not an IP address or a host name"), "{bad}: {e}");
        }
        let long = format!("{}.com:1", "a".repeat(64));
        assert!(parse_server(&long).is_err());
    }

    #[test]
    fn srv_names_and_nameservers() {
        let s = parse_srv("_http._tcp.app.service.consul").unwrap();
        assert_eq!(
            (s.name.as_str(), s.tls),
            ("_http._tcp.app.service.consul", false)
        );
        assert!(parse_srv("https://_https._tcp.app").unwrap().tls);
        assert!(parse_srv("_http._tcp.app:80").is_err());
        assert!(parse_srv("").is_err());
        assert_eq!(
            parse_nameserver("10.0.0.2").unwrap(),
            "10.0.0.2:53".parse().unwrap()
        );
        assert_eq!(
            parse_nameserver("[::1]:5353").unwrap(),
            "[::1]:5353".parse().unwrap()
        );
        assert!(parse_nameserver("dns.example:53").is_err());
    }

    #[test]
    fn listens() {
        assert_eq!(
            parse_listen("8080").unwrap(),
            "0.0.0.0:8080".parse().unwrap()
        );
        assert_eq!(parse_listen("[::]:80").unwrap(), "[::]:80".parse().unwrap());
        assert_eq!(
            parse_listen("localhost:1").unwrap(),
            "127.0.0.1:1".parse().unwrap()
        );
        assert!(parse_listen("example.com:80").is_err());
        assert!(parse_listen("1.2.3.4").is_err());
    }
}
