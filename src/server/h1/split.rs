//! A client connection split into its read and write halves. A plain TCP socket splits into
//! tokio's owned halves: no lock between them, and the write half reaches the socket itself
//! for `sendfile(2)`. Any other stream (TLS) goes through `tokio::io::split`.

use std::any::Any;

use tokio::io::{AsyncRead, AsyncWrite, ReadHalf, WriteHalf};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;
use tokio_util::either::Either;

/// (tokio-util's `Either` passes reads and writes to the half it holds.)
pub type ReadSide<T> = Either<OwnedReadHalf, ReadHalf<T>>;
pub type WriteSide<T> = Either<OwnedWriteHalf, WriteHalf<T>>;

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
            (Either::Left(r), Either::Left(w))
        }
        (None, Some(other)) => {
            let (r, w) = tokio::io::split(other);
            (Either::Right(r), Either::Right(w))
        }
        (None, None) => unreachable!("the stream is taken only as a TcpStream"),
    }
}

/// The plain TCP socket under `w`, when it is one.
pub fn tcp<T>(w: &WriteSide<T>) -> Option<&TcpStream> {
    match w {
        Either::Left(w) => Some(w.as_ref()),
        Either::Right(_) => None,
    }
}
