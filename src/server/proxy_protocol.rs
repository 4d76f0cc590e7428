//! The PROXY protocol (HAProxy's, versions 1 and 2): a header a load balancer writes at the
//! start of a connection to say whom it is forwarding. On a listener with
//! `proxy_protocol: true` every connection must start with one; its source address becomes
//! the connection's client. `LOCAL` (v2: the balancer's own health check) and `UNKNOWN` keep
//! the real peer. A header that is missing, malformed, too long or not finished within the
//! time allowed closes the connection.
//!
//! The parser reads from a byte slice and says how many bytes the header took, so bytes that
//! arrived with it (the start of the HTTP request, or a TLS ClientHello) are kept and read
//! first by whoever reads the connection next ([`Prefixed`]).

use std::fmt;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};

/// The v2 signature.
pub const V2_SIGNATURE: &[u8; 12] = b"\r\n\r\n\0\r\nQUIT\n";
const V1_PREFIX: &[u8] = b"PROXY ";
/// A v1 header is at most 107 bytes, CRLF included.
const V1_MAX: usize = 107;
/// The largest v2 header accepted (addresses and TLVs); real balancers send far less.
pub const V2_MAX: usize = 4096;

/// What a header says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Header {
    /// A proxied TCP connection from `source` to `destination`.
    Proxied {
        source: SocketAddr,
        destination: SocketAddr,
    },
    /// v2 `LOCAL`: the proxy's own connection (a health check); the peer is the client.
    Local,
    /// v1 `UNKNOWN`, or a v2 address family proxyd has no use for (unix, unspecified).
    Unknown,
}

/// Why a header was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Error {
    /// The connection does not start with a PROXY header.
    Missing,
    Malformed(&'static str),
    TooLong,
    /// The connection ended inside the header.
    Truncated,
    TimedOut,
    Io(String),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Missing => write!(f, "no PROXY protocol header"),
            Error::Malformed(why) => write!(f, "malformed PROXY protocol header: {why}"),
            Error::TooLong => write!(f, "PROXY protocol header too long"),
            Error::Truncated => write!(f, "connection closed inside the PROXY protocol header"),
            Error::TimedOut => write!(f, "PROXY protocol header not received in time"),
            Error::Io(e) => write!(f, "reading the PROXY protocol header: {e}"),
        }
    }
}

impl std::error::Error for Error {}

/// The result of parsing what has arrived so far.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Parsed {
    /// More bytes are needed.
    Partial,
    /// The header, and how many bytes of the input it took.
    Done(Header, usize),
}

/// Parses a v1 or v2 header at the start of `buf`.
pub fn parse(buf: &[u8]) -> Result<Parsed, Error> {
    match buf.first() {
        None => Ok(Parsed::Partial),
        Some(b'P') => parse_v1(buf),
        Some(b'\r') => parse_v2(buf),
        Some(_) => Err(Error::Missing),
    }
}

fn parse_v1(buf: &[u8]) -> Result<Parsed, Error> {
    let n = buf.len().min(V1_PREFIX.len());
    if buf[..n] != V1_PREFIX[..n] {
        return Err(Error::Missing);
    }
    let window = &buf[..buf.len().min(V1_MAX)];
    let Some(lf) = window.iter().position(|&b| b == b'\n') else {
        return if buf.len() >= V1_MAX {
            Err(Error::TooLong)
        } else {
            Ok(Parsed::Partial)
        };
    };
    if lf == 0 || window[lf - 1] != b'\r' {
        return Err(Error::Malformed("v1 line does not end in CRLF"));
    }
    let line = std::str::from_utf8(&window[V1_PREFIX.len()..lf - 1])
        .map_err(|_| Error::Malformed("v1 line is not text"))?;
    let mut fields = line.split(' ');
    let proto = fields.next().unwrap_or("");
    if proto == "UNKNOWN" {
        // Whatever follows is to be ignored (the spec's words).
        return Ok(Parsed::Done(Header::Unknown, lf + 1));
    }
    let fields: Vec<&str> = fields.collect();
    let [src, dst, sport, dport] = fields[..] else {
        return Err(Error::Malformed(
            "v1 needs protocol, two addresses and two ports",
        ));
    };
    let (src, dst): (IpAddr, IpAddr) = match proto {
        "TCP4" => (
            v1_ip::<Ipv4Addr>(src)?.into(),
            v1_ip::<Ipv4Addr>(dst)?.into(),
        ),
        "TCP6" => (
            v1_ip::<Ipv6Addr>(src)?.into(),
            v1_ip::<Ipv6Addr>(dst)?.into(),
        ),
        _ => return Err(Error::Malformed("v1 protocol is not TCP4, TCP6 or UNKNOWN")),
    };
    Ok(Parsed::Done(
        Header::Proxied {
            source: SocketAddr::new(src, v1_port(sport)?),
            destination: SocketAddr::new(dst, v1_port(dport)?),
        },
        lf + 1,
    ))
}

fn v1_ip<T: std::str::FromStr>(s: &str) -> Result<T, Error> {
    s.parse().map_err(|_| Error::Malformed("v1 address"))
}

fn v1_port(s: &str) -> Result<u16, Error> {
    let digits = !s.is_empty() && s.len() <= 5 && s.bytes().all(|b| b.is_ascii_digit());
    let leading_zero = s.len() > 1 && s.starts_with('0');
    if !digits || leading_zero {
        return Err(Error::Malformed("v1 port"));
    }
    s.parse().map_err(|_| Error::Malformed("v1 port"))
}

fn parse_v2(buf: &[u8]) -> Result<Parsed, Error> {
    let n = buf.len().min(V2_SIGNATURE.len());
    if buf[..n] != V2_SIGNATURE[..n] {
        return Err(Error::Missing);
    }
    if buf.len() < 16 {
        return Ok(Parsed::Partial);
    }
    let (ver_cmd, fam) = (buf[12], buf[13]);
    if ver_cmd >> 4 != 2 {
        return Err(Error::Malformed("v2 version is not 2"));
    }
    let len = usize::from(u16::from_be_bytes([buf[14], buf[15]]));
    let total = 16 + len;
    if total > V2_MAX {
        return Err(Error::TooLong);
    }
    if buf.len() < total {
        return Ok(Parsed::Partial);
    }
    let body = &buf[16..total];
    match ver_cmd & 0x0f {
        // LOCAL: the address block (if any) is ignored.
        0 => return Ok(Parsed::Done(Header::Local, total)),
        1 => {}
        _ => return Err(Error::Malformed("v2 command is not LOCAL or PROXY")),
    }
    let (family, transport) = (fam >> 4, fam & 0x0f);
    if family == 0 || family == 3 {
        // AF_UNSPEC or AF_UNIX: nothing proxyd can use as a client address.
        return Ok(Parsed::Done(Header::Unknown, total));
    }
    if transport != 1 {
        return Err(Error::Malformed("v2 transport is not a stream"));
    }
    let port = |at: usize| u16::from_be_bytes([body[at], body[at + 1]]);
    let header = match family {
        1 => {
            if body.len() < 12 {
                return Err(Error::Malformed("v2 address block too short for IPv4"));
            }
            let ip = |at: usize| {
                IpAddr::V4(Ipv4Addr::new(
                    body[at],
                    body[at + 1],
                    body[at + 2],
                    body[at + 3],
                ))
            };
            Header::Proxied {
                source: SocketAddr::new(ip(0), port(8)),
                destination: SocketAddr::new(ip(4), port(10)),
            }
        }
        2 => {
            if body.len() < 36 {
                return Err(Error::Malformed("v2 address block too short for IPv6"));
            }
            let ip = |at: usize| {
                let mut b = [0u8; 16];
                b.copy_from_slice(&body[at..at + 16]);
                IpAddr::V6(Ipv6Addr::from(b))
            };
            Header::Proxied {
                source: SocketAddr::new(ip(0), port(32)),
                destination: SocketAddr::new(ip(16), port(34)),
            }
        }
        _ => return Err(Error::Malformed("v2 address family unknown")),
    };
    Ok(Parsed::Done(header, total))
}

/// Reads a header from the start of `stream` within `timeout`. Returns it with the stream,
/// which hands out any bytes that came after the header first.
pub async fn read<S: AsyncRead + Unpin>(
    mut stream: S,
    timeout: Duration,
) -> Result<(Header, Prefixed<S>), Error> {
    let read = async {
        let mut buf = Vec::with_capacity(256);
        loop {
            if let Parsed::Done(header, used) = parse(&buf)? {
                buf.drain(..used);
                return Ok((header, buf));
            }
            // Room for what may still come, up to the largest header (plus what follows it).
            if buf.capacity() - buf.len() < 64 {
                buf.reserve(1024);
            }
            let n = stream
                .read_buf(&mut buf)
                .await
                .map_err(|e| Error::Io(e.to_string()))?;
            if n == 0 {
                return Err(if buf.is_empty() {
                    Error::Missing
                } else {
                    Error::Truncated
                });
            }
        }
    };
    let (header, rest) = tokio::time::timeout(timeout, read)
        .await
        .map_err(|_| Error::TimedOut)??;
    Ok((
        header,
        Prefixed {
            prefix: rest,
            at: 0,
            inner: stream,
        },
    ))
}

/// A stream with bytes already read from it put back in front.
pub struct Prefixed<S> {
    prefix: Vec<u8>,
    at: usize,
    inner: S,
}

impl<S> Prefixed<S> {
    /// `inner`, with `prefix` read from it already.
    pub fn new(prefix: Vec<u8>, inner: S) -> Self {
        Prefixed {
            prefix,
            at: 0,
            inner,
        }
    }

    pub fn get_ref(&self) -> &S {
        &self.inner
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Prefixed<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if this.at < this.prefix.len() {
            let rest = &this.prefix[this.at..];
            let n = rest.len().min(buf.remaining());
            buf.put_slice(&rest[..n]);
            this.at += n;
            if this.at == this.prefix.len() {
                this.prefix = Vec::new();
                this.at = 0;
            }
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Prefixed<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// A v2 header for `source` → `destination` (PROXY, TCP), as a balancer writes it. For tests
/// and tools.
pub fn encode_v2(source: SocketAddr, destination: SocketAddr) -> Vec<u8> {
    let mut out = V2_SIGNATURE.to_vec();
    out.push(0x21);
    match (source.ip(), destination.ip()) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            out.push(0x11);
            out.extend_from_slice(&12u16.to_be_bytes());
            out.extend_from_slice(&s.octets());
            out.extend_from_slice(&d.octets());
        }
        (s, d) => {
            let v6 = |ip: IpAddr| match ip {
                IpAddr::V4(a) => a.to_ipv6_mapped(),
                IpAddr::V6(a) => a,
            };
            out.push(0x21);
            out.extend_from_slice(&36u16.to_be_bytes());
            out.extend_from_slice(&v6(s).octets());
            out.extend_from_slice(&v6(d).octets());
        }
    }
    out.extend_from_slice(&source.port().to_be_bytes());
    out.extend_from_slice(&destination.port().to_be_bytes());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sa(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    fn done(buf: &[u8]) -> (Header, usize) {
        match parse(buf) {
            Ok(Parsed::Done(h, n)) => (h, n),
            other => panic!("{other:?} for {:?}", String::from_utf8_lossy(buf)),
        }
    }

    #[test]
    fn v1_tcp4_tcp6_unknown() {
        let line = b"PROXY TCP4 203.0.113.7 10.0.0.1 56324 443\r\nGET / HTTP/1.1\r\n";
        let (h, n) = done(line);
        assert_eq!(
            h,
            Header::Proxied {
                source: sa("203.0.113.7:56324"),
                destination: sa("10.0.0.1:443")
            }
        );
        assert_eq!(&line[n..], b"GET / HTTP/1.1\r\n");
        let (h, _) = done(b"PROXY TCP6 2001:db8::7 ::1 65535 80\r\n");
        assert_eq!(
            h,
            Header::Proxied {
                source: sa("[2001:db8::7]:65535"),
                destination: sa("[::1]:80")
            }
        );
        assert_eq!(done(b"PROXY UNKNOWN\r\n"), (Header::Unknown, 15));
        assert_eq!(
            done(b"PROXY UNKNOWN ffff::1 ffff::2 1 2\r\nX").0,
            Header::Unknown
        );
        // The longest TCP6 line fits the 107 bytes.
        let long = b"PROXY TCP6 ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff 65535 65535\r\n";
        assert!(long.len() <= V1_MAX);
        assert_eq!(done(long).1, long.len());
    }

    #[test]
    fn v1_malformed_and_partial() {
        for partial in [
            &b""[..],
            b"P",
            b"PROXY",
            b"PROXY TCP4 1.2.3.4",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r",
        ] {
            assert_eq!(parse(partial), Ok(Parsed::Partial), "{partial:?}");
        }
        assert_eq!(parse(b"GET / HTTP/1.1\r\n"), Err(Error::Missing));
        assert_eq!(parse(b"PROXZ"), Err(Error::Missing));
        assert_eq!(parse(b"\x16\x03\x01"), Err(Error::Missing), "a TLS hello");
        for bad in [
            &b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n"[..],
            b"PROXY TCP4 1.2.3.4 5.6.7.8 1\r\n",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2 3\r\n",
            b"PROXY TCP4  1.2.3.4 5.6.7.8 1 2\r\n",
            b"PROXY TCP4 ::1 5.6.7.8 1 2\r\n",
            b"PROXY TCP6 1.2.3.4 ::1 1 2\r\n",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 65536 2\r\n",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 01 2\r\n",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 -1 2\r\n",
            b"PROXY UDP4 1.2.3.4 5.6.7.8 1 2\r\n",
            b"PROXY TCP4 1.2.3.256 5.6.7.8 1 2\r\n",
            b"PROXY \xff\r\n",
        ] {
            assert!(
                matches!(parse(bad), Err(Error::Malformed(_))),
                "{:?}: {:?}",
                String::from_utf8_lossy(bad),
                parse(bad)
            );
        }
        let mut long = b"PROXY TCP4 ".to_vec();
        long.resize(200, b'1');
        assert_eq!(parse(&long), Err(Error::TooLong));
    }

    #[test]
    fn v2_tcp4_tcp6_local_unknown() {
        let h = encode_v2(sa("203.0.113.7:1234"), sa("10.0.0.1:443"));
        let mut buf = h.clone();
        buf.extend_from_slice(b"GET /");
        let (got, n) = done(&buf);
        assert_eq!(
            got,
            Header::Proxied {
                source: sa("203.0.113.7:1234"),
                destination: sa("10.0.0.1:443")
            }
        );
        assert_eq!(n, 16 + 12);
        let h6 = encode_v2(sa("[2001:db8::7]:5"), sa("[::1]:6"));
        assert_eq!(
            done(&h6),
            (
                Header::Proxied {
                    source: sa("[2001:db8::7]:5"),
                    destination: sa("[::1]:6")
                },
                16 + 36
            )
        );
        // LOCAL, with and without an address block.
        let mut local = V2_SIGNATURE.to_vec();
        local.extend_from_slice(&[0x20, 0x00, 0, 0]);
        assert_eq!(done(&local), (Header::Local, 16));
        let mut local = h.clone();
        local[12] = 0x20;
        assert_eq!(done(&local).0, Header::Local);
        // AF_UNSPEC and AF_UNIX: the real peer is used.
        let mut unspec = V2_SIGNATURE.to_vec();
        unspec.extend_from_slice(&[0x21, 0x00, 0, 0]);
        assert_eq!(done(&unspec), (Header::Unknown, 16));
        let mut unix = V2_SIGNATURE.to_vec();
        unix.extend_from_slice(&[0x21, 0x31, 0, 216]);
        unix.resize(16 + 216, 0);
        assert_eq!(done(&unix), (Header::Unknown, 16 + 216));
        // TLVs after the addresses are skipped.
        let mut tlv = h.clone();
        tlv[15] = 12 + 7;
        tlv.extend_from_slice(&[0x04, 0, 4, b'a', b'b', b'c', b'd']);
        tlv.extend_from_slice(b"rest");
        let (_, n) = done(&tlv);
        assert_eq!(&tlv[n..], b"rest");
    }

    #[test]
    fn v2_malformed_truncated() {
        let h = encode_v2(sa("203.0.113.7:1234"), sa("10.0.0.1:443"));
        for cut in 0..h.len() {
            assert_eq!(parse(&h[..cut]), Ok(Parsed::Partial), "cut at {cut}");
        }
        let mut bad_sig = h.clone();
        bad_sig[5] = b'X';
        assert_eq!(parse(&bad_sig), Err(Error::Missing));
        let mut v1 = h.clone();
        v1[12] = 0x11;
        assert!(matches!(parse(&v1), Err(Error::Malformed(_))));
        let mut cmd = h.clone();
        cmd[12] = 0x22;
        assert!(matches!(parse(&cmd), Err(Error::Malformed(_))));
        let mut udp = h.clone();
        udp[13] = 0x12;
        assert!(matches!(parse(&udp), Err(Error::Malformed(_))));
        let mut fam = h.clone();
        fam[13] = 0x41;
        assert!(matches!(parse(&fam), Err(Error::Malformed(_))));
        let mut short = h[..16].to_vec();
        short[15] = 4;
        short.extend_from_slice(&[1, 2, 3, 4]);
        assert!(matches!(parse(&short), Err(Error::Malformed(_))));
        let mut short6 = h.clone();
        short6[13] = 0x21;
        assert!(matches!(parse(&short6), Err(Error::Malformed(_))));
        let mut huge = h[..16].to_vec();
        huge[14] = 0xff;
        huge[15] = 0xff;
        assert_eq!(parse(&huge), Err(Error::TooLong));
    }

    #[tokio::test]
    async fn read_keeps_what_follows_and_reports_truncation() {
        use tokio::io::AsyncWriteExt;
        let (mut client, server) = tokio::io::duplex(1024);
        client
            .write_all(b"PROXY TCP4 192.0.2.1 192.0.2.2 1000 80\r\nGET / HTTP/1.1\r\n\r\n")
            .await
            .unwrap();
        let (h, mut rest) = read(server, Duration::from_secs(5)).await.unwrap();
        assert!(matches!(h, Header::Proxied { source, .. } if source == sa("192.0.2.1:1000")));
        let mut got = vec![0u8; 18];
        rest.read_exact(&mut got).await.unwrap();
        assert_eq!(got, b"GET / HTTP/1.1\r\n\r\n");

        // Byte by byte works too.
        let (mut client, server) = tokio::io::duplex(1024);
        let header = encode_v2(sa("192.0.2.9:1"), sa("192.0.2.2:80"));
        let task = tokio::spawn(read(server, Duration::from_secs(5)));
        for b in &header {
            client.write_all(&[*b]).await.unwrap();
            tokio::task::yield_now().await;
        }
        let (h, _) = task.await.unwrap().unwrap();
        assert!(matches!(h, Header::Proxied { source, .. } if source == sa("192.0.2.9:1")));

        let (mut client, server) = tokio::io::duplex(1024);
        client.write_all(b"PROXY TCP4 1.2").await.unwrap();
        drop(client);
        let err = read(server, Duration::from_secs(5)).await.err();
        assert_eq!(err, Some(Error::Truncated));

        let (_client, server) = tokio::io::duplex(1024);
        let err = read(server, Duration::from_millis(50)).await.err();
        assert_eq!(err, Some(Error::TimedOut));
    }
}
