//! A static file to a plain TCP client with `sendfile(2)`: the kernel copies the page cache
//! to the socket, and the file's bytes never come up to proxyd (nginx's `sendfile on`). The
//! head goes first with `MSG_MORE`, so the kernel sends it in one segment with the file's
//! first bytes.

use std::io;
use std::os::fd::AsFd;
use std::time::Duration;

use nix::sys::socket::MsgFlags;
use tokio::io::Interest;
use tokio::net::TcpStream;

use crate::files::body::{shrank, Unread};

/// The most one `sendfile` call moves (Linux's own limit).
const MOST: u64 = 0x7fff_f000;

/// Sends `head` then the file's part; `sent` counts the file's bytes. Every call makes
/// progress within `timeout` or the send fails, as the other writes do.
pub async fn send(
    tcp: &TcpStream,
    head: &[u8],
    unread: Unread,
    timeout: Duration,
    sent: &mut u64,
) -> io::Result<()> {
    let Unread { file, start, len } = unread;
    let mut head = head;
    while !head.is_empty() {
        let n = bounded(timeout, tcp, || {
            // nix names no MSG_MORE.
            let flags = MsgFlags::from_bits_retain(nix::libc::MSG_MORE) | MsgFlags::MSG_NOSIGNAL;
            nix::sys::socket::send(raw(tcp), head, flags).map_err(io::Error::from)
        })
        .await?;
        head = &head[n..];
    }
    let mut offset = start as i64;
    let end = start + len;
    while (offset as u64) < end {
        let count = (end - offset as u64).min(MOST) as usize;
        let n = bounded(timeout, tcp, || {
            nix::sys::sendfile::sendfile64(tcp.as_fd(), file.as_fd(), Some(&mut offset), count)
                .map_err(io::Error::from)
        })
        .await?;
        if n == 0 {
            return Err(shrank());
        }
        *sent += n as u64;
    }
    Ok(())
}

fn raw(tcp: &TcpStream) -> std::os::fd::RawFd {
    use std::os::fd::AsRawFd;
    tcp.as_raw_fd()
}

/// One non-blocking call on the socket once it is writable, within `timeout`.
async fn bounded<R>(
    timeout: Duration,
    tcp: &TcpStream,
    call: impl FnMut() -> io::Result<R>,
) -> io::Result<R> {
    tokio::time::timeout(timeout, tcp.async_io(Interest::WRITABLE, call))
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "client-send-timeout"))?
}
