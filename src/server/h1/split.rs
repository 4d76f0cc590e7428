//! A client connection split into its read and write halves. A plain TCP socket splits into
//! tokio's owned halves: no lock between them, and the write half reaches the socket itself
//! for `sendfile(2)`. Any other stream (TLS) goes through `tokio::io::split`.

use std::any::Any;
use std::io::{self, IoSlice};
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf, ReadHalf, WriteHalf};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;

pub enum ReadSide<T> {
    Tcp(OwnedReadHalf),
    Other(ReadHalf<T>),
}

pub enum WriteSide<T> {
    Tcp(OwnedWriteHalf),
    Other(WriteHalf<T>),
}

/// `stream`'s two halves. (`serve` is generic over its stream; which kind it is shows here,
/// once per connection, rather than in a trait every stream type would implement.)
pub fn split<T>(stream: T) -> (ReadSide<T>, WriteSide<T>)
where
    T: AsyncRead + AsyncWrite + 'static,
{
    let mut slot = Some(stream);
    let tcp = (&mut slot as &mut dyn Any)
        .downcast_mut::<Option<TcpStream>>()
        .and_then(Option::take);
    match (tcp, slot) {
        (Some(tcp), _) => {
            let (r, w) = tcp.into_split();
            (ReadSide::Tcp(r), WriteSide::Tcp(w))
        }
        (None, Some(other)) => {
            let (r, w) = tokio::io::split(other);
            (ReadSide::Other(r), WriteSide::Other(w))
        }
        (None, None) => unreachable!("the stream is taken only as a TcpStream"),
    }
}

impl<T> WriteSide<T> {
    /// The plain TCP socket, when it is one.
    pub fn tcp(&self) -> Option<&TcpStream> {
        match self {
            WriteSide::Tcp(w) => Some(w.as_ref()),
            WriteSide::Other(_) => None,
        }
    }
}

impl<T: AsyncRead> AsyncRead for ReadSide<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ReadSide::Tcp(r) => Pin::new(r).poll_read(cx, buf),
            ReadSide::Other(r) => Pin::new(r).poll_read(cx, buf),
        }
    }
}

impl<T: AsyncWrite> AsyncWrite for WriteSide<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            WriteSide::Tcp(w) => Pin::new(w).poll_write(cx, buf),
            WriteSide::Other(w) => Pin::new(w).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            WriteSide::Tcp(w) => Pin::new(w).poll_write_vectored(cx, bufs),
            WriteSide::Other(w) => Pin::new(w).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            WriteSide::Tcp(w) => w.is_write_vectored(),
            WriteSide::Other(w) => w.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            WriteSide::Tcp(w) => Pin::new(w).poll_flush(cx),
            WriteSide::Other(w) => Pin::new(w).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            WriteSide::Tcp(w) => Pin::new(w).poll_shutdown(cx),
            WriteSide::Other(w) => Pin::new(w).poll_shutdown(cx),
        }
    }
}
