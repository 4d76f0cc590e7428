//! Addresses as written in the config: listeners and upstream servers.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, ToSocketAddrs};
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

/// `host:port`, `[v6]:port`, `http://host:port`, `https://host:port`, or `unix:/path`. Names
/// are resolved now, once (a name that resolves to nothing is an error).
pub fn parse_server(s: &str) -> Result<BackendAddr, String> {
    let s = s.trim();
    if let Some(path) = s.strip_prefix("unix:") {
        if path.is_empty() {
            return Err("unix: needs a socket path, e.g. \"unix:/run/app.sock\"".into());
        }
        return Ok(BackendAddr::Unix(PathBuf::from(path)));
    }
    if let Some(rest) = s.strip_prefix("https://") {
        let (addr, host) = resolve(s, rest)?;
        return Ok(BackendAddr::Tls { addr, host });
    }
    let hostport = s.strip_prefix("http://").unwrap_or(s);
    resolve(s, hostport).map(|(addr, _)| BackendAddr::Tcp(addr))
}

/// `host:port` (of `s`) to an address, and the host as written (brackets removed).
fn resolve(s: &str, hostport: &str) -> Result<(SocketAddr, String), String> {
    let hostport = hostport.trim_end_matches('/');
    if hostport.contains('/') {
        return Err(format!("{s:?}: a server is host:port, without a path"));
    }
    if let Ok(a) = hostport.parse::<SocketAddr>() {
        return Ok((a, a.ip().to_string()));
    }
    let (host, port) = split_port(hostport)?;
    let mut addrs = (host, port)
        .to_socket_addrs()
        .map_err(|e| format!("{s:?}: cannot resolve {host:?}: {e}"))?;
    addrs
        .next()
        .map(|a| (a, host.to_string()))
        .ok_or_else(|| format!("{s:?}: {host:?} resolves to no address"))
}

/// A `servers:` entry: an address, optionally followed by `weight=N` (nginx's form).
pub fn parse_server_entry(s: &str) -> Result<(BackendAddr, u32), String> {
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

    #[test]
    fn servers() {
        assert_eq!(
            parse_server("127.0.0.1:5001").unwrap(),
            BackendAddr::Tcp("127.0.0.1:5001".parse().unwrap())
        );
        assert_eq!(
            parse_server("http://[::1]:80/").unwrap(),
            BackendAddr::Tcp("[::1]:80".parse().unwrap())
        );
        assert_eq!(
            parse_server("unix:/run/app.sock").unwrap(),
            BackendAddr::Unix("/run/app.sock".into())
        );
        assert!(matches!(
            parse_server("localhost:9"),
            Ok(BackendAddr::Tcp(_))
        ));
        assert!(parse_server("127.0.0.1").is_err());
        assert!(parse_server("127.0.0.1:99999").is_err());
        assert!(parse_server("unix:").is_err());
        assert!(parse_server("http://a:1/x").is_err());
        let tls = parse_server("https://localhost:8443/").unwrap();
        assert!(matches!(&tls, BackendAddr::Tls { host, .. } if host == "localhost"));
        assert_eq!(tls.to_string(), "https://localhost:8443");
        assert_eq!(tls.host_header(), "localhost:8443");
        let v6 = parse_server("https://[::1]:443").unwrap();
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
